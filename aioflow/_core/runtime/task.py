"""Tasks: the loops that run a chain of operators for one subtask.

A :class:`SourceTask` reads batches from a source reader; a :class:`StreamTask` reads
batches and control events from its input gate. Both hand whole batches to the head of
their chain and await only at batch boundaries: to read, to send when a channel has no
credit, and once per source batch to let other tasks run. Processing-time callbacks
(timers, periodic watermarks) run between batches, and an idle task sleeps exactly
until the next one is due, so a processing-time window fires on time even when no
record arrives.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import structlog
from structlog.contextvars import bound_contextvars

from aioflow._core.errors import OperatorError, StateError
from aioflow._core.runtime.events import (
    END_OF_INPUT,
    MAX_WATERMARK,
    Batch,
    CheckpointBarrier,
    EndOfInput,
    Watermark,
    WatermarkStatus,
)
from aioflow._core.runtime.operator import Operator, Output
from aioflow._core.time.timers import now_ms
from aioflow._core.time.valve import WatermarkValve

if TYPE_CHECKING:
    from aioflow._core.checkpoint.coordinator import CheckpointCoordinator
    from aioflow._core.connectors.base import Source, SourceReader
    from aioflow._core.runtime.channel import InputGate
    from aioflow._core.runtime.writer import RecordWriter
    from aioflow._core.state.backend import KeyedStateBackend
    from aioflow._core.time.watermarks import SourceWatermarks

__all__ = ["NetworkOutput", "Scheduler", "SourceTask", "StreamTask", "SubtaskEnvironment"]

log = structlog.get_logger("aioflow.runtime")

Callback = Callable[[int], Awaitable[None]]


class Scheduler:
    """Processing-time callbacks of one subtask, ordered by due time (epoch ms).

    A callback is due at most once: scheduling it again keeps the earlier time. Its owner
    keeps its own timers and, when called, schedules itself for the next one, so a deleted
    timer costs the scheduler nothing: the heap holds about one entry per callback
    (stale entries are skipped, and dropped when they outnumber the live ones).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Callback]] = []
        self._due: dict[Callback, int] = {}
        self._seq = itertools.count()

    def schedule(self, at: int, callback: Callback) -> None:
        due = self._due.get(callback)
        if due is not None and due <= at:
            return
        self._due[callback] = at
        heapq.heappush(self._heap, (at, next(self._seq), callback))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(due, next(self._seq), cb) for cb, due in self._due.items()]
            heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    def seconds_until_due(self) -> float | None:
        self._drop_stale()
        if not self._heap:
            return None
        return max(0.0, (self._heap[0][0] - now_ms()) / 1000)

    async def run_due(self) -> None:
        if not self._heap:
            return
        now = now_ms()
        while True:
            self._drop_stale()
            heap = self._heap  # a callback may compact it: look it up each round
            if not heap or heap[0][0] > now:
                return
            _, _, callback = heapq.heappop(heap)
            del self._due[callback]
            await callback(now)


@dataclass(eq=False)
class SubtaskEnvironment:
    """What operators of one subtask share: identity, sizes, state and the scheduler."""

    task_name: str
    subtask_index: int
    parallelism: int
    max_parallelism: int
    batch_size: int
    state_backend: KeyedStateBackend
    scheduler: Scheduler = field(default_factory=Scheduler)
    #: Most records an ``async def`` user function runs on at once, unless its operator says.
    max_concurrency: int = 100
    #: Ask the job to stop as a stop signal does: sources stop, what is in flight drains.
    request_stop: Callable[[], None] = lambda: None
    #: Takes this subtask's checkpoint acknowledgements (``None``: checkpointing is off).
    coordinator: CheckpointCoordinator | None = None
    #: Operator name -> the states of the checkpoint this run restores (one per old subtask).
    restored: dict[str, list[Any]] | None = None
    #: Align checkpoint barriers (exactly-once) or not (at-least-once).
    exactly_once: bool = True
    #: A completed checkpoint holds this subtask's final state: what the end of input
    #: pre-committed may be committed, its final position committed.
    final_state_checkpointed: bool = False

    def schedule(self, at: int, callback: Callback) -> None:
        """Call ``await callback(now_ms)`` once the wall clock reaches ``at`` (epoch ms)."""
        self.scheduler.schedule(at, callback)


