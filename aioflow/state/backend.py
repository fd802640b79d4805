"""The state-backend seam: where one subtask's keyed state lives.

Operators and state handles talk to :class:`StateTable` objects that a
:class:`StateBackend` hands out, never to raw dicts of their own. A backend is either
in memory (the tables' caches are the state; nothing survives the process) or durable
over the worker's :class:`~aioflow.state.lmdb.LmdbStore`: the tables are then a
write-back cache of at most ``cache_size`` entries per subtask, trimmed between batches,
and a checkpoint writes what changed since the previous one.

The backend also owns processing time for state TTL (``clock``, injectable for tests)
and the background cleanup of expired TTL state (:meth:`StateBackend.cleanup_expired`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aioflow.runtime.keygroups import key_group
from aioflow.state.serializers import JsonSerializer, Serializer
from aioflow.state.table import StateTable, Writes
from aioflow.state.ttl import TtlSweep
from aioflow.time.timers import TimerQueue, now_ms

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aioflow.state.lmdb import LmdbStore

__all__ = ["DEFAULT_CACHE_SIZE", "TTL_CLEANUP_BUDGET", "TTL_CLEANUP_INTERVAL_MS", "StateBackend"]

#: Entries a subtask keeps in its write-back cache (durable backend).
DEFAULT_CACHE_SIZE = 100_000
#: Background TTL cleanup: how often it runs (processing-time ms) and how many entries it
#: looks at each time, so that it never pauses a task for long.
TTL_CLEANUP_INTERVAL_MS = 1_000
TTL_CLEANUP_BUDGET = 1_000


class StateBackend:
    """The keyed state of one subtask: its tables, in memory or over ``store``.

    ``clock`` is processing time in epoch milliseconds, as TTL state sees it (default:
    the wall clock); tests pass a fake one to expire state without sleeping.
    ``checkpointed`` is false for durable state that is never checkpointed (LMDB for its
    size alone): timer changes are then not tracked.
    """

    def __init__(
        self,
        store: LmdbStore | None = None,
        *,
        key_groups: range = range(128),
        max_parallelism: int = 128,
        cache_size: int = DEFAULT_CACHE_SIZE,
        serializer: Serializer | None = None,
        clock: Callable[[], int] | None = None,
        checkpointed: bool = True,
    ) -> None:
        self.store = store
        #: Snapshots will be taken: track timer changes for them (else timers live in memory only).
        self.checkpointed = checkpointed
        self.key_groups = key_groups
        self.max_parallelism = max_parallelism
        self.cache_size = cache_size
        self.serializer = serializer if serializer is not None else JsonSerializer()
        self.tables: dict[tuple[str, str], StateTable] = {}
        self._timers: list[tuple[StateTable, TimerQueue]] = []
        self.clock = clock if clock is not None else now_ms
        self._sweeps: list[TtlSweep] = []
        self._next_sweep = 0
        self._group_of = functools.partial(_group_of_key, max_parallelism=max_parallelism)

    @property
    def durable(self) -> bool:
        return self.store is not None

    def table(
        self,
        operator: str,
        state: str,
        kind: str,
        *,
        serializer: Serializer | None = None,
        key_group_of: Callable[[Any], int] | None = None,
        ttl: bool = False,
    ) -> StateTable:
        """The table of ``operator``'s state ``state``; declaring it again with another kind
        fails. ``key_group_of`` maps a table key to its key group when the table key is not
        the record key itself (e.g. ``(key, window)`` for window timers). ``ttl``: the
        values carry their expiry (see :mod:`aioflow.state.ttl`); the table's kind is then
        ``"TTL <kind>"`` and the background cleanup walks it."""
        ident = (operator, state)
        declared = f"TTL {kind}" if ttl else kind
        table = self.tables.get(ident)
        if table is not None:
            if table.kind != declared:
                raise TypeError(
                    f"operator {operator!r}: state {state!r} was declared as {table.kind} state, "
                    f"cannot declare it again as {declared} state"
                )
            return table
        serializer = serializer if serializer is not None else self.serializer
        if self.store is None:
            table = StateTable(operator, state, declared, serializer)
        else:
            table_id, restored = self.store.register_table(operator, state, declared, serializer.name)
            table = StateTable(
                operator, state, declared, serializer, store=self.store, table_id=table_id,
                key_group_of=key_group_of or self._group_of, key_groups=self.key_groups, restored=restored,
            )
        self.tables[ident] = table
        if ttl:
            self._sweeps.append(TtlSweep(table, kind))
        return table

    def timers(
        self,
        operator: str,
        name: str,
        *,
        key_group_of: Callable[[Any], int] | None = None,
        restore: Callable[[Any], Any] | None = None,
    ) -> TimerQueue:
        """``operator``'s timer queue ``name``, with the timers of the last checkpoint in this
        subtask's key groups. ``key_group_of`` maps a timer's key to its key group; ``restore``
        turns a key read back from a checkpoint into the object the operator used."""
        queue = TimerQueue()
        if self.store is None:
            return queue
        table = self.table(operator, name, "timers", serializer=JsonSerializer(), key_group_of=key_group_of)
        if table.restored:
            stored = sorted((timestamp, sequence, key) for timestamp, key, sequence in table.stored_namespaces())
            for timestamp, _, key in stored:
                queue.add(timestamp, key if restore is None else restore(key))
            queue.sequence = max((sequence for _, sequence, _ in stored), default=0)
        if self.checkpointed:
            queue.changes = {}
            self._timers.append((table, queue))
        return queue

    def trim(self) -> None:
        """Evict down to ``cache_size`` cached entries (durable tables; called between batches)."""
        if self.store is None:
            return
        excess = sum(table.cached_entries() for table in self.tables.values()) - self.cache_size
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

    def cleanup_expired(self, now: int, budget: int) -> int:
        """Remove TTL state expired at processing time ``now``, looking at no more than
        ``budget`` entries (cached or stored), so a call is short however large the state.
        Calls resume where the last one stopped, table after table. Returns how many keys'
        state it deleted or pruned; the deletions reach the store at the next checkpoint."""
        if budget < 1:
            raise ValueError(f"cleanup_expired: budget must be at least 1, got {budget!r}")
        sweeps, removed = self._sweeps, 0
        for _ in range(len(sweeps)):
            examined, expired = sweeps[self._next_sweep].run(now, budget)
            removed += expired
            budget -= examined
            if budget <= 0:
                break
            self._next_sweep = (self._next_sweep + 1) % len(sweeps)  # that table's pass ended
        return removed

    def schedule_ttl_cleanup(self, schedule: Callable[[int, Callable[[int], Awaitable[None]]], None]) -> None:
        """If any state has a TTL, have ``schedule`` (the subtask's processing-time
        scheduler, which runs callbacks between batches) call :meth:`cleanup_expired` at
        once and then every ``TTL_CLEANUP_INTERVAL_MS``, with ``TTL_CLEANUP_BUDGET``."""
        if not self._sweeps:
            return

        async def cleanup(now: int) -> None:
            self.cleanup_expired(self.clock(), TTL_CLEANUP_BUDGET)
            schedule(now + TTL_CLEANUP_INTERVAL_MS, cleanup)

        schedule(0, cleanup)

    def confirm(self) -> None:
        """The last snapshot was committed."""
        for table in self.tables.values():
            table.confirm()

    def spilled_keys(self) -> set[bytes]:
        return set().union(*(table.spilled_keys() for table in self.tables.values()))

    def snapshot(self) -> Writes:
        """What changed in every table and timer queue since the last committed snapshot
        (durable backend); see :meth:`StateTable.snapshot`."""
        for table, queue in self._timers:
            changes = queue.changes
            assert changes is not None and table.key_group_of is not None
            group_of = table.key_group_of
            table.pending.update(
                (table.stored_key(group_of(key), timestamp, key), str(sequence).encode() if sequence else None)
                for (timestamp, key), sequence in changes.items()
            )
            changes.clear()
        writes: Writes = []
        for table in self.tables.values():
            writes.extend(table.snapshot())
        return writes


def _group_of_key(key: Any, *, max_parallelism: int) -> int:
    return key_group(key, max_parallelism)
