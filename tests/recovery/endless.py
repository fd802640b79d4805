"""An endless job for the stop tests: numbers, counted per key in keyed state, into
exactly-once sinks, at parallelism 2 with frequent checkpoints.

Injecting a barrier takes the source task a while, as in real jobs: a sample of the
numbers goes to an exactly-once sink chained to the source, whose pre-commit takes a few
milliseconds (as fsyncs on a busy disk do) inside the source task's checkpoint; and the
source reads as fast as the keyed stage takes records, so the barrier often waits for
credit. The sinks keep their transactions in memory: file sinks' commits (fsyncs, in
threads) would make each run slower, not the stop any different.

``build()`` makes the App in process; as a worker file (``aioflow run
tests/recovery/endless.py:app``) it reads ``ENDLESS_STATE``, ``ENDLESS_INTERVAL`` and
``ENDLESS_PRE_COMMIT`` from the environment.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

import aioflow as af


class Numbers(af.SourceReader):
    """Subtask ``i`` of ``p`` reads i, i + p, i + 2p, ..., without end."""

    def __init__(self, start: int, step: int) -> None:
        self.next, self.step = start, step

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        end = self.next + self.step * max_records
        records = list(range(self.next, end, self.step))
        self.next = end
        return af.SourceBatch(records)

    def position(self) -> Any:
        return self.next

    def restore(self, position: Any) -> None:
        self.next = position


class EndlessNumbers(af.Source):
    bounded = False

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return Numbers(subtask_index, parallelism)


class MemoryWriter(af.TwoPhaseCommitSinkWriter):
    """Transactions in memory; a pre-commit takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.current: list[Any] = []
        self.staged: dict[int, list[Any]] = {}
        self.committed: list[Any] = []

    async def write(self, values: list[Any]) -> None:
        self.current.extend(values)

    async def pre_commit(self, checkpoint_id: int) -> Any:
        if self.seconds:
            await anyio.sleep(self.seconds)
        self.staged[checkpoint_id], self.current = self.current, []
        return checkpoint_id

    async def commit(self, handle: Any) -> None:
        self.committed.extend(self.staged.pop(handle, []))

    async def abort(self, handle: Any) -> None:
        self.staged.pop(handle, None)


class MemorySink(af.Sink):
    exactly_once = True

    def __init__(self, pre_commit_seconds: float = 0.0) -> None:
        self.seconds = pre_commit_seconds

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return MemoryWriter(self.seconds)


class Count(af.KeyedProcessFunction):
    def open(self, ctx: Any) -> None:
        self.n = ctx.value_state("n", 0)

    def process_element(self, value: int, ctx: Any) -> Any:
        n = self.n.value() + 1
        self.n.update(n)
        if n % 1000 == 0:
            yield {"key": ctx.key, "n": n}


def build(state_dir: str, interval: float, pre_commit: float) -> af.App:
    """Checkpoints every ``interval`` seconds; a pre-commit of the sample takes ``pre_commit``."""
    app = af.App("endless", state_dir=state_dir, checkpoint_interval=interval, parallelism=2, batch_size=256)
    numbers = app.source(EndlessNumbers(), name="numbers")
    sample = numbers.filter(lambda n: n % 1000 == 0, name="sample")
    sample.sink(MemorySink(pre_commit), name="sample-out")  # chained: pre-commits inside the source task
    counts = numbers.key_by(lambda n: n % 64).process(Count(), name="count")
    counts.sink(MemorySink(), name="counts-out")
    return app


if "ENDLESS_STATE" in os.environ:
    app = build(
        os.environ["ENDLESS_STATE"], float(os.environ["ENDLESS_INTERVAL"]), float(os.environ["ENDLESS_PRE_COMMIT"])
    )
