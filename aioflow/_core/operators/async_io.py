"""The operators behind ``stream.map_async`` and ``stream.map_batch``: calls to other
systems (a model server, an HTTP API, a database), many at once or a list at a time.

Like Flink's ``AsyncDataStream``: each record's call may time out and be retried (a
:class:`~aioflow.RetryPolicy`; which errors and which results call for another attempt is
the user's choice), and a call that still fails fails the job, is skipped (logged and
counted), or goes to a side output as a :class:`FailedCall`. Records run as for any
``async def`` function (:mod:`aioflow._core.runtime.concurrent`): up to ``capacity`` at once,
a key's records in order on a keyed stream, a batch done before a watermark or a
barrier passes. Results come in input order, or (``ordered=False``) as they complete,
within a batch: never across a watermark.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import structlog

from aioflow._core.errors import PipelineError, UserFunctionTypeError, truncated_repr
from aioflow._core.functions import OutputTag
from aioflow._core.operators.function import FunctionOperator
from aioflow._core.retry import RetryPolicy
from aioflow._core.runtime.calls import await_user, describe_error, for_key, is_async, qualified_name
from aioflow._core.runtime.concurrent import run_concurrently
from aioflow._core.runtime.events import Batch

__all__ = ["AsyncMapOperator", "BatchMapOperator", "CallPolicy", "CallingOperator", "FailedCall"]

log = structlog.get_logger("aioflow.runtime")

#: A skipped call is logged the first time, then every this many times.
SKIP_LOG_EVERY = 1000


@dataclass(frozen=True, slots=True)
class FailedCall:
    """A record whose ``map_async`` call failed for good, as sent to the side output given
    as ``on_error``: the record, what went wrong the last time, and how many calls were made."""

    value: Any
    error: str
    attempts: int


_FAILED: Any = object()  # a call that failed for good and was skipped or dead-lettered


# The three exceptions below never escape this module: CallingOperator.call turns them into
# the operator's OperatorError (UserFunctionTypeError), or a skipped or dead-lettered
# record. Not in the tree of aioflow._core.errors, as no user ever sees them.


class GaveUp(Exception):
    """A call failed for good: ``error`` says how, after ``attempts`` calls; the last
    exception is the ``__cause__``."""

    def __init__(self, error: str, attempts: int) -> None:
        super().__init__(error)
        self.error = error
        self.attempts = attempts


class PredicateFailed(Exception):
    """``retry_if`` or ``retry_if_result`` itself raised: a bug to fail the job with."""


class NotAwaitable(Exception):
    """An async call's function returned something that cannot be awaited: a bug, not retried."""


@dataclass(frozen=True)
class CallPolicy:
    """When a call fails, and what is tried again: a timeout per call (``async def``
    functions), a :class:`RetryPolicy`, and which exceptions and results call for another
    attempt."""

    timeout: float | None = None
    retry: RetryPolicy = RetryPolicy(max_attempts=1)
    retry_if: Callable[[Exception], bool] | None = None
    retry_if_result: Callable[[Any], bool] | None = None

    async def call(self, fn: Callable[[Any], Any], argument: Any, *, is_async: bool = True) -> tuple[Any, int]:
        """``fn(argument)`` (awaited if ``is_async``) until a call succeeds with a result
        ``retry_if_result`` accepts, or the attempts run out (the last result is kept);
        the result and the calls it took. Raises :class:`GaveUp` for a failure not tried
        again."""
        retry, attempt = self.retry, 0
        while True:
            attempt += 1
            try:
                result = fn(argument)
                if is_async:
                    if not inspect.isawaitable(result):
                        raise NotAwaitable(
                            f"{qualified_name(fn)} returned {truncated_repr(result)} "
                            f"({type(result).__name__}), not an awaitable: give map_async an async "
                            "def function (or one returning an awaitable)"
                        )
                    if self.timeout is None:
                        result = await await_user(result)
                    else:
                        with anyio.fail_after(self.timeout):
                            result = await await_user(result)
            except NotAwaitable:
                raise
            except Exception as exc:
                retrying = attempt < retry.max_attempts
                if retrying and self._asks("retry_if", self.retry_if, exc, default=True):
                    await anyio.sleep(retry.delay(attempt))
                    continue
                timed_out = self.timeout is not None and isinstance(exc, TimeoutError)
                error = f"timed out after {self.timeout:g} s" if timed_out else describe_error(exc, fn)
                tried = f"call {attempt} of {retry.max_attempts}" + ("; retry_if said not to retry" if retrying else "")
                raise GaveUp(f"{error} ({tried})", attempt) from exc
            if attempt < retry.max_attempts and self._asks(
                "retry_if_result", self.retry_if_result, result, default=False
            ):
                await anyio.sleep(retry.delay(attempt))
                continue
            return result, attempt

    @staticmethod
    def _asks(what: str, predicate: Callable[[Any], bool] | None, argument: Any, *, default: bool) -> bool:
        if predicate is None:
            return default
        try:
            return bool(predicate(argument))
        except Exception as exc:
            raise PredicateFailed(what + " " + describe_error(exc, predicate)) from exc


