"""The context user functions receive: ``open(ctx)``, ``process_element(value, ctx)``, ``on_timer(ts, ctx)``;
and the smaller one an :class:`~aioflow.AsyncFunction`'s ``open(ctx)`` receives.

One context object exists per operator subtask; the runtime updates ``timestamp`` and
``key`` before each call instead of allocating a context per record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import PipelineError
from aioflow._core.state.handles import (
    AggregatingState,
    ListState,
    MapState,
    ReducingState,
    TtlAggregatingState,
    TtlListState,
    TtlMapState,
    TtlReducingState,
    TtlValueState,
    ValueState,
)
from aioflow._core.state.memory import MemoryTimerQueue
from aioflow._core.state.serializers import serializer_named
from aioflow._core.state.ttl import StateTtl
from aioflow._core.time.timers import EVENT_TIME, TimerService, now_ms

if TYPE_CHECKING:
    from aioflow._core.functions import AggregateFunction
    from aioflow._core.state.backend import KeyedStateBackend, StateTable
    from aioflow._core.state.serializers import Serializer

__all__ = ["ConcurrentContext", "FunctionContext", "OperatorContext"]


@dataclass(frozen=True, slots=True)
class FunctionContext:
    """Where an :class:`~aioflow.AsyncFunction` runs, as its ``open(ctx)`` sees it: the
    operator's name, this subtask's index and the operator's parallelism, and
    ``concurrency``, the most calls this subtask makes at once (the operator's
    ``capacity`` or ``max_concurrency``, else the app's): size a connection pool with it."""

    operator_name: str
    subtask_index: int
    parallelism: int
    concurrency: int


class OperatorContext:
    """What a user function can see and do.

    - ``timestamp``: event time of the current record or timer (``None`` without event time)
    - ``key``: the current key (keyed streams only)
    - ``time_domain``: in ``on_timer``, ``"event_time"`` or ``"processing_time"``
    - ``timer_service``: register and delete timers, read the current watermark
    - ``value_state`` / ``list_state`` / ``map_state`` / ``reducing_state`` /
      ``aggregating_state``: keyed state handles (declare them in ``open``); each takes
      ``serializer=`` and ``ttl=``
    - ``operator_name``, ``subtask_index``, ``parallelism``
    """

    __slots__ = (
        "_backend",
        "_clock",
        "key",
        "keyed",
        "operator_name",
        "parallelism",
        "subtask_index",
        "time_domain",
        "timer_service",
        "timestamp",
    )

    def __init__(
        self,
        operator_name: str,
        subtask_index: int,
        parallelism: int,
        *,
        keyed: bool,
        backend: KeyedStateBackend | None,
        schedule_processing_time: Callable[[int], None],
    ) -> None:
        self.operator_name = operator_name
        self.subtask_index = subtask_index
        self.parallelism = parallelism
        self.keyed = keyed
        self._backend = backend
        self._clock = backend.clock if backend is not None else now_ms
        self.timestamp: int | None = None
        self.key: Any = None
        self.time_domain = EVENT_TIME
        if keyed and backend is not None:
            event_timers = backend.timers(operator_name, "event-timers")
            processing_timers = backend.timers(operator_name, "processing-timers")
        else:  # no key, no timers: registering one fails naming the operator
            event_timers, processing_timers = MemoryTimerQueue(), MemoryTimerQueue()
        self.timer_service = TimerService(
            operator_name,
            functools.partial(getattr, self, "key") if keyed else None,
            schedule_processing_time,
            event_timers,
            processing_timers,
        )

    def _table(self, name: str, kind: str, serializer: str | Serializer | None, ttl: StateTtl | None) -> StateTable:
        if not self.keyed or self._backend is None:
            raise PipelineError(
                f"operator {self.operator_name!r}: keyed state ({kind} state {name!r}) "
                "needs a keyed stream; use key_by(...) first"
            )
        if not isinstance(name, str) or not name:
            raise PipelineError(f"operator {self.operator_name!r}: state names are non-empty strings, got {name!r}")
        where = f"operator {self.operator_name!r}: {kind} state {name!r}"
        if ttl is not None and not isinstance(ttl, StateTtl):
            raise PipelineError(f"{where}: ttl= takes aioflow.StateTtl(seconds) or None, got {ttl!r}")
        return self._backend.table(
            self.operator_name,
            name,
            kind,
            serializer=None if serializer is None else serializer_named(serializer, where),
            ttl=ttl is not None,
        )

    def value_state(
        self, name: str, default: Any = None, *, serializer: str | Serializer | None = None, ttl: StateTtl | None = None
    ) -> ValueState:
        """One value per key; ``value()`` returns ``default`` for a key with no value yet.
        ``serializer`` (``"json"``, the default, ``"pickle"`` or a :class:`Serializer`)
        says how values are stored in checkpoints; ``ttl`` (a :class:`StateTtl`) makes
        them expire when not written for a while. Every kind of state takes both; a
        restart must declare a state with the same serializer, and with or without a TTL."""
        table = self._table(name, "value", serializer, ttl)
        if ttl is None:
            return ValueState(table, self, default)
        return TtlValueState(table, self, default, ttl=ttl, clock=self._clock)

    def list_state(
        self, name: str, *, serializer: str | Serializer | None = None, ttl: StateTtl | None = None
    ) -> ListState:
        """A list per key; with ``ttl``, each element expires on its own."""
        table = self._table(name, "list", serializer, ttl)
        if ttl is None:
            return ListState(table, self)
        return TtlListState(table, self, ttl=ttl, clock=self._clock)

    def map_state(
        self, name: str, *, serializer: str | Serializer | None = None, ttl: StateTtl | None = None
    ) -> MapState:
        """A dict per key; with ``ttl``, each entry expires on its own."""
        table = self._table(name, "map", serializer, ttl)
        if ttl is None:
            return MapState(table, self)
        return TtlMapState(table, self, ttl=ttl, clock=self._clock)

    def reducing_state(
        self,
        name: str,
        reduce: Callable[[Any, Any], Any],
        *,
        serializer: str | Serializer | None = None,
        ttl: StateTtl | None = None,
    ) -> ReducingState:
        table = self._table(name, "reducing", serializer, ttl)
        if ttl is None:
            return ReducingState(table, self, reduce)
        return TtlReducingState(table, self, reduce, ttl=ttl, clock=self._clock)

    def aggregating_state(
        self,
        name: str,
        aggregate: AggregateFunction[Any, Any, Any],
        *,
        serializer: str | Serializer | None = None,
        ttl: StateTtl | None = None,
    ) -> AggregatingState:
        table = self._table(name, "aggregating", serializer, ttl)
        if ttl is None:
            return AggregatingState(table, self, aggregate)
        return TtlAggregatingState(table, self, aggregate, ttl=ttl, clock=self._clock)

    def current_watermark(self) -> int:
        return self.timer_service.watermark


class ConcurrentContext(OperatorContext):
    """The context of an operator whose ``async def`` functions run on several records at
    once: ``key`` and ``timestamp`` live in context variables, so that each coroutine (a
    task of its own) sees its own record's across its awaits, and keyed state and timers
    act for that key whatever the other coroutines do meanwhile."""

    __slots__ = ("_key_var", "_timestamp_var")

    def __init__(self, operator_name: str, *args: Any, **kwargs: Any) -> None:
        self._key_var: ContextVar[Any] = ContextVar(f"aioflow key of {operator_name}", default=None)
        self._timestamp_var: ContextVar[int | None] = ContextVar(f"aioflow timestamp of {operator_name}", default=None)
        super().__init__(operator_name, *args, **kwargs)

    @property
    def key(self) -> Any:
        return self._key_var.get()

    @key.setter
    def key(self, key: Any) -> None:
        self._key_var.set(key)

    @property
    def timestamp(self) -> int | None:
        return self._timestamp_var.get()

    @timestamp.setter
    def timestamp(self, timestamp: int | None) -> None:
        self._timestamp_var.set(timestamp)
