"""Window jobs end to end: every assigner, trigger and evictor, lateness, merging.

Sources here emit a watermark after every record (``batch_size=1``,
``watermark_interval=0``), so results do not depend on the wall clock: that is Flink's
behaviour with a per-event watermark generator.
"""

from __future__ import annotations

import random

import anyio
import pytest
import structlog
from support import Count

import aioflow as af
from aioflow.testing import run_collect, run_collect_async

LATE = af.OutputTag("late")


def keyed(rows, *, bound: int = 0, parallelism: int = 1) -> af.KeyedStream:
    """rows: (key, ts, value) tuples; one watermark (max_ts - bound - 1) after each."""
    app = af.App("windows", batch_size=1, watermark_interval=0, parallelism=parallelism)
    events = app.source(rows, timestamps=lambda r: r[1], watermarks=af.BoundedOutOfOrderness(bound))
    return events.key_by(lambda r: r[0])


class Describe(af.ProcessWindowFunction):
    """(key, window start, window end, result or values)."""

    def process(self, key, context, elements):
        yield (key, context.window.start, context.window.end, list(elements))


class GenericTrigger(af.EventTimeTrigger):
    """The default trigger's behaviour on the generic (non fast-path) code path."""


def test_sliding_windows() -> None:
    rows = [("a", 0, 1), ("a", 4_000, 2), ("a", 9_000, 3)]
    out = run_collect(keyed(rows).window(af.SlidingEventTimeWindows(10_000, 5_000)).process(Describe()))
    assert sorted(out) == [
        ("a", -5_000, 5_000, [("a", 0, 1), ("a", 4_000, 2)]),
        ("a", 0, 10_000, [("a", 0, 1), ("a", 4_000, 2), ("a", 9_000, 3)]),
        ("a", 5_000, 15_000, [("a", 9_000, 3)]),
    ]


def test_session_windows_merge_when_a_record_bridges_two_sessions() -> None:
    rows = [("a", 0, 1), ("a", 1_000, 2), ("a", 5_000, 3), ("b", 100, 9), ("a", 3_500, 4)]
    windowed = keyed(rows, bound=10_000).window(af.EventTimeSessionWindows(3_000))
    assert sorted(run_collect(windowed.aggregate(Count(), Describe()))) == [
        ("a", 0, 8_000, [4]),
        ("b", 100, 3_100, [1]),
    ]


def test_session_windows_without_a_bridge_stay_apart_and_keep_elements() -> None:
    rows = [("a", 0, 1), ("a", 1_000, 2), ("a", 5_000, 3)]
    out = run_collect(keyed(rows, bound=10_000).window(af.EventTimeSessionWindows(3_000)).process(Describe()))
    assert sorted(out) == [("a", 0, 4_000, [rows[0], rows[1]]), ("a", 5_000, 8_000, [rows[2]])]


def test_dynamic_session_gap() -> None:
    windows = af.EventTimeSessionWindows.with_dynamic_gap(lambda r: r[2])
    apart = [("a", 0, 1_000), ("a", 4_000, 10)]
    out = run_collect(keyed(apart, bound=10_000).window(windows).aggregate(Count(), Describe()))
    assert sorted(out) == [("a", 0, 1_000, [1]), ("a", 4_000, 4_010, [1])]
    bridged = [*apart, ("a", 500, 3_600)]  # [500, 4100) overlaps both sessions
    out = run_collect(keyed(bridged, bound=10_000).window(windows).aggregate(Count(), Describe()))
    assert out == [("a", 0, 4_100, [3])]


@pytest.mark.parametrize("trigger", [None, GenericTrigger()], ids=["fast-path", "generic-path"])
def test_allowed_lateness_fires_again_and_late_data_goes_to_the_side_output(trigger) -> None:
    rows = [("a", 1_000, 1), ("a", 12_000, 2), ("a", 2_000, 3), ("a", 16_000, 4), ("a", 3_000, 5)]
    windowed = keyed(rows).window(af.TumblingEventTimeWindows(10_000)).allowed_lateness(5_000)
    if trigger is not None:
        windowed = windowed.trigger(trigger)
    out = windowed.side_output_late_data(LATE).aggregate(Count(), Describe())
    main, late = run_collect(out, out.get_side_output(LATE))
    assert main == [("a", 0, 10_000, [1]), ("a", 0, 10_000, [2]), ("a", 10_000, 20_000, [2])]
    assert late == [("a", 3_000, 5)]


def test_late_records_without_side_output_are_dropped_and_counted() -> None:
    rows = [("a", 12_000, 1), ("a", 1_000, 2)]
    with structlog.testing.capture_logs() as logs:
        out = run_collect(keyed(rows).window(af.TumblingEventTimeWindows(10_000)).aggregate(Count()))
    assert out == [1]
    dropped = [entry for entry in logs if entry["event"] == "late records dropped"]
    assert dropped and dropped[0]["count"] == 1


