"""The :class:`Job`: one run of a physical plan.

The job builds channels, operators and tasks, and supervises them: every subtask is one
async task in a single anyio task group. The first failure is kept, every other task is
cancelled (their operators and connectors still close), and the failure is raised from
:meth:`Job.run` as it was, with its original traceback. The job is where whatever
concerns the run as a whole lives: the stop request, and the checkpoint coordinator.
"""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import structlog
from structlog.contextvars import bound_contextvars

from aioflow._core.checkpoint.coordinator import CheckpointCoordinator, CheckpointStatistics
from aioflow._core.checkpoint.manifest import Manifest
from aioflow._core.checkpoint.restore import OpenedState, open_state
from aioflow._core.checkpoint.storage import CheckpointStorage, storage_at
from aioflow._core.errors import IncompatibleStateError, OperatorError, RefusedError, StateError
from aioflow._core.graph.logical import Node
from aioflow._core.graph.plan import Plan, PlannedEdge, PlannedTask
from aioflow._core.runtime.calls import cancelled_by_runtime
from aioflow._core.runtime.channel import Channel, InputGate
from aioflow._core.runtime.keygroups import key_group_range
from aioflow._core.runtime.operator import CountingOutput, FanOut, Operator, Output
from aioflow._core.runtime.partitioning import FORWARD
from aioflow._core.runtime.restart import NoRestart, RestartStrategy, repeats_on_restart
from aioflow._core.runtime.task import NetworkOutput, SourceTask, StreamTask, SubtaskEnvironment
from aioflow._core.runtime.writer import RecordWriter
from aioflow._core.state.backend import DEFAULT_CACHE_SIZE, KeyedStateBackend
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.lmdb import LmdbStore, StateDirLock
from aioflow._core.state.memory import MemoryBackend
from aioflow._core.time.watermarks import PERIODIC_WATERMARK_INTERVAL, SourceWatermarks

__all__ = ["Job", "JobStatus", "RuntimeConfig"]

log = structlog.get_logger("aioflow.runtime")


@dataclass(frozen=True)
class RuntimeConfig:
    batch_size: int
    linger: float
    channel_capacity: int
    max_parallelism: int
    watermark_interval: float | None  # None: after every batch for replayable sources, else periodic
    state_dir: str | None = None
    #: Where checkpoints go: a path or file:// URL (None: state_dir/checkpoints).
    checkpoint_storage: str | None = None
    state_backend: str = "memory"  # "memory" or "lmdb"
    state_cache_size: int = DEFAULT_CACHE_SIZE
    max_concurrency: int = 100
    checkpoint_interval: float | None = None
    checkpoint_mode: str = "exactly_once"
    checkpoint_timeout: float = 600.0
    min_pause_between_checkpoints: float = 0.0
    retained_checkpoints: int = 3
    tolerable_checkpoint_failures: int | None = None
    allow_non_restored_state: bool = False
    from_savepoint: str | None = None
    drain_on_stop: bool = False  # with checkpoints, a stop takes a savepoint unless this is set
    restart_strategy: RestartStrategy = NoRestart()


Subtask = SourceTask | StreamTask

#: Where a job is: ``starting`` (opening state, until its tasks run), ``running``,
#: ``restarting`` (after a failure, until the tasks of the next attempt run),
#: ``stopping`` (a stop was requested), then ``finished``, ``failed`` or ``cancelled``.
JobStatus = Literal["starting", "running", "restarting", "stopping", "finished", "failed", "cancelled"]


def _channels(edge: PlannedEdge, capacity: int) -> list[list[Channel | None]]:
    """``[sender][receiver]`` channels of one edge (only the diagonal for forward edges)."""
    senders, receivers = edge.source_task.parallelism, edge.target_task.parallelism
    name = f"{edge.source_node.name}->{edge.target_node.name}"
    matrix: list[list[Channel | None]] = [[None] * receivers for _ in range(senders)]
    for i in range(senders):
        for j in range(receivers):
            if edge.partitioning != FORWARD or i == j:
                matrix[i][j] = Channel(capacity, f"{name}[{i}->{j}]")
    return matrix


def _combine(outputs: list[Output]) -> Output | None:
    if not outputs:
        return None
    return outputs[0] if len(outputs) == 1 else FanOut(outputs)


