"""The :class:`Job`: one run of a physical plan.

The job builds channels, operators and tasks, and supervises them: every subtask is one
async task in a single anyio task group. The first failure is kept, every other task is
cancelled (their operators and connectors still close), and the failure is raised from
:meth:`Job.run` as it was, with its original traceback. The job is where whatever
concerns the run as a whole lives: the stop request, and the checkpoint coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from aioflow.checkpoint.coordinator import CheckpointCoordinator
from aioflow.checkpoint.metadata import CheckpointMetadata
from aioflow.errors import StateError
from aioflow.graph.logical import Node
from aioflow.graph.plan import Plan, PlannedEdge, PlannedTask
from aioflow.operators.base import FanOut, Operator, Output, cancelled_by_runtime
from aioflow.runtime.channel import Channel, InputGate
from aioflow.runtime.keygroups import key_group_range
from aioflow.runtime.task import NetworkOutput, SourceTask, StreamTask, SubtaskEnvironment
from aioflow.runtime.writer import FORWARD, RecordWriter
from aioflow.state.backend import DEFAULT_CACHE_SIZE, StateBackend
from aioflow.state.lmdb import LmdbStore
from aioflow.time.watermarks import PERIODIC_WATERMARK_INTERVAL, SourceWatermarks

__all__ = ["Job", "RuntimeConfig"]

log = structlog.get_logger("aioflow.runtime")


@dataclass(frozen=True)
class RuntimeConfig:
    batch_size: int
    linger: float
    channel_capacity: int
    max_parallelism: int
    watermark_interval: float | None  # None: after every batch for replayable sources, else periodic
    state_dir: str | None = None
    state_backend: str = "memory"  # "memory" or "lmdb"
    state_cache_size: int = DEFAULT_CACHE_SIZE
    checkpoint_interval: float | None = None
    checkpoint_mode: str = "exactly_once"
    allow_non_restored_state: bool = False


Subtask = SourceTask | StreamTask


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
    """Connect each operator to the chained operators and network writers it feeds."""
    for node in task.nodes:
        targets: dict[str | None, list[Output]] = {}
        for upstream, downstream, edge in task.chained:
            if upstream is node:
                targets.setdefault(edge.side_tag, []).append(operators[downstream.id])
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
            if tag is None:
                operator.out = combined
            else:
                operator.side_outputs[tag] = combined


def _build(plan: Plan, config: RuntimeConfig, job: Job, store: LmdbStore | None,
           restored: dict[str, list[Any]] | None) -> list[Subtask]:
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
                state_backend=StateBackend(
                    store,
                    key_groups=key_group_range(index, config.max_parallelism, task.parallelism),
                    max_parallelism=config.max_parallelism,
                    cache_size=config.state_cache_size,
                ),
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
                if head.watermarks is not None or head.timestamps is not None:
                    interval = config.watermark_interval
                    if interval is None:
                        interval = 0.0 if source.replayable else PERIODIC_WATERMARK_INTERVAL
                    watermarks = SourceWatermarks(head.name, head.timestamps, head.watermarks, interval)
                tag = getattr(source, "dead_letter_tag", None)
                subtasks.append(
                    SourceTask(
                        env,
                        chain,
                        list(writers.values()),
                        source.create_reader(index, task.parallelism),
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


class Job:
    """One run of ``plan``: ``await job.run()`` until every task finished; ``job.request_stop()``
    (a stop signal, a sink whose output closed) makes the sources stop."""

    def __init__(self, plan: Plan, config: RuntimeConfig) -> None:
        self.plan = plan
        self.config = config
        self._stop_requested = False
        self._coordinator_scope = anyio.CancelScope()

    async def _coordinate(self, coordinator: CheckpointCoordinator, fail: Callable[[BaseException], None]) -> None:
        """Take periodic checkpoints while tasks run; a checkpoint failure beyond the
        tolerated ones fails the job."""
        try:
            with self._coordinator_scope:
                await coordinator.run()
        except Exception as exc:
            fail(exc)

    def request_stop(self) -> None:
        """Ask the sources to stop; what is in flight then drains and the job finishes."""
        self._stop_requested = True

    def stop_requested(self) -> bool:
        return self._stop_requested

    def _open_state(self) -> tuple[LmdbStore | None, CheckpointMetadata | None]:
        """The worker's state store, and the checkpoint in it this run resumes from."""
        config = self.config
        if config.state_backend != "lmdb" or config.state_dir is None:
            return None, None
        store = LmdbStore(config.state_dir)
        data = store.read_meta(b"checkpoint")
        if data is None:
            return store, None
        try:
            metadata = CheckpointMetadata.decode(data, f"state directory {config.state_dir}")
            names = {node.name for task in self.plan.tasks for node in task.nodes}
            gone = sorted({name.split("#")[0] for name in metadata.operators} - names
                          | store.operators() - names)
            if gone and not config.allow_non_restored_state:
                raise StateError(
                    f"state directory {config.state_dir}: checkpoint {metadata.checkpoint_id} has state of "
                    f"operators {gone} that the job no longer has; restore anyway with "
                    "--allow-non-restored-state (that state is then dropped)"
                )
        except BaseException:
            store.close()
            raise
        log.info("restoring", checkpoint=metadata.checkpoint_id, kind=metadata.kind, state_dir=config.state_dir,
                 taken_at=metadata.time_ms)
        return store, metadata

    async def run(self) -> None:
        """Run until every task finished; raise the first failure."""
        store, restored = self._open_state()
        try:
            await self._run(store, restored)
        finally:
            if store is not None:
                store.close()

    async def _run(self, store: LmdbStore | None, restored: CheckpointMetadata | None) -> None:
        plan, config = self.plan, self.config
        subtasks = _build(plan, config, self, store, restored.operators if restored is not None else None)
        coordinator = None
        if store is not None and config.checkpoint_interval is not None:
            coordinator = CheckpointCoordinator(
                store, list(subtasks), interval=config.checkpoint_interval,
                last_id=restored.checkpoint_id if restored is not None else 0,
            )
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
                            self._coordinator_scope.cancel()  # nothing left to checkpoint periodically

                def fail(exc: BaseException) -> None:
                    nonlocal failure
                    if failure is None:
                        failure = exc
                    group.cancel_scope.cancel()

                for subtask in subtasks:
                    group.start_soon(supervise, subtask, name=subtask.name)
                if coordinator is not None:
                    group.start_soon(self._coordinate, coordinator, fail)
        except anyio.get_cancelled_exc_class():
            # Cancelled (a second stop signal) after every task had finished: nothing was
            # lost, and the job is complete.
            if failure is not None or completed < len(subtasks):
                raise

        if failure is not None:
            raise failure
        if coordinator is not None:
            await coordinator.checkpoint()  # every task finished: their final states, for a restart
        log.info("job finished", app=plan.app_name, seconds=round(time.perf_counter() - started, 3))
