"""Keyed state handles, with Flink's method names.

A handle reads and writes the state of the *current key*: the key of the record or
timer being processed. Each handle works on one :class:`~aioflow._core.state.backend.StateTable`
of the operator's state backend: it reads the table's cached entries, falls back to the
store on a miss, and marks what it changes so the next checkpoint writes it.

A value read from state and changed in place (``state.value().append(x)``) must be
written back with ``update``; list and map state mark their own changes.

Each kind has a TTL variant (``TtlValueState``...), declared with ``ttl=StateTtl(...)``:
the same methods over values stored with their expiry (see :mod:`aioflow._core.state.ttl`).
They are separate classes so that state without a TTL does no extra work per record.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aioflow._core.state.backend import MISSING, StateTable
from aioflow._core.state.ttl import purge_list, purge_map

if TYPE_CHECKING:
    from aioflow._core.functions import AggregateFunction
    from aioflow._core.state.ttl import StateTtl

__all__ = [
    "AggregatingState",
    "ListState",
    "MapState",
    "ReducingState",
    "TtlAggregatingState",
    "TtlListState",
    "TtlMapState",
    "TtlReducingState",
    "TtlValueState",
    "ValueState",
]


class _KeyedHandle:
    """A handle reads and writes the current key's entry through its namespace's view."""

    __slots__ = ("_current", "_delete", "_get", "_load", "_mark", "_put", "_table")

    def __init__(self, table: StateTable, current: Any, namespace: Any = None) -> None:
        self._table = table
        view = table.view(namespace)
        self._get = view.get
        self._load = view.load
        self._put = view.put
        self._mark = view.mark
        self._delete = view.delete
        self._current = current  # an object whose ``key`` attribute is the current key

    def _value(self, key: Any) -> Any:
        """``key``'s value or ``MISSING``."""
        value = self._get(key, MISSING)
        return self._load(key) if value is MISSING else value

    def clear(self) -> None:
        """Remove the current key's state."""
        self._delete(self._current.key)


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
        key = self._current.key
        value = self._get(key, MISSING)
        if value is MISSING:
            value = self._load(key)
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
        items = self._value(self._current.key)
        return [] if items is MISSING else list(items)

    def add(self, value: Any) -> None:
        key = self._current.key
        items = self._value(key)
        if items is MISSING:
            self._put(key, [value])
        else:
            items.append(value)
            self._mark(key)

    def add_all(self, values: Iterable[Any]) -> None:
        values = list(values)
        if values:
            key = self._current.key
            items = self._value(key)
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
        entries = self._value(self._current.key)
        return {} if entries is MISSING else entries

    def get(self, key: Any, default: Any = None) -> Any:
        return self._map().get(key, default)

    def put(self, key: Any, value: Any) -> None:
        current = self._current.key
        entries = self._value(current)
        if entries is MISSING:
            self._put(current, {key: value})
        else:
            entries[key] = value
            self._mark(current)

    def put_all(self, entries: dict[Any, Any]) -> None:
        if entries:
            current = self._current.key
            existing = self._value(current)
            self._put(current, dict(entries) if existing is MISSING else {**existing, **entries})

    def remove(self, key: Any) -> None:
        current = self._current.key
        entries = self._value(current)
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
        value = self._value(self._current.key)
        return None if value is MISSING else value

    def add(self, value: Any) -> None:
        key = self._current.key
        current = self._value(key)
        self._put(key, value if current is MISSING else self._reduce(current, value))


class AggregatingState(_KeyedHandle):
    """Values folded into an accumulator by an :class:`AggregateFunction`: ``get()``, ``add(v)``, ``clear()``."""

    __slots__ = ("_agg",)

    def __init__(self, table: StateTable, current: Any, agg: AggregateFunction[Any, Any, Any]) -> None:
        super().__init__(table, current)
        self._agg = agg

    def get(self) -> Any:
        """The aggregate's result for the current key, or ``None`` if nothing was added."""
        acc = self._value(self._current.key)
        return None if acc is MISSING else self._agg.get_result(acc)

    def add(self, value: Any) -> None:
        key = self._current.key
        acc = self._value(key)
        self._put(key, self._agg.add(value, self._agg.create_accumulator() if acc is MISSING else acc))


# -- TTL variants ------------------------------------------------------------------------------