def _wire(task: PlannedTask, operators: dict[int, Operator], writers: dict[int, RecordWriter]) -> None:
    """Connect each operator to the chained operators and network writers it feeds,
    through :class:`CountingOutput` s that count records in and out per batch."""
    for node in task.nodes:
        targets: dict[str | None, list[Output]] = {}
        for upstream, downstream, edge in task.chained:
            if upstream is node:
                receiver = operators[downstream.id]
                targets.setdefault(edge.side_tag, []).append(CountingOutput(receiver, receiver=receiver))
        network: dict[str | None, list[RecordWriter]] = {}
        for planned in task.outputs:
            if planned.source_node is node:
                network.setdefault(planned.edge.side_tag, []).append(writers[id(planned)])
        for tag, tag_writers in network.items():
            targets.setdefault(tag, []).append(NetworkOutput(tag_writers))
        operator = operators[node.id]
        for tag, outputs in targets.items():
            combined = _combine(outputs)
            assert combined is not None
            if isinstance(combined, CountingOutput):  # one chained operator: one wrapper counts both
                combined.sender = operator
            else:
                combined = CountingOutput(combined, sender=operator)
            if tag is None:
                operator.out = combined
            else:
                operator.side_outputs[tag] = combined


def _build(plan: Plan, config: RuntimeConfig, job: Job, state: OpenedState | None) -> list[Subtask]:
    restored = state.manifest.operators if state is not None and state.manifest is not None else None
    matrices = {id(edge): _channels(edge, config.channel_capacity) for edge in plan.edges}
    subtasks: list[Subtask] = []
    for task in plan.tasks:
        for index in range(task.parallelism):
            env = SubtaskEnvironment(
                task_name=f"task {task.index} ({task.head.name})",
                subtask_index=index,
                parallelism=task.parallelism,
                max_parallelism=config.max_parallelism,
                batch_size=config.batch_size,
                max_concurrency=config.max_concurrency,
                state_backend=_backend(state, config, key_group_range(index, config.max_parallelism, task.parallelism)),
                request_stop=job.request_stop,
                restored=restored,
                exactly_once=config.checkpoint_mode == "exactly_once",
            )
            operators = {node.id: node.make_operator() for node in task.nodes}
            writers: dict[int, RecordWriter] = {}
            for edge in task.outputs:
                row = matrices[id(edge)][index]
                writers[id(edge)] = RecordWriter(
                    [channel for channel in row if channel is not None],
                    edge.partitioning,
                    batch_size=config.batch_size,
                    linger=config.linger,
                    key_selector=edge.edge.key_selector,
                    max_parallelism=config.max_parallelism,
                    subtask_index=index,
                    target=edge.target_node.name,
                )
            _wire(task, operators, writers)
            chain = [operators[node.id] for node in task.nodes]
            head: Node = task.head
            if head.source is not None:
                source = head.source
                watermarks = None
                if head.watermarks is not None or head.timestamps is not None or source.timestamped:
                    interval = config.watermark_interval
                    if interval is None:
                        interval = 0.0 if source.replayable else PERIODIC_WATERMARK_INTERVAL
                    watermarks = SourceWatermarks(head.name, head.timestamps, head.watermarks, interval)
                tag = getattr(source, "dead_letter_tag", None)
                reader = source.create_reader(index, task.parallelism)
                reader.stateful_job = plan.stateful
                reader.worker_id = job.worker_id
                subtasks.append(
                    SourceTask(
                        env,
                        chain,
                        list(writers.values()),
                        source,
                        reader,
                        watermarks,
                        tag.name if tag is not None else None,
                        job.stop_requested,
                    )
                )
            else:
                channels: list[Channel] = []
                input_numbers: list[int] = []
                for edge in task.inputs:
                    for row in matrices[id(edge)]:
                        channel = row[index]
                        if channel is not None:
                            channels.append(channel)
                            input_numbers.append(edge.edge.input_number)
                subtasks.append(StreamTask(env, chain, list(writers.values()), InputGate(channels), input_numbers))
    return subtasks


