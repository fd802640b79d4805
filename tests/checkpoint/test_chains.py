"""Checkpoint storage holds, per key group, a chain of sections from which the state can be
rebuilt anywhere: deltas on deltas, full copies now and then, several operators' sections
interleaved in one key group. Rebuilding a working copy from any retained checkpoint gives
exactly the state the job had at that checkpoint."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

import aioflow._core.checkpoint.coordinator as coordinator_module
from aioflow._core.checkpoint.coordinator import CheckpointCoordinator
from aioflow._core.checkpoint.restore import open_state
from aioflow._core.checkpoint.storage import LocalCheckpointStorage
from aioflow._core.runtime.keygroups import key_group_range
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.lmdb import LmdbStore, StateDirLock


class Task:
    """What the coordinator needs of a task: a real backend, and completions to record."""

    is_source = False

    def __init__(self, name: str, index: int, backend: LmdbBackend) -> None:
        self.env = SimpleNamespace(
            task_name=name,
            subtask_index=index,
            max_parallelism=128,
            state_backend=backend,
            final_state_checkpointed=False,
        )
        self.operators: list[Any] = []

    def trigger(self, checkpoint_id: int, *, stop: bool = False) -> None:
        pass

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        pass


def _snapshot(tables: dict[str, Any]) -> dict[str, dict[Any, Any]]:
    return {name: {key: table.get(key) for key in table.keys_in()} for name, table in tables.items()}


async def _checkpoint(coordinator: CheckpointCoordinator, tasks: list[Task]) -> int:
    async with anyio.create_task_group() as group:
        taken: list[Any] = []

        async def take() -> None:
            taken.append(await coordinator.checkpoint())

        group.start_soon(take)
        while coordinator.pending is None:
            await anyio.sleep(0)
        checkpoint_id = coordinator.pending.checkpoint_id
        for task in tasks:
            coordinator.acknowledge(task, checkpoint_id, {}, coordinator.persist(task, checkpoint_id))
    assert taken[0] is not None
    return checkpoint_id


@pytest.mark.parametrize("cache_size", [100_000, 50], ids=["cached", "evicting"])
async def test_every_retained_checkpoint_rebuilds_the_state_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_size: int
) -> None:
    monkeypatch.setattr(coordinator_module, "MAX_CHAIN", 3)  # key groups are written whole often
    monkeypatch.setattr(coordinator_module, "REBASES_PER_CHECKPOINT", 16)
    state_dir, storage = tmp_path / "state", LocalCheckpointStorage(tmp_path / "state" / "checkpoints")
    store = LmdbStore(state_dir)
    # One operator at parallelism 1 (all key groups), another at 2: both keep state in every key group.
    whole = LmdbBackend(store, key_groups=range(128), cache_size=cache_size)
    halves = [LmdbBackend(store, key_groups=key_group_range(i, 128, 2), cache_size=cache_size) for i in range(2)]
    tables = {
        "counts": whole.table("counts", "n", "value"),
        "lists-0": halves[0].table("lists", "l", "list"),
        "lists-1": halves[1].table("lists", "l", "list"),
    }
    timers = whole.timers("counts", "timers")
    tasks = [Task("a", 0, whole), Task("b", 0, halves[0]), Task("b", 1, halves[1])]
    coordinator = CheckpointCoordinator(
        store,
        storage,
        tasks,
        identity={"app": "chains", "job_id": "j"},
        max_parallelism=128,
        interval=None,
        retained=20,
    )
    rng = random.Random(7)
    expected: dict[int, Any] = {}
    for _ in range(12):
        for _ in range(300):
            key = f"k{rng.randrange(400)}"
            if rng.random() < 0.1:
                tables["counts"].delete(key)
            else:
                tables["counts"].put(key, rng.randrange(1000))
            half = 0 if whole._group_of(key) in halves[0].key_groups else 1  # the subtask the key belongs to
            listed = tables[f"lists-{half}"]
            listed.put(key, [*(listed.get(key) or []), rng.randrange(10)])
            timers.add(rng.randrange(10_000), key)
        for backend in (whole, *halves):
            backend.trim()
        checkpoint_id = await _checkpoint(coordinator, tasks)
        expected[checkpoint_id] = _snapshot(tables)
    assert max(len(chain) for chain in coordinator.last.key_groups.values()) >= 2
    assert any(section.full for chain in coordinator.last.key_groups.values() for section in chain)
    store.close()

    for checkpoint_id in storage.checkpoints():
        rebuilt = tmp_path / f"rebuilt-{checkpoint_id}"
        lock = StateDirLock(rebuilt)
        state = open_state(
            rebuilt, lock, LocalCheckpointStorage(rebuilt / "checkpoints"), "chains", 128, storage.folder(checkpoint_id)
        )
        try:
            again = [
                LmdbBackend(state.store, key_groups=range(128), completed=checkpoint_id),
                LmdbBackend(state.store, key_groups=key_group_range(0, 128, 2), completed=checkpoint_id),
                LmdbBackend(state.store, key_groups=key_group_range(1, 128, 2), completed=checkpoint_id),
            ]
            found = {
                "counts": again[0].table("counts", "n", "value"),
                "lists-0": again[1].table("lists", "l", "list"),
                "lists-1": again[2].table("lists", "l", "list"),
            }
            assert _snapshot(found) == expected[checkpoint_id], f"checkpoint {checkpoint_id}"
        finally:
            state.store.close()
            lock.release()
