"""``stream.map_async``: calls to other systems, many at once, with timeouts, retries and
a policy for calls that fail for good."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

import aioflow as af
from aioflow.testing import run_collect_async


async def test_ordered_results_come_in_input_order_whatever_the_completion_order() -> None:
    delays = random.Random(3)
    now = most = 0

    async def call(i: int) -> int:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await anyio.sleep(delays.uniform(0, 0.005))
        now -= 1
        return i * 10

    app = af.App("map-async-ordered")
    out = app.source(range(300)).map_async(call, capacity=25)
    assert await run_collect_async(out) == [i * 10 for i in range(300)]
    assert most == 25


async def test_unordered_results_come_as_they_complete_but_never_across_a_batch() -> None:
    """A watermark comes between batches: unordered results never pass one."""

    async def call(i: int) -> int:
        await anyio.sleep(0.001 * (5 - i % 5))  # within each batch of 5, the last finishes first
        return i

    app = af.App("map-async-unordered", batch_size=5)
    out = await run_collect_async(app.source(range(20)).map_async(call, ordered=False))
    assert out != list(range(20))
    for start in range(0, 20, 5):
        assert sorted(out[start : start + 5]) == list(range(start, start + 5))


async def test_a_call_that_times_out_fails_the_job_naming_the_record() -> None:
    async def stuck(i: int) -> int:
        await anyio.sleep(0 if i != 3 else 10)
        return i

    app = af.App("map-async-timeout")
    stream = app.source(range(5)).map_async(stuck, timeout=0.05, name="lookup")
    with (
        anyio.fail_after(5),
        pytest.raises(af.OperatorError, match=r"operator 'lookup': timed out after 0.05 s \(call 1 of 1\)") as info,
    ):
        await run_collect_async(stream)
    assert "record: 3" in str(info.value)


async def test_failed_calls_are_retried_under_the_policy() -> None:
    attempts: dict[int, int] = {}

    async def flaky(i: int) -> int:
        attempts[i] = attempts.get(i, 0) + 1
        await anyio.sleep(0)
        if attempts[i] < 3 and i % 2:
            raise ConnectionError("try again")
        return i

    app = af.App("map-async-retry")
    stream = app.source(range(10)).map_async(flaky, retry=af.RetryPolicy(max_attempts=3, initial_delay=0.001))
    assert await run_collect_async(stream) == list(range(10))
    assert attempts == {i: 3 if i % 2 else 1 for i in range(10)}


async def test_retry_if_says_which_failures_are_tried_again() -> None:
    calls = 0

    async def broken(i: int) -> int:
        nonlocal calls
        calls += 1
        raise ValueError("bad request")

    app = af.App("map-async-retry-if")
    stream = app.source([1]).map_async(
        broken,
        retry=af.RetryPolicy(max_attempts=5, initial_delay=0),
        retry_if=lambda exc: isinstance(exc, ConnectionError),
    )
    with pytest.raises(
        af.OperatorError, match=r"raised ValueError: bad request \(call 1 of 5; retry_if said not to retry\)"
    ):
        await run_collect_async(stream)
    assert calls == 1


async def test_retry_if_result_calls_again_and_keeps_the_last_result() -> None:
    calls: dict[int, int] = {}

    async def eventually(i: int) -> int | None:
        calls[i] = calls.get(i, 0) + 1
        await anyio.sleep(0)
        return i if calls[i] >= i else None  # record i needs i calls

    app = af.App("map-async-retry-result")
    stream = app.source([1, 2, 5]).map_async(
        eventually, retry=af.RetryPolicy(max_attempts=3, initial_delay=0), retry_if_result=lambda r: r is None
    )
    assert await run_collect_async(stream) == [1, 2, None]  # 5 would need 5 calls: the 3rd result stays
    assert calls == {1: 1, 2: 2, 5: 3}


async def test_calls_that_fail_for_good_are_skipped_or_sent_to_a_side_output() -> None:
    async def half(i: int) -> int:
        await anyio.sleep(0)
        if i % 2:
            raise KeyError(i)
        return i

    app = af.App("map-async-on-error")
    skipped = app.source(range(6), name="a").map_async(half, on_error="skip")
    failed = af.OutputTag("failed")
    kept = app.source(range(6), name="b").map_async(
        half, on_error=failed, retry=af.RetryPolicy(max_attempts=2, initial_delay=0)
    )
    got, kept_out, dead = await run_collect_async(skipped, kept, kept.get_side_output(failed))
    assert got == kept_out == [0, 2, 4]
    assert [(f.value, f.attempts) for f in dead] == [(1, 2), (3, 2), (5, 2)]
    assert all(isinstance(f, af.FailedCall) and "half raised KeyError: " in f.error for f in dead)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"capacity": 0}, r"map_async\(capacity=...\) takes a positive int"),
        ({"retry": 3}, "RetryPolicy"),
        ({"on_error": "ignore"}, "on_error"),
        ({"retry_if": "yes"}, "retry_if"),
    ],
)
def test_bad_arguments_are_refused_saying_what_was_wrong(kwargs: dict[str, Any], message: str) -> None:
    async def call(i: int) -> int:
        return i

    app = af.App("map-async-bad")
    with pytest.raises(af.PipelineError, match=message):
        app.source([1]).map_async(call, **kwargs)


async def test_a_function_returning_an_awaitable_works_and_one_returning_a_value_is_refused() -> None:
    async def fetch(i: int, scale: int) -> int:
        await anyio.sleep(0)
        return i * scale

    app = af.App("map-async-lambda")
    assert await run_collect_async(app.source([1, 2], name="a").map_async(lambda i: fetch(i, 3))) == [3, 6]
    plain = app.source([1], name="b").map_async(lambda i: i, name="plain")  # type: ignore[arg-type, return-value]
    with pytest.raises(
        af.UserFunctionTypeError,
        match=r"operator 'plain': .*<lambda> returned 1 \(int\), not an "
        "awaitable",
    ):
        await run_collect_async(plain)
