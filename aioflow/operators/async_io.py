"""The operator behind ``stream.map_async``: calls to external systems, many at once.

Like Flink's ``AsyncDataStream``: each record's call may time out and be retried (a
:class:`~aioflow.RetryPolicy`; which errors and which results call for another attempt is
the user's choice), and a call that still fails fails the job, is skipped (logged and
counted), or goes to a side output as a :class:`FailedCall`. Records run as for any
``async def`` function (:mod:`aioflow.operators.concurrent`): up to ``capacity`` at once,
a key's records in order on a keyed stream, a batch done before a watermark or a
barrier passes. Results come in input order, or (``ordered=False``) as they complete,
within a batch: never across a watermark.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from aioflow.errors import truncated_repr
from aioflow.functions import OutputTag
from aioflow.operators.base import Operator, await_user, describe_error, for_key
from aioflow.operators.concurrent import run_concurrently
from aioflow.retry import RetryPolicy
from aioflow.runtime.events import Batch

__all__ = ["AsyncMapOperator", "FailedCall"]

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


class AsyncMapOperator(Operator):
    """One output per record: ``await fn(value)``, with timeouts, retries and an error policy."""

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Awaitable[Any]],
        *,
        ordered: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
        retry_if: Callable[[Exception], bool] | None,
        retry_if_result: Callable[[Any], bool] | None,
        on_error: str | OutputTag,
    ) -> None:
        super().__init__(name)
        self.fn = fn
        self.ordered = ordered
        self.timeout = timeout
        self.retry = retry or RetryPolicy(max_attempts=1)
        self.retry_if = retry_if
        self.retry_if_result = retry_if_result
        self.on_error = on_error
        #: Records whose call failed for good (skipped or sent to the side output).
        self.calls_failed = 0
        #: Calls made again after a failed attempt.
        self.calls_retried = 0

    async def process(self, batch: Batch) -> None:
        values = batch.values
        keys = await self.keys_in_order(batch)
        done: list[int] = []  # indexes in the order their calls completed
        failed: list[FailedCall] = []
        failed_at: list[int] = []

        async def call(i: int) -> Any:
            result = await self._call(values[i], keys, i, failed, failed_at)
            done.append(i)
            return result

        results = await run_concurrently(call, len(values), keys, self.concurrency)
        order = range(len(values)) if self.ordered else done
        timestamps = batch.timestamps
        out = [results[i] for i in order if results[i] is not _FAILED]
        out_ts = None if timestamps is None else [timestamps[i] for i in order if results[i] is not _FAILED]
        await self.out.process(Batch(out, out_ts))
        if failed and isinstance(self.on_error, OutputTag):
            await self.emit_side(self.on_error.name, failed,
                                 None if timestamps is None else [timestamps[i] for i in failed_at])

    async def _call(self, value: Any, keys: list[Any] | None, i: int, failed: list[FailedCall],
                    failed_at: list[int]) -> Any:
        """One record's calls: until one succeeds, or the policy says to give up."""
        retry, fn = self.retry, self.fn
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.timeout is None:
                    result = await await_user(fn(value))
                else:
                    with anyio.fail_after(self.timeout):
                        result = await await_user(fn(value))
            except Exception as exc:
                if attempt < retry.max_attempts and (self.retry_if is None or self._retryable(exc, value, keys, i)):
                    self.calls_retried += 1
                    await anyio.sleep(retry.delay(attempt))
                    continue
                timed_out = self.timeout is not None and isinstance(exc, TimeoutError)
                error = f"timed out after {self.timeout:g} s" if timed_out else describe_error(exc, fn)
                return self._give_up(value, f"{error} (call {attempt} of {retry.max_attempts})", attempt, exc,
                                     keys, i, failed, failed_at)
            if self.retry_if_result is not None and attempt < retry.max_attempts \
                    and self._result_retried(result, value, keys, i):
                self.calls_retried += 1
                await anyio.sleep(retry.delay(attempt))
                continue
            return result

    def _retryable(self, exc: Exception, value: Any, keys: list[Any] | None, i: int) -> bool:
        assert self.retry_if is not None
        try:
            return bool(self.retry_if(exc))
        except Exception as raised:
            raise self.error("retry_if " + describe_error(raised, self.retry_if) + for_key(keys, i), value) from raised

    def _result_retried(self, result: Any, value: Any, keys: list[Any] | None, i: int) -> bool:
        assert self.retry_if_result is not None
        try:
            return bool(self.retry_if_result(result))
        except Exception as raised:
            raise self.error("retry_if_result " + describe_error(raised, self.retry_if_result) + for_key(keys, i),
                             value) from raised

    def _give_up(self, value: Any, error: str, attempts: int, exc: Exception, keys: list[Any] | None, i: int,
                 failed: list[FailedCall], failed_at: list[int]) -> Any:
        """Apply ``on_error`` to a record whose call failed for good."""
        if self.on_error == "fail":
            raise self.error(error + for_key(keys, i), value) from exc
        self.calls_failed += 1
        if self.on_error == "skip":
            if self.calls_failed == 1 or self.calls_failed % SKIP_LOG_EVERY == 0:
                log.warning("skipped a failed call", operator=self.name, error=error,
                            record=truncated_repr(value), failed_total=self.calls_failed)
        else:
            failed.append(FailedCall(value, error, attempts))
            failed_at.append(i)
        return _FAILED