def _trace_none(failure: OperatorError, plan: Plan, subtasks: list[Subtask]) -> None:
    """An operator failed on a ``None`` record: name the operator that emitted it (a map
    whose function ends without ``return``, usually) in the error, found by walking the
    graph up from the failing operator past those that pass records on unchanged
    (filters, unions, partitionings). Done once, after the failure: nothing on the
    per-record path looks for ``None``, which is a record like any other (a Kafka tombstone)."""
    nodes = {node.name: node for task in plan.tasks for node in task.nodes}
    operators = {operator.name: operator for subtask in subtasks for operator in subtask.operators}
    failed = nodes.get(failure.operator)
    if failed is None:
        return
    origins: list[str] = []
    pending, seen = list(reversed(failed.inputs)), set()
    while pending:
        edge = pending.pop()
        node = edge.source
        if node.id in seen:
            continue
        seen.add(node.id)
        operator = operators.get(node.name)
        if node.source is not None:
            origin: str | None = f"source {node.name!r}, which read it"
        elif edge.side_tag is not None:
            origin = f"operator {node.name!r} to its side output {edge.side_tag!r}"
        else:
            origin = operator.emitted_none() if operator is not None else f"operator {node.name!r}"
        if origin is None:
            pending.extend(reversed(node.inputs))
        else:
            origins.append(origin)
    if origins:
        failure.trace_record(" or ".join(origins))


def _backend(state: OpenedState | None, config: RuntimeConfig, key_groups: range) -> KeyedStateBackend:
    """A subtask's keyed-state backend: LMDB over the worker's store, or memory."""
    if state is None:
        return MemoryBackend(key_groups=key_groups, max_parallelism=config.max_parallelism)
    return LmdbBackend(
        state.store,
        key_groups=key_groups,
        max_parallelism=config.max_parallelism,
        cache_size=config.state_cache_size,
        checkpointed=config.checkpoint_interval is not None,
        completed=state.manifest.checkpoint_id if state.manifest is not None else 0,
    )


