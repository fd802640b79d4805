"""Every exception aioflow raises on purpose.

    AioflowError
    ├── PipelineError            the pipeline, or a call of aioflow's API, is wrong: a bad argument to App, a
    │                            Stream method, a window, a connector or a state declaration, an unknown
    │                            keyword, a method a subclass must implement (also a ValueError). Raised while
    │                            building or planning, or when a user function makes the call (declaring
    │                            state, registering a timer): then the cause of an OperatorError
    ├── AppLoadError             ``aioflow run/plan module:attr`` could not load the app: a bad target, a missing
    │                            file, module or attribute, or importing the module raised (its ``__cause__``)
    ├── BadRecordError           a source could not decode a record (names the file and line)
    ├── StateError               state cannot be stored or restored: a value the serializer refuses,
    │                            a disk that is full
    ├── RefusedError             the worker will not run, and restarting cannot help: the command exits
    │   │                        with status 3, says what is wrong and what to do, and touches nothing
    │   ├── CorruptStateError    stored state failed verification: a missing, empty, truncated or damaged
    │   │                        working copy or checkpoint, or one of another job (also a StateError)
    │   ├── IncompatibleStateError   a checkpoint the job cannot resume as it is now: state of operators it
    │   │                        no longer has, a changed window definition (also a StateError)
    │   └── DuplicateWorkerError another worker holds the state directory (also a StateError)
    ├── SinkDeliveryError        an async batching sink could not deliver a batch: a non-retryable
    │                            error, or retryable ones through every attempt (names sink and attempts)
    ├── ConnectorError           a connector cannot use its external system: brokers that cannot be
    │                            reached, a topic that does not exist (names the connector and what)
    ├── SinkClosed               not a failure: a sink writer's destination went away for good (the reader
    │                            of a pipe closed it); the job stops as on a stop signal and ends normally
    ├── StrayCancellation        a ``CancelledError`` escaped user code although nothing cancelled the job:
    │                            the ``__cause__`` of the OperatorError that reports it
    └── OperatorError            user code in an operator raised (names operator and record)
        └── UserFunctionTypeError    user code returned a value of the wrong type

Errors raised by user code are never swallowed: an :class:`OperatorError` keeps the
original exception as ``__cause__``, so its traceback is shown.

A few exceptions stay inside aioflow and are never raised to users, so they are not in
the tree: each says so where it is defined (``GaveUp``, ``PredicateFailed`` and
``NotAwaitable`` of ``operators/async_io``, ``Damaged`` of ``state/integrity``,
``EnvironmentOptionError`` of ``worker/config``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import reprlib
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "AioflowError",
    "AppLoadError",
    "BadRecordError",
    "ConnectorError",
    "CorruptStateError",
    "DuplicateWorkerError",
    "IncompatibleStateError",
    "OperatorError",
    "PipelineError",
    "RefusedError",
    "SinkClosed",
    "SinkDeliveryError",
    "StateError",
    "StrayCancellation",
    "UserFunctionTypeError",
]

_record_repr = reprlib.Repr()
_record_repr.maxstring = 120
_record_repr.maxother = 120
_record_repr.maxdict = 8
_record_repr.maxlist = 8
_record_repr.maxlevel = 3


def truncated_repr(value: Any) -> str:
    """A repr short enough for an error message, whatever the record's size."""
    return _record_repr.repr(value)


class AioflowError(Exception):
    """Base class of every aioflow error."""


class PipelineError(AioflowError, ValueError):
    """The pipeline, or a call of aioflow's API, is wrong: a bad name, parallelism,
    partitioning or argument, an unknown keyword, state or timers used on a stream that is
    not keyed, a method a subclass of an aioflow class must implement and does not. The
    message says what was wrong and where; fix the code (a restart cannot help)."""


class AppLoadError(AioflowError):
    """``module:attr`` given to the CLI does not name an importable :class:`aioflow.App`,
    or importing the module raised: then that exception is the ``__cause__``."""


class BadRecordError(AioflowError):
    """A source could not decode a record.

    ``location`` says where (``path:line`` for files); ``raw`` holds the undecoded input.
    """

    def __init__(self, message: str, *, location: str, raw: bytes | None = None) -> None:
        super().__init__(message)
        self.location = location
        self.raw = raw


class OperatorError(AioflowError):
    """User code running inside an operator raised an exception.

    ``operator`` is the operator's name, ``record`` the input being processed (``None``
    when the failure was not caused by a record, e.g. in ``open`` or a timer).
    """

    def __init__(self, operator: str, message: str, record: Any = None, *, has_record: bool = True) -> None:
        self.operator = operator
        self.record = record if has_record else None
        #: The failure concerns a record (``record``), not ``open`` or a timer.
        self.has_record = has_record
        #: Where a ``None`` record came from, when the job could tell (see :meth:`trace_record`).
        self.record_origin: str | None = None
        self._message = message
        super().__init__(self._detail())

    def _detail(self) -> str:
        detail = f"operator {self.operator!r}: {self._message}"
        if self.has_record:
            detail += f"\n  record: {truncated_repr(self.record)}"
            if self.record_origin is not None:
                detail += f", emitted by {self.record_origin}"
        return detail

    def trace_record(self, origin: str) -> None:
        """Say which operator emitted the record (a ``None`` from a map without ``return``
        fails the next operator, which then is not the one to blame)."""
        self.record_origin = origin
        self.args = (self._detail(),)


