"""A pipeline typed as a user would type it: ``mypy --strict`` accepts it, and sees every
decorated function as the stream it becomes (``assert_type``). Checked (and run) by
tests/test_checks.py; running it asserts the same at run time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, assert_type

import aioflow as af
from aioflow.testing import run_collect

app = af.App("typed")
events = app.source(
    [
        {"user": "a", "amount": 5, "ts": 1_000},
        {"user": "a", "amount": 20, "ts": 2_000},
        {"user": "b", "amount": 100, "ts": 3_000},
    ],
    name="events",
    timestamps=lambda e: e["ts"],
    watermarks=af.MonotonousTimestamps(),
)
rules = app.source([{"user": "b", "limit": 50}], name="rules")
LIMIT = af.OutputTag("over-limit")


@events.filter
def big(e: dict[str, Any]) -> bool:
    return bool(e["amount"] > 10)


@big.map(name="tag")
def tagged(e: dict[str, Any]) -> tuple[str, float]:
    return (e["user"], round(e["amount"] * 1.1, 2))


@tagged.flat_map
def letters(t: tuple[str, float]) -> Iterator[str]:
    yield from t[0]


@tagged.map(max_concurrency=10)
async def looked_up(t: tuple[str, float]) -> str:
    return t[0].upper()


class Shout(af.AsyncFunction):
    async def open(self, ctx: af.FunctionContext) -> None:
        self.suffix = "!"

    async def __call__(self, value: tuple[str, float]) -> str:
        return value[0].upper() + self.suffix


shouted = tagged.map(Shout, name="shout")
keyed = tagged.key_by(lambda t: t[0])


class RunningTotal(af.KeyedProcessFunction):
    def open(self, ctx: af.OperatorContext) -> None:
        self.total = ctx.value_state("total", default=0.0)

    def process_element(self, value: tuple[str, float], ctx: af.OperatorContext) -> Iterator[tuple[str, float]]:
        self.total.update(self.total.value() + value[1])
        yield (ctx.key, self.total.value())


class Doubled(af.KeyedProcessFunction):
    async def process_element(self, value: tuple[str, float], ctx: af.OperatorContext) -> AsyncIterator[float]:
        yield value[1] * 2


totals = keyed.process(RunningTotal)


@keyed.process
def first_seen(value: tuple[str, float], ctx: af.OperatorContext) -> Iterator[str]:
    yield value[0]


@keyed.reduce
def summed(a: tuple[str, float], b: tuple[str, float]) -> tuple[str, float]:
    return (a[0], a[1] + b[1])


windowed = keyed.window(af.TumblingEventTimeWindows(10_000)).reduce(lambda a, b: (a[0], a[1] + b[1]), name="totals_10s")


class Limits(af.KeyedBroadcastProcessFunction):
    def process_element(self, value: tuple[str, float], ctx: af.BroadcastContext) -> Iterator[Any]:
        limit = ctx.broadcast_state("limits").get(value[0])
        if limit is not None and value[1] > limit:
            yield LIMIT, value

    def process_broadcast_element(self, value: dict[str, Any], ctx: af.BroadcastContext) -> None:
        ctx.broadcast_state("limits").put(value["user"], value["limit"])


checked = keyed.connect(rules.broadcast("limits")).process(Limits())


@keyed.interval_join(events.key_by(lambda e: e["user"])).between(-1_000, 1_000).process
def joined(left: tuple[str, float], right: dict[str, Any], ctx: Any) -> Iterator[tuple[str, int]]:
    yield (left[0], right["amount"])


for stream in (big, tagged, letters, looked_up, shouted, totals, first_seen, summed, windowed, checked, joined):
    assert_type(stream, af.Stream)
    assert isinstance(stream, af.Stream), stream
assert_type(keyed, af.KeyedStream)
assert_type(keyed.process(Doubled), af.Stream)
assert_type(tagged.broadcast(), af.Stream)
assert_type(rules.broadcast("limits"), af.BroadcastStream)
over_limit = checked.get_side_output(LIMIT)
assert_type(over_limit, af.Stream)

if __name__ == "__main__":
    running, split, pairs, loud = run_collect(totals, letters, joined, shouted)
    assert running == [("a", 22.0), ("b", 110.0)], running
    assert loud == ["A!", "B!"], loud
    assert split == ["a", "b"], split
    assert sorted(pairs) == [("a", 5), ("a", 20), ("b", 100)], pairs
