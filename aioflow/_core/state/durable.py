"""The LMDB keyed-state backend: a bounded write-back cache over the worker's working copy.

Each table caches ``namespace -> {key: value}`` (namespace-first: window firing wants a
window's keys together) and marks what it changes: a *dirty* key is either in the cache
(its new value) or absent from it (a deletion still to be written). Timer queues cache
their timers the same way. The subtask's cache counts every entry it holds, values and
deletions, in every table and queue, as the entries come and go (never recounted).

Between batches, when the count passes ``cache_size``, the backend writes every dirty
entry to the store (:class:`~aioflow._core.state.lmdb.LmdbStore`, with undo records when
checkpoints are on) and drops the oldest clean entries until the count is back under
the bound: memory follows the cache size, not the state size nor what was evicted since
the last checkpoint. At a checkpoint barrier it writes every dirty entry and hands the
checkpoint what changed since the last completed one, key group by key group, read back
from the store as it goes (:meth:`LmdbBackend.snapshot`): nothing is gathered in memory.

A miss reads the store only where the store may hold something: a namespace the table
wrote out, or any namespace of a table a checkpoint restored. A fresh window never reads
the store.

Stored keys are ``key group | table id | namespace | key``: a key group's state is one
contiguous range, which is what checkpoints (a delta per key group) and rescaling want.
Namespaces are length-prefixed JSON; timer timestamps are 8 big-endian bytes, so a key
group's timers are in time order. Every value read is verified (its CRC-32), and a
damaged one stops the job naming the state directory, operator, state and key.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import CorruptStateError, IncompatibleStateError, StateError
from aioflow._core.runtime.keygroups import key_group
from aioflow._core.state.backend import DEFAULT_CACHE_SIZE, MISSING, Change, KeyCodec, NamespaceView
from aioflow._core.state.lmdb import KEY_GROUP, TABLE, StoredValueDamaged, after
from aioflow._core.state.memory import check_declaration
from aioflow._core.state.serializers import JsonSerializer, Serializer, decode_key, encode_key
from aioflow._core.state.ttl import TtlCleanup
from aioflow._core.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow._core.state.lmdb import LmdbStore

__all__ = ["LmdbBackend", "LmdbNamespacedTimerQueue", "LmdbTable", "LmdbTimerQueue"]

_LEN = struct.Struct(">H")
_TIME = struct.Struct(">Q")
_TIME_OFFSET = 2**63  # timestamps are signed: stored shifted, so bytes sort as numbers do
_HEAD = KEY_GROUP.size + TABLE.size
#: After evicting, the cache holds at most this share of ``cache_size``, so that a full
#: cache is not written out again after every batch.
_LOW_WATER = 0.8
#: The working copy is read through in the background, in key order, a budget of entries
#: every interval (processing-time ms): a damaged key, which no lookup can find, is found
#: within a pass (10,000 entries a second per subtask; about 1 % of a core).
VERIFY_INTERVAL_MS = 100
VERIFY_BUDGET = 1_000


class _Count:
    """The subtask's cached entries, shared by its tables and queues."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def _encode(operator: str, state: str, key: Any) -> bytes:
    try:
        return encode_key(key)
    except TypeError as exc:
        raise StateError(
            f"operator {operator!r}: state {state!r} cannot store a key of type {type(key).__name__} ({exc}); "
            "keys must be str, int, float, bool, None or tuples of them, or objects with a state_key() method "
            "that returns one of those"
        ) from exc


def _damage_error(
    store: LmdbStore, what: str, exc: StoredValueDamaged, split: Callable[[bytes], tuple[Any, Any]]
) -> CorruptStateError:
    """A damaged stored entry, named as the table or queue that read it knows it."""
    try:
        namespace, key = split(exc.key)
        where = f"key {key!r}" + ("" if namespace is None else f" in namespace {namespace!r}")
    except Exception:
        where = f"stored key {exc.key!r} (itself damaged)"
    advice = store.advice() or (
        "restore the working copy from checkpoint storage with --from-savepoint (a "
        "retained checkpoint works as a savepoint), or start from an empty state directory"
    )
    return CorruptStateError(
        f"state directory {store.path}: {what}: the stored entry of {where} is damaged ({exc.why}); the job stops "
        f"here so that nothing is committed after the damage. To go on, {advice}"
    )


