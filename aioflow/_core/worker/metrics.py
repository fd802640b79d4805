"""A small metrics registry, read when scraped, rendered in Prometheus' text format.

Metrics are *pulled*: a collector is a function that, when ``/metrics`` is scraped, reads
counters the runtime keeps anyway (channel statistics, operator record counts,
checkpoint statistics) and returns :class:`Metric` s. Nothing is pushed from the hot
path, so an idle scraper costs the job nothing.

A failing metric never breaks processing, nor the scrape: each collector runs on its own;
one that raises is left out of that scrape, counted in
``aioflow_metric_errors_total{collector=...}`` and logged, at most once per
``error_log_interval`` seconds per collector.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

__all__ = ["CONTENT_TYPE", "Collector", "Metric", "MetricsRegistry", "render"]

log = structlog.get_logger("aioflow.worker")

#: The media type of what :func:`render` returns (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = dict[str, str]


@dataclass
class Metric:
    """One metric family: a name, its type, a help line and its samples.

    Counter names end in ``_total``; ``samples`` are ``(labels, value)`` pairs.
    """

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: object) -> None:
        """Add a sample; label values are turned into strings."""
        self.samples.append(({key: str(label) for key, label in labels.items()}, value))


#: A collector returns the metrics it reads at scrape time.
Collector = Callable[[], Iterable[Metric]]


class MetricsRegistry:
    """Named collectors, run one by one at each scrape; see the module docstring.

    ``clock`` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(self, *, error_log_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._collectors: dict[str, Collector] = {}
        self._errors: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.error_log_interval = error_log_interval
        self.clock = clock

    def register(self, name: str, collector: Collector) -> None:
        """Add ``collector`` under ``name`` (the ``collector`` label of its errors)."""
        if name in self._collectors:
            raise ValueError(f"a metrics collector named {name!r} is registered already")
        self._collectors[name] = collector

    def collect(self) -> list[Metric]:
        """Every collector's metrics, families of the same name merged; a collector that
        raises is left out (and counted and logged)."""
        families: dict[str, Metric] = {}
        for name, collector in self._collectors.items():
            try:
                metrics = list(collector())
            except Exception as exc:
                self._failed(name, exc)
                continue
            for metric in metrics:
                known = families.get(metric.name)
                if known is None:
                    families[metric.name] = Metric(metric.name, metric.kind, metric.help, list(metric.samples))
                else:
                    known.samples.extend(metric.samples)
        errors = Metric(
            "aioflow_metric_errors_total",
            "counter",
            "Scrapes in which a metrics collector failed (its metrics were left out).",
        )
        for name, count in self._errors.items():
            errors.add(count, collector=name)
        families[errors.name] = errors
        return list(families.values())

    def render(self) -> str:
        """What ``/metrics`` serves: :meth:`collect` in Prometheus' text format."""
        return render(self.collect())

    def _failed(self, name: str, exc: Exception) -> None:
        self._errors[name] = self._errors.get(name, 0) + 1
        now = self.clock()
        last = self._last_logged.get(name)
        if last is not None and now - last < self.error_log_interval:
            self._unlogged[name] = self._unlogged.get(name, 0) + 1
            return
        self._last_logged[name] = now
        log.warning(
            "metrics collection failed: metric left out",
            collector=name,
            error=f"{type(exc).__name__}: {exc}",
            failures_not_logged=self._unlogged.pop(name, 0),
            exc_info=exc,
        )


def render(metrics: Iterable[Metric]) -> str:
    """Metrics in the Prometheus text exposition format (0.0.4)."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            if labels:
                text = ",".join(f'{key}="{_escape_label(label)}"' for key, label in labels.items())
                lines.append(f"{metric.name}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{metric.name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
