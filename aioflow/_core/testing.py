"""The implementation of :mod:`aioflow.testing` (see its docstring)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, overload

import anyio

from aioflow._core.app import App
from aioflow._core.connectors.base import Sink, Source
from aioflow._core.connectors.sinks import CollectSink
from aioflow._core.errors import PipelineError
from aioflow._core.functions import OutputTag, ProcessFunction
from aioflow._core.graph.logical import Node
from aioflow._core.operators.process import ProcessOperator
from aioflow._core.operators.sink import SinkOperator
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import Output
from aioflow._core.runtime.restart import NoRestart
from aioflow._core.runtime.task import SubtaskEnvironment
from aioflow._core.state.memory import MemoryBackend
from aioflow._core.stream import Stream, instantiate

__all__ = ["SETTINGS", "ProcessFunctionHarness", "replace_sink", "replace_source", "run_collect", "run_collect_async"]


def _app_of(streams: tuple[Stream, ...]) -> App:
    if not streams:
        raise PipelineError("run_collect() needs at least one stream")
    app = streams[0].app
    for stream in streams:
        if not isinstance(stream, Stream) or stream.app is not app:
            raise PipelineError(f"run_collect() takes streams of one app, got {stream!r}")
    return app


#: App settings a test may override for one run.
SETTINGS = (
    "parallelism",
    "max_parallelism",
    "batch_size",
    "linger",
    "channel_capacity",
    "watermark_interval",
    "max_concurrency",
)


#: How a test run keeps state: in memory, whatever the app says.
_IN_MEMORY: dict[str, Any] = {
    "state_dir": None,
    "state_backend": "memory",
    "checkpoint_interval": None,
    "restart_strategy": NoRestart(),
}
_DURABLE = tuple(_IN_MEMORY)


def _overridden(app: App, settings: dict[str, Any]) -> dict[str, Any]:
    """The app's settings with ``settings`` applied, validated as ``App(...)`` does."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise PipelineError(f"run_collect() cannot override {', '.join(unknown)}; it overrides {', '.join(SETTINGS)}")
    checked = App(app.name, **{name: getattr(app, name) for name in SETTINGS} | settings)
    return {name: getattr(checked, name) for name in SETTINGS}


@overload
async def run_collect_async(stream: Stream, /, *, timeout: float | None = 60.0, **settings: Any) -> list[Any]: ...
@overload
async def run_collect_async(
    first: Stream, second: Stream, /, *streams: Stream, timeout: float | None = 60.0, **settings: Any
) -> tuple[list[Any], ...]: ...


async def run_collect_async(
    *streams: Stream, timeout: float | None = 60.0, **settings: Any
) -> list[Any] | tuple[list[Any], ...]:
    """Run the streams' app to completion and return what each stream carried.

    One stream: a list of its records. Several: a tuple of lists, in argument order.
    Collecting sinks run with parallelism 1, so a stream's order is kept. ``timeout``
    (seconds) fails the test instead of hanging on an unbounded source. ``settings``
    override the app's for this run only (any of :data:`SETTINGS`, e.g.
    ``parallelism=4, batch_size=1``), so one pipeline can be tested several ways.
    The run keeps its state in memory, without checkpoints: it never reads or writes the
    app's ``state_dir``, so a test neither resumes nor changes a worker's state.
    """
    app = _app_of(streams)
    saved = {name: getattr(app, name) for name in (*SETTINGS, *_DURABLE)}
    added = len(app.graph)
    sinks = [CollectSink() for _ in streams]
    try:
        for name, value in (_overridden(app, settings) | _IN_MEMORY).items():
            setattr(app, name, value)
        for stream, sink in zip(streams, sinks, strict=True):
            stream.sink(sink, parallelism=1)
        with anyio.fail_after(timeout):
            await app.run_async()
    finally:
        for name, value in saved.items():
            setattr(app, name, value)
        app.graph.truncate(added)
    results = [sink.results for sink in sinks]
    return results[0] if len(results) == 1 else tuple(results)


@overload
def run_collect(stream: Stream, /, *, timeout: float | None = 60.0, **settings: Any) -> list[Any]: ...
@overload
def run_collect(
    first: Stream, second: Stream, /, *streams: Stream, timeout: float | None = 60.0, **settings: Any
) -> tuple[list[Any], ...]: ...


def run_collect(*streams: Stream, timeout: float | None = 60.0, **settings: Any) -> list[Any] | tuple[list[Any], ...]:
    """Blocking form of :func:`run_collect_async`."""
    return anyio.run(lambda: run_collect_async(*streams, timeout=timeout, **settings), backend="asyncio")


