"""The continuous triggers' fire times, pinned against Flink's ContinuousEventTimeTrigger
and ContinuousProcessingTimeTrigger.

Flink's first fire time is ``t - t % interval + interval`` with Java's ``%`` (which keeps
the sign of ``t``, so negative times round toward zero), and each later one is the
previous fire time plus the interval, never past the window's end. The end-to-end jobs
emit a watermark after every record (``max_ts - 1``), as in tests/windows/test_windows.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from support import Count

import aioflow as af
from aioflow._core.state.handles import ValueState
from aioflow._core.state.memory import MemoryTable
from aioflow._core.state.serializers import JsonSerializer
from aioflow.testing import run_collect


def keyed(rows) -> af.KeyedStream:
    """rows: (key, ts) tuples; the watermark after each is the largest ts so far - 1."""
    app = af.App("triggers", batch_size=1, watermark_interval=0)
    events = app.source(rows, timestamps=lambda r: r[1], watermarks=af.BoundedOutOfOrderness(0))
    return events.key_by(lambda r: r[0])


def describe(key, context, counts):
    return [(context.window.start, context.window.end, counts[0])]


def test_continuous_event_time_trigger_on_sessions_fires_an_interval_after_the_last_firing() -> None:
    # Flink: onEventTime registers min(time + interval, window.maxTimestamp()), and onMerge
    # keeps the merged windows' earliest fire time. The session [12, 17) caps its first
    # fire time at its end, 16; later records extend the session, so it fires at 16, then
    # at 26 and at its end 32 (not at 20, 28 and 30, which re-aligning to the grid of 10
    # would give).
    rows = [("a", ts) for ts in (12, 16, 20, 24, 28)]
    windowed = keyed(rows).window(af.EventTimeSessionWindows(5)).trigger(af.ContinuousEventTimeTrigger(10))
    assert run_collect(windowed.aggregate(Count(), describe)) == [
        (12, 25, 3),  # the watermark 19 passes 16
        (12, 33, 5),  # the watermark 27 passes 26
        (12, 33, 5),  # the final watermark passes the end, 32
    ]


def test_continuous_event_time_trigger_rounds_negative_timestamps_toward_zero() -> None:
    # Flink (Java's %): the first record at -35 gives -35 - (-5) + 10 = -20, so the
    # window [-40, 0) fires at -20, -10 and its end -1 (floor division would give -30).
    rows = [("a", ts) for ts in (-35, -29, -21, -19, -5)]
    windowed = keyed(rows).window(af.TumblingEventTimeWindows(40)).trigger(af.ContinuousEventTimeTrigger(10))
    assert run_collect(windowed.aggregate(Count(), describe)) == [
        (-40, 0, 4),  # the watermark -20 reaches -20
        (-40, 0, 5),  # the watermark -6 passes -10
        (-40, 0, 5),  # the final watermark passes the end, -1
    ]


class Clock:
    """The part of a TriggerContext the continuous processing-time trigger uses."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.timers: list[int] = []
        self.table = MemoryTable("trigger", "state", "trigger", JsonSerializer())

    def current_processing_time(self) -> int:
        return self.now

    def register_processing_time_timer(self, time: int) -> None:
        self.timers.append(time)

    def window_state(self, name: str, default=None) -> ValueState:
        return ValueState(self.table, SimpleNamespace(key=name), default)


def test_continuous_processing_time_trigger_schedules_as_flink_does() -> None:
    # Flink's ContinuousProcessingTimeTrigger shares both rules: Java's % for the first
    # fire time, and the previous fire time + interval (capped at the end) after that.
    trigger = af.ContinuousProcessingTimeTrigger(10)
    negative = Clock(now=-35)
    trigger.on_element("x", None, af.TimeWindow(-40, 0), negative)
    assert negative.timers == [-20]

    merged = Clock(now=16)
    merged.table.put("next_fire", 16)  # a merged session's fire time, off the grid of 10
    assert trigger.on_processing_time(16, af.TimeWindow(12, 33), merged) == af.TriggerResult.FIRE
    assert merged.timers == [26]
