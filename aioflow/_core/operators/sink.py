"""The operator at the end of a pipeline: hands batches to a sink writer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import structlog

from aioflow._core.connectors.base import END_OF_INPUT, TwoPhaseCommitSinkWriter
from aioflow._core.errors import OperatorError, SinkClosed
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import Operator
from aioflow._core.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["SinkOperator"]

log = structlog.get_logger("aioflow.runtime")

_MISSING: Any = object()


class SinkOperator(Operator):
    """Hands batches to a sink writer; flushes it at the end of input, and
    ``writer.flush_interval`` seconds after an unflushed write.

    At a checkpoint barrier an ordinary writer is flushed (at-least-once); a
    :class:`TwoPhaseCommitSinkWriter` pre-commits its transaction, whose handle is part of
    the checkpoint, and commits it once the checkpoint completed (exactly-once). Handles
    restored from a checkpoint belong to a completed checkpoint: they are committed on restore.
    """

    def __init__(self, name: str, sink: Any) -> None:
        super().__init__(name)
        self.sink = sink
        self.writer: Any = None
        self._flush_scheduled = False
        self._closed = False  # the destination went away (SinkClosed): discard the rest
        #: Pre-committed transactions not yet committed: (checkpoint id, handle).
        self._pending: list[tuple[int, Any]] = []
        self._committing = anyio.Lock()
        self._final: anyio.Event | None = None  # set once the end of input's transaction is committed

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        self.writer = self.sink.create_writer(env.subtask_index, env.parallelism)
        self.writer.resuming = env.restored is not None
        await self.writer.open()
        self._two_phase = isinstance(self.writer, TwoPhaseCommitSinkWriter)

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
                record,
                has_record=record is not _MISSING,
            ) from exc
        interval = self.writer.flush_interval
        if interval is not None and not self._flush_scheduled:
            assert self.env is not None
            self._flush_scheduled = True
            self.env.schedule(now_ms() + int(interval * 1000), self._timed_flush)

    async def _timed_flush(self, now: int) -> None:
        self._flush_scheduled = False
        await self._flush()

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        if not self._two_phase:
            await self._flush()
            return None
        if checkpoint_id >= 0 and not self._closed:
            try:
                handle = await self.writer.pre_commit(checkpoint_id)
            except Exception as exc:
                raise self._failed("pre-commit", exc) from exc
            self._pending.append((checkpoint_id, handle))
        return {"pending": [[cid, handle] for cid, handle in self._pending]}

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        async with self._committing:  # the coordinator and the end of input may both commit
            # the end of input's pre-commit: once a checkpoint holds this subtask's final state
            final_checkpointed = self.env is not None and self.env.final_state_checkpointed
            while self._pending and (
                self._pending[0][0] <= checkpoint_id or (self._pending[0][0] == END_OF_INPUT and final_checkpointed)
            ):
                _, handle = self._pending[0]
                try:
                    await self.writer.commit(handle)
                except Exception as exc:
                    raise self._failed("commit", exc) from exc
                self._pending.pop(0)
            if self._final is not None and not self._pending:
                self._final.set()

    async def restore_state(self, states: list[Any]) -> None:
        if not self._two_phase:
            return
        assert self.env is not None
        if len(states) == self.env.parallelism:  # each subtask finishes its own transactions
            mine = [states[self.env.subtask_index]]
        else:  # rescaled: the first subtask finishes them all (any writer can commit any handle)
            mine = states if self.env.subtask_index == 0 else []
        every = [handle for state in states if state for _, handle in state["pending"]]
        try:
            await self.writer.recover(every)
        except Exception as exc:
            raise self._failed("recover its transactions", exc) from exc
        restored = sorted(
            ((cid, handle) for state in mine if state for cid, handle in state["pending"]),
            key=lambda pending: pending[0],
        )
        for _, handle in restored:  # they belong to the completed checkpoint: finish committing them
            try:
                await self.writer.commit(handle)
            except Exception as exc:
                raise self._failed("commit a restored transaction", exc) from exc

    async def process_watermark(self, timestamp: int) -> None:
        pass

    async def process_watermark_status(self, idle: bool) -> None:
        pass

    async def end_input(self) -> None:
        if self._two_phase and not self._closed:
            assert self.env is not None
            if self.env.coordinator is None:  # no checkpoints: commit everything now
                await self.notify_checkpoint_complete(END_OF_INPUT)
                try:
                    await self.writer.finish()
                except Exception as exc:
                    raise self._failed("commit", exc) from exc
                return
            # With checkpoints the rest is pre-committed, and committed by the first checkpoint
            # that holds this task's final state (as Flink's final checkpoint does): committed
            # now, a crash before that checkpoint would replay and write these records again.
            try:
                handle = await self.writer.pre_commit(END_OF_INPUT)
            except Exception as exc:
                raise self._failed("pre-commit", exc) from exc
            self._pending.append((END_OF_INPUT, handle))  # committed by a checkpoint holding this final state
            self._final = anyio.Event()
            return
        await self._flush()

    async def await_final_commit(self) -> None:
        if self._final is not None:
            await self._final.wait()

    async def _flush(self) -> None:
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
        return self.error(
            f"sink {type(self.sink).__name__} failed to {step}: {type(exc).__name__}: {exc}", None, has_record=False
        )
