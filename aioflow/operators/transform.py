"""Stateless record-at-a-time operators (map, filter, flat_map) and the keyed rolling reduce."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import compress
from typing import TYPE_CHECKING, Any

from aioflow.operators.base import Operator, await_user, collect_async, describe_error, is_async
from aioflow.runtime.events import Batch
from aioflow.state.table import MISSING

if TYPE_CHECKING:
    from aioflow.runtime.task import SubtaskEnvironment

__all__ = ["FilterOperator", "FlatMapOperator", "MapOperator", "RollingReduceOperator"]

class MapOperator(Operator):
    """One output per record: ``fn(value)``."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        out = await self.call_each(self.fn, batch.values, is_async=self._async)
        await self.out.process(Batch(out, batch.timestamps))


class FilterOperator(Operator):
    """Keeps the records for which ``fn(value)`` is true."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        values = batch.values
        mask = await self.call_each(self.fn, values, is_async=self._async)
        timestamps = batch.timestamps
        await self.out.process(
            Batch(list(compress(values, mask)), list(compress(timestamps, mask)) if timestamps is not None else None)
        )


class FlatMapOperator(Operator):
    """Zero or more outputs per record: ``fn(value)`` returns (or, async, yields) an iterable."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn
        self._async_gen = inspect.isasyncgenfunction(fn)
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        values = batch.values
        timestamps = batch.timestamps
        out: list[Any] = []
        out_ts: list[Any] | None = [] if timestamps is not None else None
        fn = self.fn
        i = 0
        try:
            for i, value in enumerate(values):
                if self._async_gen:
                    produced = await await_user(collect_async(fn(value)))
                elif self._async:
                    produced = await await_user(fn(value))
                else:
                    produced = fn(value)
                if produced is None:
                    continue
                before = len(out)
                out.extend(produced)
                if out_ts is not None:
                    out_ts.extend([timestamps[i]] * (len(out) - before))  # type: ignore[index]
        except Exception as exc:
            raise self.error(describe_error(exc, fn), values[i]) from exc
        await self.out.process(Batch(out, out_ts))


class RollingReduceOperator(Operator):
    """``keyed.reduce(fn)``: per key, emits ``fn(previous_result, value)`` for every record
    (the first record of a key is emitted as is), like Flink's rolling reduce."""

    def __init__(self, name: str, fn: Callable[[Any, Any], Any], key_selector: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn
        self.key_selector = key_selector

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        self._table = env.state_backend.table(self.name, "reduce", "value")

    async def process(self, batch: Batch) -> None:
        values = batch.values
        keys = await self.keys_of(batch, self.key_selector)
        table, fn = self._table, self.fn
        entries, mark = table.entries(), table.marker()
        out: list[Any] = []
        append = out.append
        value = None
        try:
            for key, value in zip(keys, values):
                previous = entries.get(key, MISSING)
                if previous is MISSING and table.incomplete:
                    previous = table.load(key)
                current = value if previous is MISSING else fn(previous, value)
                entries[key] = current
                mark(key)
                append(current)
        except Exception as exc:
            raise self.error(describe_error(exc, fn), value) from exc
        await self.out.process(Batch(out, batch.timestamps))
