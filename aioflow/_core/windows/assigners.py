"""Window assigners: which windows a record belongs to, as in Flink.

Time windows are half-open ``[start, end)``; a window's last timestamp is ``end - 1``
(``max_timestamp()``), and event-time windows fire when the watermark reaches it.
Window starts are aligned to the epoch plus ``offset``: a tumbling window of 10 s holds
``[0 s, 10 s)``, ``[10 s, 20 s)``, ... whatever the first record's timestamp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from aioflow._core.errors import PipelineError
from aioflow._core.runtime.events import MAX_WATERMARK

__all__ = [
    "WINDOW_KEYS",
    "EventTimeSessionWindows",
    "GlobalWindow",
    "GlobalWindows",
    "ProcessingTimeSessionWindows",
    "SlidingEventTimeWindows",
    "SlidingProcessingTimeWindows",
    "TimeWindow",
    "TumblingEventTimeWindows",
    "TumblingProcessingTimeWindows",
    "WindowAssigner",
]


class TimeWindow(NamedTuple):
    """The window ``[start, end)`` in milliseconds."""

    start: int
    end: int

    def max_timestamp(self) -> int:
        return self.end - 1

    def intersects(self, other: TimeWindow) -> bool:
        """True when the windows overlap or touch (so session windows merge), as in Flink."""
        return self.start <= other.end and self.end >= other.start

    def cover(self, other: TimeWindow) -> TimeWindow:
        return TimeWindow(min(self.start, other.start), max(self.end, other.end))


class GlobalWindow:
    """The one window of :class:`GlobalWindows`: all of a key's records, never ending."""

    __slots__ = ()
    _instance: GlobalWindow | None = None

    def __new__(cls) -> GlobalWindow:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def max_timestamp(self) -> int:
        return MAX_WATERMARK

    def __repr__(self) -> str:
        return "GlobalWindow()"


class _WindowKeys:
    """Windows as stored keys and namespaces: a :class:`TimeWindow` as ``(start, end)``, the
    :class:`GlobalWindow` as ``"global"``; the same bytes in every process and version."""

    def encode(self, window: Any) -> Any:
        """A window, or (as the window operator's fast path keeps its timers) its
        ``(start, end)`` as a plain tuple."""
        return "global" if window.__class__ is GlobalWindow else (window[0], window[1])

    def decode(self, plain: Any) -> Any:
        return GlobalWindow() if plain == "global" else TimeWindow(*plain)


#: How every window operator stores its windows (see :mod:`aioflow._core.state.backend`).
WINDOW_KEYS = _WindowKeys()


def _start(timestamp: int, offset: int, size: int) -> int:
    return timestamp - (timestamp - offset) % size


def _positive_ms(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PipelineError(f"{what} is a positive number of milliseconds, got {value!r}")
    return value


def _offset(offset: Any, size: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise PipelineError(f"offset is an int number of milliseconds, got {offset!r}")
    if abs(offset) >= size:
        raise PipelineError(f"offset must be smaller than the window size/slide ({size}), got {offset}")
    return offset % size


class WindowAssigner:
    """Assigns each record to zero or more windows."""

    #: Event-time assigners use record timestamps; processing-time ones use the wall clock.
    is_event_time = True
    #: Merging assigners (sessions) merge overlapping windows of a key.
    is_merging = False

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        """The windows of a record with event time ``timestamp`` arriving at processing time ``now``."""
        raise PipelineError(f"{type(self).__name__} must implement assign_windows(element, timestamp, now)")

    def default_trigger(self) -> Any:
        from aioflow._core.windows.triggers import EventTimeTrigger, ProcessingTimeTrigger

        return EventTimeTrigger() if self.is_event_time else ProcessingTimeTrigger()


class TumblingEventTimeWindows(WindowAssigner):
    """Fixed-size, non-overlapping windows of ``size`` ms in event time."""

    def __init__(self, size: int, offset: int = 0) -> None:
        self.size = _positive_ms(size, "window size")
        self.offset = _offset(offset, self.size)

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        assert timestamp is not None  # the window operator checks event-time records have one
        start = _start(timestamp, self.offset, self.size)
        return [TimeWindow(start, start + self.size)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size}, offset={self.offset})"


class TumblingProcessingTimeWindows(TumblingEventTimeWindows):
    """Fixed-size, non-overlapping windows of ``size`` ms of wall-clock time."""

    is_event_time = False

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        start = _start(now, self.offset, self.size)
        return [TimeWindow(start, start + self.size)]


class SlidingEventTimeWindows(WindowAssigner):
    """Windows of ``size`` ms starting every ``slide`` ms; a record is in ``size / slide`` of them."""

    def __init__(self, size: int, slide: int, offset: int = 0) -> None:
        self.size = _positive_ms(size, "window size")
        self.slide = _positive_ms(slide, "window slide")
        self.offset = _offset(offset, self.slide)

    def _windows(self, timestamp: int) -> list[Any]:
        size, slide = self.size, self.slide
        last = _start(timestamp, self.offset, slide)
        return [TimeWindow(start, start + size) for start in range(last, timestamp - size, -slide)]

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        assert timestamp is not None  # the window operator checks event-time records have one
        return self._windows(timestamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.size}, {self.slide}, offset={self.offset})"


