"""``stream.assign_timestamps_and_watermarks(...)``: event time assigned mid-stream.

The operator replaces the stream's timestamps and watermarks: upstream watermarks are
dropped (only the final one, at the end of input, passes), and its own generator emits
new ones, periodically and, for per-event generators, right after the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow._core.runtime.events import MAX_WATERMARK, Batch
from aioflow._core.runtime.operator import Operator
from aioflow._core.time.timers import now_ms
from aioflow._core.time.watermarks import SourceWatermarks, WatermarkStrategy

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["TimestampsAndWatermarksOperator"]


class TimestampsAndWatermarksOperator(Operator):
    def __init__(
        self, name: str, timestamps: Callable[[Any], int], strategy: WatermarkStrategy | None, interval: float
    ) -> None:
        super().__init__(name)
        self.watermarks = SourceWatermarks(name, timestamps, strategy, interval)

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        if self.watermarks.strategy is not None and self.watermarks.interval_ms:
            env.schedule(now_ms() + self.watermarks.interval_ms, self._periodic)

    async def process(self, batch: Batch) -> None:
        if batch.values:
            watermarks = self.watermarks
            pushed = now_ms()
            await watermarks.push(self.out, "", batch.values, [""])
            watermarks.hold(pushed)  # the operators after this one held it back: not quiet time

    def emitted_none(self) -> None:
        return None  # records pass on unchanged, with timestamps

    async def process_watermark(self, timestamp: int) -> None:
        if timestamp == MAX_WATERMARK:
            await self.watermarks.activate(self.out)
            await self.forward_watermark(timestamp)

    async def process_watermark_status(self, idle: bool) -> None:
        pass  # this operator decides idleness itself

    async def _periodic(self, now: int) -> None:
        await self.watermarks.emit_periodic(self.out, now, [""])
        self.watermarks.hold(now)
        assert self.env is not None
        self.env.schedule(now + self.watermarks.interval_ms, self._periodic)
