"""Retrying failed calls with exponential backoff and jitter: :class:`RetryPolicy`."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aioflow._core.errors import PipelineError, check_number

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed call is tried again: a batch an :class:`~aioflow.AsyncBatchSink`
    could not send, a record's call in :meth:`~aioflow.Stream.map_async`.

    A call is made at most ``max_attempts`` times (the first one included: ``1`` means
    never retry). After failed attempt *n* the caller waits ``initial_delay *
    multiplier ** (n - 1)`` seconds, at most ``max_delay``, shortened by a random part of
    up to ``jitter`` of it (``0.1``: up to 10 % shorter), so that subtasks failing together
    do not retry in lockstep. The defaults retry for about half a minute in all.
    """

    max_attempts: int = 10
    initial_delay: float = 0.1
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        check_number(self.max_attempts, "RetryPolicy max_attempts", integer=True, minimum=1)
        check_number(self.initial_delay, "RetryPolicy initial_delay")
        check_number(self.max_delay, "RetryPolicy max_delay")
        check_number(self.multiplier, "RetryPolicy multiplier", minimum=1)
        check_number(self.jitter, "RetryPolicy jitter")
        if self.jitter > 1:
            raise PipelineError(f"RetryPolicy jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first call)."""
        delay = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        return delay * (1 - self.jitter * random.random()) if self.jitter else delay
