"""SIGKILL a real worker running sliding, session or count windows at random moments,
several times, restart it, and compare its exactly-once output with an undisturbed run's
(the reference keeps its state in memory, without checkpoints): the same records, in the
same order per key. Open windows, merged sessions, evictor contents and count-trigger
state must all come back from the last checkpoint."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from recovery.jobs import KILLED, WINDOW_JOB, Worker, explain, outputs, write_events


@pytest.mark.parametrize(
    ("windows", "cache"),
    [("sliding", 100_000), ("session", 100_000), ("session", 64), ("count", 100_000)],
    ids=["sliding", "session", "session-small-cache", "count"],
)
def test_sigkilled_window_worker_restarted_produces_exactly_the_undisturbed_output(
    tmp_path: Path,
    windows: str,
    cache: int,
) -> None:
    """A small ``cache`` keeps most windows in LMDB, evicted and read back between checkpoints.
    The crashing runs are paced (an 8 ms pause per 100 records, in batches of 256 so that
    checkpoints still complete every few batches): each run is still running after the
    checkpoints it waits for, and a pause costs no CPU where more input would."""
    base = {
        **write_events(tmp_path, 50_000, seed=len(windows)),
        "P": "2",
        "WINDOWS": windows,
        "CACHE": str(cache),
        "BATCH": "256",
    }
    reference = Worker(tmp_path, {**base, "OUT": str(tmp_path / "ref")}, target=WINDOW_JOB)
    assert reference.wait() == 0, explain(reference)
    expected = outputs(tmp_path, "ref")
    assert expected.keys() == {"windows"} and sum(map(len, expected["windows"].values())) > 5_000

    crashing = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state"), "PACE": "8"}
    moments = random.Random()  # a new schedule of kills every run
    kills = 0
    for _ in range(4):
        worker = Worker(tmp_path, crashing, target=WINDOW_JOB)
        # A bounded wait on its log: 1 to 3 checkpoints completed in this run before the kill.
        checkpointed = worker.wait_for("checkpoint complete", moments.randint(1, 3))
        if checkpointed:
            time.sleep(moments.uniform(0, 0.1))  # then somewhere between two checkpoints
            worker.signal(signal.SIGKILL)
        code = worker.wait()
        if code == 0:
            break  # it finished before the kill
        assert code == KILLED and checkpointed, (
            f"exit status {code}; a checkpoint had completed: {checkpointed}\n{explain(worker)}"
        )
        kills += 1
    assert kills >= 1, "the worker finished before the first kill: nothing was tested"

    final = Worker(tmp_path, crashing, target=WINDOW_JOB)
    assert final.wait() == 0, explain(final)
    assert '"event": "restoring"' in final.text()  # from the last checkpoint, not afresh
    found = outputs(tmp_path, "out")
    assert found.keys() == expected.keys()
    missing = {key for key, lines in expected["windows"].items() if found["windows"].get(key) != lines}
    assert not missing, f"{len(missing)} of {len(expected['windows'])} keys differ, e.g. {sorted(missing)[:5]}"
