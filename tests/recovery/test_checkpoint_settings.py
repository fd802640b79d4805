"""Checkpoint timeout, tolerable failures, minimum pause and retained records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from recovery.gated import checkpoint_manifests

import aioflow as af


class SlowFirstPreCommit(af.TwoPhaseCommitSinkWriter):
    """Holds checkpoint 1's pre-commit longer than the checkpoint timeout; commits into ``out``."""

    def __init__(self, out: list[Any], delay: float) -> None:
        self.out, self.delay = out, delay
        self.current: list[Any] = []
        self.staged: dict[int, list[Any]] = {}

    async def write(self, values: list[Any]) -> None:
        self.current.extend(values)

    async def pre_commit(self, checkpoint_id: int) -> Any:
        if checkpoint_id == 1:
            await anyio.sleep(self.delay)
        self.staged[checkpoint_id], self.current = self.current, []
        return checkpoint_id

    async def commit(self, handle: Any) -> None:
        self.out.extend(self.staged.pop(handle, []))

    async def abort(self, handle: Any) -> None:
        self.staged.pop(handle, None)

    async def finish(self) -> None:
        for checkpoint_id in sorted(self.staged):
            await self.commit(checkpoint_id)
        self.out.extend(self.current)
        self.current = []


class SlowSink(af.Sink):
    exactly_once = True

    def __init__(self, delay: float) -> None:
        self.out: list[Any] = []
        self.delay = delay

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return SlowFirstPreCommit(self.out, self.delay)


async def ticks(n: int) -> Any:
    for i in range(n):
        yield i
        await anyio.sleep(0.002)  # a live source: the job runs long enough for several checkpoints


def _records(folder: Path) -> list[dict[str, Any]]:
    return checkpoint_manifests(folder)


async def test_a_checkpoint_that_times_out_is_abandoned_and_the_next_one_commits_its_records(tmp_path: Path) -> None:
    app = af.App(
        "slow", state_dir=str(tmp_path), checkpoint_interval=0.02, checkpoint_timeout=0.1, retained_checkpoints=1000
    )
    sink = SlowSink(delay=0.5)
    app.source(af.from_iterable(ticks(300)), name="ticks").sink(sink, name="out")
    await app.run_async()
    ids = [record["checkpoint_id"] for record in _records(tmp_path)]
    assert ids and 1 not in ids and ids == sorted(ids)  # 1 failed, later ones completed
    assert sorted(sink.out) == list(range(300))  # checkpoint 1's records came with a later commit


async def test_failures_beyond_the_tolerated_number_fail_the_job(tmp_path: Path) -> None:
    app = af.App(
        "slow",
        state_dir=str(tmp_path),
        checkpoint_interval=0.02,
        checkpoint_timeout=0.1,
        tolerable_checkpoint_failures=0,
    )
    app.source(af.from_iterable(ticks(300)), name="ticks").sink(SlowSink(delay=0.5), name="out")
    with pytest.raises(
        af.StateError, match=r"checkpoint 1 failed \(timed out after 0.1 s.*tolerable_checkpoint_failures=0"
    ):
        await app.run_async()


class BarrierTimes(af.TwoPhaseCommitSinkWriter):
    """Records when each checkpoint's barrier reached it (wall-clock ms): before the
    checkpoint ended, as the sink acknowledges after its pre-commit."""

    def __init__(self, times: dict[int, int]) -> None:
        self.times = times

    async def write(self, values: list[Any]) -> None:
        pass

    async def pre_commit(self, checkpoint_id: int) -> Any:
        self.times[checkpoint_id] = time.time_ns() // 1_000_000
        return checkpoint_id

    async def commit(self, handle: Any) -> None:
        pass


class BarrierTimesSink(af.Sink):
    exactly_once = True

    def __init__(self) -> None:
        self.times: dict[int, int] = {}

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return BarrierTimes(self.times)


async def test_the_minimum_pause_separates_checkpoints_and_old_records_go(tmp_path: Path) -> None:
    app = af.App(
        "paused",
        state_dir=str(tmp_path),
        checkpoint_interval=0.01,
        min_pause_between_checkpoints=0.15,
        retained_checkpoints=1000,
    )
    sink = BarrierTimesSink()
    app.source(af.from_iterable(ticks(400)), name="ticks").sink(sink, name="out")
    await app.run_async()
    records = _records(tmp_path)[:-1]  # the last is the final checkpoint of the finished job: no pause
    assert len(records) >= 2
    for before, after in zip(records, records[1:]):
        started = after["time_ms"] - after["duration_ms"]
        # The previous checkpoint ended after its barrier reached the sink: from there, at
        # least the 150 ms pause (give or take the manifest's millisecond rounding), however
        # long that checkpoint took to commit on a loaded machine.
        assert started - sink.times[before["checkpoint_id"]] >= 149

    app = af.App("kept", state_dir=str(tmp_path / "kept"), checkpoint_interval=0.01, retained_checkpoints=2)
    app.source(af.from_iterable(ticks(100)), name="ticks").sink(af.CollectSink(), name="out")
    await app.run_async()
    assert len(_records(tmp_path / "kept")) == 2


class Counting(af.SourceReader):
    """Numbers 0..n-1, slowly; records what checkpoint completions it was told of."""

    def __init__(self, n: int, told: list[tuple[int, Any]]) -> None:
        self.n, self.next, self.told = n, 0, told

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        if self.next >= self.n:
            return None
        await anyio.sleep(0.002)
        self.next += 1
        return af.SourceBatch([self.next - 1])

    def position(self) -> Any:
        return self.next

    def restore(self, position: Any) -> None:
        self.next = position

    async def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        self.told.append((checkpoint_id, position))


class CountingSource(af.Source):
    def __init__(self, n: int) -> None:
        self.n = n
        self.told: list[tuple[int, Any]] = []

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return Counting(self.n, self.told)


async def test_sources_hear_of_completed_checkpoints_with_the_position_each_recorded(tmp_path: Path) -> None:
    app = af.App("told", state_dir=str(tmp_path), checkpoint_interval=0.02, retained_checkpoints=1000)
    source = CountingSource(200)
    app.source(source, name="numbers").sink(af.CollectSink(), name="out")
    await app.run_async()
    records = {r["checkpoint_id"]: r["operators"]["numbers#source"][0]["position"] for r in _records(tmp_path)}
    assert source.told, "no checkpoint completed while the source read"
    assert [c for c, _ in source.told] == sorted(c for c, _ in source.told)
    for checkpoint_id, position in source.told:
        assert records[checkpoint_id] == position
