"""The operator behind ``stream.process(fn)``: ProcessFunction and KeyedProcessFunction.

Per record it sets ``ctx.timestamp`` (and ``ctx.key``), calls ``process_element`` and
collects what it yields; outputs keep the input's timestamp. Timers fire in timestamp
order when the watermark (event time) or the wall clock (processing time) passes them;
their outputs carry the timer's timestamp (event time) or none (processing time), as
in Flink.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import DESCRIBED_ERRORS, UserFunctionTypeError, truncated_repr
from aioflow._core.functions import OutputTag
from aioflow._core.operators.context import ConcurrentContext, FunctionContext, OperatorContext
from aioflow._core.runtime.calls import await_user, collect_async, describe_error, for_key, qualified_name
from aioflow._core.runtime.concurrent import run_concurrently
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import TRIM_EVERY, Collector, Operator
from aioflow._core.time.timers import EVENT_TIME, PROCESSING_TIME, now_ms

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["ProcessOperator", "UserCall", "call_user_close", "call_user_open"]


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
        """For the async kinds: the produced outputs as a list (or ``None``). A
        ``CancelledError`` the runtime did not ask for is raised as a failure."""
        if self.kind == "async_gen":
            return await await_user(collect_async(self.fn(*args)))
        return await await_user(self.fn(*args))


async def call_user_open(operator: Operator, function: Any, ctx: OperatorContext | FunctionContext) -> None:
    """``function.open(ctx)``, awaited if it is ``async def``; a failure names ``operator``."""
    try:
        opened = function.open(ctx)
        if inspect.isawaitable(opened):
            await opened
    except DESCRIBED_ERRORS:
        raise
    except Exception as exc:
        raise operator.error(describe_error(exc, function.open), None, has_record=False) from exc


async def call_user_close(function: Any) -> None:
    """``function.close()``, awaited if it is ``async def``."""
    closed = function.close()
    if inspect.isawaitable(closed):
        await closed


class ProcessOperator(Operator):
    """Runs a (Keyed)ProcessFunction; ``key_selector`` set means keyed."""

    context_class = OperatorContext
    #: The function's methods that run per record or timer (any ``async def``: concurrently).
    user_methods: tuple[str, ...] = ("process_element", "on_timer")

    def __init__(self, name: str, function: Any, key_selector: Callable[[Any], Any] | None = None) -> None:
        super().__init__(name)
        self.function = function
        self.key_selector = key_selector
        self.ctx: OperatorContext | None = None

    def bind_methods(self) -> None:
        self._element = UserCall(self.function.process_element)

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        context_class = self.context_class
        if context_class is OperatorContext and self._has_async_methods():
            context_class = ConcurrentContext  # each coroutine sees its own key and timestamp
        self.ctx = ctx = context_class(
            self.name,
            env.subtask_index,
            env.parallelism,
            keyed=self.key_selector is not None,
            backend=env.state_backend,
            schedule_processing_time=lambda at: env.schedule(at, self.on_processing_time),
        )
        self.bind_methods()
        self._timer = UserCall(self.function.on_timer)
        await call_user_open(self, self.function, ctx)

    def _has_async_methods(self) -> bool:
        methods = (getattr(self.function, name, None) for name in self.user_methods)
        return any(UserCall(method).kind != "sync" for method in methods if method is not None)

    async def process(self, batch: Batch) -> None:
        await self.run_function(batch, self._element, self.key_selector)

    async def run_function(self, batch: Batch, call: UserCall, key_selector: Callable[[Any], Any] | None) -> None:
        """Call ``call`` for each record of ``batch`` with the context set; emit its outputs."""
        values = batch.values
        timestamps = batch.timestamps
        keys = await self.keys_of(batch, key_selector) if key_selector is not None else None
        ctx = self.ctx
        assert ctx is not None
        collector = Collector()
        fn = call.fn
        sync = call.kind == "sync"
        if not sync and isinstance(ctx, ConcurrentContext):
            await self._run_concurrently(call, values, timestamps, keys, collector)
            await self.emit_collected(collector, timestamps is not None)
            return
        value = None
        add_all = collector.add_all
        out, out_stamps = collector.values, collector.timestamps
        keyed = keys is not None  # else the key stays as it is (no key, or a broadcast input's)
        try:
            for value, timestamp, key in zip(
                values,
                timestamps if timestamps is not None else repeat(None),
                keys if keys is not None else repeat(None),
            ):
                ctx.timestamp = timestamp
                if keyed:
                    ctx.key = key
                produced = fn(value, ctx) if sync else await call.call_async(value, ctx)
                if produced is None:
                    continue
                if produced.__class__ is GeneratorType:  # add_all inlined: the usual case
                    for item in produced:
                        if item.__class__ is tuple and len(item) == 2 and item[0].__class__ is OutputTag:
                            add_all([item], timestamp)
                        else:
                            out.append(item)
                            out_stamps.append(timestamp)
                else:
                    add_all(produced, timestamp)
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(describe_error(exc, fn), value) from exc
        await self.emit_collected(collector, timestamps is not None)

    async def _run_concurrently(
        self,
        call: UserCall,
        values: list[Any],
        timestamps: Sequence[int | None] | None,
        keys: list[Any] | None,
        collector: Collector,
    ) -> None:
        """An async ``call`` on up to :attr:`concurrency` records at once, those of one key
        in order, each coroutine with its own key and timestamp; outputs in input order."""
        ctx = self.ctx
        assert ctx is not None
        fn = call.fn

        async def one(i: int) -> Any:
            ctx.timestamp = timestamps[i] if timestamps is not None else None
            if keys is not None:
                ctx.key = keys[i]
            try:
                return await call.call_async(values[i], ctx)
            except DESCRIBED_ERRORS:
                raise
            except Exception as exc:
                raise self.error(describe_error(exc, fn) + for_key(keys, i), values[i]) from exc

        outputs = await run_concurrently(one, len(values), keys, self.concurrency)
        for i, produced in enumerate(outputs):
            if produced is not None:
                self._check_async_outputs(produced, fn, for_key(keys, i), values[i])
                collector.add_all(produced, timestamps[i] if timestamps is not None else None)

    def _check_async_outputs(
        self, produced: Any, fn: Callable[..., Any], where: str, record: Any, *, has_record: bool = True
    ) -> None:
        """An ``async def`` method returns a list of its outputs (an async generator's are
        collected into one): anything else is refused, naming the method."""
        if produced.__class__ is not list:
            name = getattr(fn, "__name__", "function")
            raise UserFunctionTypeError(
                self.name,
                f"{qualified_name(fn)} returned {truncated_repr(produced)} "
                f"({type(produced).__name__}){where}; an async def {name} returns a list of its outputs (or None), "
                "or yields them",
                record,
                has_record=has_record,
            )

    async def process_watermark(self, timestamp: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        service = ctx.timer_service
        if timestamp <= service.watermark:
            return  # not after a restore's watermark: its timers fired already
        service.watermark = timestamp
        if self.key_selector is not None:
            await self._fire(service.event_timers.pop_due_groups(timestamp), EVENT_TIME)
        await self.forward_watermark(timestamp)

    async def on_processing_time(self, now: int) -> None:
        """Called by the task's scheduler when the wall clock reaches a processing-time timer."""
        ctx = self.ctx
        assert ctx is not None
        service = ctx.timer_service
        await self._fire(service.processing_timers.pop_due_groups(now), PROCESSING_TIME)
        following = service.processing_timers.next_time()
        if following is not None:
            assert self.env is not None
            self.env.schedule(following, self.on_processing_time)

    async def _fire(self, groups: Iterator[tuple[int, Iterable[Any]]], domain: str) -> None:
        """Call ``on_timer`` for each due timer, a timestamp's group at a time."""
        ctx = self.ctx
        assert ctx is not None and self.env is not None
        ctx.time_domain = domain
        call = self._timer
        if call.kind != "sync" and isinstance(ctx, ConcurrentContext):
            try:
                await self._fire_concurrently(groups, domain == EVENT_TIME)
            finally:
                ctx.time_domain = EVENT_TIME
            return
        fn = call.fn
        sync = call.kind == "sync"
        batch_size = self.env.batch_size
        collector = Collector()
        add_all, out, out_stamps = collector.add_all, collector.values, collector.timestamps
        event_time = domain == EVENT_TIME
        trim, fired = self.env.state_backend.trim, 0
        try:
            for timestamp, keys in groups:
                ctx.timestamp = stamp = timestamp if event_time else None
                for key in keys:
                    fired += 1
                    if not fired & TRIM_EVERY:  # a watermark may fire millions: keep the state cache bounded
                        trim()
                    ctx.key = key
                    produced = fn(timestamp, ctx) if sync else await call.call_async(timestamp, ctx)
                    if produced is None:
                        continue
                    if produced.__class__ is GeneratorType:  # add_all inlined: the usual case
                        for item in produced:
                            if item.__class__ is tuple and len(item) == 2 and item[0].__class__ is OutputTag:
                                add_all([item], stamp)
                            else:
                                out.append(item)
                                out_stamps.append(stamp)
                    else:
                        add_all(produced, stamp)
                    if len(out) >= batch_size:
                        await self.emit_collected(collector, event_time)
                        collector = Collector()
                        add_all, out, out_stamps = collector.add_all, collector.values, collector.timestamps
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(
                f"on_timer at {ctx.timestamp} for key {ctx.key!r}: {describe_error(exc, fn)}", None, has_record=False
            ) from exc
        finally:
            ctx.time_domain = EVENT_TIME
        await self.emit_collected(collector, event_time)

    async def _fire_concurrently(self, groups: Iterator[tuple[int, Iterable[Any]]], event_time: bool) -> None:
        """Async ``on_timer`` for the due timers, up to :attr:`concurrency` at once, a
        key's in timestamp order; timers that come due meanwhile fire in a next round."""
        ctx = self.ctx
        assert ctx is not None and self.env is not None
        call, fn = self._timer, self._timer.fn
        batch_size = self.env.batch_size
        while timers := [(timestamp, key) for timestamp, keys in groups for key in keys]:

            async def one(i: int, timers: list[tuple[int, Any]] = timers) -> Any:
                timestamp, key = timers[i]
                ctx.key = key
                ctx.timestamp = timestamp if event_time else None
                try:
                    return await call.call_async(timestamp, ctx)
                except DESCRIBED_ERRORS:
                    raise
                except Exception as exc:
                    raise self.error(
                        f"on_timer at {timestamp} for key {key!r}: {describe_error(exc, fn)}", None, has_record=False
                    ) from exc

            outputs = await run_concurrently(one, len(timers), [key for _, key in timers], self.concurrency)
            collector = Collector()
            for (timestamp, key), produced in zip(timers, outputs, strict=True):
                if produced is not None:
                    self._check_async_outputs(produced, fn, f" at {timestamp} for key {key!r}", None, has_record=False)
                    collector.add_all(produced, timestamp if event_time else None)
                    if len(collector) >= batch_size:
                        await self.emit_collected(collector, event_time)
                        collector = Collector()
            await self.emit_collected(collector, event_time)
            groups = self._due_again(event_time)

    def _due_again(self, event_time: bool) -> Iterator[tuple[int, Iterable[Any]]]:
        """The timers that came due while the last round fired (registered by it)."""
        ctx = self.ctx
        assert ctx is not None
        service = ctx.timer_service
        if event_time:
            return service.event_timers.pop_due_groups(service.watermark)
        return service.processing_timers.pop_due_groups(now_ms())

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        assert self.ctx is not None
        return {"watermark": self.ctx.timer_service.watermark}

    async def restore_state(self, states: list[Any]) -> None:
        assert self.ctx is not None and self.env is not None
        service = self.ctx.timer_service
        service.watermark = min(state["watermark"] for state in states)
        following = service.processing_timers.next_time()
        if following is not None:
            self.env.schedule(following, self.on_processing_time)

    async def close(self) -> None:
        await call_user_close(self.function)
