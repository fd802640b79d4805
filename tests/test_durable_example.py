"""examples/durable_counts.py does what its docstring says: killed with SIGKILL after a
checkpoint and restarted, it writes the same results as a run nobody disturbed. (The
snippets of docs/state.md and docs/fault-tolerance.md run in test_event_time_examples.py.)"""

from __future__ import annotations

import collections
import re
import signal
from pathlib import Path

import orjson
from recovery.jobs import Worker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "durable_counts.py"


def worker(folder: Path, log_name: str) -> Worker:
    """``aioflow run examples/durable_counts.py:app`` writing into ``folder``."""
    folder.mkdir(exist_ok=True)
    return Worker(
        folder,
        {"DURABLE_COUNTS_DIR": str(folder)},
        target="examples/durable_counts.py:app",
        log=folder.parent / f"{folder.name}-{log_name}.log",
        cwd=ROOT,
    )


def results(folder: Path) -> list[bytes]:
    lines = (folder / "durable_counts.jsonl").read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines), "a torn line"
    return lines


def per_user(lines: list[bytes]) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for line in lines:
        found.setdefault(orjson.loads(line)["user"], []).append(line)
    return found


def test_killed_and_restarted_it_writes_the_undisturbed_results(tmp_path: Path) -> None:
    undisturbed = worker(tmp_path / "undisturbed", "run")
    assert undisturbed.wait() == 0, undisturbed.text()
    assert '"event": "job finished"' in undisturbed.text()
    expected = results(tmp_path / "undisturbed")
    promised = re.search(r"the same (\d+) results", EXAMPLE.read_text())
    assert promised and int(promised.group(1)) == len(expected), "the docstring's count of results"

    killed = worker(tmp_path / "crashed", "killed")
    killed.wait_for("checkpoint complete")
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "it finished before the kill:\n" + killed.text()
    committed = results(tmp_path / "crashed")
    # Only results of completed checkpoints, each once: fewer than all. (The kill may come
    # before the sink committed the checkpoint just logged: the restart commits it.)
    assert len(committed) < len(expected)
    assert not collections.Counter(committed) - collections.Counter(expected)

    restarted = worker(tmp_path / "crashed", "restarted")
    assert restarted.wait() == 0, restarted.text()
    assert '"event": "restoring"' in restarted.text()  # from the checkpoint the killed worker completed
    assert '"event": "job finished"' in restarted.text()
    recovered = results(tmp_path / "crashed")
    assert collections.Counter(recovered) == collections.Counter(expected)
    assert per_user(recovered) == per_user(expected)  # each user's results in the same order
