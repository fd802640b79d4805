"""Timers in process functions: order, de-duplication, deletion, edge cases."""

from __future__ import annotations

import anyio
import pytest

import aioflow as af
from aioflow.testing import run_collect, run_collect_async


def timed(rows, **app_options) -> af.KeyedStream:
    app = af.App("timers", batch_size=1, watermark_interval=0, **app_options)
    events = app.source(rows, timestamps=lambda r: r[1], watermarks=af.BoundedOutOfOrderness(0))
    return events.key_by(lambda r: r[0])


class Register(af.KeyedProcessFunction):
    """Registers the timers listed in each record; reports every firing."""

    def process_element(self, value, ctx):
        for at in value[2]:
            ctx.timer_service.register_event_time_timer(at)
        for at in value[3] if len(value) > 3 else ():
            ctx.timer_service.delete_event_time_timer(at)
        yield from ()

    def on_timer(self, timestamp, ctx):
        yield (ctx.key, timestamp, ctx.timestamp, ctx.time_domain, ctx.current_watermark())


def test_timers_fire_in_order_once_per_key_and_timestamp() -> None:
    rows = [("a", 1, [30, 10, 20]), ("b", 2, [10]), ("a", 3, [10]), ("x", 50, [])]
    out = run_collect(timed(rows).process(Register))
    assert [(k, t) for k, t, *_ in out] == [("a", 10), ("b", 10), ("a", 20), ("a", 30)]
    assert all(ts == t and domain == "event_time" and wm == 49 for _, t, ts, domain, wm in out)


def test_a_deleted_timer_does_not_fire() -> None:
    rows = [("a", 1, [10, 20]), ("a", 2, [], [10])]
    assert [t for _, t, *_ in run_collect(timed(rows).process(Register))] == [20]


def test_a_timer_at_the_watermark_fires_and_a_past_timer_fires_at_the_next_watermark() -> None:
    rows = [("a", 10, [9]), ("a", 11, [5]), ("a", 12, [])]
    out = run_collect(timed(rows).process(Register))
    # watermark 9 after the first record fires 9; the timer at 5 is already behind the
    # watermark and fires with the next one (10)
    assert [(t, wm) for _, t, _, _, wm in out] == [(9, 9), (5, 10)]


def test_timers_registered_while_firing_fire_in_the_same_advance() -> None:
    class Chain(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(10)
            yield from ()

        def on_timer(self, timestamp, ctx):
            if timestamp < 40 and timestamp % 10 == 0:
                ctx.timer_service.register_event_time_timer(timestamp + 10)
            if timestamp == 20:
                ctx.timer_service.register_event_time_timer(15)  # already behind the watermark
            yield timestamp

    rows = [("a", 1, []), ("a", 100, [])]
    assert run_collect(timed(rows).process(Chain)) == [10, 20, 15, 30, 40]


def test_every_pending_timer_fires_at_end_of_bounded_input() -> None:
    rows = [("a", 1, [10**12]), ("b", 2, [5])]
    assert [t for _, t, *_ in run_collect(timed(rows).process(Register))] == [5, 10**12]


def test_state_in_on_timer_belongs_to_the_timers_key() -> None:
    class Total(af.KeyedProcessFunction):
        def open(self, ctx):
            self.total = ctx.value_state("total", default=0)

        def process_element(self, value, ctx):
            self.total.update(self.total.value() + value[2])
            ctx.timer_service.register_event_time_timer(100)
            yield from ()

        def on_timer(self, timestamp, ctx):
            yield (ctx.key, self.total.value())

    rows = [("a", 1, 5), ("b", 2, 7), ("a", 3, 1)]
    assert run_collect(timed(rows).process(Total)) == [("a", 6), ("b", 7)]


async def test_processing_time_timer_fires_while_input_is_quiet() -> None:
    fired = anyio.Event()

    async def rows():
        yield ("a", 1)
        with anyio.fail_after(10):
            await fired.wait()

    class Soon(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_processing_time_timer(ctx.timer_service.current_processing_time() + 20)
            yield from ()

        def on_timer(self, timestamp, ctx):
            fired.set()
            yield (ctx.key, ctx.time_domain, ctx.timestamp)

    app = af.App("ptime")
    out = app.source(af.from_iterable(rows())).key_by(lambda r: r[0]).process(Soon)
    assert await run_collect_async(out, timeout=20) == [("a", "processing_time", None)]


def test_timers_need_a_keyed_stream() -> None:
    class Unkeyed(af.ProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(10)
            yield value

    app = af.App("unkeyed")
    app.source([1]).process(Unkeyed).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="timers need a keyed stream"):
        app.run()


def test_timer_timestamps_must_be_ints() -> None:
    class Floaty(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(1.5)
            yield value

    app = af.App("floaty")
    app.source([1]).key_by(lambda v: v).process(Floaty).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="timer timestamps are int milliseconds, got 1.5"):
        app.run()


class Inactivity(af.KeyedProcessFunction):
    """Each record moves its key's processing-time timeout an hour ahead."""

    def open(self, ctx):
        self.due = ctx.value_state("due")

    def process_element(self, value, ctx):
        due = self.due.value()
        if due is not None:
            ctx.timer_service.delete_processing_time_timer(due)
        due = ctx.timer_service.current_processing_time() + 3_600_000 + value
        ctx.timer_service.register_processing_time_timer(due)
        self.due.update(due)
        yield from ()


async def test_deleting_processing_time_timers_frees_them() -> None:
    from aioflow.testing import ProcessFunctionHarness

    async with ProcessFunctionHarness(Inactivity, key_selector=lambda v: v % 10) as harness:
        operator = harness._operator
        for start in range(0, 20_000, 1_000):
            await harness.process_elements(list(range(start, start + 1_000)))
        scheduler = operator.env.scheduler
        timers = operator.ctx.timer_service.processing_timers
        assert len(scheduler._heap) <= 2  # one live entry for the operator, not one per record
        assert len(timers._by_time) == 10  # one timer per key
        assert len(timers._heap) <= 2 * 10 + 1024
