"""The manifest: what a completed checkpoint is, sealed with a SHA-256.

It names the checkpoint (id, kind, time, duration, size) and the job (app name, job id,
``max_parallelism``), carries every operator's non-keyed state per subtask (source
positions, watermarks, pending sink transactions) and the table registry, and says which
sections of which files make up each key group's keyed state: a chain of deltas, each
applied on the one before, starting from a full copy or from nothing. Writing the
manifest is what completes a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aioflow._core.errors import CorruptStateError
from aioflow._core.state.integrity import Damaged, open_document, seal_document

__all__ = ["Manifest", "Section"]


@dataclass(frozen=True)
class Section:
    """One key group's part of a file in checkpoint storage: ``length`` bytes at ``offset``
    of ``file`` (a path relative to the manifest's folder), with their SHA-256, written by
    one subtask for its ``tables`` (ids). ``full``: those tables' whole state in the key
    group (replacing what came before for them), else the changes of one checkpoint.
    Several operators keep state in one key group: a key group's chain interleaves their
    sections, each applying to its own tables."""

    file: str
    offset: int
    length: int
    sha256: str
    records: int
    full: bool
    tables: tuple[int, ...]

    def to_json(self) -> list[Any]:
        return [self.file, self.offset, self.length, self.sha256, self.records, self.full, list(self.tables)]

    @classmethod
    def from_json(cls, data: list[Any]) -> Section:
        file, offset, length, sha256, records, full, tables = data
        return cls(
            str(file),
            int(offset),
            int(length),
            str(sha256),
            int(records),
            bool(full),
            tuple(int(table) for table in tables),
        )

    def replaces(self, other: Section) -> bool:
        """This full section makes ``other`` (earlier in the chain) unnecessary."""
        return self.full and set(other.tables) <= set(self.tables)


@dataclass
class Manifest:
    checkpoint_id: int
    kind: str  # "checkpoint", "savepoint", or "final" (taken when every task had finished)
    time_ms: int
    app: str
    job_id: str
    max_parallelism: int
    duration_ms: int = 0
    #: Bytes of keyed state this checkpoint wrote (its deltas and full copies).
    size_bytes: int = 0
    #: operator name -> one state per subtask (index = subtask), as snapshot_state returned it.
    operators: dict[str, list[Any]] = field(default_factory=dict)
    #: The table registry: ``"operator\\x1fstate" -> {"id", "kind", "serializer"}``.
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: key group -> the sections that make up its state, oldest first.
    key_groups: dict[int, list[Section]] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, str]:
        return {"app": self.app, "job_id": self.job_id}

    def encode(self) -> bytes:
        return seal_document(
            {
                "checkpoint_id": self.checkpoint_id,
                "kind": self.kind,
                "time_ms": self.time_ms,
                "app": self.app,
                "job_id": self.job_id,
                "max_parallelism": self.max_parallelism,
                "duration_ms": self.duration_ms,
                "size_bytes": self.size_bytes,
                "operators": self.operators,
                "tables": self.tables,
                "key_groups": {
                    str(group): [section.to_json() for section in chain]
                    for group, chain in sorted(self.key_groups.items())
                },
            }
        )

    @classmethod
    def decode(cls, data: bytes, where: str) -> Manifest:
        """Parse and verify; a damaged manifest raises :class:`CorruptStateError` naming ``where``."""
        try:
            fields = open_document(data)
            return cls(
                checkpoint_id=int(fields["checkpoint_id"]),
                kind=str(fields["kind"]),
                time_ms=int(fields["time_ms"]),
                app=str(fields["app"]),
                job_id=str(fields["job_id"]),
                max_parallelism=int(fields["max_parallelism"]),
                duration_ms=int(fields["duration_ms"]),
                size_bytes=int(fields["size_bytes"]),
                operators=dict(fields["operators"]),
                tables=dict(fields["tables"]),
                key_groups={
                    int(group): [Section.from_json(section) for section in chain]
                    for group, chain in fields["key_groups"].items()
                },
            )
        except (Damaged, ValueError, KeyError, TypeError) as exc:
            raise CorruptStateError(f"{where}: the checkpoint manifest is damaged ({exc})") from None