_TTL_SLOTS = ("_clock", "_refresh", "_ttl_ms")


class _TtlSlots(Protocol):
    """The ``_TTL_SLOTS`` a TTL handle holds (declared by each concrete class, since two
    slotted bases cannot both have slots)."""

    _clock: Callable[[], int]
    _refresh: bool
    _ttl_ms: int


class _Expiring:
    """What the TTL handles share; each concrete class holds ``_TTL_SLOTS``. Values of
    value, reducing and aggregating state are stored as ``[expires_at, value]``."""

    __slots__ = ()

    _clock: Callable[[], int]
    _refresh: bool
    _ttl_ms: int
    _put: Callable[[Any, Any], None]
    _mark: Callable[[Any], None]
    _delete: Callable[[Any], None]
    _current: Any

    def _set_ttl(self: _TtlSlots, ttl: StateTtl, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._refresh = ttl.refresh_on_read
        self._ttl_ms = ttl.ttl_ms

    def _live(self, key: Any, stored: Any) -> Any:
        """The value in ``key``'s stored ``[expires_at, value]``, or ``MISSING`` if there is
        none or it expired (then it is deleted). A read refreshes it if so configured."""
        if stored is MISSING:
            return MISSING
        now = self._clock()
        if stored[0] <= now:
            self._delete(key)
            return MISSING
        if self._refresh:
            stored[0] = now + self._ttl_ms
            self._mark(key)
        return stored[1]

    def _write(self, key: Any, value: Any) -> None:
        self._put(key, [self._clock() + self._ttl_ms, value])

    def _replace(self, key: Any, live: Any) -> None:
        """Store what is left of ``key``'s list or map after expired parts went (``MISSING``: nothing)."""
        if live is MISSING:
            self._delete(key)
        else:
            self._put(key, live)


class TtlValueState(_Expiring, ValueState):
    """:class:`ValueState` whose value expires ``ttl`` after it was last written."""

    __slots__ = _TTL_SLOTS

    def __init__(
        self, table: StateTable, current: Any, default: Any = None, *, ttl: StateTtl, clock: Callable[[], int]
    ) -> None:
        super().__init__(table, current, default)
        self._set_ttl(ttl, clock)

    def value(self) -> Any:
        key = self._current.key
        value = self._live(key, self._value(key))
        if value is MISSING:
            return self._default if self._shared_default else copy.deepcopy(self._default)
        return value

    def update(self, value: Any) -> None:
        if value is None:
            self.clear()
        else:
            self._write(self._current.key, value)


class TtlListState(_Expiring, ListState):
    """:class:`ListState` whose elements expire one by one, each ``ttl`` after it was added
    (``update`` gives every element a new time; with ``refresh_on_read``, ``get`` does)."""

    __slots__ = _TTL_SLOTS

    def __init__(self, table: StateTable, current: Any, *, ttl: StateTtl, clock: Callable[[], int]) -> None:
        super().__init__(table, current)
        self._set_ttl(ttl, clock)

    def get(self) -> list[Any]:
        key = self._current.key
        items = self._value(key)
        if items is MISSING:
            return []
        now = self._clock()
        live = purge_list(items, now)
        if live is not items:
            self._replace(key, live)
            if live is MISSING:
                return []
        if self._refresh:
            expires = now + self._ttl_ms
            for item in live:
                item[0] = expires
            self._mark(key)
        return [item[1] for item in live]

    def add(self, value: Any) -> None:
        key = self._current.key
        items = self._value(key)
        item = [self._clock() + self._ttl_ms, value]
        if items is MISSING:
            self._put(key, [item])
        else:
            items.append(item)
            self._mark(key)

    def add_all(self, values: Iterable[Any]) -> None:
        expires = self._clock() + self._ttl_ms
        added = [[expires, value] for value in values]
        if added:
            key = self._current.key
            items = self._value(key)
            self._put(key, added if items is MISSING else items + added)

    def update(self, values: Iterable[Any]) -> None:
        expires = self._clock() + self._ttl_ms
        items = [[expires, value] for value in values]
        if items:
            self._put(self._current.key, items)
        else:
            self.clear()


class TtlMapState(_Expiring, MapState):
    """:class:`MapState` whose entries expire one by one, each ``ttl`` after it was put.
    With ``refresh_on_read``, the entries a read returns (``get``, ``contains``, ``keys``,
    ``values``, ``items``) start their time again."""

    __slots__ = _TTL_SLOTS

    def __init__(self, table: StateTable, current: Any, *, ttl: StateTtl, clock: Callable[[], int]) -> None:
        super().__init__(table, current)
        self._set_ttl(ttl, clock)

    def _map(self) -> dict[Any, Any]:
        """The current key's live ``{map_key: [expires_at, value]}`` (expired entries deleted)."""
        current = self._current.key
        entries = self._value(current)
        if entries is MISSING:
            return {}
        now = self._clock()
        live: dict[Any, Any] = purge_map(entries, now)  # or MISSING: nothing left
        if live is not entries:
            self._replace(current, live)
            if live is MISSING:
                return {}
        return live

    def _read_all(self) -> dict[Any, Any]:
        entries = self._map()
        if self._refresh and entries:
            expires = self._clock() + self._ttl_ms
            for entry in entries.values():
                entry[0] = expires
            self._mark(self._current.key)
        return entries

    def _entry(self, key: Any) -> Any:
        """``key``'s live ``[expires_at, value]``, or ``None`` (an expired one is deleted)."""
        current = self._current.key
        entries = self._value(current)
        if entries is MISSING or key not in entries:
            return None
        entry = entries[key]
        now = self._clock()
        if entry[0] <= now:
            del entries[key]
            self._replace(current, entries or MISSING)
            return None
        if self._refresh:
            entry[0] = now + self._ttl_ms
            self._mark(current)
        return entry

    def get(self, key: Any, default: Any = None) -> Any:
        entry = self._entry(key)
        return default if entry is None else entry[1]

    def put(self, key: Any, value: Any) -> None:
        current = self._current.key
        entries = self._value(current)
        entry = [self._clock() + self._ttl_ms, value]
        if entries is MISSING:
            self._put(current, {key: entry})
        else:
            entries[key] = entry
            self._mark(current)

    def put_all(self, entries: dict[Any, Any]) -> None:
        if entries:
            expires = self._clock() + self._ttl_ms
            added = {key: [expires, value] for key, value in entries.items()}
            current = self._current.key
            existing = self._value(current)
            self._put(current, added if existing is MISSING else {**existing, **added})

    def contains(self, key: Any) -> bool:
        return self._entry(key) is not None

    def keys(self) -> Iterator[Any]:
        return iter(list(self._read_all()))

    def values(self) -> Iterator[Any]:
        return iter([entry[1] for entry in self._read_all().values()])

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter([(key, entry[1]) for key, entry in self._read_all().items()])

    def is_empty(self) -> bool:
        return not self._map()


class TtlReducingState(_Expiring, ReducingState):
    """:class:`ReducingState` whose value expires ``ttl`` after the last ``add``; an ``add``
    after it expired starts from the new value alone."""

    __slots__ = _TTL_SLOTS

    def __init__(
        self,
        table: StateTable,
        current: Any,
        reduce: Callable[[Any, Any], Any],
        *,
        ttl: StateTtl,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(table, current, reduce)
        self._set_ttl(ttl, clock)

    def get(self) -> Any:
        key = self._current.key
        value = self._live(key, self._value(key))
        return None if value is MISSING else value

    def add(self, value: Any) -> None:
        key = self._current.key
        current = self._live(key, self._value(key))
        self._write(key, value if current is MISSING else self._reduce(current, value))


class TtlAggregatingState(_Expiring, AggregatingState):
    """:class:`AggregatingState` whose accumulator expires ``ttl`` after the last ``add``;
    an ``add`` after it expired starts a new accumulator."""

    __slots__ = _TTL_SLOTS

    def __init__(
        self,
        table: StateTable,
        current: Any,
        agg: AggregateFunction[Any, Any, Any],
        *,
        ttl: StateTtl,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(table, current, agg)
        self._set_ttl(ttl, clock)

    def get(self) -> Any:
        key = self._current.key
        acc = self._live(key, self._value(key))
        return None if acc is MISSING else self._agg.get_result(acc)

    def add(self, value: Any) -> None:
        key = self._current.key
        acc = self._live(key, self._value(key))
        self._write(key, self._agg.add(value, self._agg.create_accumulator() if acc is MISSING else acc))
