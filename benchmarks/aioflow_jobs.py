"""The aioflow side of each workload: the pipelines the harness measures.

Each ``prepare`` function builds its app (not timed) and returns the ``run`` callable the
harness times: ``app.run()`` plus reading the sink's result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

from workloads import (
    BATCH_SCORING,
    BOUND_MS,
    CAPACITY,
    INACTIVITY_MS,
    SESSION_GAP_MS,
    SINK_SLEEP_S,
    SLIDE_MS,
    WINDOW_MS,
    JobInput,
    Prepare,
    Run,
    Unavailable,
    digits_data,
    digits_records,
    generated_records,
    http_call,
    http_client,
    keyed_records,
    simulated_call,
    start_http_service,
)

import aioflow as af

__all__ = ["JOBS", "warm_up", "window_sums"]


def warm_up() -> None:
    """Run a one-record app. The first ``App.run()`` of a process imports anyio's asyncio
    backend (about 20 ms); this keeps that one-off cost out of the timing, as the floor's
    imports are."""
    app = af.App("warm_up")
    app.source(af.from_iterable([0])).sink(af.CollectSink())
    app.run()


class _CountWriter(af.SinkWriter):
    def __init__(self, sink: CountSink) -> None:
        self._sink = sink

    async def write(self, values: list[Any]) -> None:
        self._sink.count += len(values)


class _SleepyCountWriter(_CountWriter):
    async def write(self, values: list[Any]) -> None:
        self._sink.count += len(values)
        await asyncio.sleep(SINK_SLEEP_S)


class CountSink(af.Sink):
    """Counts the records it receives: one addition per batch."""

    writer_class: type[_CountWriter] = _CountWriter

    def __init__(self) -> None:
        self.count = 0

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return self.writer_class(self)


class SlowCountSink(CountSink):
    """A :class:`CountSink` that sleeps ``SINK_SLEEP_S`` per batch: a slow downstream."""

    writer_class = _SleepyCountWriter


def _app(name: str, job: JobInput, **options: Any) -> af.App:
    """The app of a workload, with ``job``'s state configuration: the memory backend, or
    keyed state in LMDB under ``job.state_dir`` (with a checkpoint every
    ``job.checkpoint_interval`` seconds, if given)."""
    if job.state_backend == "lmdb":
        if job.state_dir is None:
            raise ValueError("the lmdb state backend needs a state directory")
        options.update(state_backend="lmdb", state_dir=str(job.state_dir), checkpoint_interval=job.checkpoint_interval)
    return af.App(name, **options)


def _run_counting(app: af.App, sink: CountSink) -> Run:
    def run() -> int:
        app.run()
        return sink.count

    return run


def _run_collecting(app: af.App, sink: af.CollectSink) -> Run:
    def run() -> list[Any]:
        app.run()
        return sink.results

    return run


def w1(job: JobInput) -> Run:
    """Parse, filter, map, count."""
    app = _app("w1", job)
    counter = CountSink()
    events = app.source(af.read_jsonl(job.file))
    events.filter(lambda e: e["amount"] > 10).map(lambda e: (e["user"], e["amount"] * 1.1)).sink(counter)
    return _run_counting(app, counter)


def backpressure(job: JobInput) -> Run:
    """A fast generator into a sink that sleeps per batch: memory must stay bounded."""
    app = _app("backpressure", job)
    sink = SlowCountSink()
    app.source(af.from_iterable(generated_records(job.events))).sink(sink)
    return _run_counting(app, sink)


class SumCount(af.AggregateFunction[dict[str, Any], tuple[int, float], tuple[int, float]]):
    """(count, sum of amount) of a window's events."""

    def create_accumulator(self) -> tuple[int, float]:
        return (0, 0.0)

    def add(self, value: dict[str, Any], accumulator: tuple[int, float]) -> tuple[int, float]:
        return (accumulator[0] + 1, accumulator[1] + value["amount"])

    def get_result(self, accumulator: tuple[int, float]) -> tuple[int, float]:
        return accumulator

    def merge(self, a: tuple[int, float], b: tuple[int, float]) -> tuple[int, float]:
        return (a[0] + b[0], a[1] + b[1])