class SlidingProcessingTimeWindows(SlidingEventTimeWindows):
    """Sliding windows over wall-clock time."""

    is_event_time = False

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        return self._windows(now)


class EventTimeSessionWindows(WindowAssigner):
    """Per-key sessions: records closer than ``gap`` ms (in event time) share a window.

    Each record starts a window ``[ts, ts + gap)``; windows of a key that overlap or touch
    merge. ``with_dynamic_gap(fn)`` takes the gap from each record instead.
    """

    is_merging = True

    def __init__(self, gap: int | None = None, *, gap_of: Callable[[Any], int] | None = None) -> None:
        if gap_of is None:
            self.gap: int | None = _positive_ms(gap, "session gap")
        elif gap is not None:
            raise PipelineError("give either a fixed gap or gap_of, not both")
        else:
            self.gap = None
        self.gap_of = gap_of

    @classmethod
    def with_dynamic_gap(cls, gap_of: Callable[[Any], int]) -> EventTimeSessionWindows:
        return cls(gap_of=gap_of)

    def _gap(self, element: Any) -> int:
        if self.gap_of is None:
            assert self.gap is not None  # one of the two is given: see __init__
            return self.gap
        return _positive_ms(self.gap_of(element), "dynamic session gap")

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        assert timestamp is not None  # the window operator checks event-time records have one
        return [TimeWindow(timestamp, timestamp + self._gap(element))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.gap if self.gap_of is None else self.gap_of!r})"


class ProcessingTimeSessionWindows(EventTimeSessionWindows):
    """Sessions over wall-clock time: a key's window closes ``gap`` ms after its last record."""

    is_event_time = False

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        return [TimeWindow(now, now + self._gap(element))]


class GlobalWindows(WindowAssigner):
    """One window per key holding all its records. It never fires by itself: give it a
    trigger (``count_window`` does)."""

    is_event_time = False

    def assign_windows(self, element: Any, timestamp: int | None, now: int) -> list[Any]:
        return [GlobalWindow()]

    def default_trigger(self) -> Any:
        from aioflow._core.windows.triggers import NeverTrigger

        return NeverTrigger()

    def __repr__(self) -> str:
        return "GlobalWindows()"


def merge_windows(windows: list[TimeWindow]) -> list[tuple[TimeWindow, list[TimeWindow]]]:
    """Group overlapping windows: ``[(cover, [windows it covers]), ...]`` (Flink's mergeWindows)."""
    result: list[tuple[TimeWindow, list[TimeWindow]]] = []
    for window in sorted(windows):
        if result and result[-1][0].intersects(window):
            cover, members = result[-1]
            result[-1] = (cover.cover(window), [*members, window])
        else:
            result.append((window, [window]))
    return result
