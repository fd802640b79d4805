"""Per-key order after restores: SIGKILL a real worker at many points (while it restores,
as a checkpoint completes and its commit runs, between checkpoints), restart it each time,
and compare each key's committed exactly-once file output with an undisturbed run's,
line for line and in order.

The job keeps a running count per key and writes one line per record, so a record
committed out of its key's order, twice or never shows as a difference. (SIGKILL
campaigns once found a key's counts committed as 2981, 3000-3005, 2982-2999 by a restored
worker's Kafka sink; this is the same property for ``FileSink(exactly_once=True)``.)
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import orjson
import pytest
from recovery.jobs import KILLED, Worker, run

JOB = '''
import os
import time
import aioflow as af

state = os.environ.get("STATE")
app = af.App("per-key-order", state_dir=state, checkpoint_interval=0.05 if state else None,
             parallelism=int(os.environ["P"]), batch_size=200)


class Count(af.KeyedProcessFunction):
    """Each record with its key's running count: one line per record."""

    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, e, ctx):
        if state and e["i"] % 50 == 0:
            time.sleep(0.001)  # slower, so that the kills find it running
        n = self.n.value() + 1
        self.n.update(n)
        yield {"user": e["user"], "i": e["i"], "n": n}


events = app.source(af.read_jsonl(os.environ["EVENTS"]), name="events", parallelism=1)
events.key_by(lambda e: e["user"]).process(Count(), name="count").sink(
    af.FileSink(os.environ["OUT"] + ".jsonl", exactly_once=bool(state)), name="out")
'''

EVENTS = 150_000
KILLS = 10


def _write_job(folder: Path, seed: int) -> dict[str, str]:
    """The job and its input (keys drawn at random, so that batches mix them); the environment it reads."""
    rng = random.Random(seed)
    with (folder / "events.jsonl").open("wb") as f:
        for i in range(EVENTS):
            f.write(orjson.dumps({"user": f"u{rng.randrange(200)}", "i": i}) + b"\n")
    (folder / "job.py").write_text(JOB)
    return {"EVENTS": str(folder / "events.jsonl")}


def _per_key(folder: Path, stem: str) -> dict[str, list[bytes]]:
    """Each key's lines in file order, over the files of every subtask."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(folder.glob(f"{stem}*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"torn line in {path}: {line!r}"
            found.setdefault(orjson.loads(line)["user"], []).append(line)
    return found


def _kill_somewhere(worker: Worker, moments: random.Random) -> str:
    """Wait for a point of the worker's run, SIGKILL it there; which point it was."""
    point = moments.choice(("starting", "committing", "between", "between"))
    if point == "starting":  # restoring, committing the restored transactions, or the first records
        worker.wait_for("job started")
    else:  # "committing": as soon as a checkpoint completed, its commit runs
        worker.wait_for("checkpoint complete", moments.randint(1, 4))
        if point == "between":
            time.sleep(moments.uniform(0, 0.05))  # not a wait for anything: a random point in the interval
    worker.signal(signal.SIGKILL)
    return point


@pytest.mark.parametrize("parallelism", [1, 2], ids=["p1", "p2"])
def test_each_keys_committed_output_keeps_its_order_through_many_sigkills(tmp_path: Path, parallelism: int) -> None:
    seed = random.randrange(2**32)  # a new input and schedule of kills every run; the seed reproduces it
    base = {**_write_job(tmp_path, seed), "P": str(parallelism)}
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = _per_key(tmp_path, "ref")
    assert sum(map(len, expected.values())) == EVENTS

    crashing = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")}
    moments = random.Random(seed)
    points: list[str] = []
    committed_after_restore = 0  # killed attempts that restored, then completed a checkpoint
    for attempt in range(KILLS):
        worker = Worker(tmp_path, crashing, log=tmp_path / f"attempt-{attempt}.log")
        point = _kill_somewhere(worker, moments)
        code = worker.wait()
        assert code in (0, KILLED), worker.text()
        if code == 0:
            break  # it finished before the kill
        points.append(point)
        log = worker.text()
        if '"event": "restoring"' in log and '"event": "checkpoint complete"' in log:
            committed_after_restore += 1
    final = Worker(tmp_path, crashing, log=tmp_path / "final.log")
    assert final.wait() == 0, final.text()

    where = f"seed {seed}, kills at {points}"
    assert len(points) >= KILLS // 2, where  # most attempts were killed before the input ended
    assert committed_after_restore >= 2, where  # restored workers committed output before their kill
    assert '"event": "restoring"' in final.text()
    assert not [path.name for path in tmp_path.glob(".out*")], where  # no staged transaction left behind
    found = _per_key(tmp_path, "out")
    assert found.keys() == expected.keys(), where
    for user, lines in expected.items():
        assert found[user] == lines, f"{where}: key {user!r} differs from the undisturbed run"
