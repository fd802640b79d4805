"""Restart strategies: a failed job with checkpoints restarts in the same process from the
last checkpoint, so its exactly-once output is the undisturbed one; a repeating error
exhausts the strategy and fails the job."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import orjson
import pytest
from recovery.gated import checkpoint_manifests
from support import run_to_failure

import aioflow as af
from aioflow._core.runtime.restart import DEFAULT_RESTART_STRATEGY, repeats_on_restart

EVENTS = [{"user": f"u{i % 7}", "ts": i * 10, "v": i % 5} for i in range(20_000)]


def _job(folder: Path, fail: Any, strategy: af.RestartStrategy, name: str = "out") -> af.App:
    app = af.App("restarts", state_dir=str(folder / "state"), checkpoint_interval=0.01, restart_strategy=strategy)
    events = app.source(EVENTS, timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(0), name="events")
    sums = (
        events.map(fail, name="flaky")
        .key_by(lambda e: e["user"])
        .window(af.TumblingEventTimeWindows(1000))
        .reduce(lambda a, b: {**a, "v": a["v"] + b["v"]}, name="sums")
    )
    sums.sink(af.FileSink(str(folder / f"{name}.jsonl"), exactly_once=True), name="sink")
    return app


def _per_key(data: bytes) -> dict[str, list[bytes]]:
    """Results per key in output order (keys fired by one watermark may come in another order after a restore)."""
    found: dict[str, list[bytes]] = {}
    for line in data.splitlines():
        found.setdefault(orjson.loads(line)["user"], []).append(line)
    return found


def _expected(folder: Path) -> dict[str, list[bytes]]:
    app = af.App("restarts")
    app.source(EVENTS, timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(0), name="events").key_by(
        lambda e: e["user"]
    ).window(af.TumblingEventTimeWindows(1000)).reduce(lambda a, b: {**a, "v": a["v"] + b["v"]}, name="sums").sink(
        af.FileSink(str(folder / "ref.jsonl"))
    )
    app.run()
    return _per_key((folder / "ref.jsonl").read_bytes())


def _checkpoints(folder: Path) -> int:
    return len(checkpoint_manifests(folder / "state"))


def test_a_failed_job_restarts_from_its_last_checkpoint_and_completes_the_output(tmp_path: Path) -> None:
    calls = {"n": 0, "failed": 0}

    def fail_once(e: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        # Once a checkpoint is there, so that the restart resumes from it rather than the start.
        if not calls["failed"] and e["ts"] >= 100_000 and _checkpoints(tmp_path):
            calls["failed"] += 1
            raise ConnectionError("the feature store went away")
        return e

    app = _job(tmp_path, fail_once, af.FixedDelayRestart(attempts=1, delay=0))
    app.run()
    assert calls["failed"] == 1
    assert len(EVENTS) < calls["n"] < 2 * len(EVENTS)  # resumed from a checkpoint, not from the start
    assert _per_key((tmp_path / "out.jsonl").read_bytes()) == _expected(tmp_path)


def test_an_error_that_repeats_exhausts_the_strategy(tmp_path: Path) -> None:
    attempts = []

    def always(e: dict[str, Any]) -> dict[str, Any]:
        if e["ts"] == 50_000:
            attempts.append(1)
            raise ValueError("bad record")
        return e

    with pytest.raises(af.OperatorError, match="bad record"):  # although checkpoints complete between the tries
        _job(tmp_path, always, af.FixedDelayRestart(attempts=2, delay=0)).run()
    assert len(attempts) == 3  # the first run and two restarts


def test_a_job_that_ran_long_enough_starts_the_count_afresh(tmp_path: Path) -> None:
    """With one attempt allowed, two failures still restart when the job ran ``reset_after`` in between."""
    failed_at: list[int] = []

    def twice(e: dict[str, Any]) -> dict[str, Any]:
        if (
            len(failed_at) < 2
            and e["ts"] >= 60_000 * (len(failed_at) + 1)
            and _checkpoints(tmp_path) > (failed_at[-1] if failed_at else 0)
        ):
            failed_at.append(_checkpoints(tmp_path))
            raise ConnectionError("flaky")
        return e

    _job(tmp_path, twice, af.FixedDelayRestart(attempts=1, delay=0, reset_after=0)).run()
    assert len(failed_at) == 2
    assert _per_key((tmp_path / "out.jsonl").read_bytes()) == _expected(tmp_path)


def test_backoff_delays() -> None:
    exponential = af.ExponentialBackoffRestart(attempts=4, initial_delay=0.5, max_delay=3.0, multiplier=2.0)
    assert [exponential.backoff([0.0] * n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, None]
    assert [af.FixedDelayRestart(attempts=2, delay=1.5).backoff([0.0] * n) for n in (1, 2, 3)] == [1.5, 1.5, None]
    rate = af.FailureRateRestart(max_failures=2, interval=10.0, delay=0.25)
    assert rate.backoff([0.0, 5.0]) == 0.25
    assert rate.backoff([0.0, 5.0, 9.0]) is None  # three within 10 s
    assert rate.backoff([0.0, 5.0, 12.0]) == 0.25  # the first is older than 10 s
    assert af.NoRestart().backoff([0.0]) is None


def test_defaults_and_validation(tmp_path: Path) -> None:
    assert af.App("a", state_dir=str(tmp_path), checkpoint_interval=1).restart_strategy == DEFAULT_RESTART_STRATEGY
    assert af.App("a").restart_strategy == af.NoRestart()
    # The checkpoint interval may come when the app runs (--checkpoint-interval); without one it is refused then.
    app = af.App("a", restart_strategy=af.FixedDelayRestart(), state_dir=str(tmp_path))
    assert app._config(checkpoint_interval=1.0).restart_strategy == af.FixedDelayRestart()
    app.source([1]).sink(af.CollectSink())
    with pytest.raises(af.PipelineError, match="restart_strategy needs checkpoint_interval") as caught:
        app.run()
    assert all(
        way in str(caught.value)
        for way in ("checkpoint_interval=", "--checkpoint-interval", "AIOFLOW_CHECKPOINT_INTERVAL")
    )
    with pytest.raises(af.PipelineError, match="restart_strategy takes"):
        af.App("a", state_dir=str(tmp_path), checkpoint_interval=1, restart_strategy="fixed")  # type: ignore[arg-type]
    with pytest.raises(af.PipelineError, match="attempts must be an int >= 1"):
        af.FixedDelayRestart(attempts=0)
    with pytest.raises(af.PipelineError, match="multiplier must be a number >= 1"):
        af.ExponentialBackoffRestart(multiplier=0.5)


async def test_a_stop_while_waiting_to_restart_ends_the_job(tmp_path: Path) -> None:
    app: af.App

    def fail(e: dict[str, Any]) -> dict[str, Any]:
        if e["ts"] == 1000:
            app.stop()  # arrives while the job waits out the 60 s delay below
            raise ValueError("boom")
        return e

    app = _job(tmp_path, fail, af.FixedDelayRestart(attempts=1, delay=60))
    with pytest.raises(af.OperatorError, match="boom"):
        await app.run_async()  # the failure came with the stop under way: no restart


async def test_a_bad_record_under_on_error_fail_fails_the_job_at_once(tmp_path: Path) -> None:
    """The record would be read again after a restart: the job fails at once, saying
    what to do, instead of restarting three times (~7 s) to fail the same way."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"i": 1}\nnot json\n')
    app = af.App("bad-record", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05)
    app.source(af.read_jsonl(path)).sink(af.CollectSink())
    error, seconds, restarts = await run_to_failure(app)
    assert isinstance(error, af.BadRecordError) and error.location == f"{path}:2"
    assert 'on_error="skip"' in str(error) and "a restart would read it again" in str(error)  # says what to do
    assert restarts == 0 and seconds < 3


