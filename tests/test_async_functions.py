"""``async def`` user functions run on many records at once: a key's records in order,
each coroutine with its own key and state across its awaits, at most ``max_concurrency``
in flight, and the same output as the synchronous function for any completion order."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aioflow as af
from aioflow.testing import run_collect_async


class InFlight:
    """Counts the calls under way, and the most at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def __call__(self, seconds: float) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await anyio.sleep(seconds)
        finally:
            self.now -= 1


async def test_an_async_map_after_key_by_overlaps_keys_and_keeps_each_keys_order() -> None:
    calls: list[tuple[str, int]] = []
    flight = InFlight()
    delays = random.Random(7)

    async def slow_double(e: dict[str, Any]) -> tuple[str, int]:
        calls.append((e["key"], e["i"]))
        await flight(delays.uniform(0, 0.01))
        return (e["key"], e["i"] * 2)

    app = af.App("async-map", max_concurrency=20)
    records = [{"key": f"k{i % 7}", "i": i} for i in range(300)]
    doubled = app.source(records).key_by(lambda e: e["key"]).map(slow_double)
    out = await run_collect_async(doubled)
    assert sorted(out) == sorted((r["key"], r["i"] * 2) for r in records)
    for key in {r["key"] for r in records}:  # a key's calls, and its outputs, in arrival order
        arrival = [r["i"] for r in records if r["key"] == key]
        assert [i for k, i in calls if k == key] == arrival
        assert [i // 2 for k, i in out if k == key] == arrival
    assert 1 < flight.most <= 7  # 7 keys: at most one call each at a time


@pytest.mark.parametrize(("app_limit", "operator_limit", "most"), [(5, None, 5), (100, 3, 3), (100, 1, 1)])
async def test_max_concurrency_caps_the_calls_in_flight(app_limit: int, operator_limit: int | None, most: int) -> None:
    flight = InFlight()

    async def call(i: int) -> int:
        await flight(0.002)
        return i

    app = af.App("async-cap", max_concurrency=app_limit)
    out = app.source(range(200)).map(call, max_concurrency=operator_limit)  # unkeyed: any order of calls
    assert await run_collect_async(out) == list(range(200))  # outputs in input order
    assert flight.most == most


async def test_an_unkeyed_async_flat_map_and_filter_keep_the_input_order() -> None:
    async def evens(i: int) -> bool:
        await anyio.sleep(random.uniform(0, 0.002))
        return i % 2 == 0

    async def twice(i: int):  # an async generator
        await anyio.sleep(random.uniform(0, 0.002))
        yield i
        yield i

    app = af.App("async-unkeyed")
    stream = app.source(range(50)).filter(evens).flat_map(twice)
    assert await run_collect_async(stream) == [i for i in range(0, 50, 2) for _ in range(2)]


class Running(af.KeyedProcessFunction):
    """A running count per key, read and written across an await (a lookup between)."""

    def __init__(self, delays: list[float] | None = None) -> None:
        self.delays = delays

    def open(self, ctx: af.OperatorContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process_element(self, e: tuple[str, int], ctx: af.OperatorContext):
        n = self.count.value() + 1
        self.count.update(n)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + 100)
        yield (ctx.key, e[1], n)

    def on_timer(self, timestamp: int, ctx: af.OperatorContext):
        yield (ctx.key, -timestamp, self.count.value())


class AsyncRunning(Running):
    """The same, ``async def``: other keys run during each await."""

    async def process_element(self, e: tuple[str, int], ctx: af.OperatorContext):  # type: ignore[override]
        n = self.count.value() + 1
        await anyio.sleep(self.delays[e[1] % len(self.delays)] if self.delays else 0)
        assert ctx.key == e[0], "another coroutine's key"
        self.count.update(n)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + 100)
        return [(ctx.key, e[1], n)]

    async def on_timer(self, timestamp: int, ctx: af.OperatorContext):  # type: ignore[override]
        key = ctx.key
        await anyio.sleep(self.delays[timestamp % len(self.delays)] if self.delays else 0)
        assert ctx.key == key
        return [(ctx.key, -timestamp, self.count.value())]


async def _counts(function: Running, events: list[tuple[str, int]], **settings: Any) -> list[Any]:
    app = af.App("async-process")
    stream = app.source(events, timestamps=lambda e: e[1], watermarks=af.MonotonousTimestamps())
    return await run_collect_async(stream.key_by(lambda e: e[0]).process(function, name="running"), **settings)


