"""The keyed-state seam: what every operator, handle and timer service uses for state.

A :class:`KeyedStateBackend` holds the keyed state of one subtask, addressed by
(key group, state, namespace, key): the key group is the key's (``key_group_of`` says how
a table's key maps to one), the state is a :class:`StateTable` the backend hands out per
operator and name, the namespace is ``None`` for plain keyed state and the window (or
timer time) for state kept per window. Two implementations:

- :class:`~aioflow._core.state.memory.MemoryBackend`: dicts; nothing survives the process.
- :class:`~aioflow._core.state.durable.LmdbBackend`: a bounded write-back cache over the
  worker's LMDB store; checkpoints write what changed since the previous one.

The per-record interface is a :class:`NamespaceView`: the operations of one namespace of a
table as plain callables, which the memory backend fills with a dict's own (C-level)
methods, so that a handle's ``value()`` costs a dict lookup and not a chain of calls.
Nothing outside the backends holds a backend's dicts.

Timers go through the same seam: :meth:`KeyedStateBackend.timers` hands out a
:class:`TimerQueue`, and :meth:`KeyedStateBackend.namespaced_timers` a
:class:`NamespacedTimerQueue` (a window operator's), kept in memory or in the store like
the rest of the state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aioflow._core.state.serializers import Serializer

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "Change",
    "MISSING",
    "KeyCodec",
    "KeyedStateBackend",
    "NamespaceView",
    "NamespacedTimerQueue",
    "StateTable",
    "TimerQueue",
]

#: "No entry": what views and tables return for a key that has no value.
MISSING: Any = object()

#: One entry of a snapshot: (key group, stored key, sealed value or ``None`` for deleted).
Change = tuple[int, bytes, bytes | None]

#: Entries a subtask keeps in its write-back cache (durable backend).
DEFAULT_CACHE_SIZE = 100_000


def _missing(key: Any) -> Any:
    return MISSING


class NamespaceView:
    """The entries of one namespace of one table, as five callables (the per-record path).

    - ``get(key, default)``: the cached value, or ``default``. A miss may not be final:
    - ``load(key)``: after a miss, the stored value (now cached) or ``MISSING``.
    - ``put(key, value)``: set the entry.
    - ``mark(key)``: the entry's value was changed in place (a list appended to).
    - ``delete(key)``: remove the entry.

    ``complete`` says that nothing lies behind the cache (memory state): a miss of ``get``
    is final, and a hot loop may skip ``load``.

    The view of the ``None`` namespace (plain keyed state) stays valid for good; a view of
    another namespace (a window) until that namespace is dropped, or, in a bounded cache,
    until the cache is trimmed (between batches): ask the table again then. A table hands
    out one view per namespace, so asking again is cheap.
    """

    __slots__ = ("complete", "delete", "get", "load", "mark", "put")

    def __init__(
        self,
        get: Callable[[Any, Any], Any],
        put: Callable[[Any, Any], None],
        mark: Callable[[Any], None],
        delete: Callable[[Any], None],
        load: Callable[[Any], Any] = _missing,
    ) -> None:
        self.get = get
        self.put = put
        self.mark = mark
        self.delete = delete
        self.load = load
        self.complete = load is _missing


class KeyCodec(Protocol):
    """How objects that are not plain keys (windows) are stored as keys or namespaces:
    ``encode`` gives a plain key (``str``, ``int``, ``None`` or tuples of them) that is the
    same in every process, ``decode`` the object back (a window comes back as a window)."""

    def encode(self, obj: Any) -> Any: ...

    def decode(self, plain: Any) -> Any: ...


class StateTable(Protocol):
    """One state of one operator in one subtask: ``(namespace, key) -> value``."""

    operator: str
    name: str
    kind: str
    serializer: Serializer

    def view(self, namespace: Any = None) -> NamespaceView:
        """The per-record operations on ``namespace``."""
        ...

    def get(self, key: Any, namespace: Any = None, default: Any = None) -> Any: ...

    def put(self, key: Any, value: Any, namespace: Any = None) -> None: ...

    def delete(self, key: Any, namespace: Any = None) -> None:
        """Remove the entry (a namespace left empty goes too)."""
        ...

    def keys_in(self, namespace: Any = None) -> list[Any]:
        """Every key with an entry in ``namespace``, stored ones included."""
        ...

    def drop(self, namespace: Any) -> None:
        """Remove every entry of ``namespace`` (a window that was purged)."""
        ...

    def scan(self) -> Iterator[tuple[Any, Any]]:
        """Every ``(namespace, key)`` with an entry, cached or stored, in no set order
        (background sweeps); entries changed during the walk may be seen or not."""
        ...

    def peek(self, key: Any, namespace: Any = None) -> Any:
        """The value, or ``MISSING``, without keeping a stored one in the cache."""
        ...


class TimerQueue(Protocol):
    """Timers of one operator: one per ``(timestamp, key)``, fired in timestamp order.

    ``key`` is what the timer belongs to: the record key for process functions, ``(key,
    side)`` for interval joins. Timers of one timestamp fire in the order they were registered
    (stored ones, after a restore or when the cache spilled them, in key order first).
    """

    def add(self, timestamp: int, key: Any) -> None: ...

    def add_all(self, timestamp: int, keys: list[Any]) -> None:
        """``add(timestamp, key)`` for each of ``keys``, in order."""
        ...

    def remove(self, timestamp: int, key: Any) -> None: ...

    def next_time(self) -> int | None:
        """The earliest timestamp with a timer, or ``None``."""
        ...

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any]]:
        """Yield and remove every timer at or before ``limit``, in timestamp order; timers
        registered meanwhile are yielded too if they are due."""
        ...

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Iterable[Any]]]:
        """:meth:`pop_due` a timestamp at a time: ``(timestamp, keys)`` (for callers that
        fire many timers of one timestamp). Cached timers are removed whole before their
        group is yielded; stored ones are read as ``keys`` is consumed, so consume it
        before asking for the next group."""
        ...

    def clear(self) -> None: ...


class NamespacedTimerQueue(Protocol):
    """Timers of one operator per ``(timestamp, key, namespace)``, as Flink's timer service
    keeps them: a window operator's timers, the window being the namespace.

    The same timers as a :class:`TimerQueue` of ``(key, namespace)`` keys, stored alike,
    but registered and fired a namespace at a time: a window's timers cost one entry per
    key, and firing decides once per window what its timers do. Within a timestamp, the
    namespaces fire in the order their first timer was registered, each namespace's keys
    in registration order (stored ones in key order, as for :class:`TimerQueue`).
    """

    def add(self, timestamp: int, key: Any, namespace: Any) -> None: ...

    def add_all(self, timestamp: int, namespace: Any, keys: list[Any]) -> None:
        """``add(timestamp, key, namespace)`` for each of ``keys``, in order."""
        ...

    def remove(self, timestamp: int, key: Any, namespace: Any) -> None: ...

    def next_time(self) -> int | None:
        """The earliest timestamp with a timer, or ``None``."""
        ...

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any, Any]]:
        """Yield and remove every ``(timestamp, key, namespace)`` at or before ``limit``, in
        timestamp order; timers registered meanwhile are yielded too if they are due."""
        ...

    def pop_due_groups(self, limit: int) -> Iterator[tuple[int, Any, Iterable[Any]]]:
        """:meth:`pop_due` a namespace of a timestamp at a time: ``(timestamp, namespace,
        keys)``; ``keys`` must be consumed before the next group is asked for."""
        ...

    def clear(self) -> None: ...


class KeyedStateBackend(Protocol):
    """The keyed state of one subtask; see the module docstring."""

    #: State survives the process (and is checkpointed when ``checkpointed``).
    durable: bool
    max_parallelism: int
    #: The default serializer of state values.
    serializer: Serializer
    #: Processing time in epoch ms, as TTL state sees it (tests pass a fake one).
    clock: Callable[[], int]

    @property
    def key_groups(self) -> frozenset[int]:
        """The key groups this subtask owns now."""
        ...

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
    ) -> StateTable:
        """The table of ``operator``'s state ``state``; declaring it again with another
        kind fails. ``key_group_of`` maps a table key to its key group when the key is not
        the record key itself; ``namespaces`` stores namespaces that are not plain JSON
        keys (windows); ``ttl``: values carry their expiry and a background sweep walks
        the table."""
        ...

    def timers(
        self,
        operator: str,
        name: str,
        *,
        key_group_of: Callable[[Any], int] | None = None,
        keys: KeyCodec | None = None,
    ) -> TimerQueue:
        """``operator``'s timer queue ``name`` (restored timers included). ``keys`` stores
        timer keys that are not plain JSON keys (``(key, window)`` for windows)."""
        ...

    def namespaced_timers(self, operator: str, name: str, *, namespaces: KeyCodec) -> NamespacedTimerQueue:
        """``operator``'s timer queue ``name`` with a namespace per timer (restored timers
        included), stored as the :meth:`timers` of ``(key, namespace)`` keys would be; a
        timer belongs to its key's key group."""
        ...

    @property
    def cached_entries(self) -> int:
        """Entries held in memory now (kept as they change, never recounted)."""
        ...

    def trim(self) -> None:
        """Bring the cache back within its bound (between batches)."""
        ...

    def snapshot(self, checkpoint_id: int) -> Iterable[Change]:
        """At checkpoint ``checkpoint_id``'s barrier: what changed since the last completed
        checkpoint, for the checkpoint to store (nothing for a backend that is not
        checkpointed)."""
        ...

    def contents(self) -> Iterable[Change]:
        """Every stored entry in the key groups owned, for a savepoint's full copy
        (nothing for a backend that is not checkpointed)."""
        ...

    def confirm(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` completed: what its snapshot held is stored."""
        ...

    def table_ids(self) -> tuple[int, ...]:
        """The stored ids of this subtask's tables and timer queues (what its snapshots cover)."""
        ...

    def acquire(self, groups: Iterable[int]) -> None:
        """Start owning ``groups``: their stored state becomes visible."""
        ...

    def release(self, groups: Iterable[int]) -> None:
        """Stop owning ``groups``: their state leaves this subtask's cache, and changes not
        yet in a checkpoint are discarded (the next owner resumes from the checkpoint)."""
        ...

    def cleanup_expired(self, now: int, budget: int) -> int:
        """Delete TTL state expired at ``now``, looking at no more than ``budget`` entries."""
        ...

    def schedule_maintenance(self, schedule: Callable[[int, Callable[[int], Any]], None]) -> None:
        """Have ``schedule`` (the subtask's processing-time scheduler) run the backend's
        upkeep between batches: TTL cleanup, verification of what is stored."""
        ...
