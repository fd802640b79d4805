"""State time-to-live: keyed state that expires when it was not written for a while.

``ctx.value_state("last", ttl=af.StateTtl(3600))`` declares a state whose values expire an
hour of processing time after they were created or last written (or read, with
``refresh_on_read=True``): Flink's ``StateTtlConfig`` with ``OnCreateAndWrite`` (or
``OnReadAndWrite``) and ``NeverReturnExpired``, in processing time.

A TTL state stores each value with the processing time (epoch ms) at which it expires, so
the expiry survives checkpoints and restores: ``[expires_at, value]`` per key for value,
reducing and aggregating state; per element for list state (``[[expires_at, element],
...]``) and per entry for map state (``{map_key: [expires_at, value]}``), as in Flink.
State without a TTL is stored as before and pays nothing. A TTL state is registered as
another kind (``"TTL value"``), so a restart that adds or removes ``ttl=`` is refused
instead of misreading the stored values.

Expired values are never returned. They are removed lazily, by the read that finds them
(the deletion reaches the store at the next checkpoint), and in the background:
:class:`TtlSweep` walks a table's entries, cached and stored, a bounded number per call.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aioflow._core.errors import PipelineError
from aioflow._core.state.backend import MISSING, StateTable

__all__ = [
    "TTL_CLEANUP_BUDGET",
    "TTL_CLEANUP_INTERVAL_MS",
    "StateTtl",
    "TtlCleanup",
    "TtlSweep",
    "purge_entry",
    "purge_list",
    "purge_map",
]


@dataclass(frozen=True, slots=True)
class StateTtl:
    """How long keyed state lives: ``ttl=StateTtl(seconds)`` on any ``ctx.*_state(...)``.

    A value's time starts when it is created and starts again at every write (and every
    read, with ``refresh_on_read=True``). Once ``seconds`` of processing time passed, it
    is gone: a value state returns its default, list elements and map entries vanish.
    List state expires element by element and map state entry by entry, each from its
    own last write. Expired state is deleted when a read finds it, and by a background
    sweep between batches, so keys that are never seen again do not keep their state.
    """

    seconds: float
    refresh_on_read: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise PipelineError(
                f"StateTtl(seconds) takes a number of seconds, got {seconds!r} ({type(seconds).__name__})"
            )
        if not math.isfinite(seconds) or seconds <= 0:
            raise PipelineError(
                f"StateTtl(seconds) must be positive and finite, got {seconds!r}; "
                "for state that never expires, leave ttl= out"
            )
        if round(seconds * 1000) < 1:
            raise PipelineError(
                f"StateTtl(seconds) must be at least 0.001 (processing time counts milliseconds), got {seconds!r}"
            )
        if not isinstance(self.refresh_on_read, bool):
            raise PipelineError(f"StateTtl(refresh_on_read=) takes True or False, got {self.refresh_on_read!r}")

    @property
    def ttl_ms(self) -> int:
        """The time to live in milliseconds."""
        return round(self.seconds * 1000)


# -- what is expired, per kind of stored value --------------------------------------------------
#
# Each returns the live part of a stored value at processing time ``now``: the value itself
# when nothing expired, a pruned copy when part of it did, ``MISSING`` when all of it did.
# A value expires when ``now`` reaches its ``expires_at``.


def purge_entry(entry: list[Any], now: int) -> Any:
    """``[expires_at, value]`` (value, reducing and aggregating state)."""
    return entry if entry[0] > now else MISSING


def purge_list(items: list[list[Any]], now: int) -> Any:
    """``[[expires_at, element], ...]`` (list state)."""
    live = [item for item in items if item[0] > now]
    if len(live) == len(items):
        return items
    return live or MISSING


def purge_map(entries: dict[Any, list[Any]], now: int) -> Any:
    """``{map_key: [expires_at, value]}`` (map state)."""
    if all(entry[0] > now for entry in entries.values()):
        return entries
    return {key: entry for key, entry in entries.items() if entry[0] > now} or MISSING


_PURGE: dict[str, Callable[[Any, int], Any]] = {
    "value": purge_entry,
    "reducing": purge_entry,
    "aggregating": purge_entry,
    "list": purge_list,
    "map": purge_map,
}


class TtlSweep:
    """The background cleanup of one TTL table: a walk over its entries, resumed call after call.

    A pass walks the table's ``scan()``, cached and stored entries alike; stored entries
    are read with ``peek`` (without staying in the cache), so the sweep does not push hot
    state out. An expired entry is deleted, a partly expired list or map is pruned; both
    reach the store at the next checkpoint.
    """

    def __init__(self, table: StateTable, kind: str) -> None:
        self.table = table
        self.purge = _PURGE[kind]
        self._walk: Iterator[tuple[Any, Any]] | None = None

    def run(self, now: int, budget: int) -> tuple[int, int]:
        """Look at up to ``budget`` entries; returns how many it looked at and how many it
        deleted or pruned. Fewer looked at than ``budget``: the pass ended, the next call
        starts another."""
        if self._walk is None:
            self._walk = self.table.scan()
        examined = removed = 0
        for namespace, key in self._walk:
            examined += 1
            removed += self._expire(namespace, key, now)
            if examined >= budget:
                return examined, removed
        self._walk = None
        return examined, removed

    def _expire(self, namespace: Any, key: Any, now: int) -> int:
        table = self.table
        value = table.peek(key, namespace)
        if value is MISSING:
            return 0  # deleted since the pass began
        live = self.purge(value, now)
        if live is value:
            return 0
        if live is MISSING:
            table.delete(key, namespace)
        else:
            table.put(key, live, namespace)
        return 1


#: Background TTL cleanup: how often it runs (processing-time ms) and how many entries it
#: looks at each time, so that it never pauses a task for long.
TTL_CLEANUP_INTERVAL_MS = 1_000
TTL_CLEANUP_BUDGET = 1_000


class TtlCleanup:
    """The TTL sweeps of one backend's tables, taking turns within one budget."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self._sweeps: list[TtlSweep] = []
        self._next = 0

    def add(self, table: StateTable, kind: str) -> None:
        self._sweeps.append(TtlSweep(table, kind))

    def run(self, now: int, budget: int) -> int:
        """Remove TTL state expired at processing time ``now``, looking at no more than
        ``budget`` entries (cached or stored), so a call is short however large the state.
        Calls resume where the last one stopped, table after table. Returns how many keys'
        state it deleted or pruned."""
        if budget < 1:
            raise ValueError(f"cleanup_expired: budget must be at least 1, got {budget!r}")
        sweeps, removed = self._sweeps, 0
        for _ in range(len(sweeps)):
            examined, expired = sweeps[self._next].run(now, budget)
            removed += expired
            budget -= examined
            if budget <= 0:
                break
            self._next = (self._next + 1) % len(sweeps)  # that table's pass ended
        return removed

    def schedule(self, schedule: Callable[[int, Callable[[int], Awaitable[None]]], None]) -> None:
        """If any state has a TTL, have ``schedule`` (the subtask's processing-time
        scheduler, which runs callbacks between batches) run the cleanup at once and then
        every ``TTL_CLEANUP_INTERVAL_MS``, with ``TTL_CLEANUP_BUDGET``."""
        if not self._sweeps:
            return

        async def cleanup(now: int) -> None:
            self.run(self.clock(), TTL_CLEANUP_BUDGET)
            schedule(now + TTL_CLEANUP_INTERVAL_MS, cleanup)

        schedule(0, cleanup)
