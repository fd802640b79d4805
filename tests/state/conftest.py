"""Fixtures for the state-backend tests: backends over memory and over LMDB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioflow._core.checkpoint.manifest import Manifest
from aioflow._core.checkpoint.restore import open_state
from aioflow._core.checkpoint.storage import LocalCheckpointStorage
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.lmdb import LmdbStore, StateDirLock
from aioflow._core.state.memory import MemoryBackend


class Durable:
    """Opens (and reopens) an LMDB working copy under one directory, with checkpoint storage
    beside it, as a worker does; takes checkpoints as the coordinator does (a backend's
    changes written to storage, a manifest, the working copy told); closes what it opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.storage = LocalCheckpointStorage(path / "checkpoints")
        self.store: LmdbStore | None = None
        self.manifest: Manifest | None = None
        self.identity = {"app": "test", "job_id": "test-job"}

    def open(self, cache_size: int = 100_000, key_groups: range = range(128)) -> LmdbBackend:
        """A backend on the working copy, at the last checkpoint (what changed after it is undone)."""
        self.close()
        self.lock = StateDirLock(self.path)
        state = open_state(self.path, self.lock, LocalCheckpointStorage(self.path / "checkpoints"), "test", 128, None)
        self.store = state.store
        if state.manifest is None:
            state.identity = self.identity
        self.identity, self.manifest = state.identity, state.manifest
        completed = self.manifest.checkpoint_id if self.manifest is not None else 0
        return LmdbBackend(
            self.store, key_groups=key_groups, max_parallelism=128, cache_size=cache_size, completed=completed
        )

    def checkpoint(self, *backends: LmdbBackend) -> Manifest:
        """Checkpoint ``backends`` (one worker's subtasks), as the coordinator does."""
        assert self.store is not None
        storage = LocalCheckpointStorage(self.path / "checkpoints")
        if storage.job() != self.identity:
            storage.start_job(self.identity)
        checkpoint_id = (self.manifest.checkpoint_id if self.manifest is not None else 0) + 1
        chains = {group: list(chain) for group, chain in self.manifest.key_groups.items()} if self.manifest else {}
        for backend in backends:
            sections, _ = storage.write(backend.snapshot(checkpoint_id), full=False, tables=backend.table_ids())
            for group, added in sections.items():
                chains.setdefault(group, []).extend(added)
        manifest = Manifest(
            checkpoint_id,
            "checkpoint",
            0,
            self.identity["app"],
            self.identity["job_id"],
            128,
            tables=self.store.tables(),
            key_groups=chains,
        )
        storage.commit(manifest)
        self.store.complete(checkpoint_id, self.identity, manifest.encode())
        for backend in backends:
            backend.confirm(checkpoint_id)
        self.manifest = manifest
        return manifest

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
            self.lock.release()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Durable]:
    opened = Durable(tmp_path / "state")
    yield opened
    opened.close()


@pytest.fixture(params=["memory", "durable"])
def make_backend(request: pytest.FixtureRequest, durable: Durable) -> Callable[[], MemoryBackend | LmdbBackend]:
    """A backend factory, over memory and over LMDB with a tiny cache (so that ``trim``
    really evicts and reads go to the store)."""
    if request.param == "memory":
        return MemoryBackend
    return lambda: durable.open(cache_size=2)