class LmdbTable:
    """A table of the LMDB backend; see the module docstring."""

    def __init__(
        self,
        backend: LmdbBackend,
        operator: str,
        name: str,
        kind: str,
        serializer: Serializer,
        table_id: int,
        key_group_of: Callable[[Any], int],
        namespaces: KeyCodec | None,
        restored: bool,
    ) -> None:
        self.operator = operator
        self.name = name
        self.kind = kind
        self.serializer = serializer
        self._backend = backend
        self._store = backend.store
        self._count = backend.count
        self._prefix = self.prefix = TABLE.pack(table_id)
        self._group_of = key_group_of
        self._codec = namespaces
        #: A checkpoint restored this table: any namespace may have stored entries.
        self.restored = restored
        self._namespaces: dict[Any, dict[Any, Any]] = {}
        self._dirty: dict[Any, set[Any]] = {}
        self._views: dict[Any, NamespaceView] = {}
        #: Namespaces this table wrote to the store (they may have stored entries).
        self._written: set[Any] = set()

    def __repr__(self) -> str:
        return f"<LmdbTable {self.operator!r}/{self.name!r} ({self.kind})>"

    # -- the per-record interface ----------------------------------------------------------

    def _cache(self, namespace: Any) -> tuple[dict[Any, Any], set[Any]]:
        entries = self._namespaces.get(namespace)
        if entries is None:
            entries = self._namespaces[namespace] = {}
            self._dirty[namespace] = set()
        return entries, self._dirty[namespace]

    def _maybe_stored(self, namespace: Any) -> bool:
        return self.restored or namespace in self._written

    def view(self, namespace: Any = None) -> NamespaceView:
        view = self._views.get(namespace)
        if view is not None:
            return view
        entries, dirty = self._cache(namespace)
        count = self._count

        def put(key: Any, value: Any) -> None:
            if key not in entries and key not in dirty:
                count.n += 1
            entries[key] = value
            dirty.add(key)

        def delete(key: Any) -> None:
            self._delete(namespace, entries, dirty, key)

        def load(key: Any) -> Any:
            return self._load(namespace, entries, dirty, key, keep=True)

        view = self._views[namespace] = NamespaceView(entries.get, put, dirty.add, delete, load)
        return view

    def _delete(self, namespace: Any, entries: dict[Any, Any], dirty: set[Any], key: Any) -> None:
        count = self._count
        present = entries.pop(key, MISSING) is not MISSING
        if not self._maybe_stored(namespace):
            if present:
                count.n -= 1
            dirty.discard(key)
        elif key not in dirty or present:  # a deletion to write: it takes the entry's place
            if not present:
                count.n += 1
            dirty.add(key)

    def _load(self, namespace: Any, entries: dict[Any, Any], dirty: set[Any], key: Any, *, keep: bool) -> Any:
        """After a miss: the stored value (cached if ``keep``), or ``MISSING``."""
        if key in dirty or not self._maybe_stored(namespace):
            return MISSING
        stored = self.stored_key(self._group_of(key), namespace, key)
        data = self._read(stored)
        if data is None:
            return MISSING
        value = self._loads(data, stored)
        if keep:
            entries[key] = value
            self._count.n += 1
        return value

    def _read(self, stored: bytes) -> bytes | None:
        try:
            return self._store.get(stored)
        except StoredValueDamaged as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: StoredValueDamaged) -> CorruptStateError:
        return _damage_error(self._store, f"operator {self.operator!r}: state {self.name!r}", exc, self._split)

    def get(self, key: Any, namespace: Any = None, default: Any = None) -> Any:
        entries, dirty = self._cache(namespace)
        value = entries.get(key, MISSING)
        if value is MISSING:
            value = self._load(namespace, entries, dirty, key, keep=True)
        return default if value is MISSING else value

    def put(self, key: Any, value: Any, namespace: Any = None) -> None:
        self.view(namespace).put(key, value)

    def delete(self, key: Any, namespace: Any = None) -> None:
        entries, dirty = self._cache(namespace)
        self._delete(namespace, entries, dirty, key)
        if not entries and not dirty and namespace is not None and not self._maybe_stored(namespace):
            self._forget(namespace)

    def _forget(self, namespace: Any) -> None:
        self._namespaces.pop(namespace, None)
        self._dirty.pop(namespace, None)
        self._views.pop(namespace, None)

    def keys_in(self, namespace: Any = None) -> list[Any]:
        entries, dirty = self._cache(namespace)
        keys = list(entries)
        if self._maybe_stored(namespace):
            seen = set(keys)
            for _, key in self._stored_entries(namespace):
                if key not in seen and key not in dirty:
                    keys.append(key)
        return keys

    def drop(self, namespace: Any) -> None:
        entries = self._namespaces.get(namespace)
        if entries is not None:
            dirty = self._dirty[namespace]
            self._count.n -= len(entries) + sum(1 for key in dirty if key not in entries)
            self._forget(namespace)
        if self._maybe_stored(namespace):
            backend = self._backend
            try:
                for group in backend.owned_groups():
                    start = self._namespace_prefix(group, namespace)
                    self._store.delete_range(start, after(start), backend.epoch)
            except StoredValueDamaged as exc:
                raise self._damaged(exc) from None
            self._written.discard(namespace)

    def scan(self) -> Iterator[tuple[Any, Any]]:
        for namespace in list(self._namespaces):
            for key in list(self._namespaces.get(namespace, ())):
                yield namespace, key
        for group in self._backend.owned_groups():
            start = KEY_GROUP.pack(group) + self._prefix
            for stored, _ in self._scan(start, after(start)):
                namespace, key = self._split(stored)
                entries = self._namespaces.get(namespace)
                if entries is None or (key not in entries and key not in self._dirty[namespace]):
                    yield namespace, key

    def stored(self) -> Iterator[tuple[Any, Any, Any]]:
        """Every ``(namespace, key, value)`` the store holds for this table in the owned key
        groups, as stored (not what the cache changed since): for tools and tests."""
        for group in self._backend.owned_groups():
            start = KEY_GROUP.pack(group) + self._prefix
            for stored, data in self._store.scan(start, after(start)):
                assert data is not None
                yield *self._split(stored), self._loads(data, stored)

    def peek(self, key: Any, namespace: Any = None) -> Any:
        entries = self._namespaces.get(namespace)
        if entries is not None:
            value = entries.get(key, MISSING)
            if value is not MISSING or key in self._dirty[namespace]:
                return value
            return self._load(namespace, entries, self._dirty[namespace], key, keep=False)
        return self._load(namespace, {}, set(), key, keep=False)

    # -- the store ----------------------------------------------------------------------------

    def stored_key(self, group: int, namespace: Any, key: Any) -> bytes:
        return self._namespace_prefix(group, namespace) + _encode(self.operator, self.name, key)

    def _namespace_prefix(self, group: int, namespace: Any) -> bytes:
        if namespace is None:
            ns = b""
        else:
            ns = _encode(self.operator, self.name, namespace if self._codec is None else self._codec.encode(namespace))
        return KEY_GROUP.pack(group) + self._prefix + _LEN.pack(len(ns)) + ns

    def _split(self, stored: bytes) -> tuple[Any, Any]:
        (size,) = _LEN.unpack_from(stored, _HEAD)
        start = _HEAD + _LEN.size
        namespace = None if size == 0 else decode_key(stored[start : start + size])
        if namespace is not None and self._codec is not None:
            namespace = self._codec.decode(namespace)
        return namespace, decode_key(stored[start + size :])

    def _stored_entries(self, namespace: Any) -> Iterator[tuple[bytes, Any]]:
        """``(stored key, key)`` of ``namespace`` in the owned key groups."""
        for group in self._backend.owned_groups():
            start = self._namespace_prefix(group, namespace)
            for stored, _ in self._scan(start, after(start)):
                yield stored, decode_key(stored[len(start) :])

    def _scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        try:
            yield from self._store.scan(start, end, values=False)
        except StoredValueDamaged as exc:
            raise self._damaged(exc) from None

    def _dumps(self, value: Any) -> bytes:
        try:
            return self.serializer.dumps(value)
        except Exception as exc:
            windows = self.kind.startswith("window contents") or self.name.startswith("trigger-")
            how = (
                "give the window serializer='pickle' (.window(assigner, serializer='pickle'))"
                if windows
                else "declare the state with serializer='pickle'"
            )
            raise StateError(
                f"operator {self.operator!r}: state {self.name!r} cannot serialise a value of type "
                f"{type(value).__name__} with {self.serializer!r}: {exc}; keep JSON types in state, or {how}"
            ) from exc

    def _loads(self, data: bytes, stored: bytes) -> Any:
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            try:
                namespace, key = self._split(stored)
                where = f"key {key!r}" + ("" if namespace is None else f" in namespace {namespace!r}")
            except Exception:
                where = f"stored key {stored!r}"
            raise IncompatibleStateError(
                f"state directory {self._store.path}: operator {self.operator!r}: state {self.name!r}: the stored "
                f"value of {where} is intact (its checksum verifies) but {self.serializer!r} cannot read it: "
                f"{type(exc).__name__}: {exc}. The code that reads it changed (a class renamed or moved? a pickled "
                "class of the pipeline's file takes its module from how the job starts: aioflow run job.py:app "
                "and job:app differ): run the code that wrote it, the way it was started, or start this operator "
                "afresh (a new name, --allow-non-restored-state)"
            ) from exc

    def flush(self, changes: list[tuple[bytes, bytes | None]]) -> None:
        """Add every dirty entry to ``changes`` (serialized, or ``None`` to delete); they are
        clean once the caller wrote them."""
        dumps, group_of, count = self._dumps, self._group_of, self._count
        for namespace, dirty in self._dirty.items():
            if not dirty:
                continue
            entries = self._namespaces[namespace]
            prefix_of = functools.partial(self._namespace_prefix, namespace=namespace)
            prefixes: dict[int, bytes] = {}
            encode = functools.partial(_encode, self.operator, self.name)
            for key in dirty:
                group = group_of(key)
                prefix = prefixes.get(group)
                if prefix is None:
                    prefix = prefixes[group] = prefix_of(group)
                value = entries.get(key, MISSING)
                if value is MISSING:
                    changes.append((prefix + encode(key), None))
                    count.n -= 1  # the deletion leaves the cache once written
                else:
                    changes.append((prefix + encode(key), dumps(value)))
            dirty.clear()  # in place: views hold it
            self._written.add(namespace)
        for namespace in [ns for ns, entries in self._namespaces.items() if ns is not None and not entries]:
            self._forget(namespace)  # an emptied window's view goes with it (views live until a trim)

    def evict(self, budget: int) -> int:
        """Drop up to ``budget`` clean entries, oldest namespaces and entries first; returns
        how many went."""
        evicted = 0
        for namespace in list(self._namespaces):
            if evicted >= budget:
                break
            entries, dirty = self._namespaces[namespace], self._dirty[namespace]
            victims = []
            for key in entries:
                if key not in dirty:
                    victims.append(key)
                    if evicted + len(victims) >= budget:
                        break
            for key in victims:
                del entries[key]
            evicted += len(victims)
            if victims:
                self._written.add(namespace)  # clean entries are stored: the namespace may have more
            if not entries and not dirty and namespace is not None:
                self._forget(namespace)
        self._count.n -= evicted
        return evicted

    def release(self, groups: frozenset[int]) -> None:
        """Forget cached entries and unwritten changes of ``groups``."""
        group_of, count = self._group_of, self._count
        for namespace in list(self._namespaces):
            entries, dirty = self._namespaces[namespace], self._dirty[namespace]
            for key in [key for key in (*entries, *dirty) if group_of(key) in groups]:
                if entries.pop(key, MISSING) is not MISSING or key in dirty:
                    count.n -= 1
                dirty.discard(key)

    def cached_entries(self) -> int:
        """Entries this table caches now (values and deletions); counted by walking the
        cache, for tests and statistics (the backend keeps its own count as it goes)."""
        return sum(
            len(entries) + sum(1 for key in self._dirty[namespace] if key not in entries)
            for namespace, entries in self._namespaces.items()
        )