class CallingOperator(FunctionOperator):
    """An operator calling another system under a :class:`CallPolicy`, with ``on_error``
    for calls that failed for good (an :class:`~aioflow.AsyncFunction` ``fn`` is opened
    and closed with the subtask)."""

    def __init__(self, name: str, fn: Callable[[Any], Any], policy: CallPolicy, on_error: str | OutputTag) -> None:
        super().__init__(name, fn)
        self.policy = policy
        self.on_error = on_error
        #: Records whose call failed for good (skipped or sent to the side output).
        self.calls_failed = 0
        #: Calls made again after a failed attempt or a result retried.
        self.calls_retried = 0

    async def call(self, argument: Any, record: Any, where: str = "", *, is_async: bool = True) -> tuple[Any, int]:
        """The policy's call, failures not tried again raised as the operator's errors
        (``record`` and ``where``, e.g. the key, name what failed) unless ``on_error``
        takes them: then :class:`GaveUp`."""
        try:
            result, attempts = await self.policy.call(self.fn, argument, is_async=is_async)
        except PredicateFailed as exc:
            raise self.error(str(exc) + where, record) from exc.__cause__
        except NotAwaitable as exc:
            raise UserFunctionTypeError(self.name, str(exc) + where, record) from None
        except GaveUp as exc:
            self.calls_retried += exc.attempts - 1
            if self.on_error == "fail":
                raise self.error(exc.error + where, record) from exc.__cause__
            raise
        self.calls_retried += attempts - 1
        return result, attempts

    def failed(self, records: list[Any], error: str, attempts: int, dead: list[FailedCall]) -> bool:
        """``records`` failed for good: skipped (counted, logged; ``False``) or dead letters
        added to ``dead`` (``True``)."""
        self.calls_failed += len(records)
        if self.on_error != "skip":
            dead.extend(FailedCall(record, error, attempts) for record in records)
            return True
        before = self.calls_failed - len(records)
        if before == 0 or before // SKIP_LOG_EVERY != self.calls_failed // SKIP_LOG_EVERY:
            log.warning(
                "skipped a failed call",
                operator=self.name,
                error=error,
                record=truncated_repr(records[0]),
                records=len(records),
                failed_total=self.calls_failed,
            )
        return False

    async def emit(
        self,
        results: list[Any],
        order: Iterable[int],
        timestamps: Sequence[int | None] | None,
        dead: list[FailedCall],
        dead_at: list[int],
    ) -> None:
        """Send ``results`` in ``order`` (those of failed calls left out) with their
        records' timestamps, and the dead letters, those of the records at ``dead_at``."""
        kept = [i for i in order if results[i] is not _FAILED]
        await self.out.process(
            Batch([results[i] for i in kept], None if timestamps is None else [timestamps[i] for i in kept])
        )
        if dead and isinstance(self.on_error, OutputTag):
            await self.emit_side(
                self.on_error.name, dead, None if timestamps is None else [timestamps[i] for i in dead_at]
            )


