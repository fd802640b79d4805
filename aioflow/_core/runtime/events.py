"""What travels through channels: batches of records and in-band control events.

A :class:`Batch` holds records column-wise: one list of values and, in parallel, one
list of event timestamps (``None`` when the stream has no event time) and one list of
keys (``None`` unless the batch was produced by a ``key_by``). Column lists are never
mutated after a batch is built, so fan-out can share them without copying.

Control events (:class:`Watermark`, :class:`WatermarkStatus`, :class:`CheckpointBarrier`,
:class:`EndOfInput`) are
sent in the same channels as batches, so they stay in order with the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeGuard

__all__ = [
    "MAX_WATERMARK",
    "MIN_WATERMARK",
    "Batch",
    "CheckpointBarrier",
    "EndOfInput",
    "Watermark",
    "WatermarkStatus",
    "stamped",
]

MIN_WATERMARK: Final = -(2**63)
MAX_WATERMARK: Final = 2**63 - 1


class Batch:
    """Records moving together between operators and tasks."""

    __slots__ = ("keys", "timestamps", "values")

    def __init__(
        self, values: list[Any], timestamps: Sequence[int | None] | None = None, keys: list[Any] | None = None
    ) -> None:
        self.values = values
        self.timestamps = timestamps
        self.keys = keys

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Batch({len(self.values)} records)"


def stamped(timestamps: Sequence[int | None] | None) -> TypeGuard[Sequence[int]]:
    """Every record of a batch has an event timestamp (what event-time operators need)."""
    return timestamps is not None and None not in timestamps


class Watermark:
    """Event time has advanced to ``timestamp``: no record with a smaller timestamp follows."""

    __slots__ = ("timestamp",)

    def __init__(self, timestamp: int) -> None:
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Watermark({self.timestamp})"


class WatermarkStatus:
    """An input became idle (its watermark no longer holds back the minimum) or active again."""

    __slots__ = ("idle",)

    def __init__(self, idle: bool) -> None:
        self.idle = idle

    def __repr__(self) -> str:
        return f"WatermarkStatus(idle={self.idle})"


class CheckpointBarrier:
    """Everything before it belongs to checkpoint ``checkpoint_id``, everything after to the next."""

    __slots__ = ("checkpoint_id",)

    def __init__(self, checkpoint_id: int) -> None:
        self.checkpoint_id = checkpoint_id

    def __repr__(self) -> str:
        return f"CheckpointBarrier({self.checkpoint_id})"


class EndOfInput:
    """The sending subtask has finished; nothing more comes on this channel."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfInput()"


END_OF_INPUT: Final = EndOfInput()
