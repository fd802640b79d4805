"""Metrics: the registry and its text format, what a running job exports, and `/metrics`
of a real `aioflow run` worker."""

from __future__ import annotations

import math
import re
import signal
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from worker.serving import Numbers, ServedWorker, observed_app, parse_metrics, value, wait_until, wait_until_async

import aioflow as af
from aioflow._core.worker.collectors import register_job_metrics
from aioflow._core.worker.health import HealthCheck
from aioflow._core.worker.metrics import Metric, MetricsRegistry, render

# -- the registry and the text format ------------------------------------------------------------


def test_render_writes_the_prometheus_text_format() -> None:
    records = Metric("aioflow_records_in_total", "counter", "Records in.\nPer operator.")
    records.add(3, operator='say "hi"\\', subtask=0)
    records.add(2.0, operator="line\nbreak", subtask=1)
    lag = Metric("aioflow_watermark_lag_seconds", "gauge", "Lag.")
    lag.add(0.25)
    lag.add(math.inf, source="far")
    lag.add(math.nan, source="unknown")
    assert render([records, lag]) == (
        "# HELP aioflow_records_in_total Records in.\\nPer operator.\n"
        "# TYPE aioflow_records_in_total counter\n"
        'aioflow_records_in_total{operator="say \\"hi\\"\\\\",subtask="0"} 3\n'
        'aioflow_records_in_total{operator="line\\nbreak",subtask="1"} 2\n'
        "# HELP aioflow_watermark_lag_seconds Lag.\n"
        "# TYPE aioflow_watermark_lag_seconds gauge\n"
        "aioflow_watermark_lag_seconds 0.25\n"
        'aioflow_watermark_lag_seconds{source="far"} +Inf\n'
        'aioflow_watermark_lag_seconds{source="unknown"} NaN\n'
    )
    assert render([]) == ""


def test_families_of_one_name_from_several_collectors_are_merged() -> None:
    registry = MetricsRegistry()

    def part(subtask: int) -> Iterable[Metric]:
        metric = Metric("aioflow_x_total", "counter", "X.")
        metric.add(subtask + 10, subtask=subtask)
        return [metric]

    registry.register("a", lambda: part(0))
    registry.register("b", lambda: part(1))
    with pytest.raises(ValueError, match="named 'a' is registered already"):
        registry.register("a", lambda: [])
    text = registry.render()
    assert text.count("# TYPE aioflow_x_total counter") == 1
    metrics = parse_metrics(text)
    assert metrics["aioflow_x_total"] == [({"subtask": "0"}, 10.0), ({"subtask": "1"}, 11.0)]
    assert metrics["aioflow_metric_errors_total"] == []


def test_a_failing_collector_is_left_out_counted_and_logged_at_most_once_per_interval() -> None:
    now = [0.0]
    registry = MetricsRegistry(error_log_interval=60.0, clock=lambda: now[0])

    def good() -> Iterable[Metric]:
        metric = Metric("aioflow_good", "gauge", "Fine.")
        metric.add(1)
        return [metric]

    def broken() -> Iterable[Metric]:
        raise KeyError("gone")

    registry.register("broken", broken)
    registry.register("good", good)
    with capture_logs() as logs:
        for second in (0.0, 1.0, 2.0, 61.0):
            now[0] = second
            metrics = parse_metrics(registry.render())
            assert value(metrics, "aioflow_good") == 1
    assert value(metrics, "aioflow_metric_errors_total", collector="broken") == 4
    failures = [entry for entry in logs if entry["event"] == "metrics collection failed: metric left out"]
    assert [entry["failures_not_logged"] for entry in failures] == [0, 2]
    assert failures[0]["collector"] == "broken" and "KeyError" in failures[0]["error"]


# -- what a running job exports ------------------------------------------------------------------


async def _scraping(app: af.App, check: Any, *extra: tuple[str, Any]) -> None:
    """Run ``app``; once ``check(metrics)`` holds for a scrape, stop it. ``extra``
    collectors are registered too."""
    registry = MetricsRegistry()
    register_job_metrics(registry, lambda: app.job)
    for name, collector in extra:
        registry.register(name, collector)
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        await wait_until_async(lambda: check(parse_metrics(registry.render())), what="the metrics")
        group.cancel_scope.cancel()