def test_late_drops_are_logged_while_the_job_runs_not_only_at_its_end(tmp_path) -> None:
    """A job stopped with a savepoint never reaches the end of input: its drops still show."""
    app = af.App("late", state_dir=str(tmp_path), checkpoint_interval=3600, batch_size=1)
    seen = []

    def stop_after(row):
        seen.append(row)
        if len(seen) == 2:
            app.stop()
        return row

    rows = [("a", 12_000, 1), ("a", 1_000, 2), ("a", 13_000, 3)]
    app.source(rows, timestamps=lambda r: r[1], watermarks=af.BoundedOutOfOrderness(0), name="rows").map(
        stop_after, name="stopper"
    ).key_by(lambda r: r[0]).window(af.TumblingEventTimeWindows(10_000)).aggregate(Count(), name="count").sink(
        af.CollectSink(), name="out"
    )
    with structlog.testing.capture_logs() as logs:
        app.run()
    dropped = [entry for entry in logs if entry["event"] == "late records dropped"]
    assert dropped and dropped[0]["count"] == 1 and dropped[0]["new"] == 1


def test_window_results_carry_the_window_end_as_timestamp() -> None:
    rows = [("a", 1_000, 1), ("a", 25_000, 2)]

    class Stamp(af.ProcessFunction):
        def process_element(self, value, ctx):
            yield ctx.timestamp

    counts = keyed(rows).window(af.TumblingEventTimeWindows(10_000)).aggregate(Count())
    assert run_collect(counts.process(Stamp)) == [9_999, 29_999]


def test_reduce_keeps_only_the_running_result() -> None:
    rows = [("a", 1, 5), ("a", 2, 7), ("b", 3, 1)]
    out = run_collect(
        keyed(rows).window(af.TumblingEventTimeWindows(10)).reduce(lambda x, y: (x[0], x[1], x[2] + y[2]), name="sum")
    )
    assert sorted(out) == [("a", 1, 12), ("b", 3, 1)]


def test_count_windows_tumbling_and_sliding() -> None:
    app = af.App("counts")
    numbers = app.source(range(7)).key_by(lambda n: "all")
    tumbling = numbers.count_window(3).process(lambda key, ctx, elements: [list(elements)], name="tumbling")
    sliding = numbers.count_window(3, 2).process(lambda key, ctx, elements: [list(elements)], name="sliding")
    assert run_collect(tumbling, sliding) == ([[0, 1, 2], [3, 4, 5]], [[0, 1], [1, 2, 3], [3, 4, 5]])


def test_global_window_with_a_custom_trigger() -> None:
    class EveryEven(af.Trigger):
        def on_element(self, element, timestamp, window, ctx):
            return af.TriggerResult.FIRE_AND_PURGE if element % 2 == 0 else af.TriggerResult.CONTINUE

    app = af.App("global")
    out = app.source([1, 3, 4, 5, 6]).key_by(lambda n: 0).window(af.GlobalWindows()).trigger(EveryEven())
    assert run_collect(out.process(lambda k, c, e: [list(e)], name="p")) == [[1, 3, 4], [5, 6]]


def test_time_evictor_keeps_recent_records() -> None:
    rows = [("a", 1_000, 1), ("a", 5_000, 2), ("a", 9_000, 3)]
    windowed = keyed(rows).window(af.TumblingEventTimeWindows(10_000)).evictor(af.TimeEvictor(5_000))
    assert run_collect(windowed.aggregate(Count())) == [2]


def test_continuous_event_time_trigger_fires_early_results() -> None:
    rows = [("a", 0, 1), ("a", 1_500, 2), ("a", 2_500, 3), ("a", 9_000, 4)]
    windowed = keyed(rows).window(af.TumblingEventTimeWindows(10_000)).trigger(af.ContinuousEventTimeTrigger(2_000))
    # As in Flink: the watermark after the third record (2_499) fires the 2_000 timer with
    # three records; the one after the fourth (8_999) fires 4_000, 6_000 and 8_000; the
    # final watermark fires the window's end.
    assert run_collect(windowed.aggregate(Count())) == [3, 4, 4, 4, 4]


def test_processing_time_windows_fire_at_end_of_bounded_input() -> None:
    app = af.App("proc")
    out = app.source(["a", "b", "a"]).key_by(lambda s: s).window(af.TumblingProcessingTimeWindows(3_600_000))
    assert sorted(run_collect(out.aggregate(Count()))) == [1, 2]


