"""Fixtures for the state-backend tests: backends over memory and over LMDB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aioflow.state.backend import StateBackend
from aioflow.state.lmdb import LmdbStore


class Durable:
    """Opens (and reopens) an LMDB store under one directory, closing what it opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store: LmdbStore | None = None

    def open(self, cache_size: int = 100_000, key_groups: range = range(128), **store_kwargs: object) -> StateBackend:
        self.close()
        self.store = LmdbStore(self.path, **store_kwargs)  # type: ignore[arg-type]
        return StateBackend(self.store, key_groups=key_groups, max_parallelism=128, cache_size=cache_size)

    def checkpoint(self, backend: StateBackend, meta: dict[bytes, bytes] | None = None) -> None:
        assert self.store is not None
        self.store.commit(backend.snapshot(), meta or {}, set())
        backend.confirm()

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
def make_backend(request: pytest.FixtureRequest, durable: Durable) -> Callable[[], StateBackend]:
    """A backend factory, over memory and over LMDB with a tiny cache (so that ``trim``
    really evicts and reads go to the store)."""
    if request.param == "memory":
        return StateBackend
    return lambda: durable.open(cache_size=2)
