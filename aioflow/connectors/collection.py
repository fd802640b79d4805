"""Sources from Python objects: ``from_iterable`` (sync or async iterables)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from itertools import islice
from typing import Any

from aioflow.connectors.base import Source, SourceBatch, SourceReader

__all__ = ["from_iterable"]


class _IterableReader(SourceReader):
    def __init__(self, iterable: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._iterable = iterable
        self._iterator: Iterator[Any] | None = None
        self._aiterator: AsyncIterator[Any] | None = None
        self._consumed = 0
        self._skip = 0

    async def open(self) -> None:
        if isinstance(self._iterable, AsyncIterable):
            self._aiterator = aiter(self._iterable)
            for _ in range(self._skip):
                await anext(self._aiterator)
        else:
            self._iterator = iter(self._iterable)
            for _ in islice(self._iterator, self._skip):
                pass
        self._consumed = self._skip

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._iterator is not None:
            records = list(islice(self._iterator, max_records))
        else:
            assert self._aiterator is not None
            records = []
            async for record in self._aiterator:
                records.append(record)
                if len(records) >= max_records:
                    break
        if not records:
            return None
        self._consumed += len(records)
        return SourceBatch(records)

    def position(self) -> int:
        return self._consumed

    def restore(self, position: Any) -> None:
        self._skip = int(position)

    def statistics(self) -> dict[str, int]:
        return {"records_read": self._consumed}


class _IterableSource(Source):
    default_name = "from_iterable"
    max_parallelism = 1

    def __init__(self, iterable: Iterable[Any] | AsyncIterable[Any]) -> None:
        if not isinstance(iterable, (Iterable, AsyncIterable)) or isinstance(iterable, (str, bytes)):
            raise TypeError(f"from_iterable() takes an iterable or async iterable, got {type(iterable).__name__}")
        self.iterable = iterable

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        return _IterableReader(self.iterable)


def from_iterable(iterable: Iterable[Any] | AsyncIterable[Any]) -> Source:
    """A bounded source over the items of ``iterable`` (sync or async), in order.

    The iterable is read lazily, a batch at a time; a list can be run again, a generator
    only once. Runs with parallelism 1.
    """
    return _IterableSource(iterable)