class NetworkOutput(Output):
    """The end of a chain: hands batches and control events to the task's record writers."""

    def __init__(self, writers: list[RecordWriter]) -> None:
        self.writers = writers

    async def process(self, batch: Batch) -> None:
        for writer in self.writers:
            await writer.emit(batch)

    async def process_watermark(self, timestamp: int) -> None:
        event = Watermark(timestamp)
        for writer in self.writers:
            await writer.broadcast_event(event)

    async def process_watermark_status(self, idle: bool) -> None:
        event = WatermarkStatus(idle)
        for writer in self.writers:
            await writer.broadcast_event(event)

    async def end_input(self) -> None:
        for writer in self.writers:
            await writer.broadcast_event(END_OF_INPUT)


class _Task:
    is_source = False

    def __init__(self, env: SubtaskEnvironment, operators: list[Operator], writers: list[RecordWriter]) -> None:
        self.env = env
        #: Set by the coordinator on source tasks: inject this checkpoint's barrier.
        self.pending_barrier: int | None = None
        #: ... and read nothing after it: the job is stopping with a savepoint.
        self.stop_after_barrier = False
        self.operators = operators
        self.head = operators[0]
        self.writers = writers
        self._reported_final = False  # the final state went to the coordinator
        self._linger = min((w.linger for w in writers), default=0.0)
        self._next_linger_check = 0.0

    @property
    def name(self) -> str:
        return f"{self.env.task_name}[{self.env.subtask_index}]"

    def trigger(self, checkpoint_id: int, *, stop: bool = False) -> None:
        """Inject checkpoint ``checkpoint_id``'s barrier between two batches (source tasks).

        A trigger replaces one whose barrier is not injected yet (the coordinator abandoned
        that checkpoint). One that comes while the task is inside an earlier checkpoint
        (pre-committing, waiting for credit to send the barrier) is injected right after it.
        """
        self.pending_barrier = checkpoint_id
        self.stop_after_barrier = stop

    async def run(self) -> None:
        # Bound once for the task's coroutine: its log lines (and its user functions') name
        # the subtask and, outside chained operators (which bind their own), the head.
        with bound_contextvars(task=self.name, operator=self.head.name):
            await self._run()

    async def _run(self) -> None:
        opened: list[Operator] = []
        try:
            for operator in reversed(self.operators):  # downstream first: ready before data arrives
                await operator.open(self.env)
                opened.append(operator)
            await self._restore()
            self.env.state_backend.schedule_maintenance(self.env.schedule)  # TTL cleanup, verification
            await self._loop()
            await self._finished()
            for operator in self.operators:
                await operator.await_final_commit()
        except BaseException:
            await self._close(opened, failed=True)
            raise
        await self._close(opened, failed=False)

    async def _restore(self) -> None:
        restored = self.env.restored
        if restored is None:
            return
        for operator in self.operators:
            states = restored.get(operator.name)
            if states:
                await operator.restore_state(states)

    async def _states(self, checkpoint_id: int) -> dict[str, Any]:
        states: dict[str, Any] = {}
        for operator in self.operators:
            state = await operator.snapshot_state(checkpoint_id)
            if state is not None:
                states[operator.name] = state
        return states

    async def checkpoint(self, checkpoint_id: int) -> None:
        """The barrier reached this task on every input: snapshot, pass the barrier on, acknowledge."""
        coordinator = self.env.coordinator
        assert coordinator is not None
        states = await self._states(checkpoint_id)
        snapshot = coordinator.persist(self, checkpoint_id)
        barrier = CheckpointBarrier(checkpoint_id)
        for writer in self.writers:
            await writer.broadcast_event(barrier)
        coordinator.acknowledge(self, checkpoint_id, states, snapshot)

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` completed (sources pass it on to their reader)."""

    async def _finished(self) -> None:
        """The task ended: its final state stands for it in later checkpoints (reported once)."""
        coordinator = self.env.coordinator
        if coordinator is not None and not self._reported_final:
            self._reported_final = True
            states = await self._states(-1)
            coordinator.task_finished(self, states, coordinator.persist(self, None))

    async def _close(self, opened: list[Operator], *, failed: bool) -> None:
        """Close what opened, head first. After a clean run a failing close (a final commit
        that did not happen) fails the task; after a failure it is only logged, so the
        first error stays the one reported."""
        failure: OperatorError | None = None
        with anyio.CancelScope(shield=True):
            for operator in reversed(opened):
                try:
                    await operator.close()
                except Exception as exc:
                    if failed or failure is not None:
                        log.exception("operator close failed", operator=operator.name, task=self.name)
                        continue
                    if isinstance(exc, OperatorError):
                        failure = exc
                    else:
                        failure = operator.error(f"close() failed: {type(exc).__name__}: {exc}", None, has_record=False)
                        failure.__cause__ = exc
        if failure is not None:
            raise failure

    async def _loop(self) -> None:
        raise TypeError("subclasses implement _loop")

    async def flush_lingering(self) -> None:
        """Send output buffers older than the linger time (checked at most every linger/2)."""
        if not self.writers:
            return
        now = time.monotonic()
        if now >= self._next_linger_check:
            self._next_linger_check = now + self._linger / 2
            for writer in self.writers:
                await writer.flush(only_expired=True)

    async def flush_all(self) -> None:
        for writer in self.writers:
            await writer.flush()


class SourceTask(_Task):
    """Reads a source and pushes its batches through the chain."""

    is_source = True

    def __init__(
        self,
        env: SubtaskEnvironment,
        operators: list[Operator],
        writers: list[RecordWriter],
        source: Source,
        reader: SourceReader,
        watermarks: SourceWatermarks | None,
        dead_letter_tag: str | None,
        stop_requested: Callable[[], bool],
    ) -> None:
        super().__init__(env, operators, writers)
        self.source = source
        self.reader = reader
        self._reading = False  # the reader is open
        self._positions: dict[int, Any] = {}  # checkpoint id -> the position in it, until it completes
        self._final_position: Any = None  # the position in the final state, until a checkpoint holds it
        self._final_committed: anyio.Event | None = None  # set once a checkpoint holding it completed
        self.watermarks = watermarks
        if watermarks is not None:
            watermarks.backlog = reader.backlogged_splits
        self.dead_letter_tag = dead_letter_tag
        self.stop_requested = stop_requested

    @property
    def reading(self) -> bool:
        """The reader is open: between its ``open()`` and its ``close()``."""
        return self._reading

    async def _loop(self) -> None:
        reader, head, env = self.reader, self.head, self.env
        if self.watermarks is not None and self.watermarks.interval_ms:
            env.schedule(now_ms() + self.watermarks.interval_ms, self._periodic_watermark)
        failure: Exception | None = None
        async with anyio.create_task_group() as background:
            reader.task_group = background
            # The reader stays open until a checkpoint holding its last position completed,
            # so that it can commit that position (Kafka: to the consumer group).
            try:
                await reader.open()
                self._reading = True
                if await self._read_until_done():
                    # Stopping with a savepoint: no final watermark, so open windows and timers
                    # are kept in it, not fired. The job cancels this task once the savepoint
                    # completed (and its position was committed).
                    await anyio.sleep_forever()
                # End of input (or a stop request): the final watermark fires every pending
                # event-time timer and window, then everything downstream flushes and ends.
                if self.watermarks is not None:
                    await self.watermarks.activate(head)  # an idle output would have it ignored
                await head.process_watermark(MAX_WATERMARK)
                await head.end_input()
                if env.coordinator is not None:
                    self._final_committed = anyio.Event()
                    await self._finished()
                    await self._final_committed.wait()
            except Exception as exc:  # raised below, outside the group, not wrapped in a group
                failure = exc
            finally:
                self._reading = False
                with anyio.CancelScope(shield=True):
                    await reader.close()
                background.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _read_until_done(self) -> bool:
        """Read until the end of input or a stop; True when stopped at a savepoint's barrier."""
        reader, head, env = self.reader, self.head, self.env
        watermarks, scheduler = self.watermarks, env.scheduler
        trim = env.state_backend.trim if env.state_backend.durable else None
        # Outside read() the task is held back by its own work (pushing, flushing,
        # checkpoints, timers): that time is not quiet time of the splits (idle_timeout).
        held_since = now_ms()
        while not self.stop_requested():
            if self.pending_barrier is not None and await self._inject_barriers():
                return True
            if watermarks is not None:
                held_since = watermarks.hold(held_since)  # before the periodic emission in run_due
            await scheduler.run_due()
            wait = scheduler.seconds_until_due()
            if watermarks is not None:
                watermarks.hold(held_since)
            source_batch = await reader.read(env.batch_size, 0.1 if wait is None else min(wait, 0.1))
            held_since = now_ms()
            if source_batch is None:
                # Barriers triggered while the last read waited go out first: a stop's savepoint
                # then holds the end position instead of waiting for this task in vain.
                return await self._inject_barriers()
            records = source_batch.records
            head.records_in += len(records)
            if source_batch.bad and self.dead_letter_tag is not None:
                await head.emit_side(self.dead_letter_tag, source_batch.bad, None)
            if records:
                if watermarks is None:
                    await head.process(Batch(records))
                else:
                    await watermarks.push(head, source_batch.split, records, reader.splits(), source_batch.timestamps)
                if trim is not None:
                    trim()  # keep the state cache within its size
                await self.flush_lingering()
            else:
                await self.flush_all()
            await anyio.lowlevel.checkpoint()
        return False  # a stop that drains

    async def _inject_barriers(self) -> bool:
        """Inject the pending barrier, then any triggered while this task was inside that
        checkpoint: the savepoint of a stop abandons the periodic checkpoint in flight and
        triggers at once, often while that one's barrier is still being injected. True once
        a stop's barrier is injected: read nothing after it. Whether to stop is taken with
        the checkpoint id, before any await, as a later trigger overwrites both."""
        while self.pending_barrier is not None:
            checkpoint_id, stop = self.pending_barrier, self.stop_after_barrier
            self.pending_barrier = None
            await self.checkpoint(checkpoint_id)
            if stop:
                return True
        return False

    async def _states(self, checkpoint_id: int) -> dict[str, Any]:
        states = await super()._states(checkpoint_id)
        source: dict[str, Any] = {"position": self.reader.position()}
        if self._reading:
            if checkpoint_id >= 0:
                self._positions[checkpoint_id] = source["position"]
            else:
                self._final_position = source["position"]
        if self.watermarks is not None:
            source["watermarks"] = self.watermarks.snapshot()
        states[f"{self.head.name}#source"] = source
        return states

    async def _restore(self) -> None:
        await super()._restore()
        restored = self.env.restored
        states = restored.get(f"{self.head.name}#source") if restored is not None else None
        if not states:
            return
        env = self.env
        if len(states) == env.parallelism and not self.source.positions_shared:
            position = states[env.subtask_index]["position"]
            watermarks = [states[env.subtask_index].get("watermarks")]
        else:
            try:
                position = self.source.rescale([state["position"] for state in states], env.parallelism)[
                    env.subtask_index
                ]
            except StateError as exc:
                raise StateError(
                    f"source {self.head.name!r} was checkpointed with parallelism {len(states)} and now runs "
                    f"with {env.parallelism}: {exc} (set parallelism= on app.source to pin it)"
                ) from None
            watermarks = [state.get("watermarks") for state in states]  # the lowest one holds
        try:
            self.reader.restore(position)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateError(
                f"source {self.head.name!r}: the restored checkpoint's position {position!r} does not fit "
                f"{type(self.source).__name__} ({type(exc).__name__}: {exc}); was the source replaced? Use a new "
                "source name, or another state_dir"
            ) from exc
        if self.watermarks is not None and None not in watermarks:
            self.watermarks.restore(watermarks)

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        """Tell the open reader the position of the checkpoint that completed (after the
        task finished: its final position, which every later checkpoint holds)."""
        position = self._positions.pop(checkpoint_id, None)
        for older in [c for c in self._positions if c < checkpoint_id]:
            del self._positions[older]  # abandoned checkpoints: never completing now
        if position is None and self._reported_final:
            position, self._final_position = self._final_position, None
        if position is not None and self._reading:
            await self.reader.notify_checkpoint_complete(checkpoint_id, position)
        if self.env.final_state_checkpointed and self._final_committed is not None:
            self._final_committed.set()

    async def _periodic_watermark(self, now: int) -> None:
        watermarks = self.watermarks
        assert watermarks is not None
        await watermarks.emit_periodic(self.head, now, self.reader.splits())
        self.env.schedule(now + watermarks.interval_ms, self._periodic_watermark)


class StreamTask(_Task):
    """Reads its input gate and pushes batches and control events through the chain."""

    def __init__(
        self,
        env: SubtaskEnvironment,
        operators: list[Operator],
        writers: list[RecordWriter],
        gate: InputGate,
        input_numbers: list[int],
    ) -> None:
        super().__init__(env, operators, writers)
        self.gate = gate
        self.input_numbers = input_numbers

    async def _loop(self) -> None:
        gate, head, scheduler = self.gate, self.head, self.env.scheduler
        input_numbers = self.input_numbers
        valve = WatermarkValve(len(gate.channels))
        open_channels = len(gate.channels)
        second_input = getattr(head, "process2", None)
        trim = self.env.state_backend.trim if self.env.state_backend.durable else None
        self._aligning: int | None = None
        self._arrived: set[int] = set()
        self._ended: set[int] = set()
        while open_channels:
            try:
                index, message = gate.receive_nowait()
            except anyio.WouldBlock:
                await self.flush_all()  # nothing to do: send what is buffered now
                wait = scheduler.seconds_until_due()
                if wait is None:
                    index, message = await gate.receive()
                else:
                    with anyio.move_on_after(wait) as scope:
                        index, message = await gate.receive()
                    if scope.cancelled_caught:
                        await scheduler.run_due()
                        continue
            cls = message.__class__
            if cls is Batch:
                head.records_in += len(message.values)
                if input_numbers[index] == 2 and second_input is not None:
                    await second_input(message)
                else:
                    await head.process(message)
                if trim is not None:
                    trim()  # keep the state cache within its size
                await self.flush_lingering()
                await scheduler.run_due()
            elif cls is Watermark:
                advanced = valve.watermark(index, message.timestamp)
                if advanced is not None:
                    await head.process_watermark(advanced)
            elif cls is WatermarkStatus:
                idle_change, advanced = valve.status(index, message.idle)
                if advanced is not None:
                    await head.process_watermark(advanced)
                if idle_change is not None:
                    await head.process_watermark_status(idle_change)
            elif cls is CheckpointBarrier:
                await self._on_barrier(index, message.checkpoint_id)
            elif cls is EndOfInput:
                open_channels -= 1
                self._ended.add(index)
                if self._aligning is not None:
                    await self._maybe_aligned()
                idle_change, advanced = valve.finish(index)
                if idle_change is not None:
                    await head.process_watermark_status(idle_change)
                if advanced is not None:
                    await head.process_watermark(advanced)
            else:
                raise TypeError(f"task {self.name}: unexpected message {message!r}")
        await head.end_input()

    async def _on_barrier(self, index: int, checkpoint_id: int) -> None:
        """Exactly-once: block each input once its barrier came, snapshot when all came.
        At-least-once: keep reading every input, snapshot when the last barrier came."""
        if self._aligning is None or checkpoint_id > self._aligning:
            if self._aligning is not None:  # an abandoned checkpoint overtaken by a new one
                self._release()
            self._aligning = checkpoint_id
        elif checkpoint_id < self._aligning:
            return
        self._arrived.add(index)
        if self.env.exactly_once:
            self.gate.block(index)
        await self._maybe_aligned()

    async def _maybe_aligned(self) -> None:
        if len(self._arrived | self._ended) < len(self.gate.channels):
            return
        checkpoint_id = self._aligning
        assert checkpoint_id is not None
        self._release()
        await self.checkpoint(checkpoint_id)

    def _release(self) -> None:
        for index in self._arrived:
            self.gate.unblock(index)
        self._arrived.clear()
        self._aligning = None

    def statistics(self) -> dict[str, Any]:
        return {"task": self.name, "gate": self.gate.statistics()}
