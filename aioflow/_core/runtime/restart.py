"""Restart strategies: whether a failed job restarts from its last checkpoint, and when.

A job with checkpoints that fails (a user function raised, a connector lost its
connection) restarts inside the same process: its tasks are rebuilt and resume from the
last completed checkpoint, so nothing committed is lost or duplicated. The strategy is
asked after every failure, with the times of the failures it counts so far, and answers
with a delay or ``None`` (give up: the job fails). An error that repeats on every attempt
thus exhausts the strategy and ends the worker, instead of looping forever. An error
that a restart would certainly repeat is never retried (:func:`repeats_on_restart`): the
job fails at once, with a message that says what to do.

:class:`FixedDelayRestart` and :class:`ExponentialBackoffRestart` count failures in a
row: a job that then ran ``reset_after`` seconds (default 60) without failing starts the
count afresh, so a worker that fails once a week never runs out of attempts, while one
that fails on the same record after every restart soon does. :class:`FailureRateRestart`
counts the failures within a sliding interval instead.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from aioflow._core.errors import BadRecordError, PipelineError, RefusedError, StateError, check_number

__all__ = [
    "DEFAULT_RESTART_STRATEGY",
    "ExponentialBackoffRestart",
    "FailureRateRestart",
    "FixedDelayRestart",
    "NoRestart",
    "RestartStrategy",
    "repeats_on_restart",
]


class RestartStrategy:
    """Base of the restart strategies; pass one as ``App(restart_strategy=...)``."""

    #: Seconds a job must run without failing for the failures counted so far to be
    #: forgotten (``None``: never).
    reset_after: float | None = None

    def backoff(self, failures: list[float]) -> float | None:
        """Seconds to wait before restarting, or ``None`` to fail the job. ``failures`` are
        the monotonic times of the failures counted so far, the current one last."""
        raise PipelineError(f"{type(self).__name__} must implement backoff(failures)")


@dataclass(frozen=True)
class NoRestart(RestartStrategy):
    """Never restart: the first failure fails the job."""

    def backoff(self, failures: list[float]) -> float | None:
        return None


@dataclass(frozen=True)
class FixedDelayRestart(RestartStrategy):
    """Up to ``attempts`` restarts in a row, ``delay`` seconds apart. A run of
    ``reset_after`` seconds without a failure starts the count afresh."""

    attempts: int = 3
    delay: float = 1.0
    reset_after: float | None = 60.0

    def __post_init__(self) -> None:
        check_number(self.attempts, "FixedDelayRestart attempts", integer=True, minimum=1)
        check_number(self.delay, "FixedDelayRestart delay")
        check_number(self.reset_after, f"{type(self).__name__} reset_after", optional=True)

    def backoff(self, failures: list[float]) -> float | None:
        return self.delay if len(failures) <= self.attempts else None


@dataclass(frozen=True)
class ExponentialBackoffRestart(RestartStrategy):
    """Up to ``attempts`` restarts in a row, waiting ``initial_delay`` seconds, then
    ``multiplier`` times longer each time, at most ``max_delay``. A run of ``reset_after``
    seconds without a failure starts the count (and the delay) afresh."""

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    reset_after: float | None = 60.0

    def __post_init__(self) -> None:
        check_number(self.attempts, "ExponentialBackoffRestart attempts", integer=True, minimum=1)
        check_number(self.initial_delay, "ExponentialBackoffRestart initial_delay")
        check_number(self.max_delay, "ExponentialBackoffRestart max_delay")
        check_number(self.multiplier, "ExponentialBackoffRestart multiplier", minimum=1)
        check_number(self.reset_after, f"{type(self).__name__} reset_after", optional=True)

    def backoff(self, failures: list[float]) -> float | None:
        if len(failures) > self.attempts:
            return None
        return min(self.initial_delay * self.multiplier ** (len(failures) - 1), self.max_delay)


@dataclass(frozen=True)
class FailureRateRestart(RestartStrategy):
    """Restart after ``delay`` unless more than ``max_failures`` failures happened
    within the last ``interval`` seconds."""

    max_failures: int = 3
    interval: float = 60.0
    delay: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.max_failures, "FailureRateRestart max_failures", integer=True, minimum=1)
        check_number(self.interval, "FailureRateRestart interval")
        check_number(self.delay, "FailureRateRestart delay")

    def backoff(self, failures: list[float]) -> float | None:
        recent = [t for t in failures if t > failures[-1] - self.interval]
        return self.delay if len(recent) <= self.max_failures else None


#: What a job with checkpoints uses unless told otherwise: a few attempts, with backoff.
DEFAULT_RESTART_STRATEGY = ExponentialBackoffRestart(attempts=3, initial_delay=1.0, max_delay=30.0)


#: A full disk, a quota reached, a file past its size limit: the write fails again after a
#: restart, until someone makes room.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def repeats_on_restart(error: BaseException) -> bool:
    """Whether a restart would fail the same way, so the strategy must not retry it:

    - :class:`RefusedError`: the worker will not run as configured (corrupt or foreign
      state, an exactly-once Kafka sink on brokers without transactions, ...);
    - :class:`StateError`: a value the serializer refuses, a state declared anew with
      another serializer;
    - :class:`BadRecordError`: a record that cannot be decoded under ``on_error="fail"``
      is read again after the restart;
    - :class:`PipelineError`: the pipeline uses aioflow wrongly (keyed state on a stream
      that is not keyed, a timer at a time that is not an int), which the same code repeats;
    - an ``OSError`` of a full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``).

    ``error`` and the errors it was raised from (``__cause__``) are looked at, so an
    :class:`OperatorError` wrapping a sink's full disk counts.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (RefusedError, StateError, BadRecordError, PipelineError)):
            return True
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return True
        current = current.__cause__
    return False
