"""Bounded, credit-based channels between subtasks and the input gate that reads them.

A :class:`Channel` connects one sending subtask to one receiving subtask. Its capacity is
the receiver's credit: the number of messages (batches or control events) it will buffer.
A sender with no credit left waits in :meth:`Channel.send`, which is how backpressure
travels upstream until it reaches a source, which then stops reading. Memory is bounded
by ``channels × capacity × batch size`` whatever the input rate.

An :class:`InputGate` merges all channels feeding one subtask. It hands out messages
channel by channel in arrival order, and lets the task block single channels (needed
for checkpoint barrier alignment) without blocking the others.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = ["Channel", "ChannelStatistics", "InputGate", "InputGateStatistics"]


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of one channel, for metrics and debugging."""

    buffered: int
    capacity: int
    sent: int
    sender_waiting: bool
    #: Total seconds the sender spent waiting for credit (a wait under way included).
    backpressured_seconds: float


class Channel:
    """A bounded FIFO of messages from one sender to one receiver."""

    __slots__ = (
        "_buffer",
        "_capacity",
        "_gate",
        "_index",
        "_send_waiter",
        "_sent",
        "_waited",
        "_waiting_since",
        "name",
    )

    def __init__(self, capacity: int, name: str = "") -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be at least 1, got {capacity}")
        self._buffer: deque[Any] = deque()
        self._capacity = capacity
        self._send_waiter: anyio.Event | None = None
        self._gate: InputGate | None = None
        self._index = 0
        self._sent = 0
        self._waited = 0.0
        self._waiting_since: float | None = None  # perf_counter() when the sender began to wait
        self.name = name

    def _attach(self, gate: InputGate, index: int) -> None:
        self._gate = gate
        self._index = index

    def send_nowait(self, message: Any) -> None:
        """Append ``message``; raises :class:`anyio.WouldBlock` when the receiver has no credit left."""
        if len(self._buffer) >= self._capacity:
            raise anyio.WouldBlock
        self._push(message)

    async def send(self, message: Any) -> None:
        """Append ``message``, first waiting for credit if the buffer is full."""
        if len(self._buffer) >= self._capacity:
            self._waiting_since = started = time.perf_counter()
            try:
                while len(self._buffer) >= self._capacity:
                    self._send_waiter = waiter = anyio.Event()
                    await waiter.wait()
            finally:
                self._waiting_since = None
                self._waited += time.perf_counter() - started
        self._push(message)

    def _push(self, message: Any) -> None:
        buffer = self._buffer
        buffer.append(message)
        self._sent += 1
        if len(buffer) == 1 and self._gate is not None:
            self._gate._notify(self._index)

    def _pop(self) -> Any:
        message = self._buffer.popleft()
        waiter = self._send_waiter
        if waiter is not None:
            self._send_waiter = None
            waiter.set()
        return message

    def statistics(self) -> ChannelStatistics:
        since = self._waiting_since
        return ChannelStatistics(
            buffered=len(self._buffer),
            capacity=self._capacity,
            sent=self._sent,
            sender_waiting=self._send_waiter is not None,
            backpressured_seconds=self._waited + (time.perf_counter() - since if since is not None else 0.0),
        )


@dataclass(frozen=True, slots=True)
class InputGateStatistics:
    channels: int
    buffered: int
    blocked_channels: int
    #: Total seconds the receiving task waited with every channel empty.
    idle_seconds: float


class InputGate:
    """All input channels of one subtask, read as one stream of ``(channel_index, message)``."""

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        self._available: deque[int] = deque()
        self._queued = [False] * len(channels)
        self._blocked = [False] * len(channels)
        self._waiter: anyio.Event | None = None
        self._idle = 0.0
        for index, channel in enumerate(channels):
            channel._attach(self, index)
            if channel._buffer:
                self._notify(index)

    def _notify(self, index: int) -> None:
        if not self._queued[index] and not self._blocked[index]:
            self._queued[index] = True
            self._available.append(index)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                waiter.set()

    def receive_nowait(self) -> tuple[int, Any]:
        """The next message from any unblocked channel; raises :class:`anyio.WouldBlock` if none."""
        available = self._available
        if not available:
            raise anyio.WouldBlock
        index = available.popleft()
        channel = self.channels[index]
        message = channel._pop()
        if channel._buffer:
            available.append(index)  # round-robin: the channel goes to the back of the line
        else:
            self._queued[index] = False
        return index, message

    async def receive(self) -> tuple[int, Any]:
        """The next message, waiting until some unblocked channel has one."""
        while not self._available:
            started = time.perf_counter()
            self._waiter = waiter = anyio.Event()
            try:
                await waiter.wait()
            finally:
                self._waiter = None
                self._idle += time.perf_counter() - started
        return self.receive_nowait()

    def block(self, index: int) -> None:
        """Stop handing out messages from channel ``index`` until :meth:`unblock`."""
        self._blocked[index] = True
        if self._queued[index]:
            self._queued[index] = False
            self._available.remove(index)

    def unblock(self, index: int) -> None:
        self._blocked[index] = False
        if self.channels[index]._buffer:
            self._notify(index)

    def statistics(self) -> InputGateStatistics:
        return InputGateStatistics(
            channels=len(self.channels),
            buffered=sum(len(c._buffer) for c in self.channels),
            blocked_channels=sum(self._blocked),
            idle_seconds=self._idle,
        )