def replace_source(app: App, name: str, source: Source) -> None:
    """Make the source operator ``name`` read from ``source`` instead (e.g. test data in
    place of a Kafka topic); its timestamps and watermarks stay as declared."""
    _node_named(app, name, "source").source = source


def replace_sink(app: App, name: str, sink: Sink) -> None:
    """Make the sink operator ``name`` write to ``sink`` instead (e.g. a
    :class:`CollectSink` in place of a Kafka topic), so a test runs the whole job, without
    the external system, and checks what reached the sink."""
    node = _node_named(app, name, "sink")
    node.make_operator = lambda: SinkOperator(node.name, sink)


def _node_named(app: App, name: str, kind: str) -> Node:
    """The ``kind`` ("source" or "sink") operator ``name`` of ``app``; fails naming those it has."""
    for node in app.graph.nodes:
        if node.name == name:
            if node.kind != kind:
                raise PipelineError(f"operator {name!r} of app {app.name!r} is not a {kind}")
            return node
    found = [node.name for node in app.graph.nodes if node.kind == kind]
    raise PipelineError(f"app {app.name!r} has no {kind} named {name!r}; its {kind}s are {found}")


class _Recorder(Output):
    def __init__(self) -> None:
        self.records: list[tuple[Any, int | None]] = []

    async def process(self, batch: Batch) -> None:
        timestamps = batch.timestamps if batch.timestamps is not None else [None] * len(batch.values)
        self.records.extend(zip(batch.values, timestamps, strict=True))


class _Sides(dict[str, Output]):
    """Side outputs that record every tag, whether or not anyone asked for it yet."""

    def get(self, tag: str, default: Any = None) -> _Recorder:
        recorder = super().get(tag)
        if not isinstance(recorder, _Recorder):  # only recorders are put here
            recorder = self[tag] = _Recorder()
        return recorder


def _process_operator_of(stream: Stream) -> ProcessOperator:
    """A fresh operator of the ``process`` node behind ``stream``, as a subtask makes it."""
    node = stream.node
    operator = node.make_operator() if node.kind == "process" else None
    if not isinstance(operator, ProcessOperator):
        raise PipelineError(
            f"ProcessFunctionHarness takes a process function or a stream returned by process(); "
            f"{node.name!r} is a {node.kind} operator, not a process operator"
        )
    return operator


class ProcessFunctionHarness:
    """Runs one (Keyed)ProcessFunction outside a job: feed records and watermarks, read
    outputs as ``(value, timestamp)`` pairs. Timers, keyed state and side outputs work as
    in a job. Use it as ``async with``: ``open`` runs on entry, ``close`` on exit.

    ``function`` is a process function (class, instance or plain function), or the stream
    a ``process`` call returned: after ``@keyed.process class Inactivity(...)`` the name
    ``Inactivity`` is that stream. A stream gives a fresh function object, as each
    subtask of a job gets, and, when it was keyed, its key selector; ``key_selector=``
    still wins when given."""

    def __init__(self, function: Any, *, key_selector: Callable[[Any], Any] | None = None) -> None:
        if isinstance(function, Stream):
            self._operator = _process_operator_of(function)
            if key_selector is not None:
                self._operator.key_selector = key_selector
        else:
            self._operator = ProcessOperator(
                getattr(function, "__name__", type(function).__name__),
                instantiate(function, ProcessFunction)(),
                key_selector,
            )
        self._main = _Recorder()
        self._operator.out = self._main
        self._sides = _Sides()
        self._operator.side_outputs = self._sides

    async def __aenter__(self) -> ProcessFunctionHarness:
        env = SubtaskEnvironment("harness", 0, 1, 128, 1024, MemoryBackend())
        await self._operator.open(env)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._operator.close()

    @property
    def output(self) -> list[tuple[Any, int | None]]:
        """Main outputs so far, as ``(value, timestamp)``."""
        return self._main.records

    def side_output(self, tag: OutputTag) -> list[tuple[Any, int | None]]:
        """What was sent to side output ``tag`` so far."""
        return self._sides.get(tag.name).records

    async def process_element(self, value: Any, timestamp: int | None = None) -> None:
        """One record with event time ``timestamp``."""
        await self.process_elements([value], [timestamp] if timestamp is not None else None)

    async def process_elements(self, values: list[Any], timestamps: list[int] | None = None) -> None:
        """Several records at once, as one batch."""
        await self._operator.process(Batch(list(values), list(timestamps) if timestamps is not None else None))

    async def process_watermark(self, timestamp: int) -> None:
        """Advance event time: event-time timers up to ``timestamp`` fire."""
        await self._operator.process_watermark(timestamp)

    async def fire_processing_time(self, now: int) -> None:
        """Fire the processing-time timers due at wall-clock time ``now`` (epoch ms)."""
        await self._operator.on_processing_time(now)
