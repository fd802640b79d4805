"""The in-memory keyed-state backend: dicts, and timers in a heap; nothing survives the process.

Each table is ``namespace -> {key: value}`` (namespace-first: window firing wants a
window's keys together), and its views are the dicts' own methods, so the per-record
path runs at C speed. There is no bound: memory grows with the state.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aioflow._core.errors import PipelineError
from aioflow._core.runtime.keygroups import key_group
from aioflow._core.state.backend import (
    MISSING,
    Change,
    KeyCodec,
    NamespacedTimerQueue,
    NamespaceView,
    StateTable,
    TimerQueue,
)
from aioflow._core.state.serializers import JsonSerializer, Serializer
from aioflow._core.state.ttl import TtlCleanup
from aioflow._core.time.timers import now_ms

__all__ = ["MemoryBackend", "MemoryTable", "MemoryTimerQueue", "check_declaration"]

_DISCARD: deque[Any] = deque(maxlen=0)  # ``_DISCARD.append`` is a no-op at C speed: nothing to mark in memory


def check_declaration(table: StateTable, operator: str, state: str, declared: str) -> None:
    """A state declared again must keep its kind (a :class:`PipelineError` naming both otherwise)."""
    if table.kind != declared:
        raise PipelineError(
            f"operator {operator!r}: state {state!r} was declared as {table.kind} state, "
            f"cannot declare it again as {declared} state"
        )


class MemoryTable:
    """A table of the memory backend; see the module docstring."""

    def __init__(self, operator: str, name: str, kind: str, serializer: Serializer) -> None:
        self.operator = operator
        self.name = name
        self.kind = kind
        self.serializer = serializer
        self._namespaces: dict[Any, dict[Any, Any]] = {}
        self._views: dict[Any, NamespaceView] = {}

    def __repr__(self) -> str:
        return f"<MemoryTable {self.operator!r}/{self.name!r} ({self.kind})>"

    def view(self, namespace: Any = None) -> NamespaceView:
        view = self._views.get(namespace)
        if view is None:
            entries = self._namespaces.get(namespace)
            if entries is None:
                entries = self._namespaces[namespace] = {}
            pop = entries.pop

            def delete(key: Any) -> None:
                pop(key, None)

            view = self._views[namespace] = NamespaceView(entries.get, entries.__setitem__, _DISCARD.append, delete)
        return view

    def get(self, key: Any, namespace: Any = None, default: Any = None) -> Any:
        entries = self._namespaces.get(namespace)
        return default if entries is None else entries.get(key, default)

    def put(self, key: Any, value: Any, namespace: Any = None) -> None:
        entries = self._namespaces.get(namespace)
        if entries is None:  # a view, made when asked for, sees this dict
            entries = self._namespaces[namespace] = {}
        entries[key] = value

    def delete(self, key: Any, namespace: Any = None) -> None:
        entries = self._namespaces.get(namespace)
        if entries is not None:
            entries.pop(key, None)
            if not entries and namespace is not None:
                self.drop(namespace)

    def keys_in(self, namespace: Any = None) -> list[Any]:
        return list(self._namespaces.get(namespace, ()))

    def drop(self, namespace: Any) -> None:
        self._namespaces.pop(namespace, None)
        self._views.pop(namespace, None)

    def scan(self) -> Iterator[tuple[Any, Any]]:
        for namespace in list(self._namespaces):
            for key in list(self._namespaces.get(namespace, ())):
                yield namespace, key

    def peek(self, key: Any, namespace: Any = None) -> Any:
        return self.get(key, namespace, MISSING)

    def items(self, namespace: Any = None) -> list[tuple[Any, Any]]:
        """Every ``(key, value)`` of ``namespace``."""
        return list(self._namespaces.get(namespace, {}).items())

    def cached_entries(self) -> int:
        return sum(map(len, self._namespaces.values()))


class _TimeHeap:
    """Timers by timestamp: a heap of distinct timestamps over a dict of what is due at
    each (entries of removed timestamps stay in the heap until compacted or popped)."""

    __slots__ = ("_by_time", "_heap")

    def __init__(self) -> None:
        self._by_time: dict[int, Any] = {}
        self._heap: list[int] = []

    def _forget(self, timestamp: int) -> None:
        """``timestamp`` has no timers left."""
        del self._by_time[timestamp]
        if len(self._heap) > 2 * len(self._by_time) + 1024:  # drop stale heap entries
            self._heap[:] = self._by_time  # in place: pop_due may be iterating it
            heapq.heapify(self._heap)

    def next_time(self) -> int | None:
        heap, by_time = self._heap, self._by_time
        while heap:
            if by_time.get(heap[0]):
                return heap[0]
            by_time.pop(heapq.heappop(heap), None)
        return None

    def clear(self) -> None:
        self._by_time.clear()
        self._heap.clear()


class MemoryTimerQueue(_TimeHeap):
    """Timers in memory: a heap of distinct timestamps, each with an insertion-ordered set
    of keys (so timers of one timestamp fire in registration order)."""

    __slots__ = ()
    _by_time: dict[int, dict[Any, None]]

    def __len__(self) -> int:
        return sum(map(len, self._by_time.values()))

    def add(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is None:
            self._by_time[timestamp] = {key: None}
            heapq.heappush(self._heap, timestamp)
        else:
            keys[key] = None

    def add_all(self, timestamp: int, keys: list[Any]) -> None:
        existing = self._by_time.get(timestamp)
        if existing is None:
            self._by_time[timestamp] = dict.fromkeys(keys)
            heapq.heappush(self._heap, timestamp)
        else:
            existing.update(dict.fromkeys(keys))

    def remove(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                self._forget(timestamp)

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any]]:
        heap, by_time = self._heap, self._by_time
        while heap and heap[0] <= limit:
            timestamp = heapq.heappop(heap)
            keys = by_time.pop(timestamp, None)
            if keys:
                for key in keys:
                    yield timestamp, key

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Iterable[Any]]]:
        heap, by_time = self._heap, self._by_time
        while heap and heap[0] <= limit:
            timestamp = heapq.heappop(heap)
            keys = by_time.pop(timestamp, None)
            if keys:
                yield timestamp, keys

    def drop(self, doomed: Callable[[Any], bool]) -> None:
        """Remove every timer whose key is ``doomed``."""
        for timestamp, keys in list(self._by_time.items()):
            for key in [key for key in keys if doomed(key)]:
                self.remove(timestamp, key)


class MemoryNamespacedTimerQueue(_TimeHeap):
    """Namespaced timers in memory: a heap of distinct timestamps, each with its namespaces
    in registration order, each with an insertion-ordered set of keys."""

    __slots__ = ()
    _by_time: dict[int, dict[Any, dict[Any, None]]]

    def __len__(self) -> int:
        return sum(len(keys) for spaces in self._by_time.values() for keys in spaces.values())

    def add(self, timestamp: int, key: Any, namespace: Any) -> None:
        spaces = self._by_time.get(timestamp)
        if spaces is None:
            self._by_time[timestamp] = {namespace: {key: None}}
            heapq.heappush(self._heap, timestamp)
            return
        keys = spaces.get(namespace)
        if keys is None:
            spaces[namespace] = {key: None}
        else:
            keys[key] = None

    def add_all(self, timestamp: int, namespace: Any, keys: list[Any]) -> None:
        spaces = self._by_time.get(timestamp)
        if spaces is None:
            self._by_time[timestamp] = {namespace: dict.fromkeys(keys)}
            heapq.heappush(self._heap, timestamp)
            return
        existing = spaces.get(namespace)
        if existing is None:
            spaces[namespace] = dict.fromkeys(keys)
        else:
            existing.update(dict.fromkeys(keys))

    def remove(self, timestamp: int, key: Any, namespace: Any) -> None:
        spaces = self._by_time.get(timestamp)
        if spaces is None:
            return
        keys = spaces.get(namespace)
        if keys is None or key not in keys:
            return
        del keys[key]
        if keys:
            return
        del spaces[namespace]
        if not spaces:
            self._forget(timestamp)

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any, Any]]:
        for timestamp, namespace, keys in self.pop_due_groups(limit):
            for key in keys:
                yield timestamp, key, namespace

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Any, Iterable[Any]]]:
        heap, by_time = self._heap, self._by_time
        while heap and heap[0] <= limit:
            timestamp = heapq.heappop(heap)
            spaces = by_time.pop(timestamp, None)
            if spaces:
                for namespace, keys in spaces.items():
                    yield timestamp, namespace, keys

    def drop(self, doomed: Callable[[Any], bool]) -> None:
        """Remove every timer whose key is ``doomed``."""
        for timestamp, spaces in list(self._by_time.items()):
            for namespace, keys in list(spaces.items()):
                for key in [key for key in keys if doomed(key)]:
                    self.remove(timestamp, key, namespace)


class MemoryBackend:
    """Keyed state in dicts (see the module docstring). ``clock`` is processing time for
    TTL state (default: the wall clock); tests pass a fake one."""

    durable = False

    def __init__(
        self,
        *,
        key_groups: Iterable[int] = range(128),
        max_parallelism: int = 128,
        serializer: Serializer | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._key_groups = frozenset(key_groups)
        self.max_parallelism = max_parallelism
        self.serializer = serializer if serializer is not None else JsonSerializer()
        self.clock = clock if clock is not None else now_ms
        self.tables: dict[tuple[str, str], MemoryTable] = {}
        self._timer_queues: list[tuple[MemoryTimerQueue | MemoryNamespacedTimerQueue, Callable[[Any], int] | None]] = []
        self._ttl = TtlCleanup(self.clock)

    @property
    def key_groups(self) -> frozenset[int]:
        return self._key_groups

    def table(
        self,
        operator: str,
        state: str,
        kind: str,
        *,
        serializer: Serializer | None = None,
        key_group_of: Callable[[Any], int] | None = None,
        namespaces: KeyCodec | None = None,
        ttl: bool = False,
    ) -> MemoryTable:
        declared = f"TTL {kind}" if ttl else kind
        table = self.tables.get((operator, state))
        if table is not None:
            check_declaration(table, operator, state, declared)
            return table
        table = self.tables[operator, state] = MemoryTable(
            operator, state, declared, serializer if serializer is not None else self.serializer
        )
        if ttl:
            self._ttl.add(table, kind)
        return table

    def timers(
        self,
        operator: str,
        name: str,
        *,
        key_group_of: Callable[[Any], int] | None = None,
        keys: KeyCodec | None = None,
    ) -> TimerQueue:
        queue = MemoryTimerQueue()
        self._timer_queues.append((queue, key_group_of))
        return queue

    def namespaced_timers(self, operator: str, name: str, *, namespaces: KeyCodec) -> NamespacedTimerQueue:
        queue = MemoryNamespacedTimerQueue()
        self._timer_queues.append((queue, None))
        return queue

    @property
    def cached_entries(self) -> int:
        return sum(table.cached_entries() for table in self.tables.values()) + sum(
            len(queue) for queue, _ in self._timer_queues
        )

    def trim(self) -> None:
        """Nothing to do: memory state has no bound."""

    def snapshot(self, checkpoint_id: int) -> Iterable[Change]:
        """Memory state is not checkpointed."""
        return []

    def contents(self) -> Iterable[Change]:
        """Memory state is not checkpointed."""
        return []

    def table_ids(self) -> tuple[int, ...]:
        """Memory tables are not stored."""
        return ()

    def confirm(self, checkpoint_id: int) -> None:
        """Memory state is not checkpointed."""

    def acquire(self, groups: Iterable[int]) -> None:
        self._key_groups = self._key_groups | frozenset(groups)

    def release(self, groups: Iterable[int]) -> None:
        """Forget the state and timers of ``groups`` (memory state has no checkpoint to
        fall back on: it is simply gone from this subtask)."""
        gone = frozenset(groups) & self._key_groups
        if not gone:
            return
        self._key_groups -= gone
        max_parallelism = self.max_parallelism
        for table in self.tables.values():
            for namespace, key in list(table.scan()):
                if key_group(key, max_parallelism) in gone:
                    table.delete(key, namespace)
        for queue, key_group_of in self._timer_queues:
            group_of = key_group_of or (lambda key: key_group(key, max_parallelism))
            queue.drop(lambda key: group_of(key) in gone)  # noqa: B023  # called at once

    def cleanup_expired(self, now: int, budget: int) -> int:
        return self._ttl.run(now, budget)

    def schedule_maintenance(self, schedule: Callable[[int, Callable[[int], Any]], None]) -> None:
        """TTL cleanup, if any state has a TTL."""
        self._ttl.schedule(schedule)
