"""The checkpoint coordinator: triggers checkpoints, collects the tasks' snapshots, commits.

Every ``interval`` seconds (and at least ``min_pause`` after the previous one ended) it
asks every running source task to inject a barrier. Each task snapshots when the barrier
reached it on all inputs and acknowledges with its operators' states and its keyed-state
changes. When every task has acknowledged (a finished task counts with its final
snapshot), the coordinator writes the changes and the metadata to the store in one
transaction, then tells the operators, so sinks commit their pre-committed transactions.
A checkpoint that does not complete within ``timeout`` is abandoned and logged; its
changes go into the next one. ``tolerable_failures`` consecutive failures are allowed
before the job fails (``None``: never fail the job for a checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from aioflow.checkpoint.metadata import CheckpointMetadata
from aioflow.errors import StateError
from aioflow.state.durable import LmdbBackend
from aioflow.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow.runtime.task import _Task
    from aioflow.state.lmdb import LmdbStore
    from aioflow.state.table import Writes

__all__ = ["CheckpointCoordinator", "CheckpointStatistics"]

log = structlog.get_logger("aioflow.checkpoint")


@dataclass
class CheckpointStatistics:
    """Checkpoints of a job so far, across its restarts: what metrics and health read.

    The job owns one and hands it to the coordinator of each run, which updates it.
    """

    #: Checkpoints (and savepoints, and final checkpoints) that completed.
    completed: int = 0
    #: Checkpoints that were abandoned (timed out).
    failed: int = 0
    #: Failures since the last checkpoint that completed.
    consecutive_failures: int = 0
    #: The last completed checkpoint: its id, seconds from trigger to commit, bytes of
    #: state changes it wrote, and when it completed (Unix time, seconds).
    last_id: int | None = None
    last_duration_seconds: float | None = None
    last_size_bytes: int | None = None
    last_completed_at: float | None = None


@dataclass
class _Pending:
    checkpoint_id: int
    kind: str
    started: float
    waiting: set[int]
    #: Tasks that acknowledged it (with their state at its barrier, not their final one).
    acknowledged: set[int] = field(default_factory=set)
    states: dict[str, dict[int, Any]] = field(default_factory=dict)
    writes: list[Writes] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


class CheckpointCoordinator:
    def __init__(
        self,
        store: LmdbStore,
        tasks: list[_Task],
        *,
        interval: float | None,
        timeout: float = 600.0,
        min_pause: float = 0.0,
        retained: int = 3,
        tolerable_failures: int | None = None,
        last_id: int = 0,
        statistics: CheckpointStatistics | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.interval = interval
        self.timeout = timeout
        self.min_pause = min_pause
        self.retained = retained
        self.tolerable_failures = tolerable_failures
        self.last_id = last_id
        #: Counts and the last completed checkpoint's duration and size, for metrics.
        self.statistics = statistics if statistics is not None else CheckpointStatistics()
        self.pending: _Pending | None = None
        self._finished: dict[int, tuple[dict[str, Any], Writes]] = {}
        self._failures = 0
        self._last_end = time.monotonic()
        self._one_at_a_time = anyio.Lock()
        #: Every task reported its final state: time for the final checkpoint.
        self.all_finished = anyio.Event()

    # -- triggering ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Trigger periodic checkpoints until cancelled."""
        assert self.interval is not None
        while True:
            await anyio.sleep(max(self.interval, self._last_end + self.min_pause - time.monotonic()))
            if self.pending is None:
                await self.checkpoint()

    async def checkpoint(self, kind: str = "checkpoint", *, stop: bool = False) -> CheckpointMetadata | None:
        """Take one checkpoint, or savepoint; ``None`` if it failed. With ``stop``, sources
        read nothing after its barrier (stop with a savepoint). One runs at a time."""
        async with self._one_at_a_time:
            self.last_id += 1
            running = {id(task) for task in self.tasks if id(task) not in self._finished}
            pending = self.pending = _Pending(self.last_id, kind, time.monotonic(), running)
            try:
                for task in self.tasks:
                    if id(task) in running and task.is_source:
                        task.trigger(pending.checkpoint_id, stop=stop)
                if not running:
                    pending.done.set()
                with anyio.move_on_after(self.timeout):
                    await pending.done.wait()
            finally:
                self.pending = None  # also when cancelled: a later checkpoint starts afresh
                self._last_end = time.monotonic()
            if pending.waiting:
                self._failed(pending, f"timed out after {self.timeout} s waiting for {len(pending.waiting)} tasks")
                return None
            return await self._complete(pending)

    def _failed(self, pending: _Pending, why: str) -> None:
        self._failures += 1
        self.statistics.failed += 1
        self.statistics.consecutive_failures += 1
        log.warning("checkpoint failed", checkpoint=pending.checkpoint_id, reason=why)
        if self.tolerable_failures is not None and self._failures > self.tolerable_failures:
            raise StateError(f"checkpoint {pending.checkpoint_id} failed ({why}), and {self._failures} checkpoints "
                             f"failed in a row (tolerable_checkpoint_failures={self.tolerable_failures})")

    # -- acknowledgements ---------------------------------------------------------------------

    def acknowledge(self, task: _Task, checkpoint_id: int, states: dict[str, Any], writes: Writes) -> None:
        pending = self.pending
        if pending is None or pending.checkpoint_id != checkpoint_id or id(task) not in pending.waiting:
            return  # an abandoned checkpoint: its changes stay pending in the backend
        self._add(pending, task, states, writes)
        pending.acknowledged.add(id(task))
        pending.waiting.discard(id(task))
        if not pending.waiting:
            pending.done.set()

    def task_finished(self, task: _Task, states: dict[str, Any], writes: Writes) -> None:
        """A task ended: its final state stands for it in every checkpoint it did not
        acknowledge (one that acknowledged a checkpoint keeps its state at that barrier
        there: the other tasks' states are from that barrier too)."""
        self._finished[id(task)] = (states, writes)
        if len(self._finished) == len(self.tasks):
            self.all_finished.set()
        pending = self.pending
        if pending is not None and id(task) in pending.waiting:
            pending.waiting.discard(id(task))
            if not pending.waiting:
                pending.done.set()

    def _add(self, pending: _Pending, task: _Task, states: dict[str, Any], writes: Writes) -> None:
        index = task.env.subtask_index
        for operator, state in states.items():
            pending.states.setdefault(operator, {})[index] = state
        pending.writes.append(writes)

    # -- completion ---------------------------------------------------------------------------

    async def _complete(self, pending: _Pending) -> CheckpointMetadata:
        holding_final = [task for task in self.tasks
                         if id(task) in self._finished and id(task) not in pending.acknowledged]
        for task in holding_final:
            self._add(pending, task, *self._finished[id(task)])
        operators = {
            name: [by_index[i] for i in sorted(by_index)] for name, by_index in pending.states.items()
        }
        metadata = CheckpointMetadata(pending.checkpoint_id, pending.kind, now_ms(), operators=operators,
                                      max_parallelism=self.tasks[0].env.max_parallelism if self.tasks else 0)
        writes = [write for part in pending.writes for write in part]
        keep = set().union(*(backend.spilled_keys() for task in self.tasks
                             if isinstance(backend := task.env.state_backend, LmdbBackend)))
        metadata.duration_ms = int((time.monotonic() - pending.started) * 1000)
        metadata.size_bytes = sum(len(k) + len(v or b"") for k, v in writes)
        self.store.commit(writes, {b"checkpoint": metadata.encode()}, keep)
        # The stored metadata could not count its own commit; the log and the record do.
        metadata.duration_ms = int((time.monotonic() - pending.started) * 1000)
        for task in self.tasks:
            task.env.state_backend.confirm(metadata.checkpoint_id)
        for task in holding_final:  # committed: later checkpoints keep just the states
            self._finished[id(task)] = (self._finished[id(task)][0], [])
            task.env.final_state_checkpointed = True
        self._failures = 0
        statistics = self.statistics
        statistics.completed += 1
        statistics.consecutive_failures = 0
        statistics.last_id = metadata.checkpoint_id
        statistics.last_duration_seconds = time.monotonic() - pending.started
        statistics.last_size_bytes = metadata.size_bytes
        statistics.last_completed_at = time.time()
        self._write_record(metadata)
        log.info("checkpoint complete", checkpoint=metadata.checkpoint_id, kind=metadata.kind,
                 ms=metadata.duration_ms, bytes=metadata.size_bytes)
        for task in self.tasks:
            for operator in task.operators:
                await operator.notify_checkpoint_complete(metadata.checkpoint_id)
            await task.checkpoint_complete(metadata.checkpoint_id)
        return metadata

    def _write_record(self, metadata: CheckpointMetadata) -> None:
        """``checkpoints/chk-<id>.json`` beside the store; the last ``retained`` are kept."""
        folder = Path(self.store.path) / "checkpoints"
        folder.mkdir(exist_ok=True)
        (folder / f"chk-{metadata.checkpoint_id}.json").write_bytes(metadata.encode())
        records = sorted(folder.glob("chk-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        for old in records[:-self.retained]:
            old.unlink(missing_ok=True)
