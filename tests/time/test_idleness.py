"""Idle inputs: the final watermark and the idle-to-active change are not lost."""

import anyio

import aioflow as af
from aioflow import WatermarkGenerator, WatermarkStrategy
from aioflow.testing import run_collect


async def rows_then_pause():
    yield {"k": "a", "ts": 1000, "v": 1}
    yield {"k": "a", "ts": 2000, "v": 2}
    await anyio.sleep(0.3)  # longer than idle_timeout: the source goes idle, then ends


def build(parallelism):
    app = af.App("idle_end", batch_size=1, watermark_interval=0.01)
    src = app.source(
        af.from_iterable(rows_then_pause()),
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


async def rows():
    yield {"k": "a", "ts": 1000}
    await anyio.sleep(0.3)  # source goes idle (idle_timeout=50)
    yield {"k": "a", "ts": 5000}  # active again; its watermark 5000 follows
    yield {"k": "a", "ts": 9000}


class SeenWatermark(af.KeyedProcessFunction):
    def process_element(self, value, ctx):
        yield (value["ts"], ctx.timer_service.current_watermark())


def test_source_reactivated_by_punctuated_generator_sends_active_status():
    app = af.App("punct", batch_size=1, watermark_interval=0.01)
    src = app.source(af.from_iterable(rows()), timestamps=lambda e: e["ts"], watermarks=Punctuated(idle_timeout=50))
    seen = src.key_by(lambda e: e["k"]).process(SeenWatermark, name="seen", parallelism=2)
    out = run_collect(seen, timeout=10)
    # the record at 9000 comes after watermark 5000 on an active input
    assert dict(out)[9000] == 5000
