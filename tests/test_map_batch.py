"""``stream.map_batch``: results computed a list of records at a time (a model's
``predict``, a bulk lookup), plain or ``async def``, as lists, NumPy arrays or DataFrames."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import aioflow as af
from aioflow.testing import run_collect_async


async def test_a_plain_batch_function_gets_lists_of_at_most_max_batch_size() -> None:
    sizes: list[int] = []

    def square_all(records: list[int]) -> list[int]:
        sizes.append(len(records))
        return [r * r for r in records]

    app = af.App("map-batch-plain", batch_size=100)
    stream = app.source(range(250)).map_batch(square_all, max_batch_size=32)
    assert await run_collect_async(stream) == [i * i for i in range(250)]
    assert max(sizes) == 32 and sum(sizes) == 250


async def test_async_batch_calls_overlap_and_results_keep_the_input_order() -> None:
    now = most = 0

    async def lookup(records: list[int]) -> list[str]:
        nonlocal now, most
        now += 1
        most = max(most, now)
        await anyio.sleep(0.001 * (records[0] % 5))
        now -= 1
        return [f"v{r}" for r in records]

    app = af.App("map-batch-async")
    stream = app.source(range(1000)).map_batch(lookup, max_batch_size=10, capacity=8)
    assert await run_collect_async(stream) == [f"v{i}" for i in range(1000)]
    assert most == 8


async def test_numpy_and_pandas_forms() -> None:
    app = af.App("map-batch-forms")
    rows = [{"x": float(i), "y": 2.0 * i} for i in range(10)]
    total = app.source(rows, name="rows").map_batch(lambda frame: frame["x"] + frame["y"], form="pandas")
    norms = app.source([[3, 4], [6, 8]], name="vectors").map_batch(
        lambda array: np.sqrt((array**2).sum(axis=1)), form="numpy"
    )
    got_total, got_norms = await run_collect_async(total, norms)
    assert got_total == [3.0 * i for i in range(10)] and all(type(v) is float for v in got_total)
    assert got_norms == [5.0, 10.0]


async def test_a_dataframe_result_gives_a_dict_per_row() -> None:
    app = af.App("map-batch-frame")
    rows = [{"x": 1, "y": 2}, {"x": 3, "y": 4}]
    stream = app.source(rows).map_batch(lambda frame: frame.assign(total=frame["x"] + frame["y"]), form="pandas")
    assert await run_collect_async(stream) == [{"x": 1, "y": 2, "total": 3}, {"x": 3, "y": 4, "total": 7}]


async def test_the_wrong_number_of_results_fails_naming_the_function() -> None:
    app = af.App("map-batch-count")
    stream = app.source(range(5)).map_batch(lambda records: records[:-1], name="short")
    with pytest.raises(
        af.UserFunctionTypeError,
        match=r"operator 'short': batch function .* returned 4 results "
        r"for 5 records",
    ):
        await run_collect_async(stream)


async def test_a_failed_batch_is_retried_then_goes_to_the_side_output_whole() -> None:
    calls: list[list[int]] = []

    async def bulk(records: list[int]) -> list[int]:
        calls.append(records)
        await anyio.sleep(0)
        if 3 in records:
            raise ConnectionError("bulk endpoint down")
        return records

    failed = af.OutputTag("failed")
    app = af.App("map-batch-errors")
    stream = app.source(range(8)).map_batch(
        bulk, max_batch_size=4, on_error=failed, retry=af.RetryPolicy(max_attempts=2, initial_delay=0)
    )
    ok, dead = await run_collect_async(stream, stream.get_side_output(failed))
    assert ok == [4, 5, 6, 7]
    assert [(f.value, f.attempts) for f in dead] == [(i, 2) for i in range(4)]
    assert all("ConnectionError: bulk endpoint down (call 2 of 2)" in f.error for f in dead)
    assert calls.count([0, 1, 2, 3]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"form": "arrow"}, "form"),
        ({"on_error": "drop"}, "on_error"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    app = af.App("map-batch-bad")
    with pytest.raises(af.PipelineError, match=message):
        app.source([1]).map_batch(lambda records: records, **kwargs)
