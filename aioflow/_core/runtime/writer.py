"""The sending end of an edge between tasks: partitions batches onto channels.

A :class:`RecordWriter` re-batches what its task emits, so a filter that keeps one
record in a hundred still sends full batches, and sends a buffer when it reaches the
batch size, when the linger time has passed, or before the task waits for input.
Control events flush the buffers first, so they stay in order with the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aioflow._core.errors import OperatorError
from aioflow._core.runtime.calls import check_hashable, describe_error, map_into
from aioflow._core.runtime.channel import Channel
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.keygroups import key_group, subtask_for_key_group
from aioflow._core.runtime.partitioning import FORWARD, GLOBAL, HASH, REBALANCE

__all__ = ["RecordWriter"]

_ROUTE_CACHE_LIMIT = 200_000


class _Buffer:
    """Column lists being filled for one target channel."""

    __slots__ = ("keys", "since", "timestamps", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.timestamps: list[int | None] | None = None
        self.keys: list[Any] | None = None
        self.since = 0.0

    def add(self, values: list[Any], timestamps: Sequence[int | None] | None, keys: list[Any] | None) -> None:
        if not self.values:
            self.since = time.monotonic()
        n_before = len(self.values)
        self.values.extend(values)
        if timestamps is not None:
            if self.timestamps is None:
                self.timestamps = [None] * n_before
            self.timestamps.extend(timestamps)
        elif self.timestamps is not None:
            self.timestamps.extend([None] * len(values))
        if keys is not None:
            if self.keys is None:
                self.keys = [None] * n_before
            self.keys.extend(keys)
        elif self.keys is not None:
            self.keys.extend([None] * len(values))

    def take(self) -> Batch:
        batch = Batch(self.values, self.timestamps, self.keys)
        self.values = []
        self.timestamps = None
        self.keys = None
        return batch


class RecordWriter:
    """Partitions batches over the channels of one outgoing edge."""

    def __init__(
        self,
        channels: list[Channel],
        partitioning: str,
        *,
        batch_size: int,
        linger: float,
        key_selector: Callable[[Any], Any] | None = None,
        max_parallelism: int = 128,
        subtask_index: int = 0,
        target: str = "",
    ) -> None:
        self.channels = channels
        self.partitioning = partitioning
        self.batch_size = batch_size
        self.linger = linger
        self._key_selector = key_selector
        self._max_parallelism = max_parallelism
        self._next = subtask_index % len(channels)  # rebalance: start at a different channel per sender
        per_channel = partitioning == HASH
        self._buffers = [_Buffer() for _ in channels] if per_channel else [_Buffer()]
        self._routes: dict[Any, int] = {}
        self._target = target

    def _keys(self, values: list[Any]) -> list[Any]:
        keys: list[Any] = []
        fn = self._key_selector
        assert fn is not None
        try:
            map_into(keys, fn, values)
        except Exception as exc:
            raise OperatorError(self._target, "key selector " + describe_error(exc, fn), values[len(keys)]) from exc
        check_hashable(keys, fn, values, self._target)
        return keys

    async def emit(self, batch: Batch) -> None:
        if self.partitioning == HASH and len(self.channels) > 1:
            await self._emit_hashed(batch)
            return
        buffer = self._buffers[0]
        keys = None
        if self.partitioning == HASH:  # one channel: no routing, but the receiver wants the keys
            keys = self._keys(batch.values)
        if not buffer.values and len(batch.values) >= self.batch_size:
            await self._send(0, Batch(batch.values, batch.timestamps, keys))
            return
        buffer.add(batch.values, batch.timestamps, keys)
        if len(buffer.values) >= self.batch_size:
            await self._send(0, buffer.take())

    async def _emit_hashed(self, batch: Batch) -> None:
        values = batch.values
        keys = self._keys(values)
        routes = self._routes
        if len(routes) > _ROUTE_CACHE_LIMIT:
            routes.clear()
        n = len(self.channels)
        parts_v: list[list[Any]] = [[] for _ in range(n)]
        parts_k: list[list[Any]] = [[] for _ in range(n)]
        stamps = batch.timestamps
        parts_t: list[list[int | None]] = [[] for _ in range(n)] if stamps is not None else []
        for i, key in enumerate(keys):
            target = routes.get(key)
            if target is None:
                target = routes[key] = subtask_for_key_group(
                    key_group(key, self._max_parallelism), self._max_parallelism, n
                )
            parts_v[target].append(values[i])
            parts_k[target].append(key)
            if stamps is not None:
                parts_t[target].append(stamps[i])
        for target in range(n):
            if parts_v[target]:
                buffer = self._buffers[target]
                buffer.add(parts_v[target], parts_t[target] if stamps is not None else None, parts_k[target])
                if len(buffer.values) >= self.batch_size:
                    await self._send(target, buffer.take())

    async def _send(self, buffer_index: int, batch: Batch) -> None:
        partitioning = self.partitioning
        if partitioning in (HASH, FORWARD) or len(self.channels) == 1:
            await self.channels[buffer_index].send(batch)
        elif partitioning == REBALANCE:
            target = self._next
            self._next = (target + 1) % len(self.channels)
            await self.channels[target].send(batch)
        elif partitioning == GLOBAL:
            await self.channels[0].send(batch)
        else:  # BROADCAST: the column lists are shared, never mutated
            for channel in self.channels:
                await channel.send(batch)

    async def flush(self, *, only_expired: bool = False) -> None:
        """Send buffered records; with ``only_expired``, only buffers older than the linger time."""
        now = time.monotonic() if only_expired else 0.0
        for index, buffer in enumerate(self._buffers):
            if buffer.values and (not only_expired or now - buffer.since >= self.linger):
                await self._send(index, buffer.take())

    async def broadcast_event(self, event: Any) -> None:
        """Send a control event to every channel, after the records buffered before it."""
        await self.flush()
        for channel in self.channels:
            await channel.send(event)
