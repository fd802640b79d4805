"""Keyed state handles, with Flink's method names.

A handle reads and writes the state of the *current key*: the key of the record or
timer being processed. Each handle works on one table (a dict from key to value) held
by the operator's state backend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioflow.functions import AggregateFunction

__all__ = ["AggregatingState", "ListState", "MapState", "ReducingState", "ValueState"]

_ABSENT: Any = object()


class _KeyedHandle:
    __slots__ = ("_current", "_table")

    def __init__(self, table: dict[Any, Any], current: Any) -> None:
        self._table = table
        self._current = current  # an object whose ``key`` attribute is the current key

    def clear(self) -> None:
        """Remove the current key's state."""
        self._table.pop(self._current.key, None)


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, frozenset, range)


def _is_immutable(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_is_immutable(item) for item in value)
    return isinstance(value, _IMMUTABLE)


class ValueState(_KeyedHandle):
    """One value per key: ``value()``, ``update(v)``, ``clear()``."""

    __slots__ = ("_default", "_shared_default")

    def __init__(self, table: dict[Any, Any], current: Any, default: Any = None) -> None:
        super().__init__(table, current)
        self._default = default
        self._shared_default = _is_immutable(default)

    def value(self) -> Any:
        """The current key's value, or the default given when the state was declared
        (a fresh copy per key when the default is mutable, e.g. ``[]``)."""
        if self._shared_default:
            return self._table.get(self._current.key, self._default)
        value = self._table.get(self._current.key, _ABSENT)
        return copy.deepcopy(self._default) if value is _ABSENT else value

    def update(self, value: Any) -> None:
        """Set the current key's value; ``update(None)`` clears it, as in Flink."""
        if value is None:
            self._table.pop(self._current.key, None)
        else:
            self._table[self._current.key] = value


class ListState(_KeyedHandle):
    """A list per key: ``get()``, ``add(v)``, ``add_all(vs)``, ``update(vs)``, ``clear()``."""

    __slots__ = ()

    def get(self) -> list[Any]:
        """A copy of the current key's list (empty if none)."""
        return list(self._table.get(self._current.key, ()))

    def add(self, value: Any) -> None:
        items = self._table.get(self._current.key)
        if items is None:
            self._table[self._current.key] = [value]
        else:
            items.append(value)

    def add_all(self, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            self._table.setdefault(self._current.key, []).extend(values)

    def update(self, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            self._table[self._current.key] = values
        else:
            self._table.pop(self._current.key, None)


class MapState(_KeyedHandle):
    """A dict per key: ``get``, ``put``, ``put_all``, ``remove``, ``contains``, ``keys``,
    ``values``, ``items``, ``is_empty``, ``clear``."""

    __slots__ = ()

    def _map(self) -> dict[Any, Any]:
        return self._table.get(self._current.key) or {}

    def get(self, key: Any, default: Any = None) -> Any:
        return self._map().get(key, default)

    def put(self, key: Any, value: Any) -> None:
        entries = self._table.get(self._current.key)
        if entries is None:
            self._table[self._current.key] = {key: value}
        else:
            entries[key] = value

    def put_all(self, entries: dict[Any, Any]) -> None:
        if entries:
            self._table.setdefault(self._current.key, {}).update(entries)

    def remove(self, key: Any) -> None:
        entries = self._table.get(self._current.key)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._table[self._current.key]

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

    def __init__(self, table: dict[Any, Any], current: Any, reduce: Callable[[Any, Any], Any]) -> None:
        super().__init__(table, current)
        self._reduce = reduce

    def get(self) -> Any:
        return self._table.get(self._current.key)

    def add(self, value: Any) -> None:
        key = self._current.key
        table = self._table
        table[key] = self._reduce(table[key], value) if key in table else value


class AggregatingState(_KeyedHandle):
    """Values folded into an accumulator by an :class:`AggregateFunction`: ``get()``, ``add(v)``, ``clear()``."""

    __slots__ = ("_agg",)

    def __init__(self, table: dict[Any, Any], current: Any, agg: AggregateFunction[Any, Any, Any]) -> None:
        super().__init__(table, current)
        self._agg = agg

    def get(self) -> Any:
        """The aggregate's result for the current key, or ``None`` if nothing was added."""
        key = self._current.key
        if key not in self._table:
            return None
        return self._agg.get_result(self._table[key])

    def add(self, value: Any) -> None:
        key = self._current.key
        table = self._table
        acc = table[key] if key in table else self._agg.create_accumulator()
        table[key] = self._agg.add(value, acc)