async def test_processing_time_window_fires_without_further_input() -> None:
    fired = anyio.Event()

    async def clicks():
        yield "click"
        with anyio.fail_after(10):  # no more records until the window has fired by itself
            await fired.wait()
        yield "after"

    class Signal(af.ProcessFunction):
        def process_element(self, value, ctx):
            fired.set()
            yield value

    app = af.App("proc-live")
    windows = app.source(af.from_iterable(clicks())).key_by(lambda s: s).window(af.TumblingProcessingTimeWindows(100))
    out = await run_collect_async(windows.aggregate(Count()).process(Signal), timeout=20)
    assert out == [1, 1]


async def test_async_window_function() -> None:
    async def describe(key, context, elements):
        await anyio.sleep(0)
        return [(key, context.window.start, elements[0])]

    rows = [("a", 1, 1), ("b", 2, 1), ("a", 15, 1)]
    out = await run_collect_async(keyed(rows).window(af.TumblingEventTimeWindows(10)).aggregate(Count(), describe))
    assert sorted(out) == [("a", 0, 1), ("a", 10, 1), ("b", 0, 1)]


def test_event_time_windows_need_timestamps() -> None:
    app = af.App("no-time")
    out = app.source([1]).key_by(lambda n: n).window(af.TumblingEventTimeWindows(10)).aggregate(Count())
    with pytest.raises(af.UserFunctionTypeError, match="needs event timestamps"):
        run_collect(out)


def test_session_windows_need_a_mergeable_aggregate() -> None:
    class NoMerge(af.AggregateFunction):
        def create_accumulator(self):
            return 0

    with pytest.raises(af.PipelineError, match="must implement merge"):
        keyed([]).window(af.EventTimeSessionWindows(10)).aggregate(NoMerge())


@pytest.mark.parametrize("seed", range(6))
def test_fast_and_generic_paths_agree_on_random_out_of_order_input(seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(400):
        ts = i * 50 + rng.randint(-3_000, 300)  # some records are late, some very late
        rows.append((rng.choice("abcd"), ts, rng.randint(1, 9)))
    lateness = rng.choice([0, 1_000, 4_000])

    def run(trigger, kind: str):
        windowed = keyed(rows, bound=500).window(af.TumblingEventTimeWindows(2_000)).allowed_lateness(lateness)
        if trigger is not None:
            windowed = windowed.trigger(trigger)
        windowed = windowed.side_output_late_data(LATE)
        if kind == "aggregate":
            out = windowed.aggregate(Count(), Describe())
        elif kind == "reduce":
            out = windowed.reduce(lambda a, b: (a[0], a[1], a[2] + b[2]), Describe(), name="r")
        else:
            out = windowed.process(Describe())
        main, late = run_collect(out, out.get_side_output(LATE))
        return sorted(main, key=repr), sorted(late)

    for kind in ("aggregate", "reduce", "process"):
        assert run(None, kind) == run(GenericTrigger(), kind), kind


def test_timers_reach_the_trigger_even_when_the_window_is_empty() -> None:
    # PurgingTrigger(ContinuousEventTimeTrigger) empties the window at each firing; the
    # continuous trigger must still re-arm on the next (empty) interval, as in Flink.
    rows = [("k", ts, ts) for ts in (1_000, 15_000, 35_000, 45_000, 52_000, 70_000)]
    windowed = keyed(rows).window(af.TumblingEventTimeWindows(60_000))
    windowed = windowed.trigger(af.PurgingTrigger(af.ContinuousEventTimeTrigger(10_000)))
    out = run_collect(windowed.process(lambda key, ctx, elements: [[r[2] for r in elements]], name="p"))
    assert out == [[1_000, 15_000], [35_000], [45_000], [52_000], [70_000]]


def test_keyed_state_in_a_window_function_belongs_to_the_firing_key() -> None:
    class Firings(af.ProcessWindowFunction):
        def open(self, ctx):
            self.fired = ctx.value_state("fired", default=0)

        def process(self, key, context, elements):
            self.fired.update(self.fired.value() + 1)
            yield (key, context.window.start, self.fired.value())

    rows = [("a", 1, 0), ("b", 2, 0), ("a", 11, 0), ("b", 12, 0)]
    out = run_collect(keyed(rows).window(af.TumblingEventTimeWindows(10)).aggregate(Count(), Firings()))
    assert sorted(out) == [("a", 0, 1), ("a", 10, 2), ("b", 0, 1), ("b", 10, 2)]


def test_continuous_processing_time_trigger_fires_once_at_end_of_input() -> None:
    app = af.App("cont-proc")
    windowed = app.source([1, 2, 3]).key_by(lambda n: 0).window(af.GlobalWindows())
    windowed = windowed.trigger(af.ContinuousProcessingTimeTrigger(1_000))
    assert run_collect(windowed.aggregate(Count()), timeout=10) == [3]