class Job:
    """One run of ``plan``: ``await job.run()`` until every task finished; ``job.request_stop()``
    (a stop signal, a sink whose output closed) makes the sources stop."""

    def __init__(self, plan: Plan, config: RuntimeConfig) -> None:
        self.plan = plan
        self.config = config
        self._stop_requested = False
        self._coordinator: CheckpointCoordinator | None = None
        self._savepoint_requested: anyio.Event | None = None
        self._periodic = anyio.CancelScope()  # checkpoints and the savepoint of a stop: only while
        self._savepoint = anyio.CancelScope()  # any task runs
        self._savepoint_wanted = False
        self._lock: StateDirLock | None = None  # the state directory's, while the job runs
        self._stopping: anyio.Event | None = None  # set by a stop request
        #: How often the job restarted after a failure.
        self.restarts = 0
        #: Names this worker to brokers, the same across restarts: its host and state_dir.
        self.worker_id = _worker_id(config.state_dir)
        #: The subtasks of the current attempt (empty until the first one is built): what
        #: metrics read. Each restart replaces them, and their counters start from 0.
        self.subtasks: list[Subtask] = []
        #: Checkpoints of every attempt so far (see :class:`CheckpointStatistics`).
        self.checkpoint_statistics = CheckpointStatistics()
        self._phase: JobStatus = "starting"
        #: The savepoint a stop took (its directory), once the job stopped with one.
        self.savepoint: Path | None = None

    async def _checkpoint_periodically(
        self, coordinator: CheckpointCoordinator, fail: Callable[[BaseException], None]
    ) -> None:
        """Take periodic checkpoints while tasks run; a checkpoint failure beyond the
        tolerated ones fails the job."""
        try:
            with self._periodic:
                await coordinator.run()
        except Exception as exc:
            fail(exc)

    async def _final_checkpoint(
        self, coordinator: CheckpointCoordinator, fail: Callable[[BaseException], None]
    ) -> None:
        """Once every task reported its final state: the checkpoint that holds it, which also
        commits what sinks pre-committed at the end of input (they wait for it to close)."""
        await coordinator.all_finished.wait()
        self._periodic.cancel()
        try:
            if await coordinator.checkpoint("final") is None:
                raise StateError(
                    "the final checkpoint did not complete (see the log): what the end of input "
                    "wrote is not committed; a restart resumes from the last completed checkpoint"
                )
        except Exception as exc:
            fail(exc)

    async def _stop_with_savepoint(
        self, coordinator: CheckpointCoordinator, fail: Callable[[BaseException], None], job: anyio.CancelScope
    ) -> None:
        """On a stop request: sources stop after a savepoint's barrier; once it is committed
        (sinks included) and copied to ``state_dir/savepoints``, cancel the tasks, which
        are all waiting. Windows and timers are not fired: they live on in the savepoint."""
        assert self._savepoint_requested is not None
        with self._savepoint:
            await self._savepoint_requested.wait()
            self._periodic.cancel()
            log.info("stopping with a savepoint", app=self.plan.app_name)
            try:
                metadata = await coordinator.checkpoint("savepoint", stop=True)
                if metadata is None:
                    raise StateError(
                        "stop with a savepoint failed: the savepoint did not complete (see the log); "
                        "a restart resumes from the last completed checkpoint"
                    )
                path = Path(coordinator.store.path) / "savepoints" / f"savepoint-{metadata.checkpoint_id}"
            except Exception as exc:
                fail(exc)
                return
            self.savepoint = path
            log.info("savepoint taken", checkpoint=metadata.checkpoint_id, path=str(path))
            job.cancel()

    def request_stop(self) -> None:
        """Ask the job to stop. With checkpoints (unless ``drain_on_stop``) it stops with a
        savepoint; otherwise sources stop, what is in flight drains (windows fire as at the
        end of input) and the job finishes."""
        config = self.config
        if config.checkpoint_interval is not None and config.state_dir is not None and not config.drain_on_stop:
            self._savepoint_wanted = True
            if self._savepoint_requested is not None:
                self._savepoint_requested.set()
        else:
            self._stop_requested = True
        if self._stopping is not None:
            self._stopping.set()

    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def status(self) -> JobStatus:
        """Where the job is (see :data:`JobStatus`), for health checks."""
        if self._phase in ("starting", "running", "restarting") and (self._stop_requested or self._savepoint_wanted):
            return "stopping"
        return self._phase

    @property
    def coordinator(self) -> CheckpointCoordinator | None:
        """The checkpoint coordinator of the current attempt (``None`` without checkpoints)."""
        return self._coordinator

    def _open_state(self, *, install_savepoint: bool) -> OpenedState | None:
        """The worker's working copy and checkpoint storage, and the checkpoint this run
        resumes from (see :mod:`aioflow._core.checkpoint.restore`): all checked before anything
        is written, so a refused worker changes nothing."""
        config = self.config
        if config.state_backend != "lmdb" or config.state_dir is None:
            if config.from_savepoint is not None:
                raise RefusedError("restoring from a savepoint needs a state_dir to restore into")
            return None
        if self._lock is None:  # held until the job ends, restarts included
            self._lock = StateDirLock(config.state_dir)  # before anything reads what another worker uses
        storage = storage_at(config.checkpoint_storage or Path(config.state_dir) / "checkpoints")
        savepoint = Path(config.from_savepoint) if config.from_savepoint is not None and install_savepoint else None
        if config.checkpoint_interval is None:
            self._refuse_without_checkpoints(storage, savepoint)
        state = open_state(
            Path(config.state_dir),
            self._lock,
            storage,
            self.plan.app_name,
            config.max_parallelism,
            savepoint,
            self._check_restorable,
        )
        try:
            if state.manifest is not None:
                self._drop_removed_operators(state)
        except BaseException:
            state.store.close()
            raise
        if state.manifest is not None and state.manifest.kind == "final":
            log.warning(
                "the state directory holds the final checkpoint of a job that ended (its input ended or a "
                "stop drained it): sources resume where they ended, and its windows have fired: records "
                "older than its watermark are late",
                state_dir=config.state_dir,
            )
        return state

    def _refuse_without_checkpoints(self, storage: CheckpointStorage, savepoint: Path | None) -> None:
        """A run without checkpoints writes its working copy with nothing to roll back to:
        on the state of a job that has checkpoints, the next run with checkpoints would
        resume a working copy that no longer matches its checkpoint (and replay outputs)."""
        where = f"state directory {self.config.state_dir}"
        if savepoint is not None:
            raise IncompatibleStateError(
                f"{where}: restoring {savepoint} needs checkpoints (checkpoint_interval, --checkpoint-interval): "
                "without them the restored state would change with no checkpoint to come back to"
            )
        job = storage.job()
        if job is not None:
            newest = storage.checkpoints()
            held = f"checkpoint {newest[-1]}" if newest else "the checkpoints"
            raise IncompatibleStateError(
                f"{where} holds {held} of job {job['job_id']} (app {job.get('app')!r}, checkpoint storage "
                f"{storage.location}), but this run has no checkpoint_interval: it would change that state with no "
                "checkpoint to come back to, and the next run with checkpoints would resume a working copy that no "
                "longer matches its checkpoint. Run with checkpoint_interval (--checkpoint-interval) to resume the "
                "job, or give this run another state_dir (to start afresh, delete the state directory and its "
                "checkpoint storage together)"
            )

    def _removed_operators(self, manifest: Manifest) -> list[str]:
        """Operators with state in ``manifest`` that the job no longer has."""
        names = {node.name for task in self.plan.tasks for node in task.nodes}
        stored = {name.split("\x1f", 1)[0] for name, table in manifest.tables.items() if table["kind"] != "forgotten"}
        return sorted(({name.split("#")[0] for name in manifest.operators} | stored) - names - {""})

    def _check_restorable(self, manifest: Manifest, store: LmdbStore | None) -> None:
        """Refuse a checkpoint this job cannot take as it is (before anything is written)."""
        config = self.config
        where = f"state directory {config.state_dir}: {manifest.kind} {manifest.checkpoint_id}"
        if manifest.max_parallelism != config.max_parallelism:
            raise IncompatibleStateError(
                f"{where} was taken with max_parallelism {manifest.max_parallelism} and the app now has "
                f"{config.max_parallelism}: keyed state is split into max_parallelism key groups, which cannot "
                "change across a restore"
            )
        gone = self._removed_operators(manifest)
        if gone and not config.allow_non_restored_state:
            raise IncompatibleStateError(
                f"{where} has state of operators {gone} that the job no longer has; restore anyway with "
                "--allow-non-restored-state (that state is then dropped)"
            )
        for task in self.plan.tasks:
            for node in task.nodes:
                node.make_operator().check_restore(manifest.tables)

    def _drop_removed_operators(self, state: OpenedState) -> None:
        """With ``--allow-non-restored-state``: drop the state of operators the job no longer has."""
        manifest = state.manifest
        assert manifest is not None
        gone = self._removed_operators(manifest)
        if not gone:
            return
        manifest.operators = {
            name: states for name, states in manifest.operators.items() if name.split("#")[0] not in gone
        }
        state.store.forget_operators(set(gone), self.config.max_parallelism)
        log.warning(
            "dropped the state of operators the job no longer has", operators=gone, state_dir=self.config.state_dir
        )

    async def run(self) -> None:
        """Run until every task finished; raise the first failure, once the restart
        strategy gives up (each restart resumes from the last completed checkpoint)."""
        try:
            with bound_contextvars(app=self.plan.app_name):  # every log line of the job names its app
                await self._run_and_restart()
        except anyio.get_cancelled_exc_class():
            self._phase = "cancelled"
            raise
        except BaseException:
            self._phase = "failed"
            raise
        else:
            self._phase = "finished"
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    async def _run_and_restart(self) -> None:
        failures: list[float] = []
        strategy = self.config.restart_strategy
        self._stopping = anyio.Event()
        while True:
            started = time.monotonic()
            state = self._open_state(install_savepoint=self.restarts == 0)
            try:
                await self._run(state)
                return
            except Exception as exc:
                coordinator = self._coordinator
                if coordinator is None or self._stop_requested or self._savepoint_wanted:
                    raise
                if repeats_on_restart(exc):
                    log.warning(
                        "not restarting: a restart would fail the same way",
                        app=self.plan.app_name,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    raise
                now = time.monotonic()
                if strategy.reset_after is not None and now - started >= strategy.reset_after:
                    failures.clear()  # it ran a good while: this failure is not the last one repeating
                failures.append(now)
                delay = strategy.backoff(failures)
                if delay is None:
                    log.error(
                        "restarts exhausted", app=self.plan.app_name, failures=len(failures), strategy=repr(strategy)
                    )
                    raise
                self.restarts += 1
                self._phase = "restarting"
                log.warning(
                    "job failed: restarting from the last checkpoint",
                    app=self.plan.app_name,
                    error=f"{type(exc).__name__}: {exc}",
                    restart=self.restarts,
                    delay=delay,
                )
            finally:
                if state is not None:
                    state.store.close()
            self._reset()
            with anyio.move_on_after(delay):
                await self._stopping.wait()
            if self._stopping.is_set():
                log.warning(
                    "stopped while waiting to restart: a restart resumes from the last checkpoint",
                    app=self.plan.app_name,
                )
                return

    def _reset(self) -> None:
        """Fresh per-run state for a restart."""
        self._coordinator = None
        self._savepoint_requested = None
        self._periodic = anyio.CancelScope()
        self._savepoint = anyio.CancelScope()

    async def _run(self, state: OpenedState | None) -> None:
        plan, config = self.plan, self.config
        subtasks = self.subtasks = _build(plan, config, self, state)
        coordinator = None
        if state is not None and config.checkpoint_interval is not None:
            coordinator = self._coordinator = CheckpointCoordinator(
                state.store,
                state.storage,
                list(subtasks),
                identity=state.identity,
                max_parallelism=config.max_parallelism,
                last=state.manifest,
                interval=config.checkpoint_interval,
                timeout=config.checkpoint_timeout,
                min_pause=config.min_pause_between_checkpoints,
                retained=config.retained_checkpoints,
                tolerable_failures=config.tolerable_checkpoint_failures,
                statistics=self.checkpoint_statistics,
            )
            self._savepoint_requested = anyio.Event()
            if self._savepoint_wanted:  # a stop came before the job was up
                self._savepoint_requested.set()
            for subtask in subtasks:
                subtask.env.coordinator = coordinator
        failure: BaseException | None = None
        started = time.perf_counter()
        log.info("job started", app=plan.app_name, tasks=len(plan.tasks), subtasks=len(subtasks))

        completed = 0
        try:
            async with anyio.create_task_group() as group:

                async def supervise(subtask: Subtask) -> None:
                    try:
                        await subtask.run()
                    except anyio.get_cancelled_exc_class():
                        if cancelled_by_runtime():
                            raise
                        fail(RuntimeError(f"{subtask.name} was cancelled although nothing cancelled the job"))
                    except BaseException as exc:
                        # KeyboardInterrupt and SystemExit from user code end the job too, and are
                        # raised as they are, not in an exception group, at every parallelism.
                        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                            exc = exc.exceptions[0]  # a reader's background task failed: show its error
                        fail(exc)
                    else:
                        nonlocal completed
                        completed += 1
                        if completed == len(subtasks):
                            self._periodic.cancel()  # nothing left to checkpoint
                            self._savepoint.cancel()

                def fail(exc: BaseException) -> None:
                    nonlocal failure
                    if failure is None:
                        failure = exc
                    group.cancel_scope.cancel()

                for subtask in subtasks:
                    group.start_soon(supervise, subtask, name=subtask.name)
                self._phase = "running"
                if coordinator is not None:
                    group.start_soon(self._checkpoint_periodically, coordinator, fail)
                    group.start_soon(self._stop_with_savepoint, coordinator, fail, group.cancel_scope)
                    group.start_soon(self._final_checkpoint, coordinator, fail)
        except anyio.get_cancelled_exc_class():
            # Cancelled (a second stop signal) after every task had finished, or after the
            # savepoint of a stop: nothing was lost.
            if failure is not None or (completed < len(subtasks) and self.savepoint is None):
                raise

        if failure is not None:
            if isinstance(failure, OperatorError) and failure.has_record and failure.record is None:
                _trace_none(failure, plan, subtasks)
            raise failure
        if self.savepoint is not None:
            log.info(
                "job stopped with a savepoint",
                app=plan.app_name,
                savepoint=str(self.savepoint),
                seconds=round(time.perf_counter() - started, 3),
            )
            return
        log.info("job finished", app=plan.app_name, seconds=round(time.perf_counter() - started, 3))


def _worker_id(state_dir: str | None) -> str:
    """A hash of the host and the state directory (one worker per state directory), so that
    a restarted worker knows the broker's traces of its previous run (consumer group
    members not yet expired) for its own; random without a state directory."""
    if state_dir is None:
        return uuid.uuid4().hex[:12]
    return hashlib.sha256(f"{socket.gethostname()}:{Path(state_dir).resolve()}".encode()).hexdigest()[:12]