async def test_records_in_and_out_are_counted_per_operator_and_subtask() -> None:
    app = observed_app(1000, parallelism=2)
    found: dict[str, Any] = {}

    def check(metrics: dict[str, Any]) -> bool:
        found.update(metrics)
        return value(metrics, "aioflow_records_in_total", operator="out") == 500 and metrics.get(
            "aioflow_watermark_lag_seconds"
        )  # once the first periodic watermark came

    await _scraping(app, check)
    records_in = {(labels["operator"], labels["subtask"]): v for labels, v in found["aioflow_records_in_total"]}
    records_out = {(labels["operator"], labels["subtask"]): v for labels, v in found["aioflow_records_out_total"]}
    assert (
        set(records_in)
        == set(records_out)
        == {("numbers", "0"), *((name, index) for name in ("evens", "tens", "out") for index in ("0", "1"))}
    )

    def total(counts: dict[tuple[str, str], float], operator: str) -> float:
        return sum(v for (name, _), v in counts.items() if name == operator)

    assert [total(records_in, name) for name in ("numbers", "evens", "tens", "out")] == [1000, 1000, 500, 500]
    assert [total(records_out, name) for name in ("numbers", "evens", "tens", "out")] == [1000, 500, 500, 0]
    tasks = {(labels["task"], labels["subtask"]) for labels, _ in found["aioflow_backpressure_seconds_total"]}
    assert tasks == {
        ("task 1 (numbers)", "0"),
        *((f"task {i} ({name})", index) for i, name in ((2, "evens"), (3, "tens")) for index in ("0", "1")),
    }
    ((labels, lag),) = found["aioflow_watermark_lag_seconds"]  # event time 0..999 ms: decades behind
    assert labels == {"source": "numbers", "subtask": "0"} and lag > 1e9
    assert found["aioflow_source_lag"] == [({"source": "numbers", "split": "numbers:0"}, 0.0)]
    assert value(found, "aioflow_restarts_total") == 0
    assert value(found, "aioflow_checkpoints_completed_total") == 0
    assert "aioflow_checkpoint_duration_seconds" not in found  # no checkpoint yet: no last one


async def test_an_output_feeding_several_operators_counts_its_records_out_once() -> None:
    app = af.App("fan-out")
    numbers = app.source(Numbers(300), name="numbers")
    numbers.map(lambda i: i, name="left").sink(af.CollectSink(), name="left-out")
    numbers.map(lambda i: -i, name="right").sink(af.CollectSink(), name="right-out")
    found: dict[str, Any] = {}

    def check(metrics: dict[str, Any]) -> bool:
        found.update(metrics)
        return all(
            value(metrics, "aioflow_records_in_total", operator=name) == 300 for name in ("left-out", "right-out")
        )

    await _scraping(app, check)
    assert value(found, "aioflow_records_out_total", operator="numbers") == 300
    assert value(found, "aioflow_records_in_total", operator="left") == 300
    assert value(found, "aioflow_records_in_total", operator="right") == 300


async def test_a_kafka_source_lag_is_exported_per_topic_and_partition() -> None:
    source = Numbers(10, lag_metric="aioflow_kafka_consumer_lag", lag_labels=("topic", "partition"))
    app = observed_app(source=source)
    await _scraping(
        app,
        lambda metrics: (
            metrics.get("aioflow_kafka_consumer_lag")
            == [({"source": "numbers", "topic": "numbers", "partition": "0"}, 0.0)]
        ),
    )


async def test_time_blocked_waiting_for_credit_is_counted_per_task() -> None:
    class Slow(af.SinkWriter):
        async def write(self, values: list[Any]) -> None:
            await anyio.sleep(0.02)

    class SlowSink(af.Sink):
        def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
            return Slow()

    app = af.App("slow", batch_size=10, channel_capacity=1)
    app.source(Numbers(100_000), name="numbers").key_by(lambda i: i % 3).sink(SlowSink(), name="slow", parallelism=2)
    await _scraping(
        app, lambda metrics: value(metrics, "aioflow_backpressure_seconds_total", task="task 1 (numbers)") > 0.2
    )


async def test_a_failing_metric_never_breaks_processing_nor_the_scrape() -> None:
    app = observed_app(source=Numbers(1000, lag_fails=True))

    def broken() -> Iterable[Metric]:
        raise ZeroDivisionError("a collector bug")

    scrapes: list[dict[str, Any]] = []

    def check(metrics: dict[str, Any]) -> bool:
        scrapes.append(metrics)
        return value(metrics, "aioflow_records_in_total", operator="out") == 500 and len(scrapes) >= 3

    with capture_logs() as logs:
        await _scraping(app, check, ("broken", broken))
    last = scrapes[-1]
    assert value(last, "aioflow_metric_errors_total", collector="broken") == len(scrapes)
    assert value(last, "aioflow_metric_errors_total", collector="source_lag") >= 1
    assert "aioflow_source_lag" not in last and "aioflow_watermark_lag_seconds" in last
    assert len([entry for entry in logs if entry["event"] == "metrics collection failed: metric left out"]) == 2


