"""The README's 60-second example works as written."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_and_its_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    rows = [{"user": "a", "amount": 5}, {"user": "a", "amount": 20}, {"user": "b", "amount": 100}]
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(blocks[0], namespace)
    namespace["app"].run()
    assert capsys.readouterr().out.splitlines() == ["('a', 22.0)", "('b', 110.0)"]
    exec(blocks[1], namespace)
    namespace["test_running_total"]()