class LmdbTimerQueue:
    """A timer queue over the store: timers cached in memory up to the backend's bound,
    the rest in the store in time order per key group; restoring reads none of them.

    Each cached timer says whether the store may hold it too: ``_NEW`` (only cached: write
    it out when flushing), ``_STORED`` (the store has it: delete it there when it fires
    or is removed) or ``_MAYBE`` (registered again at a time the store may hold: write it,
    and delete it when it fires). Fired or removed stored timers become deletions, written
    at the next flush; a timer the store holds but the cache does not fires straight from
    the store. Timers of one timestamp fire in registration order (cached ones), then in
    key order (stored ones).
    """

    _NEW, _STORED, _MAYBE = 0, 1, 2

    def __init__(
        self,
        backend: LmdbBackend,
        table_id: int,
        key_group_of: Callable[[Any], int],
        keys: KeyCodec | None,
        restored: bool,
        name: str,
    ) -> None:
        self._backend = backend
        self._store = backend.store
        self._count = backend.count
        self._prefix = self.prefix = TABLE.pack(table_id)
        self._group_of = key_group_of
        self._codec = keys
        self.name = name
        self._by_time: dict[int, dict[Any, int]] = {}
        self._heap: list[int] = []
        self._deleted: set[tuple[int, Any]] = set()
        #: The latest timestamp the store may hold a timer at (``None``: it holds none).
        self._stored_until: int | None = 2**63 - 1 if restored else None
        #: Per owned key group, the earliest stored timer not yet fired (lazily found).
        self._heads: dict[int, int | None] | None = None
        self._head_heap: list[tuple[int, int]] = []

    # -- registration -------------------------------------------------------------------------

    def add(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is None:
            keys = self._by_time[timestamp] = {}
            heapq.heappush(self._heap, timestamp)
        elif key in keys:
            return
        if self._deleted and (timestamp, key) in self._deleted:
            self._deleted.discard((timestamp, key))  # the deletion's place in the count goes to the timer
            keys[key] = self._STORED
            return
        stored_until = self._stored_until
        keys[key] = self._NEW if stored_until is None or timestamp > stored_until else self._MAYBE
        self._count.n += 1

    def add_all(self, timestamp: int, keys: list[Any]) -> None:
        existing = self._by_time.get(timestamp)
        stored_until = self._stored_until
        if existing is None and not self._deleted and (stored_until is None or timestamp > stored_until):
            fresh = dict.fromkeys(keys, self._NEW)  # the usual case: new timers, none stored
            self._by_time[timestamp] = fresh
            heapq.heappush(self._heap, timestamp)
            self._count.n += len(fresh)
            return
        add = self.add
        for key in keys:
            add(timestamp, key)

    def remove(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        flag = keys.pop(key, None) if keys is not None else None
        if flag is not None:
            if not keys:
                del self._by_time[timestamp]
            if flag == self._NEW:
                self._count.n -= 1
                return
            self._deleted.add((timestamp, key))  # takes the timer's place in the count
            return
        stored_until = self._stored_until
        if stored_until is not None and timestamp <= stored_until and (timestamp, key) not in self._deleted:
            self._deleted.add((timestamp, key))
            self._count.n += 1

    # -- firing -------------------------------------------------------------------------------

    def next_time(self) -> int | None:
        heap, by_time = self._heap, self._by_time
        while heap and not by_time.get(heap[0]):
            by_time.pop(heapq.heappop(heap), None)
        cached = heap[0] if heap else None
        stored = self._next_stored()
        if stored is None:
            return cached
        return stored if cached is None else min(cached, stored)

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any]]:
        for timestamp, keys in self.pop_due_groups(limit):
            for key in keys:
                yield timestamp, key

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Iterable[Any]]]:
        heap, by_time, count = self._heap, self._by_time, self._count
        while True:
            while heap and not by_time.get(heap[0]):
                by_time.pop(heapq.heappop(heap), None)
            cached = heap[0] if heap else None
            stored = self._next_stored()
            if cached is not None and (stored is None or cached <= stored):
                if cached > limit:
                    return
                heapq.heappop(heap)
                keys = by_time.pop(cached)
                deleted = self._deleted
                for key, flag in keys.items():
                    if flag == self._NEW:
                        count.n -= 1
                    else:  # the stored copy goes at the next flush
                        deleted.add((cached, key))
                yield cached, keys
            elif stored is not None:
                if stored > limit:
                    return
                yield stored, self._fire_stored(stored)
            else:
                return

    def _fire_stored(self, timestamp: int) -> Iterator[Any]:
        """The stored timers at ``timestamp`` not fired or removed yet, in every key group
        whose earliest stored timer it is; each becomes a deletion to write. Read as the
        caller fires them (in chunks: a trim between two writes their deletions), so a
        million timers of one timestamp never sit in memory at once."""
        assert self._heads is not None
        head_heap = self._head_heap
        while head_heap and head_heap[0][0] == timestamp:
            _, group = heapq.heappop(head_heap)
            if self._heads.get(group) != timestamp:
                continue  # stale
            start = self._time_prefix(group, timestamp)
            for stored, _ in self._scan(start, self._time_prefix(group, timestamp + 1)):
                key = self._decode(stored[len(start) :])
                if (timestamp, key) in self._deleted:
                    continue
                cached = self._by_time.get(timestamp)
                if cached is not None and key in cached:
                    continue  # fires from the cache
                self._deleted.add((timestamp, key))
                self._count.n += 1
                yield key
            self._set_head(group, self._first_stored(group, timestamp + 1))

    def _next_stored(self) -> int | None:
        if self._stored_until is None:
            return None
        if self._heads is None:
            self._heads = {}
            for group in self._backend.owned_groups():
                self._set_head(group, self._first_stored(group, -_TIME_OFFSET))
        head_heap, heads = self._head_heap, self._heads
        while head_heap and heads.get(head_heap[0][1]) != head_heap[0][0]:
            heapq.heappop(head_heap)
        return head_heap[0][0] if head_heap else None

    def _set_head(self, group: int, timestamp: int | None) -> None:
        assert self._heads is not None
        self._heads[group] = timestamp
        if timestamp is not None:
            heapq.heappush(self._head_heap, (timestamp, group))

    def _first_stored(self, group: int, timestamp: int) -> int | None:
        start = self._time_prefix(group, max(timestamp, -_TIME_OFFSET))
        found = self._store.first_key(start, after(KEY_GROUP.pack(group) + self._prefix))
        if found is None:
            return None
        stored: int = _TIME.unpack_from(found, _HEAD)[0]
        return stored - _TIME_OFFSET

    def clear(self) -> None:
        for _ in self.pop_due(2**63 - 1):
            pass

    # -- the store ----------------------------------------------------------------------------

    def _time_prefix(self, group: int, timestamp: int) -> bytes:
        return KEY_GROUP.pack(group) + self._prefix + _TIME.pack(min(timestamp + _TIME_OFFSET, 2**64 - 1))

    def _stored_key(self, timestamp: int, key: Any) -> bytes:
        plain = key if self._codec is None else self._codec.encode(key)
        return self._time_prefix(self._group_of(key), timestamp) + _encode("timers", self.name, plain)

    def _decode(self, data: bytes) -> Any:
        plain = decode_key(data)
        return plain if self._codec is None else self._codec.decode(plain)

    def _scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        try:
            yield from self._store.scan(start, end, values=False)
        except StoredValueDamaged as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: StoredValueDamaged) -> CorruptStateError:
        return _damage_error(self._store, f"timers {self.name!r}", exc, self._split)

    def _split(self, stored: bytes) -> tuple[Any, Any]:
        """The timestamp and key of a stored timer."""
        return _TIME.unpack_from(stored, _HEAD)[0] - _TIME_OFFSET, self._decode(stored[_HEAD + _TIME.size :])

    def flush(self, changes: list[tuple[bytes, bytes | None]]) -> None:
        """Add the timers the store lacks and the deletions to ``changes``."""
        written: int | None = None
        for timestamp, keys in self._by_time.items():
            for key, flag in keys.items():
                if flag != self._STORED:
                    changes.append((self._stored_key(timestamp, key), b""))
                    keys[key] = self._STORED
                    written = timestamp if written is None else max(written, timestamp)
                    if self._heads is not None:
                        group = self._group_of(key)
                        head = self._heads.get(group)
                        if head is None or timestamp < head:
                            self._set_head(group, timestamp)
        if written is not None and (self._stored_until is None or written > self._stored_until):
            self._stored_until = written
        for timestamp, key in self._deleted:
            changes.append((self._stored_key(timestamp, key), None))
        self._count.n -= len(self._deleted)
        self._deleted.clear()

    def evict(self, budget: int) -> int:
        """Drop up to ``budget`` stored timers from the cache, the latest first (they fire last)."""
        evicted = 0
        for timestamp in sorted(self._by_time, reverse=True):
            if evicted >= budget:
                break
            keys = self._by_time[timestamp]
            for key in [key for key, flag in keys.items() if flag == self._STORED][: budget - evicted]:
                del keys[key]
                evicted += 1
            if not keys:
                del self._by_time[timestamp]
        if len(self._heap) > 2 * len(self._by_time) + 1024:  # the evicted times' entries go too
            self._heap[:] = self._by_time
            heapq.heapify(self._heap)
        self._count.n -= evicted
        return evicted

    def release(self, groups: frozenset[int]) -> None:
        group_of, count = self._group_of, self._count
        for timestamp in list(self._by_time):
            keys = self._by_time[timestamp]
            for key in [key for key in keys if group_of(key) in groups]:
                del keys[key]
                count.n -= 1
            if not keys:
                del self._by_time[timestamp]
        doomed = {item for item in self._deleted if group_of(item[1]) in groups}
        self._deleted -= doomed
        count.n -= len(doomed)
        if self._heads is not None:
            for group in groups:
                self._heads.pop(group, None)

    def acquire(self, groups: frozenset[int]) -> None:
        self._stored_until = 2**63 - 1
        if self._heads is not None:
            for group in groups:
                self._set_head(group, self._first_stored(group, -_TIME_OFFSET))


