"""A record is never dropped without a trace: user code that raises StopIteration or
lets CancelledError escape, and sinks or functions whose close fails, fail the job."""

from __future__ import annotations

import asyncio

import pytest

import aioflow as af
from aioflow.testing import run_collect


def _stray_next(x: int) -> int:
    if x == 700:
        next(iter([]))  # a stray StopIteration
    return x


def _stray_next_bool(x: int) -> bool:
    return _stray_next(x) >= 0


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("where", ["map", "filter", "key_by", "timestamps", "reduce"])
def test_stop_iteration_fails_the_job_and_names_the_record(where: str, parallelism: int) -> None:
    app = af.App("stray", parallelism=parallelism)
    if where == "timestamps":
        stream = app.source(range(2000), name="numbers", timestamps=_stray_next, watermarks=af.MonotonousTimestamps())
    else:
        stream = app.source(range(2000), name="numbers")
    if where == "map":
        stream = stream.map(_stray_next, name="step")
    elif where == "filter":
        stream = stream.filter(_stray_next_bool, name="step")
    elif where == "key_by":
        stream = stream.key_by(_stray_next).reduce(lambda a, b: b, name="step")
    elif where == "reduce":
        stream = stream.key_by(lambda x: x % 3).reduce(lambda a, b: _stray_next(b), name="step")
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream)
    assert "StopIteration" in str(info.value)
    assert info.value.record == 700
    if where == "key_by":
        assert "key selector" in str(info.value)
    elif where == "timestamps":
        assert info.value.operator == "numbers"
    else:
        assert info.value.operator == "step"


def test_cancelled_error_from_user_code_fails_the_operator() -> None:
    async def lookup(x: int) -> int:
        if x == 2500:
            task = asyncio.ensure_future(asyncio.sleep(10))
            task.cancel()
            await task  # raises CancelledError, though nobody cancelled this job
        return x

    app = af.App("cancelled")
    stream = app.source(range(5000)).map(lookup, name="lookup")
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream)
    assert info.value.operator == "lookup"
    assert info.value.record == 2500
    assert "CancelledError" in str(info.value)
    assert isinstance(info.value.__cause__, af.StrayCancellation)
    assert isinstance(info.value.__cause__.__cause__, asyncio.CancelledError)


def test_cancelled_error_from_async_process_function_fails_the_operator() -> None:
    class Lookup(af.KeyedProcessFunction):
        async def process_element(self, value, ctx):
            if value == 30:
                task = asyncio.ensure_future(asyncio.sleep(10))
                task.cancel()
                await task
            return [value]

    app = af.App("cancelled_process")
    stream = app.source(range(100)).key_by(lambda x: x % 4).process(Lookup)
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream)
    assert info.value.operator == "Lookup" and info.value.record == 30


def test_a_failing_close_fails_the_job_and_names_the_operator() -> None:
    class FinalCommit(af.ProcessFunction):
        def process_element(self, value, ctx):
            yield value

        def close(self) -> None:
            raise OSError("final commit failed")

    app = af.App("close_fails")
    app.source(range(10)).process(FinalCommit).sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert info.value.operator == "FinalCommit"
    assert "final commit failed" in str(info.value)


class _Writer(af.SinkWriter):
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    async def write(self, values):
        pass

    async def flush(self) -> None:
        if self.fail_in == "flush":
            raise OSError("disk full")

    async def close(self) -> None:
        if self.fail_in == "close":
            raise OSError("disk full")


class _FailingSink(af.Sink):
    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    def create_writer(self, subtask_index, parallelism):
        return _Writer(self.fail_in)


@pytest.mark.parametrize("fail_in", ["flush", "close"])
def test_a_sink_that_cannot_flush_or_close_fails_the_job(fail_in: str) -> None:
    app = af.App("sink_fails")
    app.source(range(10)).sink(_FailingSink(fail_in), name="store")
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert info.value.operator == "store"
    assert "disk full" in str(info.value) and fail_in in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_a_failing_close_after_a_failure_keeps_the_first_error() -> None:
    class Both(af.ProcessFunction):
        def process_element(self, value, ctx):
            raise ValueError("first")

        def close(self) -> None:
            raise OSError("second")

    app = af.App("both_fail")
    app.source(range(3)).process(Both).sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert isinstance(info.value.__cause__, ValueError)
