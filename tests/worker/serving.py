"""A job to observe, and an ``aioflow run`` worker that serves ``/health`` and ``/metrics``.

The job reads ``n`` numbers from a source that then stays open without ending (an
unbounded source gone quiet), so a test can read its metrics once every record went
through, while it still runs. The source runs at parallelism 1, the rest at the app's.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from recovery.jobs import Worker

import aioflow as af

TESTS = Path(__file__).resolve().parent.parent


class Numbers(af.Source):
    """0, 1, ..., n - 1, then nothing more, without ending. ``lag()`` reports what is
    left of a one-split "topic" ``numbers:0`` (or raises, with ``lag_fails``)."""

    default_name = "numbers"
    bounded = False
    max_parallelism = 1

    def __init__(
        self,
        n: int,
        *,
        lag_metric: str | None = None,
        lag_labels: tuple[str, ...] | None = None,
        lag_fails: bool = False,
    ) -> None:
        self.n = n
        self.lag_fails = lag_fails
        if lag_metric is not None:
            self.lag_metric = lag_metric
        if lag_labels is not None:
            self.lag_labels = lag_labels

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return NumbersReader(self)


class NumbersReader(af.SourceReader):
    def __init__(self, source: Numbers) -> None:
        self.source = source
        self.next = 0

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch:
        if self.next >= self.source.n:
            await anyio.sleep(timeout)
            return af.SourceBatch([])
        end = min(self.source.n, self.next + max_records)
        records = list(range(self.next, end))
        self.next = end
        return af.SourceBatch(records)

    def position(self) -> int:
        return self.next

    def restore(self, position: Any) -> None:
        self.next = int(position)

    def lag(self) -> dict[str, int]:
        if self.source.lag_fails:
            raise RuntimeError("the broker did not say")
        return {"numbers:0": self.source.n - self.next}


def observed_app(n: int = 1000, *, parallelism: int = 2, source: Numbers | None = None, **settings: Any) -> af.App:
    """numbers -> evens (filter) -> key_by -> tens (map) -> out (a CollectSink): three
    tasks, the source's at parallelism 1 (``Numbers`` has one split)."""
    app = af.App("observed", parallelism=parallelism, **settings)
    numbers = app.source(
        source or Numbers(n), name="numbers", timestamps=lambda i: i, watermarks=af.MonotonousTimestamps()
    )
    evens = numbers.filter(lambda i: i % 2 == 0, name="evens")
    evens.key_by(lambda i: i % 10).map(lambda i: i * 10, name="tens").sink(af.CollectSink(), name="out")
    return app


JOB = """
import os
from worker.serving import observed_app

app = observed_app(int(os.environ.get("N", "1000")))
"""


class ServedWorker(Worker):
    """``aioflow run`` of the observed job in ``folder`` (``N`` numbers), logging JSON to
    ``folder/worker.log``; pass ``--http-port 0`` (or ``AIOFLOW_HTTP_PORT=0``) to serve."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str) -> None:
        (folder / "job.py").write_text(JOB)
        path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        super().__init__(folder, {"PYTHONPATH": path, **env}, *args)
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the worker logged in ``http server started``."""
        if self._port is None:
            assert self.wait_for("http server started"), self.text()
            for line in self.text().splitlines():
                if '"http server started"' in line:
                    self._port = int(json.loads(line)["port"])
                    break
        assert self._port is not None
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        """``GET path``: the status and the body."""
        return get(self.port, path)


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """``GET http://host:port/path``: the status and the body (also for 4xx and 5xx)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format: samples per metric name, checking that every family has
    its HELP and TYPE lines first."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge"), line
            assert kind != "counter" or name.endswith("_total"), line
            typed.add(name)
            samples.setdefault(name, [])
            continue
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert name in typed, f"{name} has no TYPE line"
        samples[name].append((dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def value(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that have ``labels``."""
    return sum(v for found, v in metrics.get(name, []) if all(found.get(k) == w for k, w in labels.items()))


def wait_until(condition: Callable[[], Any], seconds: float = 60, what: str = "the condition") -> Any:
    """Poll ``condition()`` until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.02)


async def wait_until_async(condition: Callable[[], Any], seconds: float = 30, what: str = "the condition") -> Any:
    """:func:`wait_until` inside the event loop that runs the job."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        await anyio.sleep(0.01)