class AsyncMapOperator(CallingOperator):
    """One output per record: ``await fn(value)``, under a :class:`CallPolicy`."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Awaitable[Any]],
        policy: CallPolicy,
        on_error: str | OutputTag,
        *,
        ordered: bool,
    ) -> None:
        super().__init__(name, fn, policy, on_error)
        self.ordered = ordered

    async def process(self, batch: Batch) -> None:
        values = batch.values
        keys = await self.keys_in_order(batch)
        done: list[int] = []  # indexes in the order their calls completed
        dead: list[FailedCall] = []
        dead_at: list[int] = []

        async def call(i: int) -> Any:
            try:
                result, _ = await self.call(values[i], values[i], for_key(keys, i))
            except GaveUp as exc:
                if self.failed([values[i]], exc.error, exc.attempts, dead):
                    dead_at.append(i)
                result = _FAILED
            done.append(i)
            return result

        results = await run_concurrently(call, len(values), keys, self.concurrency)
        await self.emit(results, range(len(values)) if self.ordered else done, batch.timestamps, dead, dead_at)

    def emitted_none(self) -> str:
        return f"map_async {self.name!r}, whose function {qualified_name(self.fn)} returned None"


class BatchMapOperator(CallingOperator):
    """One output per record, computed for up to ``max_batch_size`` records per call:
    ``fn(records)`` returns their results in order (a model's ``predict``, a bulk
    lookup). ``form`` hands the records over as a pandas ``DataFrame`` (``"pandas"``) or a
    NumPy array (``"numpy"``) instead of a list. Calls of an ``async def`` ``fn`` run up
    to :attr:`concurrency` at once; a plain ``fn`` runs in the event loop, one call at a
    time (it should be quick: a ``predict`` over a batch)."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Any],
        policy: CallPolicy,
        on_error: str | OutputTag,
        *,
        max_batch_size: int,
        form: str | None,
    ) -> None:
        super().__init__(name, fn, policy, on_error)
        self.max_batch_size = max_batch_size
        self.form = form
        self._async = is_async(fn)
        self._convert: Callable[[list[Any]], Any] = _converter(form)

    async def process(self, batch: Batch) -> None:
        values, size = batch.values, self.max_batch_size
        spans = [(start, min(start + size, len(values))) for start in range(0, len(values), size)]
        results: list[Any] = [_FAILED] * len(values)
        dead: list[FailedCall] = []
        dead_at: list[int] = []

        async def call(span: int) -> None:
            start, end = spans[span]
            records = values[start:end]
            try:
                produced, _ = await self.call(self._convert(records), records, is_async=self._async)
            except GaveUp as exc:
                if self.failed(records, exc.error, exc.attempts, dead):
                    dead_at.extend(range(start, end))
                return
            results[start:end] = self._results(produced, records)

        await run_concurrently(call, len(spans), None, self.concurrency if self._async else 1)
        await self.emit(results, range(len(values)), batch.timestamps, dead, dead_at)

    def emitted_none(self) -> str:
        return f"map_batch {self.name!r}, whose function {qualified_name(self.fn)} returned None as its result"

    def _results(self, produced: Any, records: list[Any]) -> list[Any]:
        """The results as a list, one per record: a NumPy array or a pandas Series becomes
        a list of plain Python values."""
        if hasattr(produced, "columns") and hasattr(produced, "to_dict"):  # a pandas DataFrame: a dict a row
            produced = produced.to_dict("records")
        elif hasattr(produced, "tolist"):
            produced = produced.tolist()
        if not isinstance(produced, (list, tuple)) or len(produced) != len(records):
            got = (
                f"{len(produced)} results"
                if isinstance(produced, (list, tuple))
                else f"{truncated_repr(produced)} ({type(produced).__name__})"
            )
            raise UserFunctionTypeError(
                self.name,
                f"batch function {qualified_name(self.fn)} returned {got} for {len(records)} records; "
                "it must return one result per record, in order (a list, a NumPy array or a pandas Series)",
                records,
            )
        return list(produced)


def _converter(form: str | None) -> Callable[[list[Any]], Any]:
    """How a list of records is handed to a batch function in ``form``."""
    if form is None:
        return lambda records: records
    if form == "numpy":
        asarray: Callable[[list[Any]], Any] = _optional("numpy", form).asarray
        return asarray
    pandas = _optional("pandas", form)
    return lambda records: (
        pandas.DataFrame.from_records(records)
        if records and isinstance(records[0], dict)
        else pandas.DataFrame(records)
    )


def _optional(module: str, form: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PipelineError(f"map_batch(form={form!r}) needs {module}: pip install {module}") from exc