async def test_health_stays_up_while_a_reader_cannot_tell_its_lag() -> None:
    app = observed_app(source=Numbers(10, lag_fails=True))
    health = HealthCheck(app.name, lambda: app.job)
    await _scraping(
        app, lambda metrics: value(metrics, "aioflow_records_in_total", operator="out") == 5 and health().ok
    )


# -- a real worker ---------------------------------------------------------------------------------


def test_a_worker_serves_its_metrics_over_http(tmp_path: Path) -> None:
    state = tmp_path / "state"
    worker = ServedWorker(
        tmp_path,
        {"N": "1000", "AIOFLOW_STATE_DIR": str(state), "AIOFLOW_CHECKPOINT_INTERVAL": "0.1", "AIOFLOW_HTTP_PORT": "0"},
    )
    try:

        def scraped() -> dict[str, Any] | None:
            status, body = worker.get("/metrics")
            assert status == 200, body
            metrics = parse_metrics(body)
            done = (
                value(metrics, "aioflow_records_in_total", operator="out") == 500
                and value(metrics, "aioflow_checkpoints_completed_total") >= 2
            )
            return metrics if done else None

        metrics = wait_until(scraped, what="500 records out and 2 checkpoints")
        assert value(metrics, "aioflow_records_in_total", operator="numbers") == 1000
        assert value(metrics, "aioflow_records_out_total", operator="evens") == 500
        assert value(metrics, "aioflow_checkpoint_duration_seconds") > 0
        assert value(metrics, "aioflow_checkpoint_size_bytes") >= 0
        assert value(metrics, "aioflow_checkpoint_last_completed_timestamp_seconds") > 1e9
        assert value(metrics, "aioflow_restarts_total") == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.text()
    finally:
        worker.process.kill()
    assert '"job stopped with a savepoint"' in worker.text()
    assert (state / "savepoints").is_dir()  # the environment gave the state directory


async def test_failed_and_retried_calls_of_map_async_are_counted_per_operator() -> None:
    async def half(i: int) -> int:
        await anyio.sleep(0)
        if i % 2:
            raise KeyError(i)
        return i

    app = af.App("calls")
    numbers = app.source(Numbers(10), name="numbers")  # stays open after its 10 numbers
    numbers.map_async(half, on_error="skip", retry=af.RetryPolicy(max_attempts=3, initial_delay=0), name="half").sink(
        af.CollectSink()
    )
    found: dict[str, Any] = {}

    def check(metrics: dict[str, Any]) -> bool:
        found.update(metrics)
        return value(metrics, "aioflow_calls_failed_total", operator="half") == 5

    await _scraping(app, check)
    assert value(found, "aioflow_calls_retried_total", operator="half") == 10  # each odd number: 3 calls


async def test_checkpoint_metrics_read_as_written_and_tell_changes_from_the_full_size(tmp_path: Path) -> None:
    """Durations and times in milliseconds, not ``0.018451249999998254``; a checkpoint of
    a job whose state stopped changing wrote 0 bytes, and the full size says what it holds."""
    app = af.App("sums", parallelism=2, state_dir=str(tmp_path / "state"), checkpoint_interval=0.02)
    numbers = app.source(Numbers(200), name="numbers")
    numbers.key_by(lambda i: i % 10).reduce(lambda a, b: a + b, name="sums").sink(af.CollectSink(), name="out")
    scraped: list[str] = []
    quiet_since: list[float] = []  # checkpoints completed when every record had gone through

    def check(metrics: dict[str, Any]) -> bool:
        if value(metrics, "aioflow_records_in_total", operator="out") < 200:
            return False
        completed = value(metrics, "aioflow_checkpoints_completed_total")
        quiet_since[:] = quiet_since or [completed]
        if completed < quiet_since[0] + 2:  # one after the records, its changes, and one with none
            return False
        scraped.append(registry.render())
        return True

    registry = MetricsRegistry()
    register_job_metrics(registry, lambda: app.job)
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        await wait_until_async(lambda: check(parse_metrics(registry.render())), what="a checkpoint with no changes")
        group.cancel_scope.cancel()

    text = scraped[0]
    metrics = parse_metrics(text)
    assert value(metrics, "aioflow_checkpoint_size_bytes") == 0
    assert value(metrics, "aioflow_checkpoint_full_size_bytes") > 0  # ten keys' sums
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP aioflow_checkpoint_size_bytes ")]
    assert "0 when nothing did" in help_lines[0] and "aioflow_checkpoint_full_size_bytes" in help_lines[0]
    samples = {
        line.split(" ")[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith(("aioflow_checkpoint_", "aioflow_backpressure_seconds_total"))
    }
    assert "aioflow_checkpoint_duration_seconds" in samples and len(samples) >= 5, samples
    for name, rendered in samples.items():
        assert re.fullmatch(r"\d+(\.\d{1,3})?", rendered), f"{name} {rendered}: more digits than milliseconds"
