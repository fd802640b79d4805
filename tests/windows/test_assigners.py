"""Window assignment and merging, as in Flink."""

from __future__ import annotations

import pytest

import aioflow as af
from aioflow._core.windows.assigners import merge_windows

W = af.TimeWindow


def test_tumbling_windows_align_to_the_epoch_plus_offset() -> None:
    assert af.TumblingEventTimeWindows(10_000).assign_windows(None, 12_345, 0) == [W(10_000, 20_000)]
    assert af.TumblingEventTimeWindows(10_000, offset=2_000).assign_windows(None, 12_345, 0) == [W(12_000, 22_000)]
    assert af.TumblingEventTimeWindows(10_000).assign_windows(None, -1, 0) == [W(-10_000, 0)]


def test_sliding_windows_hold_each_record_size_over_slide_times() -> None:
    windows = af.SlidingEventTimeWindows(10_000, 5_000).assign_windows(None, 7_000, 0)
    assert windows == [W(5_000, 15_000), W(0, 10_000)]
    assert all(w.start <= 7_000 < w.end for w in windows)


def test_processing_time_assigners_use_the_clock() -> None:
    assert af.TumblingProcessingTimeWindows(1_000).assign_windows(None, None, 4_321) == [W(4_000, 5_000)]
    assert af.ProcessingTimeSessionWindows(500).assign_windows(None, None, 100) == [W(100, 600)]


def test_session_windows_merge_when_overlapping_or_touching() -> None:
    merged = merge_windows([W(0, 10), W(10, 20), W(30, 40), W(5, 8)])
    assert merged == [(W(0, 20), [W(0, 10), W(5, 8), W(10, 20)]), (W(30, 40), [W(30, 40)])]


def test_time_window_helpers() -> None:
    w = W(0, 10)
    assert w.max_timestamp() == 9
    assert w.intersects(W(10, 12)) and not w.intersects(W(11, 12))
    assert w.cover(W(5, 15)) == W(0, 15)


@pytest.mark.parametrize(
    "make",
    [
        lambda: af.TumblingEventTimeWindows(0),
        lambda: af.SlidingEventTimeWindows(10, 0),
        lambda: af.TumblingEventTimeWindows(10, offset=10),
        lambda: af.EventTimeSessionWindows(-1),
        lambda: af.CountTrigger(0),
    ],
)
def test_invalid_sizes_are_rejected(make) -> None:
    with pytest.raises(ValueError):
        make()