async def test_a_full_disk_under_a_file_sink_fails_the_job_at_once(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    app = af.App("disk-full", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05)
    app.source(list(range(10_000))).sink(af.FileSink("/dev/full"))
    error, seconds, restarts = await run_to_failure(app)
    assert "No space left on device" in str(error) and "free space" in str(error), error
    assert restarts == 0 and seconds < 3


async def test_state_used_on_a_stream_that_is_not_keyed_fails_the_job_at_once(tmp_path: Path) -> None:
    """A misuse of the API (a PipelineError under the OperatorError) repeats on every restart."""

    class Counting(af.ProcessFunction):
        def open(self, ctx: af.OperatorContext) -> None:
            self.ctx = ctx

        def process_element(self, value: Any, ctx: af.OperatorContext) -> Any:
            ctx.value_state("count")  # keyed state, but the stream is not keyed
            yield value

    app = af.App("unkeyed", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05)
    app.source(list(range(10))).process(Counting).sink(af.CollectSink())
    error, seconds, restarts = await run_to_failure(app)
    assert isinstance(error, af.OperatorError) and isinstance(error.__cause__, af.PipelineError), error
    assert restarts == 0 and seconds < 3


def test_errors_a_restart_would_repeat() -> None:
    wrapped = af.OperatorError("sink", "failed writing", has_record=False)
    wrapped.__cause__ = OSError(errno.EFBIG, "File too large")  # past `ulimit -f`
    assert repeats_on_restart(wrapped)
    assert repeats_on_restart(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert repeats_on_restart(af.RefusedError("no transactions"))
    assert not repeats_on_restart(af.ConnectorError("kafka(t)", "cannot reach the brokers"))  # they may come back
    assert not repeats_on_restart(OSError(errno.ECONNRESET, "Connection reset by peer"))
