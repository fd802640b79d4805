"""A replayable source that pauses at a given position until a condition holds: how a test
makes sure checkpoints complete (or a savepoint is taken) while windows are open, by
waiting on a condition instead of on timing luck.

It is used in-process (``tests/windows``) and by the job of ``window_job.py`` that the
recovery tests run as a real worker (its folder is on that worker's ``sys.path``), so it
imports nothing but aioflow and the standard library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

import aioflow as af


def checkpoint_manifests(state_dir: str | Path) -> list[dict[str, Any]]:
    """The manifests of the checkpoints a state directory's default checkpoint storage
    holds (``checkpoints/<job id>/chk-<id>/_manifest``; the last few are retained), oldest
    first, as dicts. Ones being written or removed are skipped."""
    found = []
    for path in (Path(state_dir) / "checkpoints").glob("*/chk-*/_manifest"):
        try:
            found.append(json.loads(path.read_bytes())["body"])
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda body: body["checkpoint_id"])


def completed_checkpoints(state_dir: str | Path, kind: str = "checkpoint") -> int:
    """How many ``kind`` checkpoints (``"checkpoint"``, ``"savepoint"``, ``"final"``) the
    state directory's checkpoint storage holds (the last few are retained)."""
    return sum(body.get("kind") == kind for body in checkpoint_manifests(state_dir))


class GatedSource(af.Source):
    """``records`` in batches of ``batch`` (the same batches in every run, so watermarks
    follow the data identically and a replay gives the same output). At position
    ``pause_at`` it reads nothing until ``until()`` is true (it fails the job after
    ``patience`` seconds), then calls ``then()`` once; with ``hold`` it never reads on (a
    stop with a savepoint ends the job there).

    ``paused`` says the pause happened (``until()`` held); ``restored_at`` is the position a
    restore gave the reader (``None``: it started afresh).
    """

    default_name = "gated"
    replayable = True
    max_parallelism = 1

    def __init__(
        self,
        records: Sequence[Any],
        *,
        batch: int = 50,
        pause_at: int | None = None,
        until: Callable[[], bool] | None = None,
        then: Callable[[], None] | None = None,
        hold: bool = False,
        patience: float = 15.0,
    ) -> None:
        if pause_at is not None and pause_at % batch:
            raise ValueError(
                "pause_at must be a multiple of batch, so that runs with and without a pause read the same batches"
            )
        self.records = records
        self.batch = batch
        self.pause_at = pause_at
        self.until = until
        self.then = then
        self.hold = hold
        self.patience = patience
        self.paused = False
        self.restored_at: int | None = None

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _GatedReader(self)


class _GatedReader(af.SourceReader):
    def __init__(self, source: GatedSource) -> None:
        self.source = source
        self.at = 0
        self._passed = False
        self._deadline: float | None = None

    def restore(self, position: Any) -> None:
        self.at = self.source.restored_at = int(position)

    def position(self) -> int:
        return self.at

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        source = self.source
        if self.at == source.pause_at and not self._passed:
            if not self.source.paused:
                if source.until is not None and not source.until():
                    if self._deadline is None:
                        self._deadline = time.monotonic() + source.patience
                    if time.monotonic() > self._deadline:
                        raise AssertionError(
                            f"the source waited {source.patience} s at position {self.at} for {source.until!r} in vain"
                        )
                    await anyio.sleep(min(timeout, 0.005))
                    return af.SourceBatch([])
                source.paused = True
                if source.then is not None:
                    source.then()
            if source.hold:
                await anyio.sleep(min(timeout, 0.01))
                return af.SourceBatch([])
            self._passed = True
        if self.at >= len(source.records):
            return None
        end = min(self.at + min(source.batch, max_records), len(source.records))
        if source.pause_at is not None and self.at < source.pause_at:
            end = min(end, source.pause_at)
        records = list(source.records[self.at : end])
        self.at = end
        return af.SourceBatch(records)


def at_least_checkpoints(state_dir: str | Path, count: int = 2) -> Callable[[], bool]:
    """``until=`` for :class:`GatedSource`: ``count`` periodic checkpoints completed."""

    def done() -> bool:
        return completed_checkpoints(state_dir) >= count

    done.__qualname__ = f"{count} completed checkpoints in {state_dir}"
    return done
