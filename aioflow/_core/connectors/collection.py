"""Sources from Python objects: ``from_iterable`` (sync or async iterables, file objects)."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from itertools import islice
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from aioflow._core.connectors.base import Source, SourceBatch, SourceReader
from aioflow._core.errors import PipelineError, StateError

__all__ = ["from_iterable"]


class _IterableReader(SourceReader):
    """Sync iterables are read a batch at a time. An async iterable is drained by a pump
    task into a small buffer, so ``read`` can honour its timeout (and the source keeps
    emitting watermarks and idleness) while the iterable has nothing to give."""

    def __init__(self, iterable: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._iterable = iterable
        self._iterator: Iterator[Any] | None = None
        self._receive: MemoryObjectReceiveStream[Any] | None = None
        self._consumed = 0
        self._skip = 0

    async def open(self) -> None:
        if isinstance(self._iterable, AsyncIterable):
            send, self._receive = anyio.create_memory_object_stream[Any](1024)
            assert self.task_group is not None
            self.task_group.start_soon(self._pump, aiter(self._iterable), send)
        else:
            self._iterator = iter(self._iterable)
            for _ in islice(self._iterator, self._skip):
                pass
        self._consumed = self._skip

    async def _pump(self, iterator: AsyncIterator[Any], send: MemoryObjectSendStream[Any]) -> None:
        async with send:
            skip = self._skip
            async for record in iterator:
                if skip:
                    skip -= 1
                    continue
                await send.send(record)

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._iterator is not None:
            records = list(islice(self._iterator, max_records))
            if not records:
                return None
        else:
            assert self._receive is not None
            records = []
            with anyio.move_on_after(timeout):
                try:
                    records.append(await self._receive.receive())
                except anyio.EndOfStream:
                    return None
            while len(records) < max_records:
                try:
                    records.append(self._receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
        self._consumed += len(records)
        return SourceBatch(records)

    def backlogged_splits(self) -> set[str]:
        """A sync iterable has records until it ends; an async one when its pump has
        buffered some."""
        receive = self._receive
        if receive is None or receive.statistics().current_buffer_used:
            return {""}
        return set()

    def position(self) -> int:
        return self._consumed

    def restore(self, position: Any) -> None:
        self._skip = int(position)

    def statistics(self) -> dict[str, int]:
        return {"records_read": self._consumed}

    async def close(self) -> None:
        if self._receive is not None:
            await self._receive.aclose()  # the pump stops at its next send


_END = object()


class _FileObjectReader(SourceReader):
    """Lines of a file object (``sys.stdin``, a pipe) read by a thread, so a read that
    blocks never blocks the event loop: lines go out as soon as they arrive instead of
    when a batch is full, and a stop request is honoured while the input is quiet. The
    thread waits when :data:`QUEUE_LINES` lines are queued: backpressure."""

    QUEUE_LINES = 8192

    def __init__(self, stream: io.IOBase) -> None:
        self._stream = stream
        self._queue: queue.Queue[Any] = queue.Queue(self.QUEUE_LINES)
        self._consumed = 0
        self._ended = False

    async def open(self) -> None:
        threading.Thread(target=self._pump, name="aioflow-file-object-reader", daemon=True).start()

    def _pump(self) -> None:
        try:
            for line in self._stream:
                self._queue.put(line)
        except BaseException as exc:  # handed to the reader, which raises it in the job
            self._queue.put(exc)
        self._queue.put(_END)

    def _get(self, timeout: float) -> Any:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._ended:
            return None
        records: list[Any] = []
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = await anyio.to_thread.run_sync(self._get, timeout, abandon_on_cancel=True)
            if item is None:
                return SourceBatch(records)
        while True:
            if item is _END:
                self._ended = True
                break
            if isinstance(item, BaseException):
                raise item
            records.append(item)
            if len(records) == max_records:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._consumed += len(records)
        return SourceBatch(records) if records or not self._ended else None

    def backlogged_splits(self) -> set[str]:
        """Lines are waiting when the thread has queued some."""
        return {""} if self._queue.qsize() else set()

    def position(self) -> int:
        return self._consumed

    def statistics(self) -> dict[str, int]:
        return {"records_read": self._consumed}


class _IterableSource(Source):
    default_name = "from_iterable"
    max_parallelism = 1

    def __init__(self, iterable: Iterable[Any] | AsyncIterable[Any]) -> None:
        if not isinstance(iterable, (Iterable, AsyncIterable)) or isinstance(iterable, (str, bytes)):
            raise PipelineError(f"from_iterable() takes an iterable or async iterable, got {type(iterable).__name__}")
        self.iterable = iterable
        self.replayable = not isinstance(iterable, (AsyncIterable, io.IOBase))
        self._used = False

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        iterable = self.iterable
        if self._used and (isinstance(iterable, (Iterator, AsyncIterator, io.IOBase))):
            raise StateError(
                f"from_iterable({type(iterable).__name__}) can be read only once, and the job restarted in this "
                "process would find it used up; give it a list (or another collection), which can be read again"
            )
        self._used = True
        if isinstance(iterable, io.IOBase):
            return _FileObjectReader(iterable)
        return _IterableReader(iterable)


def from_iterable(iterable: Iterable[Any] | AsyncIterable[Any]) -> Source:
    """A bounded source over the items of ``iterable`` (sync or async), in order.

    The iterable is read lazily, a batch at a time; a list can be run again, a generator
    only once. Runs with parallelism 1. A file object (``sys.stdin``, a pipe) gives its
    lines, read by a thread: each goes out as soon as it arrives, and a stop request is
    honoured while the input is quiet. Sync iterables other than file objects are
    replayable: watermarks follow the data, so a rerun gives the same output.
    """
    return _IterableSource(iterable)