class _PairKeys:
    """A namespaced timer's key as the flat queue stores it: ``(key, namespace)``, the
    namespace encoded by the queue's codec."""

    def __init__(self, namespaces: KeyCodec) -> None:
        self._namespaces = namespaces

    def encode(self, obj: Any) -> Any:
        return obj[0], self._namespaces.encode(obj[1])

    def decode(self, plain: Any) -> Any:
        return plain[0], self._namespaces.decode(plain[1])


class LmdbNamespacedTimerQueue:
    """Namespaced timers over the store: an :class:`LmdbTimerQueue` of ``(key, namespace)``
    keys (so they are stored, cached, flushed and released as any timers are), fired a
    namespace at a time by grouping each timestamp's run of one namespace."""

    def __init__(self, timers: LmdbTimerQueue) -> None:
        self._timers = timers

    def add(self, timestamp: int, key: Any, namespace: Any) -> None:
        self._timers.add(timestamp, (key, namespace))

    def add_all(self, timestamp: int, namespace: Any, keys: list[Any]) -> None:
        self._timers.add_all(timestamp, [(key, namespace) for key in keys])

    def remove(self, timestamp: int, key: Any, namespace: Any) -> None:
        self._timers.remove(timestamp, (key, namespace))

    def next_time(self) -> int | None:
        return self._timers.next_time()

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any, Any]]:
        for timestamp, (key, namespace) in self._timers.pop_due(limit):
            yield timestamp, key, namespace

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Any, Iterable[Any]]]:
        for timestamp, pairs in self._timers.pop_due_groups(limit):
            if isinstance(pairs, dict):  # cached timers, whole: a namespace at a time, as in memory
                spaces: dict[Any, list[Any]] = {}
                for key, namespace in pairs:
                    keys = spaces.get(namespace)
                    if keys is None:
                        spaces[namespace] = [key]
                    else:
                        keys.append(key)
                for namespace, keys in spaces.items():
                    yield timestamp, namespace, keys
            else:  # stored ones, read as they fire (in key order): a namespace's run at a time
                for namespace, run in itertools.groupby(pairs, _NAMESPACE):
                    yield timestamp, namespace, map(_KEY, run)

    def clear(self) -> None:
        self._timers.clear()


