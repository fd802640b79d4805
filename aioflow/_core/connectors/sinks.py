"""Sinks for tests and terminals: :class:`CollectSink` and :class:`PrintSink`."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from aioflow._core.connectors.base import Sink, SinkWriter
from aioflow._core.errors import SinkClosed

__all__ = ["CollectSink", "PrintSink"]


class _CollectWriter(SinkWriter):
    def __init__(self, results: list[Any]) -> None:
        self._results = results

    async def write(self, values: list[Any]) -> None:
        self._results.extend(values)


class CollectSink(Sink):
    """Keeps every record in ``results``, in arrival order (for tests and small jobs).

    With parallelism 1 the order is the stream's order; with more, each subtask's records
    keep their order but subtasks interleave.
    """

    default_name = "collect"

    def __init__(self) -> None:
        self.results: list[Any] = []

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        return _CollectWriter(self.results)

    def __repr__(self) -> str:
        return f"CollectSink({len(self.results)} results)"


class _PrintWriter(SinkWriter):
    def __init__(self, stream: TextIO | None, prefix: str) -> None:
        self._stream = stream
        self._prefix = prefix

    async def write(self, values: list[Any]) -> None:
        stream = self._stream or sys.stdout
        prefix = self._prefix
        try:
            stream.write("".join(f"{prefix}{value}\n" for value in values))
            stream.flush()  # a worker's output shows up as it happens, not when a buffer fills
        except BrokenPipeError:  # `aioflow run ... | head`: the reader has all it wanted
            if stream is sys.stdout:  # nor may Python's own flush at exit complain
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            raise SinkClosed(f"{getattr(stream, 'name', stream)} was closed by its reader") from None


class PrintSink(Sink):
    """Prints each record with ``str()`` on its own line (to stdout unless ``stream`` is
    given). With parallelism above 1, lines start with the subtask number, as in Flink:
    ``2> record``. A pipe closed by its reader (``aioflow run ... | head``) is a normal
    end: the job stops as on a stop signal and exits 0."""

    default_name = "print"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        return _PrintWriter(self.stream, f"{subtask_index + 1}> " if parallelism > 1 else "")
