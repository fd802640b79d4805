"""Record writers re-batch and partition; key groups are stable across processes."""

from __future__ import annotations

import subprocess
import sys

from aioflow._core.runtime.channel import Channel, InputGate
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.keygroups import key_group, stable_hash
from aioflow._core.runtime.partitioning import BROADCAST, FORWARD, HASH, REBALANCE
from aioflow._core.runtime.writer import RecordWriter


def _drain(channel: Channel) -> list[object]:
    gate = InputGate([channel])
    out = []
    while channel.statistics().buffered:
        out.append(gate.receive_nowait()[1])
    return out


async def test_small_batches_are_rebatched_up_to_batch_size() -> None:
    channel = Channel(100)
    writer = RecordWriter([channel], FORWARD, batch_size=4, linger=1.0)
    for i in range(10):
        await writer.emit(Batch([i], [i * 10]))
    sent = _drain(channel)
    assert [b.values for b in sent] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sent[0].timestamps == [0, 10, 20, 30]
    await writer.flush()
    assert [b.values for b in _drain(channel)] == [[8, 9]]


async def test_hash_partitioning_sends_each_key_to_one_channel() -> None:
    channels = [Channel(100) for _ in range(3)]
    writer = RecordWriter(channels, HASH, batch_size=1000, linger=1.0, key_selector=lambda v: v % 7)
    await writer.emit(Batch(list(range(700))))
    await writer.flush()
    seen: dict[int, int] = {}
    for index, channel in enumerate(channels):
        for batch in _drain(channel):
            assert batch.keys == [v % 7 for v in batch.values]
            for key in batch.keys:
                assert seen.setdefault(key, index) == index
    assert sorted(seen) == list(range(7))


async def test_rebalance_rotates_and_broadcast_copies() -> None:
    channels = [Channel(10) for _ in range(2)]
    writer = RecordWriter(channels, REBALANCE, batch_size=2, linger=1.0)
    await writer.emit(Batch([1, 2, 3, 4]))
    await writer.emit(Batch([5, 6]))
    assert [b.values for b in _drain(channels[0])] == [[1, 2, 3, 4]]
    assert [b.values for b in _drain(channels[1])] == [[5, 6]]
    writer = RecordWriter(channels, BROADCAST, batch_size=2, linger=1.0)
    await writer.emit(Batch([7, 8]))
    assert [b.values for b in _drain(channels[0])] == [[7, 8]]
    assert [b.values for b in _drain(channels[1])] == [[7, 8]]


async def test_control_events_follow_buffered_records() -> None:
    channel = Channel(10)
    writer = RecordWriter([channel], FORWARD, batch_size=100, linger=1.0)
    await writer.emit(Batch([1, 2]))
    await writer.broadcast_event("marker")
    sent = _drain(channel)
    assert sent[0].values == [1, 2]
    assert sent[1] == "marker"


def test_stable_hash_does_not_depend_on_the_process() -> None:
    code = (
        "from aioflow._core.runtime.keygroups import stable_hash; print(stable_hash('user-1'), stable_hash(('a', 7)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1
    assert runs.pop().split() == [str(stable_hash("user-1")), str(stable_hash(("a", 7)))]
    assert 0 <= key_group("user-1", 128) < 128
