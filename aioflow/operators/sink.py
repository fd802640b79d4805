"""The operator at the end of a pipeline: hands batches to a sink writer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from aioflow.connectors.base import SinkClosed
from aioflow.errors import OperatorError
from aioflow.operators.base import Operator
from aioflow.runtime.events import Batch
from aioflow.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow.runtime.task import SubtaskEnvironment

__all__ = ["SinkOperator"]

log = structlog.get_logger("aioflow.runtime")

_MISSING: Any = object()


class SinkOperator(Operator):
    """Hands batches to a sink writer; flushes it at the end of input, and
    ``writer.flush_interval`` seconds after an unflushed write."""

    def __init__(self, name: str, sink: Any) -> None:
        super().__init__(name)
        self.sink = sink
        self.writer: Any = None
        self._flush_scheduled = False
        self._closed = False  # the destination went away (SinkClosed): discard the rest

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        self.writer = self.sink.create_writer(env.subtask_index, env.parallelism)
        await self.writer.open()

    async def process(self, batch: Batch) -> None:
        if self._closed:
            return
        try:
            await self.writer.write(batch.values)
        except SinkClosed:
            self._closed = True
            log.info("sink output closed: stopping the job", operator=self.name)
            assert self.env is not None
            self.env.request_stop()
            return
        except Exception as exc:
            record = getattr(exc, "record", _MISSING)  # a writer may say which record failed
            raise self.error(
                f"sink {type(self.sink).__name__} failed writing a batch of {len(batch.values)} records: "
                f"{type(exc).__name__}: {exc}",
                record, has_record=record is not _MISSING,
            ) from exc
        interval = self.writer.flush_interval
        if interval is not None and not self._flush_scheduled:
            assert self.env is not None
            self._flush_scheduled = True
            self.env.schedule(now_ms() + int(interval * 1000), self._timed_flush)

    async def _timed_flush(self, now: int) -> None:
        self._flush_scheduled = False
        await self.end_input()

    async def process_watermark(self, timestamp: int) -> None:
        pass

    async def process_watermark_status(self, idle: bool) -> None:
        pass

    async def end_input(self) -> None:
        if self._closed:
            return
        try:
            await self.writer.flush()
        except Exception as exc:
            raise self._failed("flush", exc) from exc

    async def close(self) -> None:
        if self.writer is not None:
            try:
                await self.writer.close()
            except Exception as exc:
                raise self._failed("close", exc) from exc

    def _failed(self, step: str, exc: Exception) -> OperatorError:
        return self.error(f"sink {type(self.sink).__name__} failed to {step}: {type(exc).__name__}: {exc}",
                          None, has_record=False)
