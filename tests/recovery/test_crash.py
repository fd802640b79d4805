"""SIGKILL a real worker at random moments, restart it, and compare its committed output
with an undisturbed run's: every output holds the same records, in the same order per key."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from recovery.jobs import Worker, outputs, run, write_job


@pytest.mark.parametrize(
    ("parallelism", "cache", "concurrent"),
    [(1, 100_000, False), (2, 100_000, False), (2, 64, False), (2, 100_000, True)],
    ids=["p1", "p2", "p2-small-cache", "p2-async"],
)
def test_sigkilled_worker_restarted_produces_exactly_the_undisturbed_output(
    tmp_path: Path,
    parallelism: int,
    cache: int,
    concurrent: bool,
) -> None:
    """With ``concurrent``, the crashing runs count with an ``async def`` function that
    runs many keys at once; the reference is still the synchronous one."""
    base = {**write_job(tmp_path, 50_000, seed=parallelism), "P": str(parallelism), "CACHE": str(cache), "BATCH": "256"}
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    if concurrent:
        base["ASYNC"] = "1"
    expected = outputs(tmp_path, "ref")
    assert expected.keys() == {"counts", "sums"} and all(expected.values())

    # Paced (an 8 ms pause per 100 records: four seconds more, in batches of 256 records so
    # that checkpoints still complete every few batches), so that each run is still running
    # after the checkpoints it waits for, however fast the machine or the job.
    crashing = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state"), "PACE": "8"}
    moments = random.Random()  # a new schedule of kills every run
    kills = 0
    for _ in range(4):
        worker = Worker(tmp_path, crashing)
        worker.wait_for("checkpoint complete", moments.randint(1, 3))  # a bounded wait on its log
        time.sleep(moments.uniform(0, 0.1))  # then somewhere between two checkpoints
        worker.signal(signal.SIGKILL)
        code = worker.wait()
        assert code in (0, -signal.SIGKILL), worker.text()
        if code == 0:
            break  # it finished before the kill
        kills += 1
    assert run(tmp_path, crashing) == 0
    assert kills >= 1
    assert outputs(tmp_path, "out") == expected