def _require_windows(assigner: str = "TumblingEventTimeWindows") -> None:
    """Raise :class:`Unavailable` unless aioflow has the window API a window workload is
    written against: ``assigner``, ``ProcessWindowFunction`` and ``KeyedStream.window``."""
    missing = [name for name in (assigner, "ProcessWindowFunction") if not hasattr(af, name)]
    if not hasattr(af.KeyedStream, "window"):
        missing.append("KeyedStream.window")
    if missing:
        raise Unavailable(f"aioflow {af.__version__} has no {', '.join(missing)}")


def window_sums(events: af.Stream) -> af.Stream:
    """w2's pipeline after its source: key by user, 10 s tumbling event-time windows,
    ``(user, window_start, count, sum of amount)`` per window and user. The ``kafka``
    workload runs it too."""
    _require_windows()

    # Defined here: the base class exists only in aioflow versions with windows.
    class WithStart(af.ProcessWindowFunction):
        def process(self, key: str, context: Any, elements: Iterable[tuple[int, float]]) -> Iterator[Any]:
            for count, total in elements:
                yield (key, context.window.start, count, total)

    per_user = events.key_by(lambda e: e["user"])
    windows = per_user.window(af.TumblingEventTimeWindows(WINDOW_MS))
    return windows.aggregate(SumCount(), window_function=WithStart())


def _timed_events(app: af.App, job: JobInput) -> af.Stream:
    """The events file as a source with event time ``ts`` and a ``BOUND_MS`` bounded
    out-of-orderness watermark (emitted periodically, the default: no event is late, so
    the window workloads' output does not depend on when watermarks come)."""
    return app.source(
        af.read_jsonl(job.file), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(BOUND_MS)
    )


def w2(job: JobInput) -> Run:
    """10 s tumbling event-time windows per user: (user, window_start, count, sum)."""
    _require_windows()
    app = _app("w2", job)
    results = af.CollectSink()
    window_sums(_timed_events(app, job)).sink(results)
    return _run_collecting(app, results)


def sliding(job: JobInput) -> Run:
    """10 s windows sliding by 2 s per user: (user, window_start, count, sum). Each event is
    in five windows; what the window operator does about that (panes or not) is measured."""
    _require_windows("SlidingEventTimeWindows")

    class WithStart(af.ProcessWindowFunction):
        def process(self, key: str, context: Any, elements: Iterable[tuple[int, float]]) -> Iterator[Any]:
            for count, total in elements:
                yield (key, context.window.start, count, total)

    app = _app("sliding", job)
    results = af.CollectSink()
    per_user = _timed_events(app, job).key_by(lambda e: e["user"])
    per_user.window(af.SlidingEventTimeWindows(WINDOW_MS, SLIDE_MS)).aggregate(
        SumCount(), window_function=WithStart()
    ).sink(results)
    return _run_collecting(app, results)


def session(job: JobInput) -> Run:
    """Event-time session windows per user (gap ``SESSION_GAP_MS``): (user, session_start,
    session_end, count, sum). Merging windows: the generic path of the window operator, with
    the open sessions of every user in keyed state."""
    _require_windows("EventTimeSessionWindows")

    class WithBounds(af.ProcessWindowFunction):
        def process(self, key: str, context: Any, elements: Iterable[tuple[int, float]]) -> Iterator[Any]:
            for count, total in elements:
                yield (key, context.window.start, context.window.end, count, total)

    app = _app("session", job)
    results = af.CollectSink()
    per_user = _timed_events(app, job).key_by(lambda e: e["user"])
    per_user.window(af.EventTimeSessionWindows(SESSION_GAP_MS)).aggregate(
        SumCount(), window_function=WithBounds()
    ).sink(results)
    return _run_collecting(app, results)


