"""Timers: per-key queues ordered by time, de-duplicated per (key, timestamp).

:class:`TimerQueue` is the data structure (a heap of distinct timestamps, each with an
insertion-ordered set of keys). :class:`TimerService` is what user code sees as
``ctx.timer_service``; it registers timers for the key of the record being processed.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EVENT_TIME", "PROCESSING_TIME", "TimerQueue", "TimerService", "now_ms"]

EVENT_TIME = "event_time"
PROCESSING_TIME = "processing_time"


def now_ms() -> int:
    """Processing time: wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class TimerQueue:
    """Timers ordered by timestamp; one timer per (timestamp, key).

    A queue of a durable state backend also records its changes since the last
    checkpoint (``changes``: (timestamp, key) -> registered or deleted), which the
    backend writes at the next checkpoint.
    """

    __slots__ = ("_by_time", "_heap", "changes", "sequence")

    def __init__(self) -> None:
        self._by_time: dict[int, dict[Any, None]] = {}
        self._heap: list[int] = []
        #: (timestamp, key) -> the registration's sequence number, or ``False`` when deleted.
        self.changes: dict[tuple[int, Any], int | bool] | None = None
        #: Registrations so far: timers of one timestamp fire in registration order, also
        #: after a restore.
        self.sequence = 0

    def add(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is None:
            self._by_time[timestamp] = {key: None}
            heapq.heappush(self._heap, timestamp)
        elif key in keys:
            return
        else:
            keys[key] = None
        if self.changes is not None:
            self.sequence += 1
            self.changes[timestamp, key] = self.sequence

    def remove(self, timestamp: int, key: Any) -> None:
        keys = self._by_time.get(timestamp)
        if keys is not None:
            if self.changes is not None and key in keys:
                self.changes[timestamp, key] = False
            keys.pop(key, None)
            if not keys:
                del self._by_time[timestamp]
                if len(self._heap) > 2 * len(self._by_time) + 1024:  # drop stale heap entries
                    self._heap[:] = self._by_time  # in place: pop_due may be iterating it
                    heapq.heapify(self._heap)

    def next_time(self) -> int | None:
        """The earliest timestamp with a timer, or ``None``."""
        heap, by_time = self._heap, self._by_time
        while heap:
            if by_time.get(heap[0]):
                return heap[0]
            by_time.pop(heapq.heappop(heap), None)
        return None

    def pop_due(self, limit: int) -> Iterator[tuple[int, Any]]:
        """Yield and remove ``(timestamp, key)`` for every timer at or before ``limit``, in
        timestamp order. Timers added while iterating are yielded too if they are due."""
        heap, by_time = self._heap, self._by_time
        while heap and heap[0] <= limit:
            timestamp = heapq.heappop(heap)
            keys = by_time.pop(timestamp, None)
            if keys:
                changes = self.changes
                for key in keys:
                    if changes is not None:
                        changes[timestamp, key] = False
                    yield timestamp, key

    def clear(self) -> None:
        """Delete every timer."""
        for _ in self.pop_due(2**63 - 1):
            pass


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
        event_timers: TimerQueue | None = None,
        processing_timers: TimerQueue | None = None,
    ) -> None:
        self._operator = operator
        self._key_of = key_of
        self._schedule = schedule_processing_time
        self.event_timers = event_timers if event_timers is not None else TimerQueue()
        self.processing_timers = processing_timers if processing_timers is not None else TimerQueue()
        self.watermark = -(2**63)

    def _key(self) -> Any:
        if self._key_of is None:
            raise TypeError(
                f"operator {self._operator!r}: timers need a keyed stream; "
                "use key_by(...) before process(...), as in Flink"
            )
        return self._key_of()

    def register_event_time_timer(self, timestamp: int) -> None:
        self.event_timers.add(_check_time(timestamp, self._operator), self._key())

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
        raise TypeError(
            f"operator {operator!r}: timer timestamps are int milliseconds, "
            f"got {timestamp!r} ({type(timestamp).__name__})"
        )
    return timestamp