def _per_key(out: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for row in out:
        found.setdefault(row[0], []).append(row)
    return found


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcde"), min_size=1, max_size=60),
    delays=st.lists(st.floats(min_value=0, max_value=0.003), min_size=1, max_size=10),
    concurrency=st.integers(min_value=1, max_value=16),
    batch_size=st.sampled_from([1, 3, 1024]),
)
def test_an_async_process_function_gives_what_the_synchronous_one_gives(
    keys: list[str],
    delays: list[float],
    concurrency: int,
    batch_size: int,
) -> None:
    """For any keys, completion order (delays), concurrency and batching: per key the same
    outputs in the same order, and the same multiset overall, timers included."""
    events = [(key, 10 * i) for i, key in enumerate(keys)]

    async def both() -> tuple[list[Any], list[Any]]:
        # the same batches: a replayable source's watermarks come after each batch
        expected = await _counts(Running(), events, batch_size=batch_size)
        got = await _counts(AsyncRunning(delays), events, max_concurrency=concurrency, batch_size=batch_size)
        return expected, got

    expected, got = anyio.run(both)
    assert sorted(got) == sorted(expected)
    assert _per_key(got) == _per_key(expected)


async def test_a_failing_coroutine_names_the_operator_the_key_and_the_record() -> None:
    async def lookup(e: dict[str, Any]) -> Any:
        await anyio.sleep(0)
        return 1 / e["n"]

    app = af.App("async-failure")
    stream = app.source([{"user": "ada", "n": 1}, {"user": "bob", "n": 0}]).key_by(lambda e: e["user"])
    with pytest.raises(
        af.OperatorError, match=r"operator 'lookup': .*lookup raised ZeroDivisionError.* for key 'bob'"
    ) as info:
        await run_collect_async(stream.map(lookup))
    assert "'user': 'bob'" in str(info.value) and "'n': 0" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_max_concurrency_must_be_a_positive_int() -> None:
    app = af.App("async-bad")
    with pytest.raises(af.PipelineError, match="max_concurrency"):
        af.App("x", max_concurrency=0)
    with pytest.raises(af.PipelineError, match=r"map\(max_concurrency=...\) takes a positive int"):
        app.source([1]).map(lambda x: x, max_concurrency=0)
    with pytest.raises(af.PipelineError, match=r"process\(max_concurrency=...\)"):
        app.source([1]).key_by(lambda x: x).process(Running(), max_concurrency=True)


async def test_an_async_keyed_co_process_function_runs_keys_at_once_with_their_own_state() -> None:
    class Enrich(af.KeyedCoProcessFunction):
        def open(self, ctx: af.OperatorContext) -> None:
            self.name = ctx.value_state("name")
            self.seen = ctx.value_state("seen", default=0)

        async def process_element1(self, order: tuple[str, int], ctx: af.OperatorContext):
            seen = self.seen.value() + 1
            await anyio.sleep(random.uniform(0, 0.003))
            assert ctx.key == order[0]
            self.seen.update(seen)
            return [(order[0], order[1], seen, self.name.value())]

        async def process_element2(self, user: tuple[str, str], ctx: af.OperatorContext):
            await anyio.sleep(random.uniform(0, 0.003))
            self.name.update(user[1])
            return []

    app = af.App("async-co")
    users = app.source([(f"u{k}", f"name{k}") for k in range(10)], name="users")
    orders = app.source([(f"u{i % 10}", i) for i in range(200)], name="orders")
    out = await run_collect_async(
        orders.connect(users).key_by(lambda o: o[0], lambda u: u[0]).process(Enrich, name="enrich")
    )
    for k in range(10):
        mine = [row for row in out if row[0] == f"u{k}"]
        assert [row[1] for row in mine] == list(range(k, 200, 10))  # in arrival order
        assert [row[2] for row in mine] == list(range(1, 21))  # the key's own count, never lost to another's


async def test_a_lambda_returning_a_coroutine_is_refused_instead_of_emitting_coroutines() -> None:
    async def fetch(i: int, scale: int) -> int:
        return i * scale

    app = af.App("async-lambda")
    for stream in (
        app.source([1], name="a").map(lambda i: fetch(i, 2), name="wrapped"),
        app.source([1], name="b").filter(lambda i: fetch(i, 2), name="wrapped_filter"),
    ):
        with pytest.raises(
            af.UserFunctionTypeError,
            match="is not async def but returned a coroutine; make it async "
            r"def, or use functools.partial",
        ):
            await run_collect_async(stream)


async def test_an_async_process_element_returning_a_value_instead_of_a_list_says_so() -> None:
    class OneValue(af.KeyedProcessFunction):
        async def process_element(self, value: int, ctx: af.OperatorContext):  # type: ignore[override]
            return {"v": value}

    app = af.App("async-returns")
    stream = app.source([1]).key_by(lambda v: v).process(OneValue, name="one")
    with pytest.raises(
        af.UserFunctionTypeError,
        match=r"OneValue.process_element returned \{'v': 1\} \(dict\) for "
        r"key 1; an async def process_element returns a list",
    ):
        await run_collect_async(stream)
