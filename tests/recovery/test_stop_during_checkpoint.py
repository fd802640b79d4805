"""A stop always ends with a savepoint, whenever it comes relative to checkpoints.

A source task injects a barrier between two batches. Injecting one awaits (its chained
sinks pre-commit, its writers wait for credit to send the barrier), and the coordinator
may trigger the next checkpoint meanwhile: the savepoint of a stop abandons the periodic
checkpoint in flight and triggers its own barrier at once. That barrier must still be
injected, as must one triggered while a bounded source's last read waited, or the
savepoint waits for the checkpoint timeout and the stop times out.

The loops at the end stop an endless job (``recovery/endless.py``) at random moments
relative to its checkpoints: many times in process, and a few times as a worker process
signalled with SIGTERM.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from recovery.endless import build
from recovery.gated import checkpoint_manifests
from recovery.jobs import Worker

import aioflow as af


class Numbers(af.SourceReader):
    """0, 1, 2, ... in batches; endless unless ``end`` is given. At the end, ``at_end`` is
    set and the last read waits for ``release`` before it says so."""

    def __init__(self, end: int | None, at_end: anyio.Event, release: anyio.Event) -> None:
        self.next, self.end, self.at_end, self.release = 0, end, at_end, release

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        if self.end is not None and self.next >= self.end:
            self.at_end.set()
            await self.release.wait()
            return None
        upto = self.next + 50 if self.end is None else min(self.next + 50, self.end)
        records = list(range(self.next, upto))
        self.next = upto
        return af.SourceBatch(records)

    def position(self) -> Any:
        return self.next

    def restore(self, position: Any) -> None:
        self.next = position


class NumberSource(af.Source):
    def __init__(self, end: int | None = None) -> None:
        self.end = end
        self.at_end, self.release = anyio.Event(), anyio.Event()

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return Numbers(self.end, self.at_end, self.release)


class Held(af.TwoPhaseCommitSinkWriter):
    """Commits into ``sink.out``; the pre-commit of checkpoint ``sink.hold`` waits for ``sink.release``."""

    def __init__(self, sink: HeldSink) -> None:
        self.sink = sink
        self.current: list[Any] = []
        self.staged: dict[Any, list[Any]] = {}

    async def write(self, values: list[Any]) -> None:
        self.current.extend(values)

    async def pre_commit(self, checkpoint_id: int) -> Any:
        if checkpoint_id == self.sink.hold:
            self.sink.entered.set()
            await self.sink.release.wait()
        self.staged[checkpoint_id], self.current = self.current, []
        return checkpoint_id

    async def commit(self, handle: Any) -> None:
        self.sink.out.extend(self.staged.pop(handle, []))

    async def abort(self, handle: Any) -> None:
        self.staged.pop(handle, None)


class HeldSink(af.Sink):
    exactly_once = True

    def __init__(self, hold: int | None = None) -> None:
        self.hold = hold
        self.entered, self.release = anyio.Event(), anyio.Event()
        self.out: list[Any] = []

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return Held(self)


async def _until_savepoint_triggered(app: af.App) -> None:
    """Until the coordinator triggered the stop's savepoint on the sources."""
    job = app.job
    assert job is not None
    while (pending := job.coordinator and job.coordinator.pending) is None or pending.kind != "savepoint":
        await anyio.sleep(0)


def _position_in(state: Path, checkpoint_id: int) -> int:
    [record] = [body for body in checkpoint_manifests(state) if body["checkpoint_id"] == checkpoint_id]
    assert record["kind"] == "savepoint"
    return record["operators"]["numbers#source"][0]["position"]


async def test_a_savepoint_triggered_while_a_source_is_inside_the_previous_checkpoint_is_taken(
    tmp_path: Path,
) -> None:
    # The sink is chained to the source: its pre-commit of checkpoint 1 runs inside the
    # source task's checkpoint(1), which is where the savepoint's trigger comes.
    app = af.App("held", state_dir=str(tmp_path / "state"), checkpoint_interval=0.01, checkpoint_timeout=2.0)
    sink = HeldSink(hold=1)
    app.source(NumberSource(), name="numbers").sink(sink, name="out")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(app.run_async)
            await sink.entered.wait()  # the source task is inside checkpoint 1
            job = app.job
            app.stop()  # abandons checkpoint 1, triggers the savepoint (2) on the source
            await _until_savepoint_triggered(app)
            sink.release.set()  # the source leaves checkpoint 1: it must inject 2 now
    assert job is not None and job.savepoint is not None and job.savepoint.name == "savepoint-2"
    position = _position_in(tmp_path / "state", 2)
    assert sink.out == list(range(position))  # exactly what the savepoint's position says was read


