"""Two-input operators: connect, broadcast state, interval join."""

from __future__ import annotations

import random

import pytest

import aioflow as af
from aioflow._core.operators.join import IntervalJoinOperator
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import Output
from aioflow._core.runtime.task import SubtaskEnvironment
from aioflow._core.state.memory import MemoryBackend
from aioflow.testing import run_collect


def test_keyed_co_process_shares_state_between_inputs() -> None:
    app = af.App("co", parallelism=2)
    orders = app.source([("u1", "book"), ("u2", "pen"), ("u1", "lamp")], name="orders")
    users = app.source([("u1", "Ada"), ("u2", "Bob")], name="users")

    class Enrich(af.KeyedCoProcessFunction):
        def open(self, ctx):
            self.name = ctx.value_state("name")
            self.pending = ctx.list_state("pending")

        def process_element1(self, order, ctx):
            if self.name.value() is None:
                self.pending.add(order[1])
            else:
                yield (self.name.value(), order[1])

        def process_element2(self, user, ctx):
            self.name.update(user[1])
            for item in self.pending.get():
                yield (user[1], item)
            self.pending.clear()

    out = orders.connect(users).key_by(lambda o: o[0], lambda u: u[0]).process(Enrich)
    assert sorted(run_collect(out)) == [("Ada", "book"), ("Ada", "lamp"), ("Bob", "pen")]


def test_co_process_on_unkeyed_streams() -> None:
    app = af.App("co-plain")

    class Tag(af.CoProcessFunction):
        def process_element1(self, value, ctx):
            yield ("left", value)

        def process_element2(self, value, ctx):
            yield ("right", value)

    out = app.source([1, 2]).connect(app.source([3])).process(Tag)
    assert sorted(run_collect(out)) == [("left", 1), ("left", 2), ("right", 3)]


def test_connecting_one_keyed_and_one_plain_stream_is_rejected() -> None:
    app = af.App("mixed")
    with pytest.raises(af.PipelineError, match="key both streams"):
        app.source([1]).key_by(lambda v: v).connect(app.source([2])).process(af.KeyedCoProcessFunction)


class Thresholds(af.KeyedBroadcastProcessFunction):
    """Orders wait in keyed state until the watermark passes them; then every rule known
    by then applies: the output does not depend on how the two inputs interleave."""

    def open(self, ctx):
        self.waiting = ctx.list_state("waiting")

    def process_element(self, order, ctx):
        self.waiting.add(order)
        ctx.timer_service.register_event_time_timer(ctx.timestamp)
        yield from ()

    def process_broadcast_element(self, rule, ctx):
        ctx.broadcast_state("rules").put(rule["name"], rule["limit"])
        yield from ()

    def on_timer(self, timestamp, ctx):
        rules = dict(ctx.broadcast_state("rules").items())
        for order in self.waiting.get():
            if order["ts"] == timestamp:
                for name, limit in sorted(rules.items()):
                    if order["amount"] > limit:
                        yield (ctx.key, order["amount"], name)
        self.waiting.update([o for o in self.waiting.get() if o["ts"] != timestamp])


def test_broadcast_state_reaches_every_subtask() -> None:
    app = af.App("rules", parallelism=3)
    rules = app.source(
        [{"name": "big", "limit": 100, "ts": 0}, {"name": "huge", "limit": 1000, "ts": 0}],
        timestamps=lambda r: r["ts"],
        watermarks=af.BoundedOutOfOrderness(0),
        name="rules",
    )
    orders = app.source(
        [{"user": f"u{i}", "amount": amount, "ts": 10 + i} for i, amount in enumerate([50, 500, 5000, 150, 99])],
        timestamps=lambda o: o["ts"],
        watermarks=af.BoundedOutOfOrderness(0),
        name="orders",
    )
    alerts = orders.key_by(lambda o: o["user"]).connect(rules.broadcast("rules")).process(Thresholds)
    assert sorted(run_collect(alerts)) == [
        ("u1", 500, "big"),
        ("u2", 5000, "big"),
        ("u2", 5000, "huge"),
        ("u3", 150, "big"),
    ]
    assert app.plan().tasks[-1].parallelism == 3


