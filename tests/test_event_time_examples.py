"""The event-time examples print exactly what their docstrings promise, on every run,
and the snippets of the docs pages (event time, windows, connected streams, state, fault
tolerance) run as written.

Each example runs through the CLI, as a user would run it. The output must not depend
on how fast records arrive, so each one also runs with its input trickling in one record
at a time, with periodic watermarks every 10 ms: watermarks (and so timers and windows)
then advance between records instead of only at the end of input.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import aioflow as af
from aioflow._core.cli import load_app
from aioflow.testing import replace_source, run_collect

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioflow", "run", f"examples/{name}:app", "--log-format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


FRAUD_ALERTS = [
    "{'account': 'acc-1', 'small': 0.5, 'large': 750.0, 'seconds_apart': 30.0, 'ts': 1704067230000}",
    "{'account': 'acc-4', 'small': 0.75, 'large': 505.5, 'seconds_apart': 60.0, 'ts': 1704067385000}",
    "{'account': 'acc-1', 'small': 0.01, 'large': 2500.0, 'seconds_apart': 5.0, 'ts': 1704067445000}",
]

CLICKSTREAM = [
    "('/home', 1704067200000, 4, 3)",
    "('/pricing', 1704067200000, 2, 2)",
    "('/docs', 1704067200000, 1, 1)",
    "('/pricing', 1704067200000, 3, 3)",
    "('late', '/docs', 'u5', 1704067249000)",
    "('/home', 1704067260000, 5, 4)",
    "('/docs', 1704067260000, 2, 2)",
    "('/home', 1704067320000, 1, 1)",
    "('/docs', 1704067320000, 1, 1)",
]

RULE_ALERTS = [
    "{'order': 1, 'user': 'ann', 'amount': 120.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}",
    "{'order': 4, 'user': 'cat', 'amount': 1500.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}",
    "{'order': 5, 'user': 'bob', 'amount': 180.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}",
    "{'order': 6, 'user': 'cat', 'amount': 1200.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 2}",
    "{'order': 6, 'user': 'cat', 'amount': 1200.0, 'rule': 'huge', 'threshold': 1000.0, 'alerts_for_user': 3}",
    "{'order': 8, 'user': 'ann', 'amount': 260.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 2}",
    "{'order': 9, 'user': 'bob', 'amount': 300.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 2}",
    "{'order': 10, 'user': 'cat', 'amount': 5000.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 4}",
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("fraud_detection.py", FRAUD_ALERTS), ("clickstream.py", CLICKSTREAM), ("dynamic_rules.py", RULE_ALERTS)],
)
def test_example_prints_exactly_its_results(name: str, expected: list[str]) -> None:
    result = run_example(name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected
    assert '"event": "job finished"' in result.stderr


@pytest.mark.parametrize("name", ["fraud_detection.py", "clickstream.py", "dynamic_rules.py"])
def test_example_docstring_shows_its_output(name: str) -> None:
    expected = {"fraud_detection.py": FRAUD_ALERTS, "clickstream.py": CLICKSTREAM, "dynamic_rules.py": RULE_ALERTS}[
        name
    ]
    text = (ROOT / "examples" / name).read_text()
    assert "\n".join(f"    {line}" for line in expected) in text


# -- the same results whatever the arrival speed ------------------------------------------


def rows(name: str) -> list[Any]:
    return [orjson.loads(line) for line in (DATA / name).read_bytes().splitlines() if line.strip()]


def trickle(records: list[Any], delay: float = 0.02) -> af.Source:
    """One record at a time, ``delay`` seconds apart (so periodic watermarks come between)."""

    async def generate() -> Any:
        for record in records:
            yield record
            await anyio.sleep(delay)

    return af.from_iterable(generate())


def load(name: str) -> Any:
    app = load_app(f"{ROOT / 'examples' / name}:app")
    app.watermark_interval = 0.01
    return app, sys.modules[f"_aioflow_target_{Path(name).stem}"]  # load_app's private module name


def literal(lines: list[str]) -> list[Any]:
    return [ast.literal_eval(line) for line in lines]


def test_fraud_alerts_do_not_depend_on_when_timers_fire() -> None:
    app, module = load("fraud_detection.py")
    replace_source(app, "transactions", trickle(rows("transactions.jsonl")))
    assert run_collect(module.FraudDetector) == literal(FRAUD_ALERTS)


def test_clickstream_does_not_depend_on_batching() -> None:
    app, module = load("clickstream.py")
    replace_source(app, "clicks", trickle(rows("clicks.jsonl"), delay=0.005))
    views, late = run_collect(module.views, module.late)
    expected = literal(CLICKSTREAM)
    assert late == [row for row in expected if row[0] == "late"]
    assert views == [row for row in expected if row[0] != "late"]


@pytest.mark.parametrize("slow", ["orders", "rules"])
def test_rule_alerts_do_not_depend_on_which_input_comes_first(slow: str) -> None:
    app, module = load("dynamic_rules.py")
    files = {"orders": "rule_orders.jsonl", "rules": "rules.jsonl"}
    replace_source(app, slow, trickle(rows(files[slow])))
    assert run_collect(module.RuleEngine) == literal(RULE_ALERTS)


# -- the docs' snippets ------------------------------------------------------------------

DOCS = ["event-time.md", "windows.md", "connected-streams.md", "state.md", "fault-tolerance.md", "kafka.md", "async.md"]


def snippets() -> list[Any]:
    params = []
    for doc in DOCS:
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)
        assert blocks, doc
        params += [pytest.param(doc, block, id=f"{doc}[{i}]") for i, block in enumerate(blocks)]
    return params


@pytest.mark.filterwarnings("ignore:operator .* keeps state but has a generated name")
@pytest.mark.parametrize(("doc", "block"), snippets())
def test_doc_snippet_runs(doc: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"docs/{doc}", "exec"), {"__name__": "__main__"})  # each asserts its own output
