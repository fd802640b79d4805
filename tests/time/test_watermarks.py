"""Timestamps and watermarks: strategies, bad timestamps, idleness, several inputs."""

from __future__ import annotations

import anyio
import pytest
from support import Count

import aioflow as af
from aioflow._core.time.watermarks import SourceWatermarks
from aioflow.testing import run_collect, run_collect_async


class WindowOf(af.ProcessWindowFunction):
    def process(self, key, context, elements):
        yield (key, context.window.start, elements[0])


class Watermarks(af.ProcessFunction):
    """Emits the watermark seen by each record."""

    def process_element(self, value, ctx):
        yield (value, ctx.current_watermark())


def test_bounded_out_of_orderness_emits_max_minus_bound_minus_one() -> None:
    app = af.App("wm", batch_size=1, watermark_interval=0)
    events = app.source([5_000, 3_000, 9_000, 1], timestamps=lambda t: t, watermarks=af.BoundedOutOfOrderness(1_000))
    # each record sees the watermark emitted after the previous one
    assert run_collect(events.process(Watermarks)) == [
        (5_000, -(2**63)),
        (3_000, 3_999),
        (9_000, 3_999),
        (1, 7_999),
    ]


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        (1.5, "returned 1.5 \\(float\\); event timestamps must be int milliseconds"),
        ("2024-01-01", "returned '2024-01-01' \\(str\\)"),
        (True, "returned True \\(bool\\)"),
        (None, "returned None \\(NoneType\\)"),
    ],
)
def test_a_timestamp_that_is_not_an_int_fails_naming_source_and_record(stamp, message: str) -> None:
    app = af.App("bad-ts")
    events = app.source(
        [{"id": 1, "ts": 10}, {"id": 2, "ts": stamp}],
        name="events",
        timestamps=lambda e: e["ts"],
        watermarks=af.BoundedOutOfOrderness(0),
    )
    events.sink(af.CollectSink())
    with pytest.raises(af.UserFunctionTypeError, match=message) as info:
        app.run()
    assert info.value.operator == "events"
    assert info.value.record == {"id": 2, "ts": stamp}


def test_a_timestamp_function_that_raises_names_the_record() -> None:
    app = af.App("raises")
    app.source([{"ts": 1}, {}], timestamps=lambda e: e["ts"]).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="timestamp function .*<lambda> raised KeyError") as info:
        app.run()
    assert info.value.record == {}
    assert not isinstance(info.value, af.UserFunctionTypeError)  # it raised; it returned no wrong type


def test_watermarks_without_timestamps_are_rejected() -> None:
    with pytest.raises(af.PipelineError, match="needs timestamps="):
        af.App("x").source([1], watermarks=af.MonotonousTimestamps())


class NeverAdvances(af.WatermarkStrategy):
    def create_generator(self) -> af.WatermarkGenerator:
        return af.WatermarkGenerator()  # emits nothing, ever


def test_a_strategy_that_never_advances_fires_everything_at_end_of_input() -> None:
    app = af.App("stuck", batch_size=1, watermark_interval=0)
    events = app.source([("a", 1), ("a", 15), ("b", 2)], timestamps=lambda r: r[1], watermarks=NeverAdvances())
    seen = events.process(Watermarks, name="seen")
    windows = events.key_by(lambda r: r[0]).window(af.TumblingEventTimeWindows(10)).aggregate(Count(), WindowOf())
    watermarks, results = run_collect(seen, windows)
    assert {wm for _, wm in watermarks} == {-(2**63)}  # no watermark ever reached the stream
    assert sorted(results) == [("a", 0, 1), ("a", 10, 1), ("b", 0, 1)]


def test_timestamps_without_watermarks_fire_at_end_of_input() -> None:
    app = af.App("no-wm")
    events = app.source([("a", 1), ("a", 2)], timestamps=lambda r: r[1])
    out = events.key_by(lambda r: r[0]).window(af.TumblingEventTimeWindows(10)).aggregate(Count())
    assert run_collect(out) == [2]


def test_empty_input_produces_nothing_and_finishes() -> None:
    app = af.App("empty")
    events = app.source([], timestamps=lambda r: r, watermarks=af.BoundedOutOfOrderness(0))
    assert run_collect(events.key_by(lambda r: r).window(af.TumblingEventTimeWindows(10)).aggregate(Count())) == []


class Punctuated(af.WatermarkStrategy):
    """A watermark right after every record marked 'tick' (per-event emission)."""

    def create_generator(self) -> af.WatermarkGenerator:
        class Generator(af.WatermarkGenerator):
            def on_event(self, event, timestamp, output):
                if event[0] == "tick":
                    output.emit_watermark(timestamp)

        return Generator()


