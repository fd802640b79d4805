"""aioflow.testing runs the real pipeline, sinks included, and collects streams."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import aioflow as af
from aioflow.testing import replace_sink, replace_source, run_collect

ROOT = Path(__file__).resolve().parent.parent


def test_run_collect_runs_the_apps_own_sinks_too(tmp_path: Path) -> None:
    app = af.App("t")
    own = af.CollectSink()
    doubled = app.source([1, 2, 3], name="numbers").map(lambda x: x * 2)
    doubled.sink(own)
    assert run_collect(doubled) == [2, 4, 6]
    assert own.results == [2, 4, 6]
    assert len(app.graph) == 3  # the collecting sink was removed again


def test_replace_source_swaps_input_but_keeps_the_pipeline() -> None:
    app = af.App("t")
    numbers = app.source(af.read_jsonl(Path(__file__)), name="numbers")  # not JSON: must be replaced
    big = numbers.filter(lambda x: x > 10)
    replace_source(app, "numbers", af.from_iterable([5, 50, 500]))
    assert run_collect(big) == [50, 500]
    with pytest.raises(af.PipelineError, match="no source named 'nope'; its sources are \\['numbers'\\]"):
        replace_source(app, "nope", af.from_iterable([]))


def test_replace_sink_runs_a_kafka_pipeline_whole_without_a_broker() -> None:
    """examples/kafka_etl.py, its topics swapped for test data and collecting sinks."""
    spec = importlib.util.spec_from_file_location("kafka_etl_under_test", ROOT / "examples" / "kafka_etl.py")
    assert spec is not None and spec.loader is not None
    etl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(etl)

    def record(offset: int, raw: bytes) -> af.kafka.KafkaRecord:
        return af.kafka.KafkaRecord(
            key=None, value=etl.parse(raw), headers=(), topic="orders", partition=0, offset=offset, timestamp=0
        )

    replace_source(
        etl.app,
        "orders",
        af.from_iterable(
            [
                record(0, b'{"order": 1, "user": "ada", "amount": 2.5, "currency": "EUR"}'),
                record(1, b'{"order": 2, "user": "", "amount": 1, "currency": "EUR"}'),
            ]
        ),
    )
    clean, dead = af.CollectSink(), af.CollectSink()
    replace_sink(etl.app, "clean_orders", clean)
    replace_sink(etl.app, "dead_letter_topic", dead)
    assert run_collect(etl.checked) == [{"order": 1, "user": "ada", "amount_cents": 250, "currency": "EUR"}]
    assert clean.results == [{"order": 1, "user": "ada", "amount_cents": 250, "currency": "EUR"}]
    assert [(bad.location, bad.error) for bad in dead.results] == [("orders:0@1", "no user")]
    with pytest.raises(af.PipelineError, match="operator 'orders' of app 'kafka_etl' is not a sink"):
        replace_sink(etl.app, "orders", clean)
    with pytest.raises(af.PipelineError, match=r"no sink named 'nope'; its sinks are \['clean_orders', "):
        replace_sink(etl.app, "nope", clean)


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


async def test_harness_takes_a_stream_made_by_the_decorator_form() -> None:
    from aioflow.testing import ProcessFunctionHarness

    app = af.App("t")
    per_user = app.source([], name="events").key_by(lambda e: e["user"])

    @per_user.process
    class Decorated(Inactivity):
        pass

    assert isinstance(Decorated, af.Stream)  # the name is bound to the stream, not the class
    # its process function and its key selector come from the stream's operator
    async with ProcessFunctionHarness(Decorated) as harness:
        await harness.process_element({"user": "a"}, timestamp=1_000)
        await harness.process_element({"user": "b", "suspicious": True}, timestamp=5_000)
        await harness.process_watermark(40_000)
        assert harness.output == [(("a", 1), 31_000), (("b", 1), 35_000)]
        assert harness.side_output(af.OutputTag("suspicious")) == [({"user": "b", "suspicious": True}, 5_000)]
    # an explicit key selector still wins
    async with ProcessFunctionHarness(Decorated, key_selector=lambda e: "everyone") as harness:
        await harness.process_elements([{"user": "a"}, {"user": "b"}], [1_000, 1_000])
        await harness.process_watermark(31_000)
        assert harness.output == [(("everyone", 2), 31_000)]


async def test_harness_gives_each_run_a_fresh_function_of_the_stream() -> None:
    from aioflow.testing import ProcessFunctionHarness

    class Remember(af.ProcessFunction):
        def __init__(self) -> None:
            self.seen: list = []

        def process_element(self, value, ctx):
            self.seen.append(value)
            yield list(self.seen)

    app = af.App("t")
    template = Remember()
    remembered = app.source([], name="events").process(template, name="remember")  # not keyed
    for _ in range(2):
        async with ProcessFunctionHarness(remembered) as harness:
            await harness.process_element("x")
            assert harness.output == [(["x"], None)]
    assert template.seen == []


def test_harness_refuses_a_stream_that_is_not_a_process_operator() -> None:
    from aioflow.testing import ProcessFunctionHarness

    app = af.App("t")
    events = app.source([], name="events")
    doubled = events.map(lambda x: x * 2, name="doubled")
    with pytest.raises(af.PipelineError, match="'doubled' is a map operator, not a process operator"):
        ProcessFunctionHarness(doubled)
    with pytest.raises(af.PipelineError, match="'events' is a source operator, not a process operator"):
        ProcessFunctionHarness(events.key_by(lambda x: x))


def test_run_collect_overrides_app_settings_for_one_run() -> None:
    batches: list[int] = []

    class Sizes(af.SinkWriter):
        async def write(self, values):
            batches.append(len(values))

    class SizesSink(af.Sink):
        def create_writer(self, subtask_index, parallelism):
            return Sizes()

    app = af.App("overrides", batch_size=1024)
    stream = app.source(range(10)).map(lambda x: x, name="same")
    stream.sink(SizesSink())
    assert run_collect(stream, batch_size=3, watermark_interval=0) == list(range(10))
    assert batches == [3, 3, 3, 1]
    assert (app.batch_size, app.watermark_interval) == (1024, None)  # restored after the run
    with pytest.raises(af.PipelineError, match="cannot override state_dir"):
        run_collect(stream, state_dir="x")
    with pytest.raises(af.PipelineError, match="batch_size must be a positive int"):
        run_collect(stream, batch_size=0)
    assert app.batch_size == 1024
