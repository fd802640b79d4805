"""Channels give credit-based backpressure; the input gate merges channels fairly."""

from __future__ import annotations

import anyio
import pytest

from aioflow._core.runtime.channel import Channel, InputGate


async def test_send_nowait_fails_without_credit() -> None:
    channel = Channel(2)
    InputGate([channel])
    channel.send_nowait(1)
    channel.send_nowait(2)
    with pytest.raises(anyio.WouldBlock):
        channel.send_nowait(3)
    assert channel.statistics().buffered == 2


async def test_sender_waits_until_receiver_frees_credit() -> None:
    channel = Channel(1)
    gate = InputGate([channel])
    received: list[int] = []
    async with anyio.create_task_group() as group:

        async def send() -> None:
            for i in range(5):
                await channel.send(i)

        group.start_soon(send)
        await anyio.wait_all_tasks_blocked()
        assert channel.statistics().buffered == 1
        assert channel.statistics().sender_waiting
        for _ in range(5):
            _, message = await gate.receive()
            received.append(message)
    assert received == [0, 1, 2, 3, 4]
    assert channel.statistics().sent == 5


async def test_gate_round_robins_between_channels() -> None:
    a, b = Channel(10), Channel(10)
    gate = InputGate([a, b])
    for i in range(3):
        a.send_nowait(f"a{i}")
        b.send_nowait(f"b{i}")
    order = [gate.receive_nowait() for _ in range(6)]
    assert order == [(0, "a0"), (1, "b0"), (0, "a1"), (1, "b1"), (0, "a2"), (1, "b2")]
    with pytest.raises(anyio.WouldBlock):
        gate.receive_nowait()


async def test_blocked_channel_is_skipped_until_unblocked() -> None:
    a, b = Channel(10), Channel(10)
    gate = InputGate([a, b])
    a.send_nowait("a0")
    b.send_nowait("b0")
    gate.block(0)
    assert gate.receive_nowait() == (1, "b0")
    with pytest.raises(anyio.WouldBlock):
        gate.receive_nowait()
    assert gate.statistics().blocked_channels == 1
    gate.unblock(0)
    assert gate.receive_nowait() == (0, "a0")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel(0)
