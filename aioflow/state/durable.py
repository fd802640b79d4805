"""The LMDB keyed-state backend: tables that are a write-back cache over the worker's store.

A table maps ``(namespace, key)`` to a value. The namespace is ``None`` for plain keyed
state and the window (or pane start, or timer time) for state kept per window. The cache
is namespace-first (``namespace -> {key: value}``), the layout window firing wants, and
it is what operators read and write on the per-record path: one dict operation, plus one
``set.add`` to mark the key dirty when the table is durable.

Durable tables (LMDB) keep three facts besides the cache:

- ``dirty``: keys changed since the last snapshot, per namespace. A dirty key is either
  in the cache (its new value) or absent from it (deleted); dirty entries are never
  evicted, so a miss on a dirty key means "deleted", without a lookup.
- ``incomplete``: namespaces whose cache may lack entries the store has (restored ones,
  and those the cache evicted from). A miss elsewhere is a true absence: a fresh window
  never reads the store.
- ``spilled``: stored keys of changed entries the cache evicted to the store's working
  area, per namespace; the next snapshot takes their values from there.
- ``dropped``: namespaces dropped since the last snapshot. Their checkpointed entries
  are void (the snapshot deletes them); only what was spilled since the drop counts.

The dirty sets are kept (cleared in place) across snapshots: handles and operators hold
their ``marker``.

Stored keys are ``table id | key group | namespace | key``, so state splits by key-group
ranges when the parallelism changes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aioflow.errors import StateError
from aioflow.runtime.keygroups import key_group
from aioflow.state.backend import DEFAULT_CACHE_SIZE, MISSING, KeyCodec, NamespaceView, TimerQueue
from aioflow.state.memory import MemoryTimerQueue, check_declaration
from aioflow.state.serializers import JsonSerializer, Serializer, decode_key, encode_key
from aioflow.state.ttl import TtlCleanup
from aioflow.time.timers import now_ms

if TYPE_CHECKING:
    from aioflow.state.lmdb import LmdbStore

__all__ = ["LmdbBackend", "LmdbTable", "Writes"]

#: (stored key, serialized value or ``None`` for a deletion), in order.
Writes = list[tuple[bytes, bytes | None]]

_HEAD = struct.Struct(">IH")  # table id, key group
_LEN = struct.Struct(">H")


class LmdbTable:
    """A table of the LMDB backend; see the module docstring."""

    def __init__(
        self,
        operator: str,
        name: str,
        kind: str,
        serializer: Serializer,
        *,
        store: LmdbStore,
        table_id: int = 0,
        key_group_of: Callable[[Any], int] | None = None,
        key_groups: range = range(0),
        restored: bool = False,
        namespaces: KeyCodec | None = None,
    ) -> None:
        self.namespace_codec = namespaces
        self.operator = operator
        self.name = name
        self.kind = kind
        self.serializer = serializer
        self.store = store
        self.table_id = table_id
        self.key_group_of = key_group_of
        self.key_groups = key_groups
        self.namespaces: dict[Any, dict[Any, Any]] = {}
        self.dirty: dict[Any, set[Any]] = {}
        self.incomplete: set[Any] = set()
        self.spilled: dict[Any, set[bytes]] = {}
        self.dropped: set[Any] = set()
        #: Namespaces that may have entries in the store (snapshotted or spilled): only these
        #: need stored entries deleted when dropped.
        self.stored_in: set[Any] = set()
        self.pending: dict[bytes, bytes | None] = {}
        #: Restored from a checkpoint: any namespace may have stored entries.
        self.restored = restored

    def __repr__(self) -> str:
        return f"<LmdbTable {self.operator!r}/{self.name!r} ({self.kind})>"

    # -- the per-record interface ----------------------------------------------------------

    def view(self, namespace: Any = None) -> NamespaceView:
        entries = self.entries(namespace)
        mark = self.marker(namespace)

        def put(key: Any, value: Any) -> None:
            entries[key] = value
            mark(key)

        def delete(key: Any) -> None:
            entries.pop(key, None)
            mark(key)

        def load(key: Any) -> Any:
            return self.load(key, namespace)

        return NamespaceView(entries.get, put, mark, delete, load)


    def scan(self) -> Iterator[tuple[Any, Any]]:
        for namespace in list(self.namespaces):
            for key in list(self.namespaces.get(namespace, ())):
                yield namespace, key
        for group in self.key_groups:
            for namespace, key in self.stored_keys(group):
                entries = self.namespaces.get(namespace)
                if entries is None or key not in entries:  # cached ones were seen above
                    yield namespace, key

    def peek(self, key: Any, namespace: Any = None) -> Any:
        entries = self.namespaces.get(namespace)
        if entries is not None and key in entries:
            return entries[key]
        if entries is None:
            if not self.restored and namespace not in self.stored_in:
                return MISSING
            entries = self.entries(namespace)
        value = self.load(key, namespace)
        if value is not MISSING:
            del entries[key]  # clean, and its namespace incomplete: the cache is as it was
        return value

    def entries(self, namespace: Any = None) -> dict[Any, Any]:
        """The cached entries of ``namespace`` (created empty); mark what you change."""
        entries = self.namespaces.get(namespace)
        if entries is None:
            entries = self.namespaces[namespace] = {}
            if self.restored and namespace not in self.dropped:
                self.incomplete.add(namespace)
        return entries

    def marker(self, namespace: Any = None) -> Callable[[Any], None]:
        """``mark(key)``: record that ``key``'s entry in ``namespace`` changed."""
        dirty = self.dirty.get(namespace)
        if dirty is None:
            dirty = self.dirty[namespace] = set()
        return dirty.add

    def get(self, key: Any, namespace: Any = None, default: Any = None) -> Any:
        value = self.entries(namespace).get(key, MISSING)
        if value is MISSING:
            value = self.load(key, namespace)
            if value is MISSING:
                return default
        return value

    def put(self, key: Any, value: Any, namespace: Any = None) -> None:
        self.entries(namespace)[key] = value
        self.marker(namespace)(key)

    def delete(self, key: Any, namespace: Any = None) -> None:
        entries = self.namespaces.get(namespace)
        if entries is not None:
            entries.pop(key, None)
        self.entries(namespace)
        self.marker(namespace)(key)

    def load(self, key: Any, namespace: Any = None) -> Any:
        """After a cache miss: the stored value (now cached), or ``MISSING``."""
        if namespace not in self.incomplete:
            return MISSING
        dirty = self.dirty.get(namespace)
        if dirty is not None and key in dirty:
            return MISSING  # deleted since the last snapshot
        assert self.store is not None and self.key_group_of is not None
        stored = self.stored_key(self.key_group_of(key), namespace, key)
        if namespace in self.dropped:  # the checkpoint's entries are void; spilled since the drop count
            data = self.store.get_working(stored) if stored in self.spilled.get(namespace, ()) else None
        elif stored in self.spilled.get(namespace, ()):
            data = self.store.get_working(stored)
        elif stored in self.pending:  # snapshotted, not yet committed
            data = self.pending[stored]
        else:
            data = self.store.get(stored)
        if data is None:
            return MISSING
        value = self._loads(data)
        self.namespaces[namespace][key] = value
        return value

    def drop(self, namespace: Any) -> None:
        """Remove every entry of ``namespace`` (a window that was purged)."""
        self.namespaces.pop(namespace, None)
        self.dirty.pop(namespace, None)
        self.incomplete.discard(namespace)
        self.spilled.pop(namespace, None)
        if self.restored or namespace in self.stored_in:
            self.dropped.add(namespace)

    def keys_in(self, namespace: Any = None) -> list[Any]:
        """Every key with an entry in ``namespace``, stored ones included."""
        if self.restored and namespace not in self.namespaces:
            self.entries(namespace)  # any namespace of a restored table may have stored entries
        if namespace in self.incomplete:
            entries = self.namespaces[namespace]
            for key in self._stored_keys(namespace):
                if key not in entries:
                    self.load(key, namespace)
        return list(self.namespaces.get(namespace, {}))

    # -- snapshot, eviction and restore ----------------------------------------------------

    def stored_key(self, key_group: int, namespace: Any, key: Any) -> bytes:
        return self._namespace_prefix(key_group, namespace) + self._encode(key)

    def _encode_namespace(self, namespace: Any) -> bytes:
        if namespace is None:
            return b""
        codec = self.namespace_codec
        return self._encode(namespace if codec is None else codec.encode(namespace))

    def _namespace_prefix(self, key_group: int, namespace: Any) -> bytes:
        """What every stored key of ``namespace`` in ``key_group`` starts with."""
        ns = self._encode_namespace(namespace)
        return _HEAD.pack(self.table_id, key_group) + _LEN.pack(len(ns)) + ns

    def _encode(self, key: Any) -> bytes:
        try:
            return encode_key(key)
        except TypeError as exc:
            raise StateError(
                f"operator {self.operator!r}: state {self.name!r} cannot store a key of type {type(key).__name__} "
                f"({exc}); keys must be str, int, float, bool, None or tuples of them, or objects with a "
                "state_key() method that returns one of those"
            ) from exc

    def _dumps(self, value: Any) -> bytes:
        try:
            return self.serializer.dumps(value)
        except Exception as exc:
            raise StateError(
                f"operator {self.operator!r}: state {self.name!r} cannot serialise a value of type "
                f"{type(value).__name__} with {self.serializer!r}: {exc}; keep JSON types in state, "
                "or declare the state with serializer='pickle'"
            ) from exc

    def _loads(self, data: bytes) -> Any:
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            raise StateError(
                f"operator {self.operator!r}: state {self.name!r}: a stored value cannot be read with "
                f"{self.serializer!r}: {exc}"
            ) from exc

    def snapshot(self) -> Writes:
        """The changes since the last committed snapshot, as writes. Until :meth:`confirm`
        says they were committed, they stay pending: reads see them, and a snapshot after a
        failed checkpoint includes them again."""
        store = self.store
        assert store is not None and self.key_group_of is not None
        writes: Writes = []
        for namespace in self.dropped:  # first: entries put or spilled since the drop come after
            writes.extend(self._range_deletes(namespace))
            self.stored_in.discard(namespace)
        self.dropped.clear()
        for spilled in self.spilled.values():
            writes.extend((stored, store.get_working(stored)) for stored in spilled)
        self.spilled.clear()
        group_of, dumps, head, table_id = self.key_group_of, self._dumps, _HEAD.pack, self.table_id
        for namespace, keys in self.dirty.items():
            if not keys:
                continue
            self.stored_in.add(namespace)
            entries = self.namespaces.get(namespace, {})
            ns = self._encode_namespace(namespace)
            part = _LEN.pack(len(ns)) + ns
            encode = self._encode
            for key in keys:
                value = entries.get(key, MISSING)
                stored = head(table_id, group_of(key)) + part + encode(key)
                writes.append((stored, None if value is MISSING else dumps(value)))
            keys.clear()  # in place: markers handed out stay live
        self.pending.update(writes)
        return list(self.pending.items())

    def confirm(self) -> None:
        """The last snapshot was committed: the store now holds it."""
        self.pending.clear()

    def spilled_keys(self) -> set[bytes]:
        """Stored keys whose newest value is in the store's working area."""
        return set().union(*self.spilled.values())

    def _range_deletes(self, namespace: Any) -> Writes:
        assert self.store is not None
        writes: Writes = []
        for group in self.key_groups:
            prefix = self._namespace_prefix(group, namespace)
            writes.extend((stored, None) for stored in self.store.keys_with_prefix(prefix))
            writes.extend((stored, None) for stored in self.store.keys_with_prefix(prefix, working=True))
        return writes

    def cached_entries(self) -> int:
        return sum(map(len, self.namespaces.values()))

    def evict(self, count: int) -> list[tuple[bytes, bytes]]:
        """Drop up to ``count`` clean entries from the cache, oldest namespaces and entries
        first; return the changed ones the store must keep in its working area."""
        assert self.key_group_of is not None
        spill: list[tuple[bytes, bytes]] = []
        for namespace in list(self.namespaces):
            entries = self.namespaces[namespace]
            dirty = self.dirty.get(namespace, ())
            victims = []
            for key in entries:
                if len(victims) >= count:
                    break
                victims.append(key)
            for key in victims:
                value = entries.pop(key)
                if key in dirty:
                    stored = self.stored_key(self.key_group_of(key), namespace, key)
                    spill.append((stored, self._dumps(value)))
                    spilled = self.spilled.get(namespace)
                    if spilled is None:
                        spilled = self.spilled[namespace] = set()
                        self.stored_in.add(namespace)
                    spilled.add(stored)
                    dirty.discard(key)  # type: ignore[attr-defined]
            if victims:
                self.incomplete.add(namespace)
            count -= len(victims)
            if count <= 0:
                break
        return spill

    def _stored_keys(self, namespace: Any) -> Iterator[Any]:
        """Keys of ``namespace`` in this table's key groups that the store may hold: in the
        checkpoint (unless the namespace was dropped), in a snapshot not yet committed, or
        evicted to the working area. (:meth:`load` then sorts out which value is current.)"""
        store = self.store
        dropped = namespace in self.dropped
        spilled = self.spilled.get(namespace, ())
        if not dropped and self.pending:  # an entry evicted clean may live only in the pending snapshot
            ns = self._encode_namespace(namespace)
            part = _LEN.pack(len(ns)) + ns
            for stored, data in self.pending.items():
                if data is not None and stored.startswith(part, _HEAD.size):
                    yield decode_key(stored[_HEAD.size + len(part):])
        for group in self.key_groups:
            prefix = self._namespace_prefix(group, namespace)
            if not dropped:
                for stored in store.keys_with_prefix(prefix):
                    yield decode_key(stored[len(prefix):])
            for stored in store.keys_with_prefix(prefix, working=True):
                if not dropped or stored in spilled:
                    yield decode_key(stored[len(prefix):])

    def stored_namespaces(self) -> Iterator[tuple[Any, Any, Any]]:
        """Every stored ``(namespace, key, value)`` of this table's key groups (for restoring
        small operator-managed state such as timers)."""
        for group in self.key_groups:
            for stored, data in self.store.items_with_prefix(_HEAD.pack(self.table_id, group)):
                yield *self._split(stored), self._loads(data)

    def _split(self, stored: bytes) -> tuple[Any, Any]:
        """The namespace and key of a stored key."""
        (size,) = _LEN.unpack_from(stored, _HEAD.size)
        start = _HEAD.size + _LEN.size
        namespace = None if size == 0 else decode_key(stored[start:start + size])
        if namespace is not None and self.namespace_codec is not None:
            namespace = self.namespace_codec.decode(namespace)
        return namespace, decode_key(stored[start + size:])

    def stored_keys(self, key_group: int) -> list[tuple[Any, Any]]:
        """``(namespace, key)`` of every entry of ``key_group`` the store may hold: checkpointed
        (unless its namespace was dropped since) or evicted to the working area. Some may
        have changed or been deleted since; :meth:`load` reads what they hold now."""
        store = self.store
        assert store is not None
        prefix = _HEAD.pack(self.table_id, key_group)
        found: dict[tuple[Any, Any], None] = {}
        for stored in store.keys_with_prefix(prefix):
            namespace, key = self._split(stored)
            if namespace not in self.dropped:
                found[namespace, key] = None
        for stored in store.keys_with_prefix(prefix, working=True):
            namespace, key = self._split(stored)
            if namespace not in self.dropped or stored in self.spilled.get(namespace, ()):
                found[namespace, key] = None
        return list(found)