class Inactivity(af.KeyedProcessFunction):
    """Running count per user; emits ``(user, count)`` and forgets the user once it has
    been inactive for ``INACTIVITY_MS`` of event time."""

    def open(self, ctx: af.OperatorContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.last_ts = ctx.value_state("last_ts")

    def process_element(self, value: dict[str, Any], ctx: af.OperatorContext) -> Iterator[Any]:
        timestamp = ctx.timestamp  # never None: the source assigns event time
        self.count.update(self.count.value() + 1)
        self.last_ts.update(timestamp)
        ctx.timer_service.register_event_time_timer(timestamp + INACTIVITY_MS)  # type: ignore[operator]
        yield from ()

    def on_timer(self, timestamp: int, ctx: af.OperatorContext) -> Iterator[Any]:
        last_ts = self.last_ts.value()
        if last_ts is not None and timestamp == last_ts + INACTIVITY_MS:
            yield (ctx.key, self.count.value())
            self.count.clear()
            self.last_ts.clear()


def w3(job: JobInput) -> Run:
    """Keyed process function with keyed state and event-time timers.

    The output depends on when watermarks come (see the README), so the source emits one
    after every batch (``watermark_interval=0``), as the floor does after every chunk.
    """
    app = _app("w3", job, watermark_interval=0)
    results = af.CollectSink()
    events = app.source(
        af.read_jsonl(job.file), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(BOUND_MS)
    )
    events.key_by(lambda e: e["user"]).process(Inactivity).sink(results)
    return _run_collecting(app, results)


def async_io(job: JobInput) -> Run:
    """Each record awaits ``simulated_call`` (10 ms) after ``key_by``: an ``async def`` map,
    the keyed async function of the async processing issue."""
    app = _app("async_io", job)
    results = af.CollectSink()
    app.source(af.from_iterable(keyed_records(job.events))).key_by(lambda r: r["key"]).map(simulated_call).sink(results)
    return _run_collecting(app, results)


def _map_async(name: str, ordered: bool) -> Prepare:
    def prepare(job: JobInput) -> Run:
        """Each record awaits ``simulated_call`` through ``map_async``, ``CAPACITY`` at once."""
        app = _app(name, job)
        results = af.CollectSink()
        app.source(af.from_iterable(keyed_records(job.events))).map_async(
            simulated_call, capacity=CAPACITY, ordered=ordered
        ).sink(results)
        return _run_collecting(app, results)

    return prepare


def async_http(job: JobInput) -> Run:
    """``map_async`` of a real HTTP call (aiohttp) to the local service, ``CAPACITY`` at once."""
    service = start_http_service()
    clients: list[Any] = []

    async def call(record: dict[str, Any]) -> int:
        if not clients:  # made in the job's event loop
            clients.append(http_client(service))
        return await http_call(clients[0], record)

    app = _app("async_http", job)
    results = af.CollectSink()
    app.source(af.from_iterable(keyed_records(job.events))).map_async(call, capacity=CAPACITY).sink(results)
    return _run_collecting(app, results)


def _digits(per_record: bool) -> Prepare:
    def prepare(job: JobInput) -> Run:
        """The digits example's scoring: ``map_batch`` of ``BATCH_SCORING`` images per
        ``predict``, or (``per_record``) one ``predict`` per image in a ``map``."""
        import numpy as np

        model, images = digits_data()
        app = _app("digits", job)
        results = af.CollectSink()
        records = app.source(af.from_iterable(digits_records(images, job.events)))
        if per_record:
            scored = records.map(lambda r: int(model.predict(np.array([r["pixels"]]))[0]))
        else:
            scored = records.map_batch(
                lambda rs: model.predict(np.array([r["pixels"] for r in rs])), max_batch_size=BATCH_SCORING
            )
        scored.sink(results)
        return _run_collecting(app, results)

    return prepare


JOBS: dict[str, Prepare] = {
    "w1": w1,
    "backpressure": backpressure,
    "w2": w2,
    "w3": w3,
    "sliding": sliding,
    "session": session,
    "async_io": async_io,
    "async_io_ordered": _map_async("async_io_ordered", True),
    "async_io_unordered": _map_async("async_io_unordered", False),
    "async_http": async_http,
    "digits": _digits(per_record=False),
    "digits_per_record": _digits(per_record=True),
}
