"""A failing user function fails the job with an error naming operator and record."""

from __future__ import annotations

import traceback

import anyio
import pytest

import aioflow as af
from aioflow._core.errors import OperatorError
from aioflow.testing import run_collect


def _boom(x: int) -> int:
    if x == 42:
        raise ValueError("bad value")
    return x


@pytest.mark.parametrize("parallelism", [1, 3])
def test_user_exception_names_operator_and_record(parallelism: int) -> None:
    app = af.App("fails", parallelism=parallelism)
    app.source(range(100)).rebalance().map(_boom, name="risky").sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    error = info.value
    assert error.operator == "risky"
    assert error.record == 42
    assert "operator 'risky'" in str(error) and "record: 42" in str(error)
    assert isinstance(error.__cause__, ValueError)
    rendered = "".join(traceback.format_exception(error))
    assert "_boom" in rendered and 'raise ValueError("bad value")' in rendered


def test_long_records_are_truncated_in_the_message() -> None:
    app = af.App("long")
    app.source([{"blob": "x" * 10_000}]).map(lambda r: r["missing"]).sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert len(str(info.value)) < 400
    assert "KeyError" in str(info.value)


def test_failure_cancels_other_tasks_and_closes_operators() -> None:
    closed: list[str] = []

    class Tracks(af.ProcessFunction):
        def process_element(self, value, ctx):
            yield value

        def close(self) -> None:
            closed.append("tracks")

    async def endless():
        i = 0
        while True:
            yield i
            i += 1

    app = af.App("cancel")
    app.source(af.from_iterable(endless())).process(Tracks).sink(af.CollectSink())
    app.source([1, 2, 42]).rebalance().map(_boom, name="fails").sink(af.CollectSink())

    async def main() -> None:
        with anyio.fail_after(30):
            await app.run_async()

    with pytest.raises(af.OperatorError, match="fails"):
        anyio.run(main)
    assert closed == ["tracks"]


def test_error_in_open_names_the_operator() -> None:
    class BadOpen(af.ProcessFunction):
        def open(self, ctx):
            raise RuntimeError("cannot connect")

    app = af.App("open")
    app.source([1]).process(BadOpen).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="operator 'BadOpen'.*cannot connect"):
        app.run()


def test_keyed_state_on_unkeyed_stream_is_a_clear_error() -> None:
    class Stateful(af.ProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count")

        def process_element(self, value, ctx):
            yield value

    app = af.App("unkeyed")
    app.source([1]).process(Stateful).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="needs a keyed stream"):
        app.run()


def _boom_at_50(x):
    if x == 50:
        raise ValueError("bad")
    return x


def test_downstream_failure_under_backpressure_fails_job():
    app = af.App("err", batch_size=1, channel_capacity=1, watermark_interval=0)
    out = app.source(range(10_000)).map(_boom_at_50, name="boom", parallelism=2)
    with pytest.raises(OperatorError):
        run_collect(out, timeout=5)


def test_failure_in_async_source_fails_job():
    async def gen():
        yield 1
        raise RuntimeError("source broke")

    app = af.App("err2", batch_size=1, watermark_interval=0)
    out = app.source(af.from_iterable(gen())).map(lambda x: x, name="m", parallelism=2)
    with pytest.raises(RuntimeError, match="source broke"):
        run_collect(out, timeout=5)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_an_unhashable_key_names_the_key_selector(parallelism: int) -> None:
    def tags_of(e):
        return e["tags"]

    app = af.App("unhashable", parallelism=parallelism)
    stream = app.source([{"tags": ["a", "b"]}]).key_by(tags_of).reduce(lambda a, b: b, name="keep_last")
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream)
    message = str(info.value)
    assert "key selector" in message and "tags_of" in message and "unhashable" in message
    assert "keep_last raised" not in message
    assert info.value.record == {"tags": ["a", "b"]}


@pytest.mark.parametrize("returned", [("a", 1), "ab", {"a": 1}, 5])
def test_a_process_function_that_returns_instead_of_yielding_fails(returned) -> None:
    class Returns(af.ProcessFunction):
        def process_element(self, value, ctx):
            return returned

    app = af.App("returns")
    stream = app.source([1]).process(Returns)
    with pytest.raises(af.OperatorError, match="yield") as info:
        run_collect(stream)
    assert info.value.operator == "Returns"


def test_an_on_timer_that_returns_a_tuple_fails() -> None:
    class Timer(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(10)
            yield from ()

        def on_timer(self, timestamp, ctx):
            return (ctx.key, timestamp)

    app = af.App("timer_returns")
    stream = (
        app.source([1], timestamps=lambda e: 1, watermarks=af.MonotonousTimestamps()).key_by(lambda e: e).process(Timer)
    )
    with pytest.raises(af.OperatorError, match="yield"):
        run_collect(stream)


def test_returning_a_list_of_outputs_still_works() -> None:
    class Lists(af.ProcessFunction):
        def process_element(self, value, ctx):
            return [value, value]

    app = af.App("lists")
    assert run_collect(app.source([1, 2]).process(Lists)) == [1, 1, 2, 2]


def test_a_window_function_that_returns_a_tuple_fails() -> None:
    class Window(af.ProcessWindowFunction):
        def process(self, key, context, elements):
            return (key, len(elements))

    app = af.App("window_returns")
    stream = (
        app.source([1, 2], timestamps=lambda e: e, watermarks=af.MonotonousTimestamps())
        .key_by(lambda e: 0)
        .window(af.TumblingEventTimeWindows(10))
        .process(Window)
    )
    with pytest.raises(af.OperatorError, match="yield"):
        run_collect(stream)
