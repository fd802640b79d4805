"""A task's final state (reported when it ends) goes only into checkpoints it did not
acknowledge: a checkpoint whose barrier it passed keeps its state at that barrier, as the
other tasks' states there are from that barrier too. Otherwise a restore from that
checkpoint would mix a source's end position with the state of a task that had not seen
the records since the barrier (records lost), and an exactly-once sink would commit its
end-of-input transaction with a checkpoint that replays those records (duplicates)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio

from aioflow.checkpoint.coordinator import CheckpointCoordinator
from aioflow.state.lmdb import LmdbStore


class Backend:
    def spilled_keys(self) -> set[bytes]:
        return set()

    def confirm(self, checkpoint_id: int) -> None:
        pass


class Task:
    """What the coordinator needs of a task; records the completions it is told of."""

    is_source = False

    def __init__(self, index: int) -> None:
        self.env = SimpleNamespace(subtask_index=index, max_parallelism=128, state_backend=Backend(),
                                   final_state_checkpointed=False)
        self.operators: list[Any] = []
        self.completed: list[tuple[int, bool]] = []

    def trigger(self, checkpoint_id: int, *, stop: bool = False) -> None:
        pass

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        self.completed.append((checkpoint_id, self.env.final_state_checkpointed))


async def test_a_task_that_acknowledged_a_checkpoint_keeps_its_barrier_state_there(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "state")
    ended, running = Task(0), Task(1)
    coordinator = CheckpointCoordinator(store, [ended, running], interval=None)
    try:
        async with anyio.create_task_group() as group:
            taken: list[Any] = []

            async def take() -> None:
                taken.append(await coordinator.checkpoint())

            group.start_soon(take)
            with anyio.fail_after(5):
                while coordinator.pending is None:  # until the checkpoint is under way
                    await anyio.sleep(0)
            coordinator.acknowledge(ended, 1, {"source": {"position": 10}}, [(b"k", b"at-barrier")])
            coordinator.task_finished(ended, {"source": {"position": 99}}, [(b"k", b"final")])  # read on, ended
            coordinator.acknowledge(running, 1, {"window": {"open": 3}}, [])
        (first,) = taken
        assert first.operators["source"] == [{"position": 10}]  # not the end position
        assert ended.completed == [(1, False)]  # it may not commit what its end pre-committed
        assert store.get(b"k") == b"at-barrier"

        coordinator.task_finished(running, {"window": {"open": 0}}, [])
        final = await coordinator.checkpoint("final")
        assert final is not None
        assert final.operators == {"source": [{"position": 99}], "window": [{"open": 0}]}
        assert ended.completed[-1] == (2, True) and running.completed == [(1, False), (2, True)]
        assert store.get(b"k") == b"final"  # the final writes, kept for the checkpoint that holds them
    finally:
        store.close()
