"""A stop always ends with a savepoint, whenever it comes relative to checkpoints.

A source task injects a barrier between two batches. Injecting one awaits (its chained
sinks pre-commit, its writers wait for credit to send the barrier), and the coordinator
may trigger the next checkpoint meanwhile: the savepoint of a stop abandons the periodic
checkpoint in flight and triggers its own barrier at once. That barrier must still be
injected, as must one triggered while a bounded source's last read waited, or the
savepoint waits for the checkpoint timeout and the stop times out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson

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
    record = orjson.loads((state / "checkpoints" / f"chk-{checkpoint_id}.json").read_bytes())["body"]
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

