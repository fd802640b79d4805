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

from aioflow._core.checkpoint.coordinator import CheckpointCoordinator, TaskSnapshot
from aioflow._core.checkpoint.manifest import Section
from aioflow._core.checkpoint.storage import LocalCheckpointStorage
from aioflow._core.state.lmdb import LmdbStore


class Backend:
    durable = False

    def confirm(self, checkpoint_id: int) -> None:
        pass


def _delta(name: str) -> TaskSnapshot:
    """A snapshot that changed key group 5 (in a section named after what it holds)."""
    return TaskSnapshot({5: [Section(f"../shared/{name}", 0, 0, "", 1, False, (1,))]})


class Task:
    """What the coordinator needs of a task; records the completions it is told of."""

    is_source = False

    def __init__(self, index: int) -> None:
        self.env = SimpleNamespace(
            subtask_index=index, max_parallelism=128, state_backend=Backend(), final_state_checkpointed=False
        )
        self.operators: list[Any] = []
        self.completed: list[tuple[int, bool]] = []

    def trigger(self, checkpoint_id: int, *, stop: bool = False) -> None:
        pass

    async def checkpoint_complete(self, checkpoint_id: int) -> None:
        self.completed.append((checkpoint_id, self.env.final_state_checkpointed))


async def test_a_task_that_acknowledged_a_checkpoint_keeps_its_barrier_state_there(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "state")
    ended, running = Task(0), Task(1)
    coordinator = CheckpointCoordinator(
        store,
        LocalCheckpointStorage(tmp_path / "checkpoints"),
        [ended, running],
        identity={"app": "a", "job_id": "j"},
        max_parallelism=128,
        interval=None,
    )
    try:
        async with anyio.create_task_group() as group:
            taken: list[Any] = []

            async def take() -> None:
                taken.append(await coordinator.checkpoint())

            group.start_soon(take)
            with anyio.fail_after(5):
                while coordinator.pending is None:  # until the checkpoint is under way
                    await anyio.sleep(0)
            coordinator.acknowledge(ended, 1, {"source": {"position": 10}}, _delta("at-barrier"))
            coordinator.task_finished(ended, {"source": {"position": 99}}, _delta("final"))  # read on, ended
            coordinator.acknowledge(running, 1, {"window": {"open": 3}}, TaskSnapshot())
        (first,) = taken
        assert first.operators["source"] == [{"position": 10}]  # not the end position
        assert ended.completed == [(1, False)]  # it may not commit what its end pre-committed
        assert [section.file for section in first.key_groups[5]] == ["../shared/at-barrier"]

        coordinator.task_finished(running, {"window": {"open": 0}}, TaskSnapshot())
        final = await coordinator.checkpoint("final")
        assert final is not None
        assert final.operators == {"source": [{"position": 99}], "window": [{"open": 0}]}
        assert ended.completed[-1] == (2, True) and running.completed == [(1, False), (2, True)]
        # the final changes, kept for the checkpoint that holds them
        assert [section.file for section in final.key_groups[5]] == ["../shared/at-barrier", "../shared/final"]
    finally:
        store.close()
