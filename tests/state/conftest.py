"""Fixtures for the state-backend tests: backends over memory and over LMDB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioflow.state.durable import LmdbBackend
from aioflow.state.lmdb import LmdbStore
from aioflow.state.memory import MemoryBackend


class Durable:
    """Opens (and reopens) an LMDB store under one directory, closing what it opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store: LmdbStore | None = None

    def open(self, cache_size: int = 100_000, key_groups: range = range(128), **store_kwargs: object) -> LmdbBackend:
        self.close()
        self.store = LmdbStore(self.path, **store_kwargs)  # type: ignore[arg-type]
        return LmdbBackend(self.store, key_groups=key_groups, max_parallelism=128, cache_size=cache_size)

    def checkpoint(self, backend: MemoryBackend | LmdbBackend, meta: dict[bytes, bytes] | None = None) -> None:
        assert self.store is not None
        self.store.commit(backend.snapshot(1), meta or {}, set())
        backend.confirm(1)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


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