_KEY, _NAMESPACE = itemgetter(0), itemgetter(1)


class LmdbBackend:
    """Keyed state over the worker's :class:`~aioflow._core.state.lmdb.LmdbStore`; see the
    module docstring. ``checkpointed`` is false for LMDB used for its size alone (no
    checkpoints: no undo records are kept). ``completed`` is the checkpoint the working
    copy holds (0: none)."""

    durable = True

    def __init__(
        self,
        store: LmdbStore,
        *,
        key_groups: Iterable[int] = range(128),
        max_parallelism: int = 128,
        cache_size: int = DEFAULT_CACHE_SIZE,
        serializer: Serializer | None = None,
        clock: Callable[[], int] | None = None,
        checkpointed: bool = True,
        completed: int = 0,
    ) -> None:
        self.store = store
        self.checkpointed = checkpointed
        self._key_groups = frozenset(key_groups)
        self._owned = sorted(self._key_groups)
        self.max_parallelism = max_parallelism
        self.cache_size = cache_size
        self.serializer = serializer if serializer is not None else JsonSerializer()
        self.clock = clock if clock is not None else now_ms
        self.count = _Count()
        self.tables: dict[tuple[str, str], LmdbTable] = {}
        self._queues: list[LmdbTimerQueue] = []
        self._ttl = TtlCleanup(self.clock)
        self._group_of = functools.partial(_group_of_key, max_parallelism=max_parallelism)
        #: The checkpoint the stored state is at, and the one changes made now belong to.
        self.completed = completed
        self._epoch = completed + 1
        self._verify_queue: list[tuple[bytes, bytes]] = []
        self._verify_from: bytes | None = None

    @property
    def key_groups(self) -> frozenset[int]:
        return self._key_groups

    def owned_groups(self) -> list[int]:
        """The owned key groups, in order."""
        return self._owned

    @property
    def epoch(self) -> int | None:
        """The checkpoint that changes written now belong to (``None``: no checkpoints)."""
        return self._epoch if self.checkpointed else None

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
    ) -> LmdbTable:
        declared = f"TTL {kind}" if ttl else kind
        table = self.tables.get((operator, state))
        if table is not None:
            check_declaration(table, operator, state, declared)
            return table
        serializer = serializer if serializer is not None else self.serializer
        table_id, restored = self.store.register_table(operator, state, declared, serializer.name)
        table = self.tables[operator, state] = LmdbTable(
            self, operator, state, declared, serializer, table_id, key_group_of or self._group_of, namespaces, restored
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
    ) -> LmdbTimerQueue:
        table_id, restored = self.store.register_table(operator, name, "timers", "none")
        queue = LmdbTimerQueue(self, table_id, key_group_of or self._group_of, keys, restored, f"{operator}/{name}")
        self._queues.append(queue)
        return queue

    def namespaced_timers(self, operator: str, name: str, *, namespaces: KeyCodec) -> LmdbNamespacedTimerQueue:
        group_of = self._group_of
        return LmdbNamespacedTimerQueue(
            self.timers(operator, name, key_group_of=lambda pair: group_of(pair[0]), keys=_PairKeys(namespaces))
        )

    @property
    def cached_entries(self) -> int:
        return self.count.n

    def _flush(self) -> int:
        """Write every dirty entry of every table and queue, in one transaction."""
        changes: list[tuple[bytes, bytes | None]] = []
        for table in self.tables.values():
            table.flush(changes)
        for queue in self._queues:
            queue.flush(changes)
        if changes:
            self.store.write(changes, self.epoch)
        return len(changes)

    def trim(self) -> None:
        """Past ``cache_size`` entries: write what changed, then drop the oldest clean
        entries until the cache holds at most 80 % of ``cache_size``."""
        if self.count.n <= self.cache_size:
            return
        self._flush()
        excess = self.count.n - int(self.cache_size * _LOW_WATER)
        for holder in self._holders():
            if excess <= 0:
                break
            excess -= holder.evict(excess)

    def snapshot(self, checkpoint_id: int) -> Iterator[Change]:
        """At checkpoint ``checkpoint_id``'s barrier: write every dirty entry, then yield what
        changed in the owned key groups since the last completed checkpoint, key group by
        key group (read from the store as the caller consumes it: consume it before the
        next record). Changes made afterwards belong to the next checkpoint."""
        if not self.checkpointed:
            return iter(())
        self._flush()
        self._epoch = max(self._epoch, checkpoint_id + 1)
        return self._changes()

    def table_ids(self) -> tuple[int, ...]:
        """The ids of this subtask's tables and timer queues in the store."""
        return tuple(sorted(TABLE.unpack(holder.prefix)[0] for holder in self._holders()))

    def _prefixes(self) -> list[bytes]:
        """The stored-key prefix (key group and table id) of every table and timer queue
        of this subtask in every key group it owns, in order: what is this subtask's in a
        store its worker's other subtasks share (their key groups overlap when their
        parallelisms differ)."""
        tables = sorted({*(table.prefix for table in self.tables.values()), *(q.prefix for q in self._queues)})
        return [KEY_GROUP.pack(group) + table for group in self._owned for table in tables]

    def _changes(self) -> Iterator[Change]:
        store, completed = self.store, self.completed
        for group, stored in store.changed_keys(self._prefixes(), completed):
            try:
                yield group, stored, store.read_raw(stored)
            except StoredValueDamaged as exc:
                raise self._named(exc) from None

    def contents(self) -> Iterator[Change]:
        """Every stored entry of this subtask's tables in the key groups it owns, key group
        by key group (a full copy: savepoints; write dirty entries first with
        :meth:`snapshot`)."""
        for prefix in self._prefixes():
            group = KEY_GROUP.unpack_from(prefix)[0]
            try:
                for stored, sealed in self.store.scan_sealed(prefix, after(prefix)):
                    yield group, stored, sealed
            except StoredValueDamaged as exc:
                raise self._named(exc) from None

    def _named(self, exc: StoredValueDamaged) -> CorruptStateError:
        """A damaged entry, named by the table or timer queue it belongs to."""
        holder = self._by_prefix().get(exc.key[KEY_GROUP.size : KEY_GROUP.size + TABLE.size])
        return holder._damaged(exc) if holder is not None else exc

    def confirm(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` completed: later snapshots are deltas from it."""
        self.completed = max(self.completed, checkpoint_id)

    def acquire(self, groups: Iterable[int]) -> None:
        gained = frozenset(groups) - self._key_groups
        if not gained:
            return
        self._key_groups |= gained
        self._owned = sorted(self._key_groups)
        for table in self.tables.values():
            table.restored = True  # the new groups' stored state is visible now
        for queue in self._queues:
            queue.acquire(gained)

    def release(self, groups: Iterable[int]) -> None:
        """Stop owning ``groups``: their cached entries go, and the working copy of their
        state returns to the last completed checkpoint (changes not in it are discarded)."""
        gone = frozenset(groups) & self._key_groups
        if not gone:
            return
        for table in self.tables.values():
            table.release(gone)
        for queue in self._queues:
            queue.release(gone)
        self._key_groups -= gone
        self._owned = sorted(self._key_groups)
        if self.checkpointed:
            self.store.rollback(self.completed, groups=gone)

    def cleanup_expired(self, now: int, budget: int) -> int:
        return self._ttl.run(now, budget)

    def verify(self, budget: int) -> int:
        """Read up to ``budget`` entries of this subtask's state in key order, checking each
        (a damaged one stops the job naming it); calls go on where the last one stopped,
        and start another pass after the last. Returns how many prefixes are left in this pass."""
        if not self._verify_queue:
            self._verify_queue = [(prefix, after(prefix)) for prefix in self._prefixes()]
            self._verify_from = None
        try:
            done, self._verify_from = self.store.verify(self._verify_queue, self._verify_from, budget)
        except StoredValueDamaged as exc:
            raise self._named(exc) from None
        del self._verify_queue[:done]
        return len(self._verify_queue)

    def _holders(self) -> list[LmdbTable | LmdbTimerQueue]:
        """This subtask's tables and timer queues."""
        return [*self.tables.values(), *self._queues]

    def _by_prefix(self) -> dict[bytes, LmdbTable | LmdbTimerQueue]:
        return {holder.prefix: holder for holder in self._holders()}

    def schedule_maintenance(self, schedule: Callable[[int, Callable[[int], Any]], None]) -> None:
        """TTL cleanup (if any state has a TTL) and the background verification of the
        working copy, between batches (see :data:`VERIFY_INTERVAL_MS`)."""
        self._ttl.schedule(schedule)

        async def verify(now: int) -> None:
            self.verify(VERIFY_BUDGET)
            schedule(now + VERIFY_INTERVAL_MS, verify)

        schedule(0, verify)


def _group_of_key(key: Any, *, max_parallelism: int) -> int:
    return key_group(key, max_parallelism)
