"""What ``/health`` answers: is the worker running its job, and caught up enough?

``200`` with ``{"status": "ok", ...}`` while the job runs and none of the limits below is
passed; ``503`` otherwise, with ``status`` saying why and ``reason`` in words:

- ``starting``: the job is not running yet (loading, restoring state).
- ``restarting``: the job failed and waits to restart from its last checkpoint.
- ``stopping``: a stop was requested (a signal); the job drains or takes a savepoint.
- ``finished`` / ``failed`` / ``cancelled``: the job ended; the worker is exiting.
- ``checkpoints_failing``: ``max_checkpoint_failures`` checkpoints in a row failed.
- ``lagging``: a source's watermark is more than ``max_watermark_lag`` seconds behind the
  wall clock, or a source's lag (Kafka consumer lag) is above ``max_source_lag`` records.
  Both limits are off unless set.

The body also carries ``app``, ``job`` (its status), ``restarts``,
``checkpoint_failures`` (in a row) and, when known, ``watermark_lag_seconds`` and
``source_lag`` (the largest ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioflow._core.runtime.task import SourceTask
from aioflow._core.worker.collectors import watermark_lags

if TYPE_CHECKING:
    from aioflow._core.runtime.job import Job

__all__ = ["DEFAULT_MAX_CHECKPOINT_FAILURES", "Health", "HealthCheck"]

#: Checkpoints failing in a row that make a worker unhealthy, by default.
DEFAULT_MAX_CHECKPOINT_FAILURES = 3

_ENDED = {
    "finished": "the job finished; the worker is exiting",
    "failed": "the job failed; the worker is exiting",
    "cancelled": "the job was cancelled; the worker is exiting",
}


@dataclass(frozen=True)
class Health:
    """An answer: ``ok`` (HTTP 200, else 503) and the JSON body."""

    ok: bool
    body: dict[str, Any]

    @property
    def status_code(self) -> int:
        return 200 if self.ok else 503


class HealthCheck:
    """Judges the job ``job()`` returns (``None`` before it exists and after it ended).

    ``app`` names the app in answers. ``ended()`` returns how the job ended (``finished``,
    ``failed`` or ``cancelled``) once the worker knows, else ``None``.
    """

    def __init__(
        self,
        app: str,
        job: Callable[[], Job | None],
        *,
        ended: Callable[[], str | None] = lambda: None,
        max_checkpoint_failures: int = DEFAULT_MAX_CHECKPOINT_FAILURES,
        max_watermark_lag: float | None = None,
        max_source_lag: int | None = None,
    ) -> None:
        self.app = app
        self.job = job
        self.ended = ended
        self.max_checkpoint_failures = max_checkpoint_failures
        self.max_watermark_lag = max_watermark_lag
        self.max_source_lag = max_source_lag

    def __call__(self) -> Health:
        job = self.job()
        body: dict[str, Any] = {"status": "ok", "app": self.app}
        if job is None:
            ended = self.ended()
            if ended is not None:
                return self._unhealthy(body, ended, _ENDED.get(ended, "the job ended"))
            return self._unhealthy(body, "starting", "the job has not started yet")
        status = job.status
        failures = job.checkpoint_statistics.consecutive_failures
        body.update(job=status, restarts=job.restarts, checkpoint_failures=failures)
        try:  # a reader whose lag() fails must not fail the health check (the metrics log it)
            lags = watermark_lags(job)
            source_lag = _largest_source_lag(job)
        except Exception:
            lags, source_lag = [], None
        if lags:
            body["watermark_lag_seconds"] = round(max(seconds for _, _, seconds in lags), 3)
        if source_lag is not None:
            body["source_lag"] = source_lag
        if status == "starting":
            return self._unhealthy(body, "starting", "the job is starting (restoring state, opening its tasks)")
        if status == "restarting":
            return self._unhealthy(
                body,
                "restarting",
                f"the job failed and waits to restart from its last checkpoint (restart {job.restarts})",
            )
        if status == "stopping":
            return self._unhealthy(body, "stopping", "a stop was requested: the job is stopping")
        if status in _ENDED:
            return self._unhealthy(body, status, _ENDED[status])
        if failures >= self.max_checkpoint_failures:
            return self._unhealthy(
                body,
                "checkpoints_failing",
                f"{failures} checkpoints in a row failed (limit {self.max_checkpoint_failures})",
            )
        if self.max_watermark_lag is not None:
            for source, subtask, seconds in lags:
                if seconds > self.max_watermark_lag:
                    return self._unhealthy(
                        body,
                        "lagging",
                        f"source {source!r} subtask {subtask}: the watermark is {seconds:.1f} s "
                        f"behind the wall clock (limit {self.max_watermark_lag:g} s)",
                    )
        if self.max_source_lag is not None and source_lag is not None and source_lag > self.max_source_lag:
            return self._unhealthy(
                body,
                "lagging",
                f"a source is {source_lag} records behind the end of a split (limit {self.max_source_lag})",
            )
        return Health(True, body)

    @staticmethod
    def _unhealthy(body: dict[str, Any], status: str, reason: str) -> Health:
        body["status"] = status
        body["reason"] = reason
        return Health(False, body)


def _largest_source_lag(job: Job) -> int | None:
    largest: int | None = None
    for task in job.subtasks:
        if isinstance(task, SourceTask) and task.reading:
            for records in task.reader.lag().values():
                if largest is None or records > largest:
                    largest = records
    return largest
