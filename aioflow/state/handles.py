"""Keyed state handles, with Flink's method names.

A handle reads and writes the state of the *current key*: the key of the record or
timer being processed. Each handle works on one :class:`~aioflow.state.table.StateTable`
of the operator's state backend: it reads the table's cached entries, falls back to the
store on a miss, and marks what it changes so the next checkpoint writes it.

A value read from state and changed in place (``state.value().append(x)``) must be
written back with ``update``; list and map state mark their own changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aioflow.state.table import MISSING, StateTable

if TYPE_CHECKING:
    from aioflow.functions import AggregateFunction

__all__ = ["AggregatingState", "ListState", "MapState", "ReducingState", "ValueState"]


class _KeyedHandle:
    __slots__ = ("_current", "_entries", "_mark", "_namespace", "_table")

    def __init__(self, table: StateTable, current: Any, namespace: Any = None) -> None:
        self._table = table
        self._namespace = namespace
        self._entries = table.entries(namespace)
        self._mark = table.marker(namespace)
        self._current = current  # an object whose ``key`` attribute is the current key

    def _get(self, key: Any) -> Any:
        value = self._entries.get(key, MISSING)
        if value is MISSING and self._table.incomplete:
            value = self._table.load(key, self._namespace)
        return value

    def _put(self, key: Any, value: Any) -> None:
        self._entries[key] = value
        self._mark(key)

    def clear(self) -> None:
        """Remove the current key's state."""
        key = self._current.key
        self._entries.pop(key, None)
        self._mark(key)


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, frozenset, range)


def _is_immutable(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_is_immutable(item) for item in value)
    return isinstance(value, _IMMUTABLE)


class ValueState(_KeyedHandle):
    """One value per key: ``value()``, ``update(v)``, ``clear()``."""

    __slots__ = ("_default", "_shared_default")

    def __init__(self, table: StateTable, current: Any, default: Any = None, namespace: Any = None) -> None:
        super().__init__(table, current, namespace)
        self._default = default
        self._shared_default = _is_immutable(default)

    def value(self) -> Any:
        """The current key's value, or the default given when the state was declared
        (a fresh copy per key when the default is mutable, e.g. ``[]``)."""
        value = self._get(self._current.key)
        if value is MISSING:
            return self._default if self._shared_default else copy.deepcopy(self._default)
        return value

    def update(self, value: Any) -> None:
        """Set the current key's value; ``update(None)`` clears it, as in Flink."""
        if value is None:
            self.clear()
        else:
            self._put(self._current.key, value)


class ListState(_KeyedHandle):
    """A list per key: ``get()``, ``add(v)``, ``add_all(vs)``, ``update(vs)``, ``clear()``."""

    __slots__ = ()

    def get(self) -> list[Any]:
        """A copy of the current key's list (empty if none)."""
        items = self._get(self._current.key)
        return [] if items is MISSING else list(items)

    def add(self, value: Any) -> None:
        key = self._current.key
        items = self._get(key)
        if items is MISSING:
            self._entries[key] = [value]
        else:
            items.append(value)
        self._mark(key)

    def add_all(self, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            key = self._current.key
            items = self._get(key)
            self._put(key, values if items is MISSING else items + values)

    def update(self, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            self._put(self._current.key, values)
        else:
            self.clear()


class MapState(_KeyedHandle):
    """A dict per key: ``get``, ``put``, ``put_all``, ``remove``, ``contains``, ``keys``,
    ``values``, ``items``, ``is_empty``, ``clear``."""

    __slots__ = ()

    def _map(self) -> dict[Any, Any]:
        entries = self._get(self._current.key)
        return {} if entries is MISSING else entries

    def get(self, key: Any, default: Any = None) -> Any:
        return self._map().get(key, default)

    def put(self, key: Any, value: Any) -> None:
        current = self._current.key
        entries = self._get(current)
        if entries is MISSING:
            self._entries[current] = {key: value}
        else:
            entries[key] = value
        self._mark(current)

    def put_all(self, entries: dict[Any, Any]) -> None:
        if entries:
            current = self._current.key
            existing = self._get(current)
            self._put(current, dict(entries) if existing is MISSING else {**existing, **entries})

    def remove(self, key: Any) -> None:
        current = self._current.key
        entries = self._get(current)
        if entries is not MISSING and key in entries:
            del entries[key]
            if entries:
                self._mark(current)
            else:
                self.clear()

    def contains(self, key: Any) -> bool:
        return key in self._map()

    def keys(self) -> Iterator[Any]:
        return iter(list(self._map()))

    def values(self) -> Iterator[Any]:
        return iter(list(self._map().values()))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self._map().items()))

    def is_empty(self) -> bool:
        return not self._map()


class ReducingState(_KeyedHandle):
    """Values combined with a reduce function as they are added: ``get()``, ``add(v)``, ``clear()``."""

    __slots__ = ("_reduce",)

    def __init__(self, table: StateTable, current: Any, reduce: Callable[[Any, Any], Any]) -> None:
        super().__init__(table, current)
        self._reduce = reduce

    def get(self) -> Any:
        value = self._get(self._current.key)
        return None if value is MISSING else value

    def add(self, value: Any) -> None:
        key = self._current.key
        current = self._get(key)
        self._put(key, value if current is MISSING else self._reduce(current, value))


class AggregatingState(_KeyedHandle):
    """Values folded into an accumulator by an :class:`AggregateFunction`: ``get()``, ``add(v)``, ``clear()``."""

    __slots__ = ("_agg",)

    def __init__(self, table: StateTable, current: Any, agg: AggregateFunction[Any, Any, Any]) -> None:
        super().__init__(table, current)
        self._agg = agg

    def get(self) -> Any:
        """The aggregate's result for the current key, or ``None`` if nothing was added."""
        acc = self._get(self._current.key)
        return None if acc is MISSING else self._agg.get_result(acc)

    def add(self, value: Any) -> None:
        key = self._current.key
        acc = self._get(key)
        self._put(key, self._agg.add(value, self._agg.create_accumulator() if acc is MISSING else acc))