def test_per_event_watermarks_follow_the_record_that_caused_them() -> None:
    late = af.OutputTag("late")
    app = af.App("punct", watermark_interval=60.0)  # one batch: only per-event watermarks act
    events = app.source(
        [("x", 5), ("tick", 20), ("x", 7), ("x", 25)], timestamps=lambda r: r[1], watermarks=Punctuated()
    )
    windows = events.key_by(lambda r: "k").window(af.TumblingEventTimeWindows(10)).side_output_late_data(late)
    out = windows.aggregate(Count(), WindowOf())
    main, late_records = run_collect(out, out.get_side_output(late))
    assert main == [("k", 0, 1), ("k", 20, 2)]  # ("tick", 20) is in [20, 30), with ("x", 25)
    assert late_records == [("x", 7)]  # after watermark 20, [0, 10) is gone


def test_assign_timestamps_mid_stream_replaces_upstream_time() -> None:
    app = af.App("mid", batch_size=1, watermark_interval=0)
    rows = app.source([{"t": 3}, {"t": 14}, {"t": 1}]).map(lambda r: r)
    timed = rows.assign_timestamps_and_watermarks(lambda r: r["t"], af.BoundedOutOfOrderness(0))
    late = af.OutputTag("late")
    windows = timed.key_by(lambda r: 0).window(af.TumblingEventTimeWindows(10)).side_output_late_data(late)
    out = windows.aggregate(Count(), WindowOf())
    assert run_collect(out, out.get_side_output(late)) == ([(0, 0, 1), (0, 10, 1)], [{"t": 1}])


def test_union_uses_the_minimum_watermark_of_its_inputs() -> None:
    app = af.App("min", batch_size=1, watermark_interval=0)
    fast = app.source(
        [("fast", t) for t in range(0, 100_000, 10_000)],
        timestamps=lambda r: r[1],
        watermarks=af.BoundedOutOfOrderness(0),
        name="fast",
    )
    slow = app.source(
        [("slow", t) for t in range(0, 20_000, 5_000)],
        timestamps=lambda r: r[1],
        watermarks=af.BoundedOutOfOrderness(0),
        name="slow",
    )
    late = af.OutputTag("late")
    windows = fast.union(slow).key_by(lambda r: r[0]).window(af.TumblingEventTimeWindows(10_000))
    out = windows.side_output_late_data(late).aggregate(Count(), WindowOf())
    main, late_records = run_collect(out, out.get_side_output(late))
    assert late_records == []  # the fast input never made the slow one's records late
    assert sorted(r for r in main if r[0] == "slow") == [("slow", 0, 2), ("slow", 10_000, 2)]


async def test_an_idle_input_stops_holding_back_the_watermark() -> None:
    released = anyio.Event()

    async def quiet():
        yield ("quiet", 0)
        with anyio.fail_after(10):  # stays silent until the active input's window fired
            await released.wait()

    class Release(af.ProcessFunction):
        def process_element(self, value, ctx):
            released.set()
            yield value

    app = af.App("idle", watermark_interval=0.02)
    busy = app.source(
        [("busy", t) for t in range(0, 30_000, 1_000)],
        timestamps=lambda r: r[1],
        watermarks=af.BoundedOutOfOrderness(0),
        name="busy",
    )
    idle = app.source(
        af.from_iterable(quiet()),
        timestamps=lambda r: r[1],
        watermarks=af.BoundedOutOfOrderness(0, idle_timeout=50),
        name="quiet",
    )
    windows = busy.union(idle).key_by(lambda r: r[0]).window(af.TumblingEventTimeWindows(10_000))
    out = await run_collect_async(windows.aggregate(Count(), WindowOf()).process(Release), timeout=20)
    assert ("busy", 0, 10) in out and ("quiet", 0, 1) in out


def test_idle_timeout_marks_and_unmarks_a_split() -> None:
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0, idle_timeout=100), 0.2)
    watermarks.on_batch("split", [10])
    assert watermarks.on_periodic(watermarks._splits["split"].last_event, ["split"]) == (None, 9)
    idle, _ = watermarks.on_periodic(watermarks._splits["split"].last_event + 100, ["split"])
    assert idle is True
    watermarks.on_batch("split", [20])
    assert watermarks.on_periodic(watermarks._splits["split"].last_event, ["split"]) == (False, 19)


def test_time_the_source_was_held_back_is_not_quiet_time() -> None:
    """A reader that cannot tell which splits hold records: only the time the source
    waited for input counts towards idle_timeout, not the time it spent pushing records
    into a backpressured pipeline."""
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0, idle_timeout=100), 0.2)
    watermarks.on_batch("split", [10])
    last = watermarks._splits["split"].last_event
    watermarks.held_back += 500  # then held back by the pipeline for 500 ms
    assert watermarks.on_periodic(last + 599, ["split"]) == (None, 9)  # waited 99 ms for input
    assert watermarks.on_periodic(last + 600, ["split"]) == (True, None)


