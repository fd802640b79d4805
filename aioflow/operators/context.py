"""The context user functions receive: ``open(ctx)``, ``process_element(value, ctx)``, ``on_timer(ts, ctx)``.

One context object exists per operator subtask; the runtime updates ``timestamp`` and
``key`` before each call instead of allocating a context per record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow.state.handles import AggregatingState, ListState, MapState, ReducingState, ValueState
from aioflow.state.serializers import serializer_named
from aioflow.time.timers import EVENT_TIME, TimerService

if TYPE_CHECKING:
    from aioflow.functions import AggregateFunction
    from aioflow.state.backend import StateBackend
    from aioflow.state.serializers import Serializer
    from aioflow.state.table import StateTable

__all__ = ["OperatorContext"]


class OperatorContext:
    """What a user function can see and do.

    - ``timestamp``: event time of the current record or timer (``None`` without event time)
    - ``key``: the current key (keyed streams only)
    - ``time_domain``: in ``on_timer``, ``"event_time"`` or ``"processing_time"``
    - ``timer_service``: register and delete timers, read the current watermark
    - ``value_state`` / ``list_state`` / ``map_state`` / ``reducing_state`` /
      ``aggregating_state``: keyed state handles (declare them in ``open``)
    - ``operator_name``, ``subtask_index``, ``parallelism``
    """

    __slots__ = (
        "_backend",
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
        backend: StateBackend | None,
        schedule_processing_time: Callable[[int], None],
    ) -> None:
        self.operator_name = operator_name
        self.subtask_index = subtask_index
        self.parallelism = parallelism
        self.keyed = keyed
        self._backend = backend
        self.timestamp: int | None = None
        self.key: Any = None
        self.time_domain = EVENT_TIME
        event_timers = processing_timers = None
        if keyed and backend is not None:
            event_timers = backend.timers(operator_name, "event-timers")
            processing_timers = backend.timers(operator_name, "processing-timers")
        self.timer_service = TimerService(
            operator_name, self._current_key if keyed else None, schedule_processing_time,
            event_timers, processing_timers,
        )

    def _current_key(self) -> Any:
        return self.key

    def _table(self, name: str, kind: str, serializer: str | Serializer | None = None) -> StateTable:
        if not self.keyed or self._backend is None:
            raise TypeError(
                f"operator {self.operator_name!r}: keyed state ({kind} state {name!r}) "
                "needs a keyed stream; use key_by(...) first"
            )
        if not isinstance(name, str) or not name:
            raise TypeError(f"operator {self.operator_name!r}: state names are non-empty strings, got {name!r}")
        where = f"operator {self.operator_name!r}: {kind} state {name!r}"
        return self._backend.table(
            self.operator_name, name, kind,
            serializer=None if serializer is None else serializer_named(serializer, where),
        )

    def value_state(self, name: str, default: Any = None, *, serializer: str | Serializer | None = None) -> ValueState:
        """One value per key; ``value()`` returns ``default`` for a key with no value yet.
        ``serializer`` (``"json"``, the default, ``"pickle"`` or a :class:`Serializer`)
        says how values are stored in checkpoints; every kind of state takes it."""
        return ValueState(self._table(name, "value", serializer), self, default)

    def list_state(self, name: str, *, serializer: str | Serializer | None = None) -> ListState:
        return ListState(self._table(name, "list", serializer), self)

    def map_state(self, name: str, *, serializer: str | Serializer | None = None) -> MapState:
        return MapState(self._table(name, "map", serializer), self)

    def reducing_state(self, name: str, reduce: Callable[[Any, Any], Any], *,
                       serializer: str | Serializer | None = None) -> ReducingState:
        return ReducingState(self._table(name, "reducing", serializer), self, reduce)

    def aggregating_state(self, name: str, aggregate: AggregateFunction[Any, Any, Any], *,
                          serializer: str | Serializer | None = None) -> AggregatingState:
        return AggregatingState(self._table(name, "aggregating", serializer), self, aggregate)

    def current_watermark(self) -> int:
        return self.timer_service.watermark