class LmdbBackend:
    """Keyed state over the worker's :class:`~aioflow.state.lmdb.LmdbStore`: each table a
    write-back cache of at most ``cache_size`` entries per subtask, trimmed between
    batches; a checkpoint writes what changed since the previous one. ``checkpointed`` is
    false for LMDB used for its size alone (never checkpointed): timer changes are then
    not tracked."""

    durable = True

    def __init__(
        self,
        store: LmdbStore,
        *,
        key_groups: range = range(128),
        max_parallelism: int = 128,
        cache_size: int = DEFAULT_CACHE_SIZE,
        serializer: Serializer | None = None,
        clock: Callable[[], int] | None = None,
        checkpointed: bool = True,
    ) -> None:
        self.store = store
        self.checkpointed = checkpointed
        self._key_groups = key_groups
        self.max_parallelism = max_parallelism
        self.cache_size = cache_size
        self.serializer = serializer if serializer is not None else JsonSerializer()
        self.tables: dict[tuple[str, str], LmdbTable] = {}
        self._timers: list[tuple[LmdbTable, MemoryTimerQueue]] = []
        self.clock = clock if clock is not None else now_ms
        self._ttl = TtlCleanup(self.clock)
        self._group_of = functools.partial(_group_of_key, max_parallelism=max_parallelism)

    @property
    def key_groups(self) -> frozenset[int]:
        return frozenset(self._key_groups)

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
        ident = (operator, state)
        declared = f"TTL {kind}" if ttl else kind
        table = self.tables.get(ident)
        if table is not None:
            check_declaration(table, operator, state, declared)
            return table
        serializer = serializer if serializer is not None else self.serializer
        table_id, restored = self.store.register_table(operator, state, declared, serializer.name)
        table = LmdbTable(
            operator, state, declared, serializer, store=self.store, table_id=table_id,
            key_group_of=key_group_of or self._group_of, key_groups=self._key_groups, restored=restored,
            namespaces=namespaces,
        )
        self.tables[ident] = table
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
        queue = _TrackedTimerQueue()
        table = self.table(operator, name, "timers", serializer=JsonSerializer(), key_group_of=key_group_of)
        restore = keys.decode if keys is not None else None
        queue.encode = keys.encode if keys is not None else None
        if table.restored:
            stored = sorted((timestamp, sequence, key) for timestamp, key, sequence in table.stored_namespaces())
            for timestamp, _, key in stored:
                queue.add(timestamp, key if restore is None else restore(key))
            queue.sequence = max((sequence for _, sequence, _ in stored), default=0)
        if self.checkpointed:
            queue.changes = {}
            self._timers.append((table, queue))
        return queue

    @property
    def cached_entries(self) -> int:
        return sum(table.cached_entries() for table in self.tables.values())

    def trim(self) -> None:
        """Evict down to ``cache_size`` cached entries (called between batches)."""
        excess = self.cached_entries - self.cache_size
        if excess <= 0:
            return
        spill: list[tuple[bytes, bytes]] = []
        for table in self.tables.values():
            if excess <= 0:
                break
            before = table.cached_entries()
            spill.extend(table.evict(excess))
            excess -= before - table.cached_entries()
        if spill:
            self.store.spill(spill)

    def acquire(self, groups: Iterable[int]) -> None:
        raise StateError("acquiring key groups at run time needs the checkpoint storage of a later step")

    def release(self, groups: Iterable[int]) -> None:
        raise StateError("releasing key groups at run time needs the checkpoint storage of a later step")

    def cleanup_expired(self, now: int, budget: int) -> int:
        return self._ttl.run(now, budget)

    def schedule_ttl_cleanup(self, schedule: Callable[[int, Callable[[int], Any]], None]) -> None:
        self._ttl.schedule(schedule)

    def confirm(self, checkpoint_id: int) -> None:
        """The last snapshot was committed."""
        for table in self.tables.values():
            table.confirm()

    def spilled_keys(self) -> set[bytes]:
        return set().union(*(table.spilled_keys() for table in self.tables.values()))

    def snapshot(self, checkpoint_id: int) -> Writes:
        """What changed in every table and timer queue since the last committed snapshot;
        see :meth:`LmdbTable.snapshot`."""
        for table, queue in self._timers:
            changes = queue.changes
            assert changes is not None and table.key_group_of is not None
            group_of = table.key_group_of
            encode = queue.encode
            table.pending.update(
                (table.stored_key(group_of(key), timestamp, key if encode is None else encode(key)),
                 str(sequence).encode() if sequence else None)
                for (timestamp, key), sequence in changes.items()
            )
            changes.clear()
        writes: Writes = []
        for table in self.tables.values():
            writes.extend(table.snapshot())
        return writes


class _TrackedTimerQueue(MemoryTimerQueue):
    """A memory timer queue that records its changes since the last checkpoint
    (``changes``: (timestamp, key) -> registration sequence, or ``False`` when deleted)."""

    __slots__ = ("changes", "encode", "sequence")

    def __init__(self) -> None:
        super().__init__()
        self.changes: dict[tuple[int, Any], int | bool] | None = None
        self.sequence = 0
        self.encode: Callable[[Any], Any] | None = None

    def add(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is not None and key in keys:
            return
        super().add(timestamp, key)
        if self.changes is not None:
            self.sequence += 1
            self.changes[timestamp, key] = self.sequence

    def remove(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if self.changes is not None and keys is not None and key in keys:
            self.changes[timestamp, key] = False
        super().remove(timestamp, key)

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any]]:
        changes = self.changes
        for timestamp, key in super().pop_due(limit):
            if changes is not None:
                changes[timestamp, key] = False
            yield timestamp, key


def _group_of_key(key: Any, *, max_parallelism: int) -> int:
    return key_group(key, max_parallelism)
