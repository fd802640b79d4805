"""Checkpoint metadata: what a completed checkpoint holds besides keyed state, with a checksum.

The metadata names the checkpoint (id, kind, time, duration, size) and carries every
operator's non-keyed state per subtask (source positions, watermarks, pending sink
transactions). It is stored in the state store in the same transaction as the keyed
state, and as ``checkpoints/chk-<id>.json`` beside it for people and tools. Restore
verifies the SHA-256; a mismatch is refused as corrupt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from aioflow.errors import StateError

__all__ = ["CheckpointMetadata"]


@dataclass
class CheckpointMetadata:
    checkpoint_id: int
    kind: str  # "checkpoint", "savepoint", or "final" (taken when every task had finished)
    time_ms: int
    duration_ms: int = 0
    size_bytes: int = 0
    #: Key groups of the job (0: not recorded); keyed state cannot be split another way.
    max_parallelism: int = 0
    #: operator name -> one state per subtask (index = subtask), as snapshot_state returned it.
    operators: dict[str, list[Any]] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = orjson.dumps(
            {
                "checkpoint_id": self.checkpoint_id,
                "kind": self.kind,
                "time_ms": self.time_ms,
                "duration_ms": self.duration_ms,
                "size_bytes": self.size_bytes,
                "max_parallelism": self.max_parallelism,
                "operators": self.operators,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return orjson.dumps({"sha256": hashlib.sha256(body).hexdigest(), "body": orjson.Fragment(body)})

    @classmethod
    def decode(cls, data: bytes, where: str) -> CheckpointMetadata:
        """Parse and verify; a damaged record raises :class:`StateError` saying it is corrupt."""
        try:
            outer = orjson.loads(data)
            body = orjson.dumps(outer["body"], option=orjson.OPT_SORT_KEYS)
            if hashlib.sha256(body).hexdigest() != outer["sha256"]:
                raise ValueError("checksum mismatch")
            fields = outer["body"]
            return cls(
                checkpoint_id=int(fields["checkpoint_id"]),
                kind=str(fields["kind"]),
                time_ms=int(fields["time_ms"]),
                duration_ms=int(fields["duration_ms"]),
                size_bytes=int(fields["size_bytes"]),
                max_parallelism=int(fields.get("max_parallelism", 0)),
                operators=dict(fields["operators"]),
            )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise StateError(f"{where}: the checkpoint metadata is corrupt ({exc}); refusing to restore from it") \
                from exc
