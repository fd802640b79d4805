"""`/health`: 200 while the job runs and is caught up, 503 with the reason otherwise."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
from worker.serving import Numbers, NumbersReader, ServedWorker, observed_app, wait_until, wait_until_async

import aioflow as af
from aioflow._core.checkpoint.coordinator import CheckpointStatistics
from aioflow._core.worker.collectors import register_job_metrics
from aioflow._core.worker.health import HealthCheck
from aioflow._core.worker.metrics import MetricsRegistry


def _job(status: str = "running", *, failures: int = 0, restarts: int = 0) -> Any:
    return SimpleNamespace(
        status=status,
        restarts=restarts,
        subtasks=[],
        checkpoint_statistics=CheckpointStatistics(consecutive_failures=failures),
    )


def test_each_state_of_the_job_has_its_answer() -> None:
    ended: list[str] = []
    assert HealthCheck("a", lambda: None).__call__().body == {
        "status": "starting",
        "app": "a",
        "reason": "the job has not started yet",
    }
    for status in ("starting", "restarting", "stopping", "finished", "failed", "cancelled"):
        answer = HealthCheck("a", lambda status=status: _job(status, restarts=2))()
        assert (answer.status_code, answer.body["status"], answer.body["job"]) == (503, status, status)
        assert answer.body["restarts"] == 2 and answer.body["reason"]
    answer = HealthCheck("a", lambda: None, ended=lambda: ended[-1] if ended else None)()
    assert answer.body["status"] == "starting"
    ended.append("failed")
    answer = HealthCheck("a", lambda: None, ended=lambda: ended[-1] if ended else None)()
    assert (answer.status_code, answer.body["status"]) == (503, "failed")
    assert "exiting" in answer.body["reason"]
    ok = HealthCheck("a", lambda: _job())()
    assert (ok.status_code, ok.body) == (
        200,
        {"status": "ok", "app": "a", "job": "running", "restarts": 0, "checkpoint_failures": 0},
    )


def test_checkpoints_failing_in_a_row_make_the_worker_unhealthy() -> None:
    assert HealthCheck("a", lambda: _job(failures=2))().ok
    answer = HealthCheck("a", lambda: _job(failures=3))()
    assert (answer.status_code, answer.body["status"]) == (503, "checkpoints_failing")
    assert answer.body["reason"] == "3 checkpoints in a row failed (limit 3)"
    assert HealthCheck("a", lambda: _job(failures=3), max_checkpoint_failures=5)().ok


async def _while_running(app: af.App, check: Any) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        await wait_until_async(lambda: check(), what="the health answer")
        group.cancel_scope.cancel()


async def test_a_watermark_too_far_behind_makes_the_worker_unhealthy_when_limited() -> None:
    app = observed_app(10)  # event time 0..9 ms: decades behind the wall clock
    unlimited = HealthCheck(app.name, lambda: app.job)
    limited = HealthCheck(app.name, lambda: app.job, max_watermark_lag=3600)
    answers: list[Any] = []

    def check() -> bool:
        answers[:] = [unlimited(), limited()]
        return "watermark_lag_seconds" in answers[0].body

    await _while_running(app, check)
    assert answers[0].ok and answers[0].body["watermark_lag_seconds"] > 1e9
    assert (answers[1].status_code, answers[1].body["status"]) == (503, "lagging")
    assert answers[1].body["reason"].startswith("source 'numbers' subtask 0: the watermark is ")
    assert answers[1].body["reason"].endswith("s behind the wall clock (limit 3600 s)")


async def test_a_source_too_far_behind_the_end_of_its_splits_makes_the_worker_unhealthy_when_limited() -> None:
    class BehindReader(NumbersReader):
        def lag(self) -> dict[str, int]:
            return {"orders:0": 5, "orders:1": 1_000}

    class Behind(Numbers):
        def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
            return BehindReader(self)

    app = observed_app(source=Behind(10))
    answers: list[Any] = []

    def check() -> bool:
        answers[:] = [HealthCheck(app.name, lambda: app.job, max_source_lag=limit)() for limit in (1_000, 999)]
        return "source_lag" in answers[0].body

    await _while_running(app, check)
    assert answers[0].ok and answers[0].body["source_lag"] == 1_000
    assert (answers[1].body["status"], answers[1].body["reason"]) == (
        "lagging",
        "a source is 1000 records behind the end of a split (limit 999)",
    )


async def test_health_follows_the_job_from_start_to_stop() -> None:
    app = observed_app(10)
    health = HealthCheck(app.name, lambda: app.job)
    assert health().body["status"] == "starting"
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        await wait_until_async(lambda: health().ok, what="ok")
        app.stop()
        answer = health()
        assert (answer.status_code, answer.body["status"]) == (503, "stopping")
    assert health().body["status"] == "starting"  # no job any more (the worker answers with how it ended)


async def test_a_job_waiting_to_restart_is_unhealthy_and_counts_the_restart(tmp_path: Path) -> None:
    failed: list[int] = []

    def flaky(i: int) -> int:
        if not failed:
            failed.append(i)
            raise ValueError("once")
        return i

    app = af.App(
        "flaky",
        state_dir=str(tmp_path / "state"),
        checkpoint_interval=0.05,
        restart_strategy=af.FixedDelayRestart(attempts=1, delay=60),
    )
    app.source(Numbers(10), name="numbers").map(flaky, name="flaky").sink(af.CollectSink(), name="out")
    health = HealthCheck(app.name, lambda: app.job)
    registry = MetricsRegistry()
    register_job_metrics(registry, lambda: app.job)
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        answer = await wait_until_async(
            lambda: (lambda a: a if a.body["status"] == "restarting" else None)(health()), what="restarting"
        )
        assert answer.status_code == 503 and answer.body["restarts"] == 1
        assert answer.body["reason"] == "the job failed and waits to restart from its last checkpoint (restart 1)"
        assert "aioflow_restarts_total 1\n" in registry.render()
        app.stop()  # ends the wait: the job stops
    assert failed == [0]


def _health(worker: ServedWorker) -> tuple[int, dict[str, Any]]:
    status, body = worker.get("/health")
    return status, json.loads(body)


def test_a_worker_answers_health_over_http(tmp_path: Path) -> None:
    worker = ServedWorker(tmp_path, {"N": "100"}, "--http-port", "0")
    try:
        status, body = wait_until(
            lambda: (lambda answer: answer if answer[0] == 200 else None)(_health(worker)), what="/health 200"
        )
        assert body["status"] == "ok" and body["app"] == "observed" and body["job"] == "running"
        assert worker.get("/nowhere")[0] == 404
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.text()
    finally:
        worker.process.kill()


def test_a_lagging_worker_answers_503_with_the_reason(tmp_path: Path) -> None:
    worker = ServedWorker(tmp_path, {"N": "100", "AIOFLOW_HEALTH_MAX_WATERMARK_LAG": "60"}, "--http-port", "0")
    try:
        status, body = wait_until(
            lambda: (lambda answer: answer if answer[1].get("status") == "lagging" else None)(_health(worker)),
            what="/health lagging",
        )
        assert status == 503 and "source 'numbers' subtask 0: the watermark is" in body["reason"]
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.text()
    finally:
        worker.process.kill()
