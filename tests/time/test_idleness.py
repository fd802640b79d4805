"""Idle inputs: the final watermark and the idle-to-active change are not lost.

The sources here wait until their subtask has actually gone idle (its watermark status
says so), instead of sleeping past the idle timeout and hoping: on a loaded machine a
sleep may end before the periodic check ran, and the test would pass without the idle
path."""

import anyio
from support import Count

import aioflow as af
from aioflow import WatermarkGenerator, WatermarkStrategy
from aioflow._core.runtime.task import SourceTask
from aioflow.testing import run_collect, run_collect_async


async def until_idle(app: af.App) -> None:
    """Wait until every source subtask of ``app``'s running job is idle."""
    with anyio.fail_after(10):  # the idle timeout is 50 ms
        while True:
            job = app.job
            sources = [] if job is None else [t for t in job.subtasks if isinstance(t, SourceTask)]
            if sources and all(t.watermarks is not None and t.watermarks.idle for t in sources):
                return
            await anyio.sleep(0.005)  # polling a condition, bounded by fail_after


def build(parallelism):
    app = af.App("idle_end", batch_size=1, watermark_interval=0.01)

    async def rows_then_idle():
        yield {"k": "a", "ts": 1000, "v": 1}
        yield {"k": "a", "ts": 2000, "v": 2}
        await until_idle(app)  # the source went idle, then it ends

    src = app.source(
        af.from_iterable(rows_then_idle()),
        timestamps=lambda e: e["ts"],
        watermarks=af.MonotonousTimestamps(idle_timeout=50),
    )
    return (
        src.key_by(lambda e: e["k"])
        .window(af.TumblingEventTimeWindows(10_000))
        .reduce(lambda a, b: {**a, "v": a["v"] + b["v"]}, name="sum", parallelism=parallelism)
    )


def test_final_watermark_reaches_chained_window():  # control: no valve in between
    assert [r["v"] for r in run_collect(build(1), timeout=10)] == [3]


def test_final_watermark_after_idle_reaches_window_over_network():
    # window in its own task (hash edge to 2 subtasks): end of input must still fire it
    assert [r["v"] for r in run_collect(build(2), timeout=10)] == [3]


class PerEvent(WatermarkGenerator):
    def on_event(self, event, timestamp, output):
        output.emit_watermark(timestamp)


class Punctuated(WatermarkStrategy):
    def create_generator(self):
        return PerEvent()


class SeenWatermark(af.KeyedProcessFunction):
    def process_element(self, value, ctx):
        yield (value["ts"], ctx.timer_service.current_watermark())


def test_source_reactivated_by_punctuated_generator_sends_active_status():
    app = af.App("punct", batch_size=1, watermark_interval=0.01)

    async def rows():
        yield {"k": "a", "ts": 1000}
        await until_idle(app)  # the downstream valve now leaves this input out
        yield {"k": "a", "ts": 5000}  # active again; its watermark 5000 follows
        yield {"k": "a", "ts": 9000}

    src = app.source(af.from_iterable(rows()), timestamps=lambda e: e["ts"], watermarks=Punctuated(idle_timeout=50))
    seen = src.key_by(lambda e: e["k"]).process(SeenWatermark, name="seen", parallelism=2)
    out = run_collect(seen, timeout=10)
    # the record at 9000 comes after watermark 5000 on an active input
    assert dict(out)[9000] == 5000


async def test_a_mid_stream_assigner_held_back_by_a_slow_operator_does_not_go_idle():
    """The assigner's records wait on a slow map chained after it, far longer than its
    idle timeout: that is not quiet time. Were it idle, the other input of the union
    (done at once) would carry the watermark past the slow input's records."""
    app = af.App("held-assigner", batch_size=10, watermark_interval=0.005)

    async def slowly(e):
        await anyio.sleep(0.03)
        return e

    slow = (
        app.source([("slow", t) for t in range(0, 2_000, 10)], name="slow_rows")
        .assign_timestamps_and_watermarks(lambda e: e[1], af.BoundedOutOfOrderness(0, idle_timeout=10))
        .map(slowly, name="slowly")
    )
    fast = app.source(
        [("fast", t) for t in range(0, 2_000, 10)],
        name="fast_rows",
        timestamps=lambda e: e[1],
        watermarks=af.BoundedOutOfOrderness(0),
    )
    late = af.OutputTag("late")
    counted = (
        slow.union(fast)
        .key_by(lambda e: e[0])
        .window(af.TumblingEventTimeWindows(100))
        .side_output_late_data(late)
        .aggregate(Count(), name="count")
    )
    counts, lates = await run_collect_async(counted, counted.get_side_output(late), timeout=60)
    assert lates == []
    assert sum(counts) == 400