async def test_a_stop_that_comes_while_a_bounded_source_reaches_its_end_takes_the_savepoint(tmp_path: Path) -> None:
    app = af.App("ending", state_dir=str(tmp_path / "state"), checkpoint_interval=3600, checkpoint_timeout=2.0)
    source, sink = NumberSource(end=500), HeldSink()
    app.source(source, name="numbers").sink(sink, name="out")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(app.run_async)
            await source.at_end.wait()  # the last read waits to say the input ended
            job = app.job
            app.stop()
            await _until_savepoint_triggered(app)
            source.release.set()  # the end of input and the savepoint's barrier, both pending
    assert job is not None and job.savepoint is not None and job.savepoint.name == "savepoint-1"
    assert _position_in(tmp_path / "state", 1) == 500
    assert sink.out == list(range(500))


# -- many stops at random moments: every one ends with a savepoint, none hangs ---------------------------

#: Seconds a stop may take (the worker's --stop-timeout); a normal one takes milliseconds.
STOP_TIMEOUT = 10.0
ENDLESS = Path(__file__).with_name("endless.py")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory (tmpfs) where there is one. These tests take hundreds of
    checkpoints and savepoints, each with fsyncs; what they check is when barriers go,
    not durability, and on a busy disk the fsyncs alone would take minutes."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="aioflow-stops-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _stop_once(folder: Path, rng: random.Random) -> str | None:
    """Run the endless job in process and stop it at a random moment relative to its
    checkpoints: before the first one, while one is in flight (a few task switches after
    its trigger), or between two. Returns what went wrong, or ``None``."""
    interval = 0.02
    app = build(str(folder / "state"), interval=interval, pre_commit=0.004)
    moment = rng.choice(["early", "during", "during", "between"])
    failure: BaseException | None = None
    stopped = False

    async def run() -> None:
        nonlocal failure
        try:
            await app.run_async()
        except Exception as exc:
            failure = exc

    bound = anyio.CancelScope(deadline=anyio.current_time() + 60)
    with bound:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            while (job := app.job) is None:
                await anyio.sleep(0)
            if moment != "early":
                nth = rng.randint(1, 3)
                while (pending := job.coordinator and job.coordinator.pending) is None or pending.checkpoint_id < nth:
                    await anyio.sleep(0)
            if moment == "between":
                await anyio.sleep(rng.uniform(0, interval))
            else:
                for _ in range(rng.randrange(40)):
                    await anyio.sleep(0)
            app.stop()
            stopped = True
            bound.deadline = anyio.current_time() + STOP_TIMEOUT
    if bound.cancelled_caught:
        return f"{moment}: the stop hung (no end within {STOP_TIMEOUT} s)" if stopped else "no checkpoint in 60 s"
    if failure is not None:
        return f"{moment}: {type(failure).__name__}: {failure}"
    if job.savepoint is None or not (job.savepoint / "_manifest").is_file():
        return f"{moment}: stopped without a savepoint"
    return None


async def test_stops_at_random_moments_in_process_always_end_with_a_savepoint(scratch: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tries = 100
    problems = []
    for attempt in range(tries):
        problem = await _stop_once(scratch / str(attempt), rng)
        if problem is not None:
            problems.append(f"attempt {attempt}: {problem}")
    assert not problems, f"seed {seed}: {len(problems)} of {tries} stops failed: {problems}"


def _sigterm_once(folder: Path, seed: int) -> str | None:
    """Start the endless job as a worker and SIGTERM it after its 1st-3rd completed
    checkpoint (they come every 50 ms), at a random moment; what went wrong, or ``None``."""
    rng = random.Random(seed)
    folder.mkdir()
    env = {"ENDLESS_STATE": str(folder / "state"), "ENDLESS_INTERVAL": "0.05", "ENDLESS_PRE_COMMIT": "0.015"}
    with Worker(folder, env, "--stop-timeout", str(STOP_TIMEOUT), target=f"{ENDLESS}:app") as worker:
        if not worker.wait_for("checkpoint complete", rng.randint(1, 3)):
            return f"the worker ended before it was signalled:\n{worker.text()}"
        # Only to choose the moment: anywhere in two intervals, or about when the next
        # checkpoint is triggered (50 ms after the last one ended), while it is in flight.
        time.sleep(rng.choice([rng.uniform(0, 0.1), rng.uniform(0.04, 0.07)]))
        worker.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = worker.wait()
        seconds = time.monotonic() - signalled
    log = worker.text()
    savepoints = list((folder / "state" / "savepoints").glob("savepoint-*/_manifest"))
    if code != 0 or '"savepoint taken"' not in log or len(savepoints) != 1 or seconds >= STOP_TIMEOUT:
        return f"exit {code} after {seconds:.1f} s, savepoints {savepoints}:\n{log[-3000:]}"
    return None


def test_sigterm_at_random_moments_always_stops_a_worker_with_a_savepoint(scratch: Path) -> None:
    seed = random.randrange(2**32)
    tries = 16
    with ThreadPoolExecutor(4) as workers:  # four processes at once
        problems = [
            problem
            for problem in workers.map(
                _sigterm_once, [scratch / str(i) for i in range(tries)], [seed + i for i in range(tries)]
            )
            if problem is not None
        ]
    assert not problems, f"seed {seed}: {len(problems)} of {tries} stops failed:\n" + "\n".join(problems)
