"""The README's 60-second example works as written, from an empty directory: its shell
snippets create the input and run the CLI, its Python snippets are the files they name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_example_and_its_test(tmp_path: Path) -> None:
    example = blocks("python")
    assert len(example) == 2
    for block in example:  # each starts with "# <file name>"
        name = re.match(r"# (\w+\.py)\n", block)
        assert name, block
        (tmp_path / name.group(1)).write_text(block)

    shell = [block for block in blocks("sh") if "clicks.py" in block or "events.jsonl" in block]
    assert len(shell) == 2
    subprocess.run(["sh", "-e", "-c", shell[0]], cwd=tmp_path, check=True)  # writes events.jsonl
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 3

    outputs = {}
    for line in shell[1].splitlines():
        args = line.split("#")[0].split()
        assert args[0] == "aioflow", line
        result = subprocess.run(
            [sys.executable, "-m", "aioflow", *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        outputs[args[1]] = result.stdout
    promised = re.search(r"`aioflow run` prints (.*?) \(and logs", (ROOT / "README.md").read_text())
    assert promised
    assert outputs["run"].splitlines() == re.findall(r"`([^`]*)`", promised.group(1))
    assert outputs["run"].splitlines() == ["('a', 22.0)", "('b', 110.0)"]
    assert "RunningTotal" in outputs["plan"]

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_clicks.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "1 passed" in tests.stdout
