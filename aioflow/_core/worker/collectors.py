"""The metrics of a running job, read when ``/metrics`` is scraped.

Each collector reads what the runtime keeps anyway: operators' record counts (added
once per batch), channels' time waiting for credit, source watermarks and readers'
lag, the job's checkpoint statistics and restart count. Collectors take a function that
returns the running :class:`~aioflow._core.runtime.job.Job` (``None`` before it starts), and
export nothing for a job that does not exist yet. docs/deployment.md lists every metric.

Per-subtask counters belong to one attempt of the job: after a restart they start again
from 0, which Prometheus' ``rate()`` and ``increase()`` read as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aioflow._core.operators.async_io import CallingOperator
from aioflow._core.runtime.events import MAX_WATERMARK, MIN_WATERMARK
from aioflow._core.runtime.task import SourceTask
from aioflow._core.time.timers import now_ms
from aioflow._core.worker.metrics import Metric, MetricsRegistry

if TYPE_CHECKING:
    from aioflow._core.runtime.job import Job

__all__ = ["JOB_COLLECTORS", "register_job_metrics", "watermark_lags"]

JobGetter = Callable[[], "Job | None"]

#: Help lines of the lag metrics sources export (``Source.lag_metric``); others get a generic one.
_LAG_HELP = {
    "aioflow_kafka_consumer_lag": "Kafka consumer lag: records between the read position and the end of the "
    "partition (per topic and partition).",
    "aioflow_source_lag": "Records between a source's read position and the end of a split.",
}


def records(job: Job) -> Iterable[Metric]:
    received = Metric(
        "aioflow_records_in_total", "counter", "Records an operator received (read, for a source), per subtask."
    )
    emitted = Metric(
        "aioflow_records_out_total", "counter", "Records an operator emitted, side outputs included, per subtask."
    )
    for task in job.subtasks:
        subtask = task.env.subtask_index
        for operator in task.operators:
            received.add(operator.records_in, operator=operator.name, subtask=subtask)
            emitted.add(operator.records_out, operator=operator.name, subtask=subtask)
    return [received, emitted]


def backpressure(job: Job) -> Iterable[Metric]:
    metric = Metric(
        "aioflow_backpressure_seconds_total",
        "counter",
        "Seconds a task's subtask was blocked sending, waiting for credit from a slower receiver.",
    )
    for task in job.subtasks:
        seconds = sum(
            channel.statistics().backpressured_seconds for writer in task.writers for channel in writer.channels
        )
        metric.add(round(seconds, 3), task=task.env.task_name, subtask=task.env.subtask_index)
    return [metric]


def watermark_lags(job: Job) -> list[tuple[str, int, float]]:
    """``(source, subtask, seconds)`` for each reading source subtask with a watermark:
    how far its watermark is behind the wall clock. Sources without a watermark yet,
    idle or finished ones have none."""
    lags: list[tuple[str, int, float]] = []
    now = now_ms()
    for task in job.subtasks:
        if not isinstance(task, SourceTask) or task.watermarks is None or not task.reading:
            continue
        watermark = task.watermarks.watermark
        if watermark in (MIN_WATERMARK, MAX_WATERMARK) or task.watermarks.idle:
            continue
        lags.append((task.head.name, task.env.subtask_index, (now - watermark) / 1000))
    return lags


def watermark_lag(job: Job) -> Iterable[Metric]:
    metric = Metric(
        "aioflow_watermark_lag_seconds",
        "gauge",
        "Wall clock minus a source subtask's current watermark (event time), in seconds.",
    )
    for source, subtask, seconds in watermark_lags(job):
        metric.add(seconds, source=source, subtask=subtask)
    return [metric]


def source_lag(job: Job) -> Iterable[Metric]:
    families: dict[str, Metric] = {}
    for task in job.subtasks:
        if not isinstance(task, SourceTask) or not task.reading:
            continue
        lag = task.reader.lag()
        if not lag:
            continue
        source = task.source
        name = source.lag_metric
        metric = families.get(name)
        if metric is None:
            metric = families[name] = Metric(name, "gauge", _LAG_HELP.get(name, _LAG_HELP["aioflow_source_lag"]))
        labels = source.lag_labels
        for split, records in lag.items():
            parts = split.rsplit(":", len(labels) - 1) if labels else []
            if len(parts) != len(labels):
                parts = [split, *([""] * (len(labels) - 1))]  # a split name without the colons: all in the first
            metric.add(records, source=task.head.name, **dict(zip(labels, parts)))
    return list(families.values())


def calls(job: Job) -> Iterable[Metric]:
    """What ``map_async`` and ``map_batch`` operators counted."""
    failed = Metric(
        "aioflow_calls_failed_total",
        "counter",
        "Records whose map_async/map_batch call failed for good and were skipped or dead-lettered.",
    )
    retried = Metric(
        "aioflow_calls_retried_total",
        "counter",
        "map_async/map_batch calls made again after a failure or a result retry_if_result refused.",
    )
    for task in job.subtasks:
        for operator in task.operators:
            if isinstance(operator, CallingOperator):
                failed.add(operator.calls_failed, operator=operator.name, subtask=task.env.subtask_index)
                retried.add(operator.calls_retried, operator=operator.name, subtask=task.env.subtask_index)
    return [failed, retried]


def source_statistics(job: Job) -> Iterable[Metric]:
    skipped = Metric(
        "aioflow_source_records_skipped_total",
        "counter",
        "Records a source could not decode and skipped (on_error='skip').",
    )
    dead = Metric(
        "aioflow_source_records_dead_lettered_total",
        "counter",
        "Records a source could not decode and sent to its dead-letter side output.",
    )
    for task in job.subtasks:
        if not isinstance(task, SourceTask):
            continue
        statistics = task.reader.statistics()
        for metric, key in ((skipped, "records_skipped"), (dead, "records_dead_lettered")):
            if key in statistics:
                metric.add(statistics[key], source=task.head.name, subtask=task.env.subtask_index)
    return [skipped, dead]


def checkpoints(job: Job) -> Iterable[Metric]:
    statistics = job.checkpoint_statistics
    completed = Metric(
        "aioflow_checkpoints_completed_total",
        "counter",
        "Checkpoints (savepoints and final checkpoints included) that completed.",
    )
    completed.add(statistics.completed)
    failed = Metric("aioflow_checkpoints_failed_total", "counter", "Checkpoints that failed (timed out).")
    failed.add(statistics.failed)
    metrics = [completed, failed]
    if statistics.last_id is not None:
        duration = Metric(
            "aioflow_checkpoint_duration_seconds",
            "gauge",
            "Seconds the last completed checkpoint took, from its trigger to its commit.",
        )
        duration.add(statistics.last_duration_seconds or 0.0)
        size = Metric(
            "aioflow_checkpoint_size_bytes",
            "gauge",
            "Bytes of keyed-state changes the last completed checkpoint wrote: what changed since the checkpoint "
            "before, 0 when nothing did. The state's size is aioflow_checkpoint_full_size_bytes.",
        )
        size.add(statistics.last_size_bytes or 0)
        full_size = Metric(
            "aioflow_checkpoint_full_size_bytes",
            "gauge",
            "Bytes of keyed state in checkpoint storage that a restore from the last completed checkpoint reads "
            "(its changes and those of the checkpoints before it that it builds on).",
        )
        full_size.add(statistics.last_full_size_bytes or 0)
        at = Metric(
            "aioflow_checkpoint_last_completed_timestamp_seconds",
            "gauge",
            "When the last checkpoint completed (Unix time).",
        )
        at.add(statistics.last_completed_at or 0.0)
        metrics += [duration, size, full_size, at]
    return metrics


def restarts(job: Job) -> Iterable[Metric]:
    metric = Metric("aioflow_restarts_total", "counter", "Restarts of the job after a failure.")
    metric.add(job.restarts)
    return [metric]


#: The collectors of a job's metrics, by name (the ``collector`` label of their errors).
JOB_COLLECTORS: dict[str, Callable[[Job], Iterable[Metric]]] = {
    "records": records,
    "backpressure": backpressure,
    "watermark_lag": watermark_lag,
    "source_lag": source_lag,
    "source_statistics": source_statistics,
    "calls": calls,
    "checkpoints": checkpoints,
    "restarts": restarts,
}


def register_job_metrics(registry: MetricsRegistry, job: JobGetter) -> None:
    """Register every collector of :data:`JOB_COLLECTORS` in ``registry``, reading the job
    ``job()`` returns at each scrape (nothing while it returns ``None``)."""
    for name, collect in JOB_COLLECTORS.items():
        registry.register(name, _reading(job, collect))


def _reading(job: JobGetter, collect: Callable[[Job], Iterable[Metric]]) -> Callable[[], Iterable[Metric]]:
    def collector() -> Iterable[Metric]:
        current = job()
        return [] if current is None else collect(current)

    return collector
