"""Timers as user code sees them: ``ctx.timer_service``, and processing time.

:class:`TimerService` registers timers for the key of the record being processed, in the
operator's timer queues. The queues themselves (de-duplicated per key and timestamp,
fired in timestamp order) belong to the state backend, which keeps them in memory or in
its store: see :meth:`aioflow._core.state.backend.KeyedStateBackend.timers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from aioflow._core.errors import PipelineError

if TYPE_CHECKING:
    from aioflow._core.state.backend import TimerQueue

__all__ = ["EVENT_TIME", "PROCESSING_TIME", "TimerService", "now_ms"]

EVENT_TIME = "event_time"
PROCESSING_TIME = "processing_time"


def now_ms() -> int:
    """Processing time: wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class TimerService:
    """``ctx.timer_service``: timers for the current key, and the current times.

    Timers belong to the key of the record (or timer) being processed. Registering the
    same (key, timestamp) twice makes one timer. An event-time timer fires when the
    watermark reaches its timestamp; a processing-time timer when the wall clock does.
    """

    def __init__(
        self,
        operator: str,
        key_of: Callable[[], Any] | None,
        schedule_processing_time: Callable[[int], None],
        event_timers: TimerQueue,
        processing_timers: TimerQueue,
    ) -> None:
        self._operator = operator
        self._key_of = key_of
        self._schedule = schedule_processing_time
        self.event_timers = event_timers
        self.processing_timers = processing_timers
        self._add_event = event_timers.add
        self.watermark = -(2**63)

    def _key(self) -> Any:
        if self._key_of is None:
            self._no_key()
        return self._key_of()

    def _no_key(self) -> NoReturn:
        raise PipelineError(
            f"operator {self._operator!r}: timers need a keyed stream; use key_by(...) before process(...), as in Flink"
        )

    def register_event_time_timer(self, timestamp: int) -> None:
        key_of = self._key_of
        if timestamp.__class__ is not int or key_of is None:  # checked inline: this runs per record
            _check_time(timestamp, self._operator)
            self._no_key()  # the timestamp is an int: there is no key
        self._add_event(timestamp, key_of())

    def delete_event_time_timer(self, timestamp: int) -> None:
        self.event_timers.remove(timestamp, self._key())

    def register_processing_time_timer(self, timestamp: int) -> None:
        self.processing_timers.add(_check_time(timestamp, self._operator), self._key())
        self._schedule(timestamp)

    def delete_processing_time_timer(self, timestamp: int) -> None:
        self.processing_timers.remove(timestamp, self._key())

    def current_watermark(self) -> int:
        return self.watermark

    def current_processing_time(self) -> int:
        return now_ms()


def _check_time(timestamp: Any, operator: str) -> int:
    if timestamp.__class__ is not int:
        raise PipelineError(
            f"operator {operator!r}: timer timestamps are int milliseconds, "
            f"got {timestamp!r} ({type(timestamp).__name__})"
        )
    return timestamp
