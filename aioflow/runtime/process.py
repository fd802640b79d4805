"""The operator behind ``stream.process(fn)``: ProcessFunction and KeyedProcessFunction.

Per record it sets ``ctx.timestamp`` (and ``ctx.key``), calls ``process_element`` and
collects what it yields; outputs keep the input's timestamp. Timers fire in timestamp
order when the watermark (event time) or the wall clock (processing time) passes them;
their outputs carry the timer's timestamp (event time) or none (processing time), as
in Flink.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow.errors import OperatorError
from aioflow.functions import OutputTag
from aioflow.runtime.context import OperatorContext
from aioflow.runtime.events import Batch
from aioflow.runtime.operators import Operator, _describe
from aioflow.time.timers import EVENT_TIME, PROCESSING_TIME

if TYPE_CHECKING:
    from aioflow.runtime.task import SubtaskEnvironment

__all__ = ["Collector", "ProcessOperator", "UserCall", "call_user_open"]


class UserCall:
    """Calls one user method that yields outputs, whatever its flavour: a plain function
    returning ``None`` or an iterable, a generator, a coroutine, or an async generator."""

    __slots__ = ("fn", "kind")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        if inspect.isasyncgenfunction(fn):
            self.kind = "async_gen"
        elif inspect.iscoroutinefunction(fn):
            self.kind = "coroutine"
        else:
            self.kind = "sync"

    async def call_async(self, *args: Any) -> Any:
        """For the async kinds: the produced outputs as a list (or ``None``)."""
        if self.kind == "async_gen":
            return [item async for item in self.fn(*args)]
        return await self.fn(*args)


async def call_user_open(function: Any, ctx: OperatorContext) -> None:
    opened = function.open(ctx)
    if inspect.isawaitable(opened):
        await opened


class Collector:
    """Outputs of one batch or timer round: main values with timestamps, and side outputs."""

    __slots__ = ("side", "timestamps", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.timestamps: list[Any] = []
        self.side: dict[str, tuple[list[Any], list[Any]]] = {}

    def add_all(self, produced: Any, timestamp: Any) -> None:
        values, timestamps = self.values, self.timestamps
        for item in produced:
            if item.__class__ is tuple and len(item) == 2 and item[0].__class__ is OutputTag:
                side = self.side.get(item[0].name)
                if side is None:
                    side = self.side[item[0].name] = ([], [])
                side[0].append(item[1])
                side[1].append(timestamp)
            else:
                values.append(item)
                timestamps.append(timestamp)

    def __len__(self) -> int:
        return len(self.values)


class ProcessOperator(Operator):
    """Runs a (Keyed)ProcessFunction; ``key_selector`` set means keyed."""

    context_class = OperatorContext

    def __init__(self, name: str, function: Any, key_selector: Callable[[Any], Any] | None = None) -> None:
        super().__init__(name)
        self.function = function
        self.key_selector = key_selector
        self.ctx: OperatorContext | None = None

    def bind_methods(self) -> None:
        self._element = UserCall(self.function.process_element)

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        self.ctx = ctx = self.context_class(
            self.name,
            env.subtask_index,
            env.parallelism,
            keyed=self.key_selector is not None,
            backend=env.state_backend,
            schedule_processing_time=lambda at: env.schedule(at, self.on_processing_time),
        )
        self.bind_methods()
        self._timer = UserCall(self.function.on_timer)
        try:
            await call_user_open(self.function, ctx)
        except Exception as exc:
            raise self.error(_describe(exc, self.function.open), None, has_record=False) from exc

    def keys_of(self, batch: Batch, key_selector: Callable[[Any], Any] | None) -> list[Any] | None:
        """The batch's keys: carried from the partitioner, or extracted here when chained."""
        if key_selector is None:
            return None
        if batch.keys is not None:
            return batch.keys
        keys: list[Any] = []
        try:
            keys.extend(map(key_selector, batch.values))
        except Exception as exc:
            raise self.error(f"key selector {_describe(exc, key_selector)}", batch.values[len(keys)]) from exc
        return keys

    async def process(self, batch: Batch) -> None:
        await self.run_function(batch, self._element, self.key_selector)

    async def run_function(self, batch: Batch, call: UserCall, key_selector: Callable[[Any], Any] | None) -> None:
        """Call ``call`` for each record of ``batch`` with the context set; emit its outputs."""
        values = batch.values
        timestamps = batch.timestamps
        keys = self.keys_of(batch, key_selector)
        ctx = self.ctx
        assert ctx is not None
        collector = Collector()
        fn = call.fn
        sync = call.kind == "sync"
        value = None
        try:
            for i, value in enumerate(values):
                timestamp = ctx.timestamp = timestamps[i] if timestamps is not None else None
                if keys is not None:
                    ctx.key = keys[i]
                produced = fn(value, ctx) if sync else await call.call_async(value, ctx)
                if produced is not None:
                    collector.add_all(produced, timestamp)
        except OperatorError:
            raise
        except Exception as exc:
            raise self.error(_describe(exc, fn), value) from exc
        await self.emit(collector, timestamps is not None)

    async def emit(self, collector: Collector, with_timestamps: bool) -> None:
        if collector.values:
            await self.out.process(Batch(collector.values, collector.timestamps if with_timestamps else None))
        for tag, (values, timestamps) in collector.side.items():
            await self.emit_side(tag, values, timestamps if with_timestamps else None)

    async def process_watermark(self, timestamp: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        service = ctx.timer_service
        service.watermark = timestamp
        if self.key_selector is not None:
            await self._fire(service.event_timers.pop_due(timestamp), EVENT_TIME)
        await self.out.process_watermark(timestamp)

    async def on_processing_time(self, now: int) -> None:
        """Called by the task's scheduler when the wall clock reaches a processing-time timer."""
        ctx = self.ctx
        assert ctx is not None
        service = ctx.timer_service
        await self._fire(service.processing_timers.pop_due(now), PROCESSING_TIME)
        following = service.processing_timers.next_time()
        if following is not None:
            assert self.env is not None
            self.env.schedule(following, self.on_processing_time)

    async def _fire(self, due: Any, domain: str) -> None:
        ctx = self.ctx
        assert ctx is not None and self.env is not None
        ctx.time_domain = domain
        call = self._timer
        fn = call.fn
        sync = call.kind == "sync"
        batch_size = self.env.batch_size
        collector = Collector()
        event_time = domain == EVENT_TIME
        try:
            for timestamp, key in due:
                ctx.key = key
                ctx.timestamp = timestamp if event_time else None
                produced = fn(timestamp, ctx) if sync else await call.call_async(timestamp, ctx)
                if produced is not None:
                    collector.add_all(produced, ctx.timestamp)
                    if len(collector) >= batch_size:
                        await self.emit(collector, event_time)
                        collector = Collector()
        except OperatorError:
            raise
        except Exception as exc:
            raise self.error(f"on_timer at {ctx.timestamp} for key {ctx.key!r}: {_describe(exc, fn)}", None,
                             has_record=False) from exc
        finally:
            ctx.time_domain = EVENT_TIME
        await self.emit(collector, event_time)

    async def close(self) -> None:
        self.function.close()
