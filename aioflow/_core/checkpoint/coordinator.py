"""The checkpoint coordinator: triggers checkpoints, collects the tasks' snapshots, commits.

Every ``interval`` seconds (and at least ``min_pause`` after the previous one ended) it
asks every running source task to inject a barrier. Each task, when the barrier reached
it on all inputs, writes what its keyed state changed since the last completed
checkpoint to checkpoint storage (:meth:`CheckpointCoordinator.persist`: one file, a
section per key group) and acknowledges with its operators' states. When every task has
acknowledged (a finished task counts with its final snapshot), the coordinator writes the
manifest, which completes the checkpoint, records it in the working copy (dropping the
undo it no longer needs), and tells the operators, so sinks commit their pre-committed
transactions. A checkpoint that does not complete within ``timeout`` is abandoned and
logged; its changes go into the next one. ``tolerable_failures`` consecutive failures are
allowed before the job fails (``None``: never fail the job for a checkpoint).

A key group's state in storage is a chain: a full copy, or nothing, then a delta per
checkpoint that changed it. When a chain grows long, or its deltas outweigh its full
copy, the next checkpoints write that key group whole again (a few key groups at a time,
so no checkpoint pays for all of them), and files no retained checkpoint uses go.

A savepoint also writes every key group whole into ``state_dir/savepoints/savepoint-<id>``
with a manifest of its own: a folder that restores anywhere (``--from-savepoint``).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from aioflow._core.checkpoint.manifest import Manifest, Section
from aioflow._core.checkpoint.storage import MANIFEST, SectionWriter
from aioflow._core.errors import StateError
from aioflow._core.state.integrity import private_dir, private_file
from aioflow._core.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow._core.checkpoint.storage import LocalCheckpointStorage
    from aioflow._core.runtime.task import _Task
    from aioflow._core.state.lmdb import LmdbStore

__all__ = ["CheckpointCoordinator", "CheckpointStatistics", "TaskSnapshot"]

#: A key group is written whole again once its chain has this many sections...
MAX_CHAIN = 16
#: ... or its deltas hold more bytes than its full copy (and at least this many).
MIN_REBASE_BYTES = 1 << 20
#: Key groups written whole again per checkpoint, at most.
REBASES_PER_CHECKPOINT = 8

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
    #: The last completed checkpoint: its id, seconds from trigger to commit (measured in
    #: whole milliseconds), bytes of state changes it wrote (0 when no state changed since
    #: the checkpoint before), bytes of state a restore from it reads (every section it
    #: refers to, written by it or earlier), and when it completed (Unix time, seconds, to
    #: the millisecond).
    last_id: int | None = None
    last_duration_seconds: float | None = None
    last_size_bytes: int | None = None
    last_full_size_bytes: int | None = None
    last_completed_at: float | None = None


@dataclass
class TaskSnapshot:
    """What one task's barrier wrote to checkpoint storage: its key groups' sections and
    their bytes, and, for a savepoint, the full sections in the savepoint's folder."""

    sections: dict[int, list[Section]] = field(default_factory=dict)
    size: int = 0
    #: Key groups written whole that turned out to hold no state of these tables.
    emptied: set[int] = field(default_factory=set)
    tables: tuple[int, ...] = ()
    savepoint: dict[int, list[Section]] = field(default_factory=dict)

    def files(self) -> set[str]:
        return {Path(section.file).name for chain in self.sections.values() for section in chain}


@dataclass
class _Pending:
    checkpoint_id: int
    kind: str
    started: float
    waiting: set[int]
    #: Tasks that acknowledged it (with their state at its barrier, not their final one).
    acknowledged: set[int] = field(default_factory=set)
    states: dict[str, dict[int, Any]] = field(default_factory=dict)
    snapshots: list[TaskSnapshot] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    #: A savepoint's folder.
    folder: Path | None = None


