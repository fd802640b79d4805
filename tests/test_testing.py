"""aioflow.testing runs the real pipeline, sinks included, and collects streams."""

from __future__ import annotations

from pathlib import Path

import pytest

import aioflow as af
from aioflow.testing import replace_source, run_collect


def test_run_collect_runs_the_apps_own_sinks_too(tmp_path: Path) -> None:
    app = af.App("t")
    own = af.CollectSink()
    doubled = app.source([1, 2, 3], name="numbers").map(lambda x: x * 2)
    doubled.sink(own)
    assert run_collect(doubled) == [2, 4, 6]
    assert own.results == [2, 4, 6]
    assert len(app._nodes) == 3  # the collecting sink was removed again


def test_replace_source_swaps_input_but_keeps_the_pipeline() -> None:
    app = af.App("t")
    numbers = app.source(af.read_jsonl(Path(__file__)), name="numbers")  # not JSON: must be replaced
    big = numbers.filter(lambda x: x > 10)
    replace_source(app, "numbers", af.from_iterable([5, 50, 500]))
    assert run_collect(big) == [50, 500]
    with pytest.raises(af.PipelineError, match="no source named 'nope'; its sources are \\['numbers'\\]"):
        replace_source(app, "nope", af.from_iterable([]))


async def test_run_collect_async_times_out_on_endless_input() -> None:
    from aioflow.testing import run_collect_async

    async def forever():
        while True:
            yield 1

    app = af.App("endless")
    stream = app.source(af.from_iterable(forever()))
    with pytest.raises(TimeoutError):
        await run_collect_async(stream, timeout=0.5)


class Inactivity(af.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process_element(self, value, ctx):
        self.count.update(self.count.value() + 1)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + 30_000)
        if value.get("suspicious"):
            yield af.OutputTag("suspicious"), value

    def on_timer(self, timestamp, ctx):
        yield (ctx.key, self.count.value())
        self.count.clear()


async def test_harness_drives_a_function_with_explicit_watermarks() -> None:
    from aioflow.testing import ProcessFunctionHarness

    async with ProcessFunctionHarness(Inactivity, key_selector=lambda e: e["user"]) as harness:
        await harness.process_element({"user": "a"}, timestamp=1_000)
        await harness.process_element({"user": "a", "suspicious": True}, timestamp=2_000)
        await harness.process_element({"user": "b"}, timestamp=5_000)
        await harness.process_watermark(31_000)
        assert harness.output == [(("a", 2), 31_000)]
        await harness.process_watermark(40_000)
        # the 31_000 timer cleared a's count; the 32_000 one still fires (as in Flink)
        assert harness.output == [(("a", 2), 31_000), (("a", 0), 32_000), (("b", 1), 35_000)]
        assert harness.side_output(af.OutputTag("suspicious")) == [({"user": "a", "suspicious": True}, 2_000)]