def test_a_split_the_reader_knows_holds_records_is_never_idle() -> None:
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0, idle_timeout=100), 0.2)
    watermarks.track(["behind", "caught-up"])
    watermarks.on_batch("behind", [5_000])
    watermarks.on_batch("caught-up", [1_000])
    last = watermarks._splits["behind"].last_event
    watermarks.held_back += 10_000  # with the reader's word, only the wall clock counts
    assert watermarks.on_periodic(last + 10_000, ["behind", "caught-up"], {"behind"}) == (None, 4_999)
    assert not watermarks._splits["behind"].output.idle and watermarks._splits["caught-up"].output.idle
    # the caught-up split got records, and they wait to be read: it turns active again
    # and holds the watermark where it is (never back) until it catches up
    assert watermarks.on_periodic(last + 10_000, ["behind", "caught-up"], {"behind", "caught-up"}) == (None, None)
    assert not watermarks._splits["caught-up"].output.idle


def test_a_split_without_records_goes_idle_before_one_that_went_quiet_with_it() -> None:
    """Both splits are quiet past the timeout in the same round: the one that never had a
    record turns idle first, so the other's watermark is emitted before it turns idle too."""
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0, idle_timeout=100), 0.2)
    watermarks.track(["busy", "empty"])
    watermarks.on_batch("busy", [5_000])
    for state in watermarks._splits.values():
        state.last_event = 1_000  # quiet since the same moment
    assert watermarks.on_periodic(1_100, ["busy", "empty"]) == (True, 4_999)


def test_a_reader_without_splits_goes_idle_after_the_idle_timeout() -> None:
    """A Kafka subtask with no partition (more subtasks than partitions) must not hold
    event time back; one whose partitions are only being assigned briefly does."""
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0, idle_timeout=100), 0.2)
    watermarks.track([])
    since = watermarks._splitless_since
    assert since is not None
    assert watermarks.on_periodic(since + 99, []) == (None, None)
    assert watermarks.on_periodic(since + 100, []) == (True, None)
    watermarks.track(["split"])  # a partition assigned: records may come from it
    assigned = watermarks._splits["split"].last_event
    assert watermarks.on_periodic(assigned, ["split"]) == (False, None)


def test_without_an_idle_timeout_a_reader_without_splits_is_never_idle() -> None:
    watermarks = SourceWatermarks("s", lambda r: r, af.BoundedOutOfOrderness(0), 0.2)
    watermarks.track([])
    assert watermarks.on_periodic(10**12, []) == (None, None)


def test_strategy_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        af.BoundedOutOfOrderness(-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        af.BoundedOutOfOrderness(10, idle_timeout=0)


def test_a_split_that_has_produced_nothing_yet_holds_the_watermark(tmp_path) -> None:
    import orjson

    (tmp_path / "1.jsonl").write_bytes(orjson.dumps(["tick", 100]) + b"\n" + orjson.dumps(["x", 101]) + b"\n")
    (tmp_path / "2.jsonl").write_bytes(orjson.dumps(["x", 5]) + b"\n")
    late = af.OutputTag("late")
    app = af.App("splits", watermark_interval=60.0)
    events = app.source(af.read_jsonl(str(tmp_path / "*.jsonl")), timestamps=lambda r: r[1], watermarks=Punctuated())
    windows = events.key_by(lambda r: "k").window(af.TumblingEventTimeWindows(10)).side_output_late_data(late)
    out = windows.aggregate(Count(), WindowOf())
    main, late_records = run_collect(out, out.get_side_output(late))
    assert late_records == []  # file 1's watermark (100) waited for file 2
    assert main == [("k", 0, 1), ("k", 100, 2)]


def test_replaying_a_file_gives_the_same_late_records_and_windows(tmp_path) -> None:
    import random

    import orjson

    rng = random.Random(7)
    path = tmp_path / "out_of_order.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"ts": i * 10 + rng.randint(-3_000, 0)}) + b"\n" for i in range(30_000)))
    late = af.OutputTag("late")
    app = af.App("replay")  # default settings: a file source emits watermarks after each batch
    windows = (
        app.source(af.read_jsonl(path), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(1_000))
        .key_by(lambda e: 0)
        .window(af.TumblingEventTimeWindows(1_000))
        .side_output_late_data(late)
        .aggregate(Count())
    )
    late_records = windows.get_side_output(late)
    runs = [run_collect(windows, late_records) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0][1]) > 0  # the data has late records: their set is what must not vary
    assert runs[0] == run_collect(windows, late_records, watermark_interval=0)


def test_live_sources_keep_periodic_watermarks() -> None:
    async def live():
        yield 1

    assert af.read_jsonl(__file__).replayable and af.from_iterable([1]).replayable
    assert not af.from_iterable(live()).replayable
