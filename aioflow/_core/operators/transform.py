"""Stateless record-at-a-time operators (map, filter, flat_map) and the keyed rolling reduce."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import compress
from typing import TYPE_CHECKING, Any

from aioflow._core.operators.function import FunctionOperator
from aioflow._core.runtime.calls import collect_async, describe_error, is_async, qualified_name
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import Operator
from aioflow._core.state.backend import MISSING

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["FilterOperator", "FlatMapOperator", "MapOperator", "RollingReduceOperator"]


class MapOperator(FunctionOperator):
    """One output per record: ``fn(value)``."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, fn)
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        keys = await self.keys_in_order(batch) if self._async else None
        out = await self.call_each(self.fn, batch.values, is_async=self._async, keys=keys)
        await self.out.process(Batch(out, batch.timestamps))

    def emitted_none(self) -> str:
        fn = qualified_name(self.fn)
        return f"map {self.name!r}, whose function {fn} returned None (does it end without `return`?)"


class FilterOperator(FunctionOperator):
    """Keeps the records for which ``fn(value)`` is true."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, fn)
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        values = batch.values
        keys = await self.keys_in_order(batch) if self._async else None
        mask = await self.call_each(self.fn, values, is_async=self._async, keys=keys)
        timestamps = batch.timestamps
        await self.out.process(
            Batch(list(compress(values, mask)), list(compress(timestamps, mask)) if timestamps is not None else None)
        )

    def emitted_none(self) -> None:
        return None  # a filter passes records on unchanged


class FlatMapOperator(FunctionOperator):
    """Zero or more outputs per record: ``fn(value)`` returns (or, async, yields) an iterable."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name, fn)
        self._async_gen = inspect.isasyncgenfunction(fn)
        self._async = is_async(fn)

    async def process(self, batch: Batch) -> None:
        values = batch.values
        timestamps = batch.timestamps
        out: list[Any] = []
        out_ts: list[int | None] = []  # sent only when the records have timestamps
        fn = self.fn
        if self._async_gen:
            outputs = await self.call_each(
                lambda value: collect_async(fn(value)),
                values,
                is_async=True,
                keys=await self.keys_in_order(batch),
                named=fn,
            )
        elif self._async:
            outputs = await self.call_each(fn, values, is_async=True, keys=await self.keys_in_order(batch))
        else:
            outputs = None
        i = 0
        try:
            for i, value in enumerate(values):
                produced = fn(value) if outputs is None else outputs[i]
                if produced is None:
                    continue
                before = len(out)
                out.extend(produced)
                if timestamps is not None:
                    out_ts.extend([timestamps[i]] * (len(out) - before))
        except Exception as exc:
            raise self.error(describe_error(exc, fn), values[i]) from exc
        await self.out.process(Batch(out, out_ts if timestamps is not None else None))

    def emitted_none(self) -> str:
        return f"flat_map {self.name!r}, whose function {qualified_name(self.fn)} produced None"


class RollingReduceOperator(Operator):
    """``keyed.reduce(fn)``: per key, emits ``fn(previous_result, value)`` for every record
    (the first record of a key is emitted as is), like Flink's rolling reduce."""

    def __init__(self, name: str, fn: Callable[[Any, Any], Any], key_selector: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn
        self.key_selector: Callable[[Any], Any] = key_selector  # keyed: never None

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        self._table = env.state_backend.table(self.name, "reduce", "value")

    async def process(self, batch: Batch) -> None:
        values = batch.values
        keys = await self.keys_of(batch, self.key_selector)
        fn = self.fn
        view = self._table.view()
        get, load, put = view.get, view.load, view.put
        out: list[Any] = []
        append = out.append
        value = None
        try:
            for key, value in zip(keys, values):
                previous = get(key, MISSING)
                if previous is MISSING:
                    previous = load(key)
                current = value if previous is MISSING else fn(previous, value)
                put(key, current)
                append(current)
        except Exception as exc:
            raise self.error(describe_error(exc, fn), value) from exc
        await self.out.process(Batch(out, batch.timestamps))

    def emitted_none(self) -> str:
        return f"reduce {self.name!r}, whose function {qualified_name(self.fn)} returned None"
