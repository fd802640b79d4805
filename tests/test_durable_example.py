"""examples/durable_counts.py does what its docstring says: killed with SIGKILL after a
checkpoint and restarted, it writes the same results as a run nobody disturbed. (The
snippets of docs/state.md and docs/fault-tolerance.md run in test_event_time_examples.py.)"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "durable_counts.py"


class Worker:
    """One ``aioflow run examples/durable_counts.py:app`` process writing into ``folder``."""

    def __init__(self, folder: Path, log_name: str) -> None:
        folder.mkdir(exist_ok=True)
        self.log = folder.parent / f"{folder.name}-{log_name}.log"
        self._stderr = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aioflow", "run", "examples/durable_counts.py:app", "--log-format", "json"],
            cwd=ROOT, env={**os.environ, "DURABLE_COUNTS_DIR": str(folder)},
            stdout=subprocess.DEVNULL, stderr=self._stderr,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, event: str, seconds: float = 60) -> None:
        """Wait until the log has a line of ``event`` (a bounded wait on the log)."""
        needle = f'"event": "{event}"'.encode()
        deadline = time.monotonic() + seconds
        while needle not in self.log.read_bytes():
            assert self.process.poll() is None, f"the worker ended before {event!r}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {event!r} within {seconds} s:\n{self.text()}"
            time.sleep(0.005)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=120)
        finally:
            self.process.kill()
            self._stderr.close()


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
    undisturbed = Worker(tmp_path / "undisturbed", "run")
    assert undisturbed.wait() == 0, undisturbed.text()
    assert '"event": "job finished"' in undisturbed.text()
    expected = results(tmp_path / "undisturbed")
    promised = re.search(r"the same (\d+) results", EXAMPLE.read_text())
    assert promised and int(promised.group(1)) == len(expected), "the docstring's count of results"

    killed = Worker(tmp_path / "crashed", "killed")
    killed.wait_for("checkpoint complete")
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "it finished before the kill:\n" + killed.text()
    committed = results(tmp_path / "crashed")
    # Only results of completed checkpoints, each once: fewer than all. (The kill may come
    # before the sink committed the checkpoint just logged: the restart commits it.)
    assert len(committed) < len(expected)
    assert not collections.Counter(committed) - collections.Counter(expected)

    restarted = Worker(tmp_path / "crashed", "restarted")
    assert restarted.wait() == 0, restarted.text()
    assert '"event": "restoring"' in restarted.text()  # from the checkpoint the killed worker completed
    assert '"event": "job finished"' in restarted.text()
    recovered = results(tmp_path / "crashed")
    assert collections.Counter(recovered) == collections.Counter(expected)
    assert per_user(recovered) == per_user(expected)  # each user's results in the same order