class UserFunctionTypeError(OperatorError, TypeError):
    """A user function returned a value of the wrong type (e.g. a non-int timestamp)."""


class SinkDeliveryError(AioflowError):
    """A sink could not deliver a batch of records to its destination.

    Raised by an :class:`~aioflow.AsyncBatchSink` when sending a batch failed with an error
    its ``is_retryable`` refuses, or kept failing through every attempt of its retry
    policy. ``sink`` names the sink and subtask (``"HttpSink[0]"``), ``attempts`` says how
    many sends were made, ``records`` holds the records not delivered. ``__cause__`` is the
    last error (``None`` when the destination kept refusing some records of the batch).
    """

    def __init__(self, message: str, *, sink: str, attempts: int, records: list[Any]) -> None:
        super().__init__(message)
        self.sink = sink
        self.attempts = attempts
        self.records = records


class ConnectorError(AioflowError):
    """A connector cannot use its external system: its brokers cannot be reached, a topic
    it needs does not exist. ``connector`` names it (``"kafka(events)"``); ``__cause__`` is
    the client library's error. A restart strategy retries it (the system may come back)."""

    def __init__(self, connector: str, message: str) -> None:
        super().__init__(f"{connector}: {message}")
        self.connector = connector


class SinkClosed(AioflowError):  # noqa: N818 - an end, not an error
    """Raised by :meth:`SinkWriter.write` when the destination went away for good on
    purpose: the reader of a pipe closed it (``aioflow run ... | head``). The job then
    stops as on a stop signal, the sink discards what still comes, and the job ends
    normally (exit 0)."""


class StrayCancellation(AioflowError):  # noqa: N818 - named after what escaped
    """A ``CancelledError`` escaped user code although nothing cancelled the job (it
    awaited a task that was cancelled elsewhere): a failure of that code, never a quiet
    end. The ``__cause__`` of the :class:`OperatorError` that reports it."""


class StateError(AioflowError):
    """State cannot be stored or restored; the message names the operator, state or directory."""


class RefusedError(AioflowError):
    """The worker will not run, and a restart would only repeat it: ``aioflow run`` exits
    with status 3 and the restart strategy does not retry. Raised before the job touches
    any consumer, producer, transaction, output or checkpoint storage; or, for damage
    found while running, at once, so that nothing is committed after it."""


class CorruptStateError(RefusedError, StateError):
    """Stored state failed verification: the working copy in the state directory is
    missing, empty, truncated, damaged or another job's, or a checkpoint is. The message
    names the directory (and operator, state and key where known) and what to do."""


class DuplicateWorkerError(RefusedError, StateError):
    """Another worker holds the state directory: two would overwrite each other's state,
    checkpoints and output. The message names the process holding it."""


class IncompatibleStateError(RefusedError, StateError):
    """A checkpoint or savepoint does not fit the job as it is now: state of operators the
    job no longer has, a window definition changed in a way its windows cannot follow, a
    different ``max_parallelism``. The message names the operator and what changed;
    ``was`` is the declaration the checkpoint holds, where one state changed."""

    def __init__(self, message: str, *, was: str | None = None) -> None:
        super().__init__(message)
        self.was = was


def check_number(
    value: Any, what: str, *, integer: bool = False, minimum: float = 0.0, optional: bool = False, above: bool = False
) -> None:
    """Refuse with a :class:`PipelineError` naming ``what`` a ``value`` that is not a finite
    number (an int with ``integer``) at least ``minimum`` (above it with ``above``; ``None``
    allowed with ``optional``)."""
    if optional and value is None:
        return
    kinds = (int,) if integer else (int, float)
    bad = isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value)
    if bad or (value <= minimum if above else value < minimum):
        kind = "an int" if integer else "a number"
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        raise PipelineError(f"{what} must be {kind} {bound}{' or None' if optional else ''}, got {value!r}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the known name closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def suggest_keywords(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function``, refusing an unknown keyword argument with a :class:`PipelineError`
    that names the likely intended one (``App(checkpoint_intervall=2)``), instead of
    Python's plain ``TypeError``."""
    parameters = inspect.signature(function).parameters.values()
    known = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    called = function.__qualname__.removesuffix(".__init__") + "()"

    @functools.wraps(function)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        for name in kwargs:
            if name not in known:
                raise PipelineError(f"{called} got an unexpected keyword argument {name!r}{did_you_mean(name, known)}")
        return function(*args, **kwargs)

    return checked


#: Errors that already say which operator and what failed: raised from operators as they are,
#: not wrapped in another :class:`OperatorError`.
DESCRIBED_ERRORS = (OperatorError, StateError)