class CheckpointCoordinator:
    """See the module docstring. ``last`` is the checkpoint the job resumed (``None``: a
    new job); ``identity`` the job's app name and id."""

    def __init__(
        self,
        store: LmdbStore,
        storage: LocalCheckpointStorage,
        tasks: list[_Task],
        *,
        identity: dict[str, str],
        max_parallelism: int,
        last: Manifest | None = None,
        interval: float | None,
        timeout: float = 600.0,
        min_pause: float = 0.0,
        retained: int = 3,
        tolerable_failures: int | None = None,
        statistics: CheckpointStatistics | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.identity = identity
        self.max_parallelism = max_parallelism
        self.last = last
        last_id = last.checkpoint_id if last is not None else 0
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
        self._finished: dict[int, tuple[dict[str, Any], TaskSnapshot]] = {}
        #: Key groups whose next snapshot is written whole (their chains grew long).
        self._rebase: set[int] = set()
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

    async def checkpoint(self, kind: str = "checkpoint", *, stop: bool = False) -> Manifest | None:
        """Take one checkpoint, or savepoint; ``None`` if it failed. With ``stop``, sources
        read nothing after its barrier (stop with a savepoint). One runs at a time. A
        savepoint that does not complete leaves no folder behind."""
        async with self._one_at_a_time:
            self.last_id += 1
            running = {id(task) for task in self.tasks if id(task) not in self._finished}
            pending = self.pending = _Pending(self.last_id, kind, time.monotonic(), running)
            try:
                if kind == "savepoint":
                    pending.folder = Path(self.store.path) / "savepoints" / f"savepoint-{self.last_id}"
                    private_dir(pending.folder)
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
                    _discard(pending)
                    return None
                return await self._complete(pending)
            except BaseException:
                _discard(pending)
                raise

    def _failed(self, pending: _Pending, why: str) -> None:
        self._failures += 1
        self.statistics.failed += 1
        self.statistics.consecutive_failures += 1
        log.warning("checkpoint failed", checkpoint=pending.checkpoint_id, reason=why)
        if self.tolerable_failures is not None and self._failures > self.tolerable_failures:
            raise StateError(
                f"checkpoint {pending.checkpoint_id} failed ({why}), and {self._failures} checkpoints "
                f"failed in a row (tolerable_checkpoint_failures={self.tolerable_failures})"
            )

    # -- snapshots and acknowledgements ------------------------------------------------------

    def persist(self, task: _Task, checkpoint_id: int | None) -> TaskSnapshot:
        """At ``task``'s barrier of ``checkpoint_id`` (``None``: its final state): write what
        its keyed state changed since the last completed checkpoint to checkpoint storage,
        the key groups due for it whole, and for a savepoint everything into its folder."""
        backend = task.env.state_backend
        snapshot = TaskSnapshot()
        if not backend.durable:
            return snapshot
        if self.storage.job() != self.identity:
            self.storage.start_job(self.identity)
        changes = backend.snapshot(checkpoint_id if checkpoint_id is not None else self.last_id + 1)
        snapshot.tables = tables = backend.table_ids()
        rebase = self._rebase & backend.key_groups
        if rebase:
            changes = (change for change in changes if change[0] not in rebase)
        snapshot.sections, snapshot.size = self.storage.write(changes, full=False, tables=tables)
        if rebase:
            full, size = self.storage.write(
                (change for change in backend.contents() if change[0] in rebase), full=True, tables=tables
            )
            for group in rebase:
                if group in full:
                    snapshot.sections[group] = full[group]
                else:
                    snapshot.emptied.add(group)
            snapshot.size += size
        pending = self.pending
        if pending is not None and pending.folder is not None and pending.checkpoint_id == checkpoint_id:
            snapshot.savepoint = self._savepoint_copy(task, pending.folder)
        return snapshot

    def acknowledge(self, task: _Task, checkpoint_id: int, states: dict[str, Any], snapshot: TaskSnapshot) -> None:
        pending = self.pending
        if pending is None or pending.checkpoint_id != checkpoint_id or id(task) not in pending.waiting:
            return  # an abandoned checkpoint: its changes go into the next one
        self._add(pending, task, states, snapshot)
        pending.acknowledged.add(id(task))
        pending.waiting.discard(id(task))
        if not pending.waiting:
            pending.done.set()

    def task_finished(self, task: _Task, states: dict[str, Any], snapshot: TaskSnapshot) -> None:
        """A task ended: its final state stands for it in every checkpoint it did not
        acknowledge (one that acknowledged a checkpoint keeps its state at that barrier
        there: the other tasks' states are from that barrier too)."""
        self._finished[id(task)] = (states, snapshot)
        if len(self._finished) == len(self.tasks):
            self.all_finished.set()
        pending = self.pending
        if pending is not None and id(task) in pending.waiting:
            pending.waiting.discard(id(task))
            if not pending.waiting:
                pending.done.set()

    def _add(self, pending: _Pending, task: _Task, states: dict[str, Any], snapshot: TaskSnapshot) -> None:
        index = task.env.subtask_index
        for operator, state in states.items():
            pending.states.setdefault(operator, {})[index] = state
        pending.snapshots.append(snapshot)

    # -- completion ---------------------------------------------------------------------------

    async def _complete(self, pending: _Pending) -> Manifest:
        holding_final = [
            task for task in self.tasks if id(task) in self._finished and id(task) not in pending.acknowledged
        ]
        for task in holding_final:
            states, snapshot = self._finished[id(task)]
            if pending.folder is not None and not snapshot.savepoint:  # its state did not change since
                snapshot.savepoint = self._savepoint_copy(task, pending.folder)
            self._add(pending, task, states, snapshot)
        operators = {name: [by_index[i] for i in sorted(by_index)] for name, by_index in pending.states.items()}
        chains = {group: list(chain) for group, chain in self.last.key_groups.items()} if self.last else {}
        for snapshot in pending.snapshots:
            for group, sections in snapshot.sections.items():
                chain = chains.setdefault(group, [])
                for section in sections:
                    if section.full:  # the subtask's earlier sections of this key group are in it
                        chain[:] = [earlier for earlier in chain if not section.replaces(earlier)]
                    chain.append(section)
            for group in snapshot.emptied:
                chains[group] = [
                    earlier for earlier in chains.get(group, []) if not set(earlier.tables) <= set(snapshot.tables)
                ]
        tables = {
            name: {key: value for key, value in table.items() if key != "committed"}
            for name, table in self.store.tables().items()
        }
        manifest = Manifest(
            pending.checkpoint_id,
            pending.kind,
            now_ms(),
            self.identity["app"],
            self.identity["job_id"],
            self.max_parallelism,
            size_bytes=sum(snapshot.size for snapshot in pending.snapshots),
            operators=operators,
            tables=tables,
            key_groups={group: chain for group, chain in chains.items() if chain},
        )
        manifest.duration_ms = int((time.monotonic() - pending.started) * 1000)
        if self.storage.job() != self.identity:
            self.storage.start_job(self.identity)
        self.store.prepare(manifest.checkpoint_id)  # the working copy holds it, before storage says so
        self.storage.commit(manifest)  # the checkpoint is complete
        self.store.complete(manifest.checkpoint_id, self.identity, manifest.encode())
        self.last = manifest
        if pending.folder is not None:
            self._write_savepoint(pending, manifest)
        for task in self.tasks:
            task.env.state_backend.confirm(manifest.checkpoint_id)
        for task in holding_final:  # committed: later checkpoints keep just the states
            self._finished[id(task)] = (self._finished[id(task)][0], TaskSnapshot())
            task.env.final_state_checkpointed = True
        self._plan_rebases(manifest)
        self.storage.retain(
            self.retained, {name for _, snapshot in self._finished.values() for name in snapshot.files()}
        )
        self._failures = 0
        statistics = self.statistics
        statistics.completed += 1
        statistics.consecutive_failures = 0
        statistics.last_id = manifest.checkpoint_id
        duration_ms = round((time.monotonic() - pending.started) * 1000)
        statistics.last_duration_seconds = duration_ms / 1000  # 0.018, not 0.018451249999998254
        statistics.last_size_bytes = manifest.size_bytes
        statistics.last_full_size_bytes = sum(s.length for chain in manifest.key_groups.values() for s in chain)
        statistics.last_completed_at = round(time.time(), 3)
        log.info(
            "checkpoint complete",
            checkpoint=manifest.checkpoint_id,
            kind=manifest.kind,
            ms=duration_ms,
            bytes=manifest.size_bytes,
        )
        for task in self.tasks:
            for operator in task.operators:
                await operator.notify_checkpoint_complete(manifest.checkpoint_id)
            await task.checkpoint_complete(manifest.checkpoint_id)
        return manifest

    def _savepoint_copy(self, task: _Task, folder: Path) -> dict[int, list[Section]]:
        """Every key group of ``task``'s state, written whole into the savepoint's folder."""
        name = f"{uuid.uuid4().hex}.full"
        backend = task.env.state_backend
        return SectionWriter(folder / name, full=True, tables=backend.table_ids()).write(backend.contents(), name)

    def _write_savepoint(self, pending: _Pending, manifest: Manifest) -> None:
        """The savepoint's own manifest: the checkpoint's, with every key group's state in
        the savepoint's folder."""
        assert pending.folder is not None
        chains: dict[int, list[Section]] = {}
        for snapshot in pending.snapshots:
            for group, sections in snapshot.savepoint.items():
                chains.setdefault(group, []).extend(sections)
        savepoint = Manifest(
            manifest.checkpoint_id,
            "savepoint",
            manifest.time_ms,
            manifest.app,
            manifest.job_id,
            manifest.max_parallelism,
            manifest.duration_ms,
            sum(s.length for c in chains.values() for s in c),
            manifest.operators,
            manifest.tables,
            chains,
        )
        private_file(pending.folder / MANIFEST, savepoint.encode())

    def _plan_rebases(self, manifest: Manifest) -> None:
        """Pick the key groups the next checkpoints write whole: the longest chains, and
        those whose deltas outweigh their full copy."""
        self._rebase.clear()
        due = []
        for group, chain in manifest.key_groups.items():
            base = chain[0].length if chain[0].full else 0
            deltas = sum(section.length for section in chain) - base
            if len(chain) > MAX_CHAIN or (deltas > base and deltas >= MIN_REBASE_BYTES):
                due.append((len(chain), deltas, group))
        for _, _, group in sorted(due, reverse=True)[:REBASES_PER_CHECKPOINT]:
            self._rebase.add(group)


def _discard(pending: _Pending) -> None:
    """Remove the folder of a savepoint that did not complete (nothing refers to it)."""
    if pending.folder is not None and not (pending.folder / MANIFEST).exists():
        shutil.rmtree(pending.folder, ignore_errors=True)