def test_broadcast_state_is_read_only_on_the_keyed_side() -> None:
    class Writes(af.KeyedBroadcastProcessFunction):
        def process_element(self, value, ctx):
            ctx.broadcast_state("rules").put("x", 1)
            yield value

        def process_broadcast_element(self, value, ctx):
            yield from ()

    app = af.App("ro")
    app.source([1]).key_by(lambda v: v).connect(app.source([]).broadcast("rules")).process(Writes).sink(
        af.CollectSink()
    )
    with pytest.raises(af.OperatorError, match="read-only in process_element") as caught:
        app.run()
    assert isinstance(caught.value.__cause__, af.PipelineError)


def test_apply_to_keyed_state_visits_every_key() -> None:
    class Reset(af.KeyedBroadcastProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count", default=0)

        def process_element(self, value, ctx):
            self.count.update(self.count.value() + 1)
            ctx.timer_service.register_event_time_timer(100)
            yield from ()

        def process_broadcast_element(self, value, ctx):
            ctx.apply_to_keyed_state(self.count, lambda key, state: state.update(state.value() * 10))
            yield from ()

        def on_timer(self, timestamp, ctx):
            yield (ctx.key, self.count.value())

    app = af.App("apply")
    # keyed records come first: the broadcast source only starts once they are all read
    data = app.source(["a", "b", "a"], timestamps=lambda v: 1, watermarks=af.BoundedOutOfOrderness(0))

    async def later():
        yield "x10"

    control = app.source(af.from_iterable(later()))
    out = data.key_by(lambda v: v).connect(control.broadcast("control")).process(Reset)
    assert sorted(run_collect(out)) in ([("a", 20), ("b", 10)], [("a", 2), ("b", 1)])


def brute_force_join(left, right, lower, upper):
    return sorted(
        (l_key, l_ts, r_ts)
        for l_key, l_ts in left
        for r_key, r_ts in right
        if l_key == r_key and l_ts + lower <= r_ts <= l_ts + upper
    )


@pytest.mark.parametrize(("lower", "upper"), [(-2, 3), (0, 0), (1, 5), (-5, -1)])
def test_interval_join_equals_brute_force_on_in_order_data(lower: int, upper: int) -> None:
    rng = random.Random(lower * 31 + upper)
    left = sorted(((rng.choice("ab"), rng.randint(0, 60)) for _ in range(80)), key=lambda r: r[1])
    right = sorted(((rng.choice("ab"), rng.randint(0, 60)) for _ in range(80)), key=lambda r: r[1])
    app = af.App("join", batch_size=4, watermark_interval=0)
    strategy = af.BoundedOutOfOrderness(0)
    ls = app.source(left, timestamps=lambda r: r[1], watermarks=strategy, name="left").key_by(lambda r: r[0])
    rs = app.source(right, timestamps=lambda r: r[1], watermarks=strategy, name="right").key_by(lambda r: r[0])

    class Pair(af.ProcessJoinFunction):
        def process_element(self, l, r, ctx):
            assert ctx.timestamp == max(l[1], r[1])
            yield (l[0], l[1], r[1])

    late_left, late_right = af.OutputTag("late_left"), af.OutputTag("late_right")
    joined = ls.interval_join(rs).between(lower, upper).side_output_left_late_data(late_left)
    out = joined.side_output_right_late_data(late_right).process(Pair)
    pairs, late_l, late_r = run_collect(out, out.get_side_output(late_left), out.get_side_output(late_right))
    # each input is in order and the operator's watermark is the minimum of both, so
    # nothing is late and every pair is found
    assert (late_l, late_r) == ([], [])
    assert sorted(pairs) == brute_force_join(left, right, lower, upper)


class Capture(Output):
    def __init__(self) -> None:
        self.values: list = []

    async def process(self, batch: Batch) -> None:
        self.values.extend(zip(batch.values, batch.timestamps or [None] * len(batch.values)))


async def test_interval_join_sends_records_behind_the_watermark_to_the_side_output() -> None:
    key = lambda r: r[0]  # noqa: E731
    operator = IntervalJoinOperator("join", af.ProcessJoinFunction(), key, key, 0, 5, "late", None)
    operator.function.process_element = lambda l, r, ctx: [(l[1], r[1])]
    operator.out, late = Capture(), Capture()
    operator.side_outputs["late"] = late
    await operator.open(SubtaskEnvironment("t", 0, 1, 128, 1024, MemoryBackend()))
    await operator.process(Batch([("a", 10)], [10]))
    await operator.process2(Batch([("a", 11), ("a", 16)], [11, 16]))
    await operator.process_watermark(12)
    await operator.process(Batch([("a", 9), ("a", 12)], [9, 12]))  # 9 is behind the watermark
    assert operator.out.values == [((10, 11), 11), ((12, 16), 16)]  # output time: the later one
    assert late.values == [(("a", 9), 9)]
    await operator.process_watermark(100)  # the buffers are cleaned up
    assert {side: table.keys_in() for side, table in operator.buffers.items()} == {"left": [], "right": []}


def test_interval_join_bounds_are_checked() -> None:
    app = af.App("bounds")
    a = app.source([1]).key_by(lambda v: v)
    with pytest.raises(af.PipelineError, match="lower bound 5 is above the upper bound 1"):
        a.interval_join(a).between(5, 1)
    with pytest.raises(af.PipelineError, match="two keyed streams"):
        app.source([1]).key_by(lambda v: v).interval_join(app.source([2]))  # type: ignore[arg-type]


def test_process_broadcast_element_has_no_key_for_timers_or_state() -> None:
    class Timed(af.KeyedBroadcastProcessFunction):
        def process_element(self, value, ctx):
            yield value

        def process_broadcast_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(50)
            yield value

    app = af.App("no-key")
    out = app.source([1]).key_by(lambda v: v).connect(app.source(["rule"]).broadcast("rules")).process(Timed)
    out.sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="not available in process_broadcast_element") as caught:
        app.run()
    assert isinstance(caught.value.__cause__, af.PipelineError)


