"""The interval join: pairs of records with equal keys and close timestamps.

``left.interval_join(right).between(lower, upper)`` joins ``l`` and ``r`` when
``l.ts + lower <= r.ts <= l.ts + upper``, as Flink's IntervalJoinOperator does: each side
buffers its records by timestamp until the watermark makes further matches impossible,
and a record behind the watermark is late (dropped, or sent to a side output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import DESCRIBED_ERRORS, UserFunctionTypeError
from aioflow._core.operators.context import OperatorContext
from aioflow._core.operators.process import UserCall, call_user_close, call_user_open
from aioflow._core.runtime.calls import describe_error
from aioflow._core.runtime.events import MIN_WATERMARK, Batch, stamped
from aioflow._core.runtime.keygroups import key_group
from aioflow._core.runtime.operator import TRIM_EVERY, Collector, Operator

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment
    from aioflow._core.state.backend import KeyedStateBackend

__all__ = ["IntervalJoinOperator", "JoinContext"]

LEFT, RIGHT = "left", "right"


class _BufferSerializer:
    """A key's buffered records, ``{timestamp: [values]}``, as ``[[timestamp, [values]], ...]``
    (JSON objects cannot have int keys); the values with the app's serializer."""

    def __init__(self, backend: KeyedStateBackend) -> None:
        self._values = backend.serializer
        self.name = f"join-buffer/{self._values.name}"

    def dumps(self, buffered: dict[int, list[Any]]) -> bytes:
        return self._values.dumps([[ts, values] for ts, values in buffered.items()])

    def loads(self, data: bytes) -> dict[int, list[Any]]:
        return {ts: values for ts, values in self._values.loads(data)}


class JoinContext:
    """``ctx`` of :meth:`ProcessJoinFunction.process_element`."""

    __slots__ = ("key", "left_timestamp", "right_timestamp", "timestamp")

    def __init__(self) -> None:
        self.key: Any = None
        self.left_timestamp = 0
        self.right_timestamp = 0
        self.timestamp = 0


class IntervalJoinOperator(Operator):
    def __init__(
        self,
        name: str,
        function: Any,
        left_key: Callable[[Any], Any],
        right_key: Callable[[Any], Any],
        lower: int,
        upper: int,
        left_late_tag: str | None,
        right_late_tag: str | None,
    ) -> None:
        super().__init__(name)
        self.function = function
        self.left_key = left_key
        self.right_key = right_key
        self.lower = lower
        self.upper = upper
        self.late_tags = {LEFT: left_late_tag, RIGHT: right_late_tag}
        self.watermark = MIN_WATERMARK
        self.join_ctx = JoinContext()

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        backend, max_parallelism = env.state_backend, env.max_parallelism
        #: Per side: key -> {timestamp: [values]}.
        self.buffers = {
            side: backend.table(self.name, f"join-{side}", "join-buffer", serializer=_BufferSerializer(backend))
            for side in (LEFT, RIGHT)
        }
        self.timers = backend.timers(
            self.name,
            "join-cleanup",
            key_group_of=lambda namespace: key_group(namespace[0], max_parallelism),
        )
        ctx = OperatorContext(
            self.name,
            env.subtask_index,
            env.parallelism,
            keyed=True,
            backend=env.state_backend,
            schedule_processing_time=lambda at: None,
        )
        self._call = UserCall(self.function.process_element)
        await call_user_open(self, self.function, ctx)

    async def process(self, batch: Batch) -> None:
        await self._side(batch, LEFT)

    async def process2(self, batch: Batch) -> None:
        await self._side(batch, RIGHT)

    async def _side(self, batch: Batch, side: str) -> None:
        values, stamps = batch.values, batch.timestamps
        if not stamped(stamps):
            raise UserFunctionTypeError(
                self.name,
                "interval joins need event timestamps on both inputs; pass timestamps= to app.source",
                values[0] if stamps is None else values[stamps.index(None)],
            )
        is_left = side == LEFT
        selector = self.left_key if is_left else self.right_key
        keys = await self.keys_of(batch, selector)
        ours, others = self.buffers[side], self.buffers[RIGHT if is_left else LEFT]
        low, high = (self.lower, self.upper) if is_left else (-self.upper, -self.lower)
        collector = Collector()
        late: list[Any] = []
        late_ts: list[Any] = []
        pairs: list[tuple[Any, Any, Any, int, int]] = []
        watermark = self.watermark
        for value, key, ts in zip(values, keys, stamps):
            if watermark != MIN_WATERMARK and ts < watermark:
                late.append(value)
                late_ts.append(ts)
                continue
            buffered = ours.get(key)
            if buffered is None:
                ours.put(key, {ts: [value]})
            else:
                buffered.setdefault(ts, []).append(value)
                ours.put(key, buffered)
            for other_ts, bucket in (others.get(key) or {}).items():
                if ts + low <= other_ts <= ts + high:
                    for other in bucket:
                        if is_left:
                            pairs.append((key, value, other, ts, other_ts))
                        else:
                            pairs.append((key, other, value, other_ts, ts))
            cleanup = ts + high if high > 0 else ts
            self.timers.add(cleanup, (key, side))
        await self._join(pairs, collector)
        await self.emit_collected(collector)
        tag = self.late_tags[side]
        if late and tag is not None:
            await self.emit_side(tag, late, late_ts)

    async def _join(self, pairs: list[tuple[Any, Any, Any, int, int]], collector: Collector) -> None:
        call, ctx = self._call, self.join_ctx
        sync = call.kind == "sync"
        left = right = None
        try:
            for key, left, right, left_ts, right_ts in pairs:
                ctx.key, ctx.left_timestamp, ctx.right_timestamp = key, left_ts, right_ts
                ctx.timestamp = max(left_ts, right_ts)
                produced = call.fn(left, right, ctx) if sync else await call.call_async(left, right, ctx)
                if produced is not None:
                    collector.add_all(produced, ctx.timestamp)
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(describe_error(exc, call.fn), (left, right)) from exc

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        return {"watermark": self.watermark}

    async def restore_state(self, states: list[Any]) -> None:
        self.watermark = min(state["watermark"] for state in states)

    async def process_watermark(self, timestamp: int) -> None:
        if timestamp <= self.watermark:
            return  # not after a restore's watermark
        self.watermark = timestamp
        assert self.env is not None
        trim = self.env.state_backend.trim
        for fired, (time, (key, side)) in enumerate(self.timers.pop_due(timestamp), 1):
            if not fired & TRIM_EVERY:  # a watermark may fire millions: keep the state cache bounded
                trim()
            if side == LEFT:
                buffered = time if self.upper <= 0 else time - self.upper
            else:
                buffered = time + self.lower if self.lower <= 0 else time
            table = self.buffers[side]
            by_time = table.get(key)
            if by_time is not None:
                by_time.pop(buffered, None)
                if by_time:
                    table.put(key, by_time)
                else:
                    table.delete(key)
        await self.forward_watermark(timestamp)

    async def close(self) -> None:
        await call_user_close(self.function)
