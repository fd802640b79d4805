"""Helpers for testing pipelines with pytest.

They run the real job, every operator and every sink of the app included; they only add
a :class:`CollectSink` to the streams you want to look at, and remove it afterwards::

    from aioflow.testing import replace_source, run_collect

    def test_big_orders():
        replace_source(app, "orders", af.from_iterable([{"amount": 5}, {"amount": 50}]))
        assert run_collect(big_orders) == [{"amount": 50}]
"""

from __future__ import annotations

from typing import Any

import anyio

from aioflow.app import App
from aioflow.connectors.base import Source
from aioflow.connectors.sinks import CollectSink
from aioflow.errors import PipelineError
from aioflow.stream import Stream

__all__ = ["replace_source", "run_collect", "run_collect_async"]


def _app_of(streams: tuple[Stream, ...]) -> App:
    if not streams:
        raise PipelineError("run_collect() needs at least one stream")
    app = streams[0].app
    for stream in streams:
        if not isinstance(stream, Stream) or stream.app is not app:
            raise PipelineError(f"run_collect() takes streams of one app, got {stream!r}")
    return app


async def run_collect_async(*streams: Stream, timeout: float | None = 60.0) -> Any:
    """Run the streams' app to completion and return what each stream carried.

    One stream: a list of its records. Several: a tuple of lists, in argument order.
    Collecting sinks run with parallelism 1, so a stream's order is kept. ``timeout``
    (seconds) fails the test instead of hanging on an unbounded source.
    """
    app = _app_of(streams)
    added = len(app._nodes)
    sinks = [CollectSink() for _ in streams]
    try:
        for stream, sink in zip(streams, sinks, strict=True):
            stream.sink(sink, parallelism=1)
        with anyio.fail_after(timeout):
            await app.run_async()
    finally:
        for node in app._nodes[added:]:
            app._names.discard(node.name)
        del app._nodes[added:]
    results = [sink.results for sink in sinks]
    return results[0] if len(results) == 1 else tuple(results)


def run_collect(*streams: Stream, timeout: float | None = 60.0) -> Any:
    """Blocking form of :func:`run_collect_async`."""
    return anyio.run(lambda: run_collect_async(*streams, timeout=timeout))


def replace_source(app: App, name: str, source: Source) -> None:
    """Make the source operator ``name`` read from ``source`` instead (e.g. test data in
    place of a Kafka topic); its timestamps and watermarks stay as declared."""
    for node in app._nodes:
        if node.name == name:
            if node.source is None:
                raise PipelineError(f"operator {name!r} of app {app.name!r} is not a source")
            node.source = source
            return
    sources = [node.name for node in app._nodes if node.source is not None]
    raise PipelineError(f"app {app.name!r} has no source named {name!r}; its sources are {sources}")