def test_interval_join_pairs_within_the_bounds():
    app = af.App("ij", batch_size=1, watermark_interval=0)
    left = app.source([("k", 10), ("k", 20)], name="L", timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps())
    right = app.source(
        [("k", 8), ("k", 12), ("k", 25)], name="R", timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps()
    )

    def pair(l, r, ctx):
        yield (l[1], r[1])

    j = left.key_by(lambda r: r[0]).interval_join(right.key_by(lambda r: r[0])).between(-2, 5).process(pair, name="j")
    assert sorted(run_collect(j, timeout=5)) == [(10, 8), (10, 12), (20, 25)]


def _join_at_ten(bounds) -> list:
    """The right timestamps (8..14) joined with a left record at 10, with the bounds that
    ``bounds(interval_join)`` sets."""
    app = af.App("ij-bounds", batch_size=1, watermark_interval=0)
    left = app.source([("k", 10)], name="L", timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps())
    right = app.source(
        [("k", ts) for ts in range(8, 15)], name="R", timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps()
    )
    joined = bounds(left.key_by(lambda r: r[0]).interval_join(right.key_by(lambda r: r[0])))
    return sorted(run_collect(joined.process(lambda l, r, ctx: [r[1]], name="j"), timeout=5))


def test_interval_join_exclusive_bounds_are_flags() -> None:
    # Flink's lowerBoundExclusive()/upperBoundExclusive() set a flag, so a second call
    # changes nothing: (0, 4) exclusive on both sides is 10 < r.ts < 14.
    out = _join_at_ten(
        lambda j: (
            j.between(0, 4)
            .lower_bound_exclusive()
            .lower_bound_exclusive()
            .upper_bound_exclusive()
            .upper_bound_exclusive()
        )
    )
    assert out == [11, 12, 13]


def test_interval_join_checks_the_bounds_before_making_them_exclusive() -> None:
    # Flink's IntervalJoinOperator checks lowerBound <= upperBound on the given bounds,
    # then moves an exclusive one by a millisecond: between(0, 0).lowerBoundExclusive()
    # is accepted, and the job runs and joins nothing.
    assert _join_at_ten(lambda j: j.between(0, 0)) == [10]
    assert _join_at_ten(lambda j: j.between(0, 0).lower_bound_exclusive()) == []
