"""An asynchronous batching sink: subclass :class:`AsyncBatchSink`, write ``send_batch``.

In the style of Flink's ``AsyncSinkBase``: the sink collects the records it is given into
batches (by count, by bytes, and by time: ``max_linger``), sends up to ``max_in_flight``
batches at once with the user's ``send_batch``, retries what failed with a retryable error
under a :class:`RetryPolicy`, and holds at most ``max_buffered`` records not yet
acknowledged: when that many wait, ``write`` waits too, and backpressure reaches the
sources through the credit-based channels. A flush (at every checkpoint barrier and at
the end of input) waits until every record written so far is acknowledged, so the sink is
at least once with checkpoints; ``exactly_once = True`` adds a two-phase commit on top
(flush, then the user's ``pre_commit``; ``commit`` when the checkpoint completes).

Every subtask works on its own shallow copy of the sink object: ``open()`` and ``close()``
run on that copy, so per-subtask resources (a client session, a connection) go on
``self`` there. The runtime drives the private :class:`_AsyncBatchWriter`, which owns the
buffer, the batches and the send tasks (asyncio tasks, cancelled on close).

Per record, ``write`` does no ``await`` and no task switch: batches are cut with list
slices (and, with ``max_batch_bytes``, one ``size_of`` call per record); tasks start per
batch.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import time
from collections import deque
from typing import Any

import orjson
import structlog

from aioflow._core.connectors.base import END_OF_INPUT, Sink, SinkWriter, TwoPhaseCommitSinkWriter
from aioflow._core.errors import PipelineError, SinkDeliveryError, check_number
from aioflow._core.retry import RetryPolicy
from aioflow._core.runtime.calls import map_into

__all__ = ["AsyncBatchSink"]

log = structlog.get_logger("aioflow.connectors")

#: Seconds between two "retrying" log lines of one sink subtask (the first is logged at once).
RETRY_LOG_INTERVAL = 10.0

#: Hooks a subclass writes as ``async def``; the others must be plain functions.
_ASYNC_HOOKS = ("send_batch", "open", "close", "pre_commit", "commit", "abort", "recover")
_SYNC_HOOKS = ("is_retryable", "size_of")


class AsyncBatchSink(Sink):
    """Base of sinks that send batches of records to a store with an async client.

    A subclass implements :meth:`send_batch`; :meth:`open` and :meth:`close` set up and
    tear down what a subtask needs (a client session). Options, all keyword-only:

    - ``max_batch_size``: most records per batch.
    - ``max_batch_bytes``: most bytes per batch, as measured by :meth:`size_of` (``None``:
      no limit). A record larger than the limit goes in a batch of its own.
    - ``max_linger``: seconds a partial batch waits for more records after its first one
      before it is sent anyway (``0``: at once; ``None``: until the next flush).
    - ``max_in_flight``: most batches being sent at once (retries included). With more
      than one, batches may be acknowledged out of order; ``1`` keeps the order.
    - ``max_buffered``: most records written to the sink and not acknowledged yet (in the
      buffer, being sent or waiting to be retried). When that many wait, ``write`` waits
      too, and backpressure reaches the sources: memory stays bounded whatever the input
      rate. At least ``max_batch_size``.
    - ``send_timeout``: seconds one ``send_batch`` call may take; a slower one is cancelled
      and counts as a retryable ``TimeoutError`` (``None``: no limit).
    - ``retry``: a :class:`RetryPolicy`. Which errors are retried is :meth:`is_retryable`'s
      decision.

    A batch that fails with a non-retryable error, or still fails after the last attempt,
    fails the job with a :class:`~aioflow.SinkDeliveryError` naming the sink, the attempts
    and the cause: at the next batch written, checkpoint or end of input.

    Each subtask works on its own shallow copy of this object, made when the job starts:
    attributes set in ``__init__`` are shared (configuration), attributes set in
    :meth:`open` belong to the subtask. The copy's ``subtask_index``, ``parallelism`` and
    ``resuming`` (the job resumes from a checkpoint) are set before :meth:`open`.

    ``exactly_once = True`` (a class attribute) makes it a two-phase-commit sink: the
    subclass also implements :meth:`pre_commit` and :meth:`commit`, and may implement
    :meth:`abort`; each checkpoint's transaction holds the records sent since the
    previous one.
    """

    default_name = "async_sink"

    # The options, as passed to __init__ (class-level values are the defaults, for a
    # subclass whose __init__ does not call super().__init__()).
    max_batch_size: int = 500
    max_batch_bytes: int | None = None
    max_linger: float | None = 1.0
    max_in_flight: int = 4
    max_buffered: int = 10_000
    send_timeout: float | None = None
    retry: RetryPolicy = RetryPolicy()

    #: Set on each subtask's copy before :meth:`open`.
    subtask_index: int = 0
    parallelism: int = 1
    resuming: bool = False

    def __init__(
        self,
        *,
        max_batch_size: int = 500,
        max_batch_bytes: int | None = None,
        max_linger: float | None = 1.0,
        max_in_flight: int = 4,
        max_buffered: int = 10_000,
        send_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_bytes = max_batch_bytes
        self.max_linger = max_linger
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self.send_timeout = send_timeout
        self.retry = RetryPolicy() if retry is None else retry
        self._check()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _ASYNC_HOOKS:
            hook = cls.__dict__.get(name)
            if hook is not None and not inspect.iscoroutinefunction(hook):
                raise PipelineError(f"{cls.__name__}.{name} must be an `async def` method")
        for name in _SYNC_HOOKS:
            hook = cls.__dict__.get(name)
            if hook is not None and inspect.iscoroutinefunction(hook):
                raise PipelineError(f"{cls.__name__}.{name} must be a plain method, not `async def`")
        if cls.__dict__.get("exactly_once") is True:
            cls._check_two_phase()

    @classmethod
    def _check_two_phase(cls) -> None:
        missing = [name for name in ("pre_commit", "commit") if getattr(cls, name) is getattr(AsyncBatchSink, name)]
        if missing:
            raise PipelineError(
                f"{cls.__name__} has exactly_once = True and must implement "
                f"{' and '.join(f'{name}()' for name in missing)} (see docs/async-sinks.md)"
            )

    def _check(self) -> None:
        """Validate the options (at construction, and again when the job starts)."""
        name = type(self).__name__
        if type(self).send_batch is AsyncBatchSink.send_batch:
            raise PipelineError(f"{name} must implement `async def send_batch(self, records)`")
        check_number(self.max_batch_size, f"{name} max_batch_size", integer=True, minimum=1)
        check_number(self.max_batch_bytes, f"{name} max_batch_bytes", integer=True, minimum=1, optional=True)
        check_number(self.max_linger, f"{name} max_linger", optional=True)
        check_number(self.max_in_flight, f"{name} max_in_flight", integer=True, minimum=1)
        check_number(self.max_buffered, f"{name} max_buffered", integer=True, minimum=1)
        if self.max_buffered < self.max_batch_size:
            raise PipelineError(
                f"{name} max_buffered ({self.max_buffered}) must be at least max_batch_size "
                f"({self.max_batch_size}): a full batch must fit in the buffer"
            )
        check_number(self.send_timeout, f"{name} send_timeout", optional=True, above=True)
        if not isinstance(self.retry, RetryPolicy):
            raise PipelineError(f"{name} retry takes an af.RetryPolicy(...), got {self.retry!r}")
        if self.exactly_once:
            type(self)._check_two_phase()

    # -- what a subclass writes ----------------------------------------------------------

    async def send_batch(self, records: list[Any]) -> list[Any] | None:
        """Send one batch; return once the store has acknowledged it.

        Raise to fail the whole batch: it is sent again if :meth:`is_retryable` says so.
        A store that accepts part of a batch (a bulk API reporting per-record errors) may
        instead return the records that must be sent again: they are retried as an
        attempt of their own. Return ``None`` (or ``[]``) when everything was delivered.
        Calls run concurrently, up to ``max_in_flight``.
        """
        raise PipelineError(f"{type(self).__name__} must implement `async def send_batch(self, records)`")

    def is_retryable(self, error: Exception) -> bool:
        """Whether a batch that failed with ``error`` is sent again. By default connection
        errors and timeouts (``OSError``, ``TimeoutError``) are, anything else is not."""
        return isinstance(error, (OSError, TimeoutError))

    def size_of(self, record: Any) -> int:
        """Size of ``record`` in bytes, for ``max_batch_bytes`` (called only with that
        option): by default the length of its JSON encoding (orjson). Override it when the
        records are sent in another encoding."""
        return len(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS))

    async def open(self) -> None:
        """Acquire this subtask's resources (a client session); on this subtask's copy."""

    async def close(self) -> None:
        """Release them; called once, also when the job fails (after a successful open)."""

    async def pre_commit(self, checkpoint_id: int) -> Any:
        """Exactly-once sinks: every record of the current transaction was acknowledged by
        :meth:`send_batch`; make the transaction durable but not visible, start a new one
        and return a JSON-serialisable handle naming it. ``checkpoint_id`` increases from
        call to call; at the end of bounded input it is above every checkpoint's."""
        raise PipelineError(f"{type(self).__name__} must implement pre_commit(checkpoint_id)")

    async def commit(self, handle: Any) -> None:
        """Exactly-once sinks: make the transaction of ``handle`` visible. Idempotent:
        after a crash it is called again with handles that may have been committed."""
        raise PipelineError(f"{type(self).__name__} must implement commit(handle)")

    async def abort(self, handle: Any) -> None:
        """Exactly-once sinks: discard the pre-committed transaction of ``handle``. By
        default nothing is discarded."""

    async def recover(self, handles: list[Any]) -> None:
        """Exactly-once sinks, on restore, before any write: the pending handles of every
        subtask of the restored checkpoint (see ``TwoPhaseCommitSinkWriter.recover``)."""

    # -- the runtime's side ---------------------------------------------------------------

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        self._check()
        sink = copy.copy(self)
        sink.subtask_index = subtask_index
        sink.parallelism = parallelism
        if self.exactly_once:
            return _TwoPhaseAsyncBatchWriter(sink)
        return _AsyncBatchWriter(sink)


class _AsyncBatchWriter(SinkWriter):
    """Buffers, batches and sends the records of one subtask of an :class:`AsyncBatchSink`.

    Records written and not yet acknowledged (``_unacked``) are in the open batch (filling
    up), in ``_ready`` (full or lingered long enough, waiting for a send slot) or being
    sent by one of the ``_sending`` tasks. A send task retries its batch until it is
    delivered or fails for good; then it starts the next ready batch and wakes the writer
    (``_progress``), which may be waiting for room or for a flush to complete.
    """

    def __init__(self, sink: AsyncBatchSink) -> None:
        self._sink = sink
        self._label = f"{type(sink).__name__}[{sink.subtask_index}]"
        self._max_batch_size = sink.max_batch_size
        self._max_batch_bytes = sink.max_batch_bytes
        self._max_linger = sink.max_linger
        self._max_in_flight = sink.max_in_flight
        self._max_buffered = sink.max_buffered
        self._send_timeout = sink.send_timeout
        self._retry = sink.retry
        self._batch: list[Any] = []  # the open batch
        self._batch_bytes = 0
        self._batch_since = 0.0  # loop time of the open batch's first record
        self._ready: deque[list[Any]] = deque()
        self._sending: set[asyncio.Task[None]] = set()
        self._unacked = 0
        self._failure: SinkDeliveryError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: asyncio.Event | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._opened = False
        # statistics
        self._records_sent = 0
        self._batches_sent = 0
        self._retries = 0
        self._unlogged_retries = 0
        self._last_retry_log = -math.inf

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        self._sink.resuming = self.resuming
        await self._sink.open()
        self._opened = True

    # -- accepting records (no await per record) ---------------------------------------

    async def write(self, values: list[Any]) -> None:
        if self._failure is not None:
            raise self._failure
        if not values:
            return
        room = self._max_buffered - self._unacked
        if len(values) <= room:  # the usual case: no await at all
            self._add(values)
            return
        start = 0
        while start < len(values):
            if room > 0:
                chunk = values[start : start + room]
                self._add(chunk)
                start += len(chunk)
            else:  # backpressure: wait until sends free some room
                await self._wait_for_progress()
            room = self._max_buffered - self._unacked

    def _add(self, values: list[Any]) -> None:
        """Put ``values`` in batches, queue the complete ones and start what may start."""
        assert self._loop is not None
        now = self._loop.time()
        if not self._batch:
            self._batch_since = now
        if self._max_batch_bytes is None:
            self._add_counted(values, now)
        else:
            self._add_sized(values, now)  # first: a size_of that fails leaves nothing counted
        self._unacked += len(values)
        if self._batch:
            if self._max_linger == 0:
                self._cut()
            elif self._max_linger is not None and self._linger_timer is None:
                self._linger_timer = self._loop.call_at(self._batch_since + self._max_linger, self._lingered)
        self._dispatch()

    def _add_counted(self, values: list[Any], now: float) -> None:
        size, batch, ready = self._max_batch_size, self._batch, self._ready
        start, end = 0, len(values)
        while start < end:
            take = size - len(batch)
            batch.extend(values[start : start + take])
            start += take
            if len(batch) >= size:
                ready.append(batch)
                batch = []
                self._batch_since = now
        self._batch = batch

    def _add_sized(self, values: list[Any], now: float) -> None:
        sizes: list[int] = []
        try:
            map_into(sizes, self._sink.size_of, values)  # a stray StopIteration is raised, not an early end
        except StopIteration as exc:  # leaving the coroutine, it would become a bare RuntimeError
            error = RuntimeError(f"size_of raised StopIteration ({exc}); a stray next()?")
            error.record = values[len(sizes)]  # type: ignore[attr-defined]  # SinkOperator shows it
            raise error from exc
        except Exception as exc:
            exc.record = values[len(sizes)]  # type: ignore[attr-defined]
            raise
        max_count, max_bytes, ready = self._max_batch_size, self._max_batch_bytes, self._ready
        assert max_bytes is not None
        batch, total = self._batch, self._batch_bytes
        for value, size in zip(values, sizes, strict=True):
            if batch and total + size > max_bytes:
                ready.append(batch)
                batch, total = [], 0
                self._batch_since = now
            batch.append(value)
            total += size
            if len(batch) >= max_count:
                ready.append(batch)
                batch, total = [], 0
                self._batch_since = now
        self._batch, self._batch_bytes = batch, total

    def _cut(self) -> None:
        """Queue the open batch as it is."""
        if self._batch:
            self._ready.append(self._batch)
            self._batch = []
            self._batch_bytes = 0

    def _lingered(self) -> None:
        """Timer: send the open batch if its first record waited ``max_linger`` seconds."""
        self._linger_timer = None
        if not self._batch or self._failure is not None:
            return
        assert self._loop is not None and self._max_linger is not None
        due = self._batch_since + self._max_linger
        if self._loop.time() < due - 0.001:  # a younger batch than the one the timer was for
            self._linger_timer = self._loop.call_at(due, self._lingered)
            return
        self._cut()
        self._dispatch()

    def _dispatch(self) -> None:
        """Start sending ready batches while there are free slots."""
        ready, sending = self._ready, self._sending
        while ready and len(sending) < self._max_in_flight and self._failure is None:
            assert self._loop is not None
            task = self._loop.create_task(self._send(ready.popleft()), name=f"{self._label} send")
            sending.add(task)
            task.add_done_callback(sending.discard)

    # -- sending ------------------------------------------------------------------------

    async def _send(self, records: list[Any]) -> None:
        """Send one batch until it is delivered, or record why it cannot be."""
        sink, retry, timeout = self._sink, self._retry, self._send_timeout
        count = len(records)
        pending = records
        attempt = 0
        while True:
            attempt += 1
            error: Exception | None = None
            try:
                if timeout is None:
                    result = await sink.send_batch(pending)
                else:
                    async with asyncio.timeout(timeout):
                        result = await sink.send_batch(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # close() cancels the sends
                error = RuntimeError(
                    "send_batch raised CancelledError, but nothing cancelled it (did it await "
                    "a task that was cancelled elsewhere?)"
                )
                self._fail(pending, attempt, error, retryable=False)
                return
            except Exception as exc:
                error = exc
            else:
                if not result:  # None or []: all delivered
                    break
                if not isinstance(result, list):
                    self._fail(
                        pending,
                        attempt,
                        TypeError(
                            f"send_batch must return None or a list of the records to send again, got "
                            f"{type(result).__name__}"
                        ),
                        retryable=False,
                    )
                    return
                pending = result
            if error is not None:
                try:
                    retryable = sink.is_retryable(error)
                except Exception as exc:
                    exc.__context__ = error
                    self._fail(pending, attempt, exc, retryable=False)
                    return
                if not retryable:
                    self._fail(pending, attempt, error, retryable=False)
                    return
            if attempt >= retry.max_attempts:
                self._fail(pending, attempt, error, retryable=True, refused=len(pending) if error is None else 0)
                return
            delay = retry.delay(attempt)
            self._log_retry(pending, attempt, delay, error)
            await asyncio.sleep(delay)
        self._sending.discard(asyncio.current_task())
        self._unacked -= count
        self._records_sent += count
        self._batches_sent += 1
        self._dispatch()
        assert self._progress is not None
        self._progress.set()

    def _log_retry(self, records: list[Any], attempt: int, delay: float, error: Exception | None) -> None:
        """At most one line per RETRY_LOG_INTERVAL seconds, counting the retries in between."""
        self._retries += 1
        self._unlogged_retries += 1
        now = time.monotonic()
        if now - self._last_retry_log < RETRY_LOG_INTERVAL:
            return
        cause = f"{type(error).__name__}: {error}" if error is not None else "the store refused some records"
        log.warning(
            "sink send failed: retrying",
            sink=self._label,
            records=len(records),
            attempt=attempt,
            max_attempts=self._retry.max_attempts,
            retry_in=round(delay, 3),
            error=cause,
            retries_since_last_line=self._unlogged_retries,
            retries_total=self._retries,
        )
        self._unlogged_retries = 0
        self._last_retry_log = now

    def _fail(
        self, records: list[Any], attempt: int, error: Exception | None, *, retryable: bool, refused: int = 0
    ) -> None:
        if self._failure is not None:
            return
        if not retryable:
            message = (
                f"{self._label}: a batch of {len(records)} records failed with a non-retryable error "
                f"(attempt {attempt} of {self._retry.max_attempts}): {type(error).__name__}: {error}"
            )
        elif refused:
            message = (
                f"{self._label}: the store still refused {refused} records of a batch after {attempt} "
                "attempts (send_batch returned them to be sent again)"
            )
        else:
            message = (
                f"{self._label}: a batch of {len(records)} records still failed after {attempt} attempts: "
                f"{type(error).__name__}: {error}"
            )
        failure = SinkDeliveryError(message, sink=self._label, attempts=attempt, records=records)
        failure.__cause__ = error
        self._failure = failure
        log.error(
            "sink delivery failed",
            sink=self._label,
            records=len(records),
            attempts=attempt,
            error=f"{type(error).__name__}: {error}" if error is not None else "records refused",
        )
        for task in self._sending:  # the job fails: the other sends are moot
            if task is not asyncio.current_task():
                task.cancel()
        assert self._progress is not None
        self._progress.set()

    # -- waiting ------------------------------------------------------------------------

    async def _wait_for_progress(self) -> None:
        """Wait until a send completes or fails; raise the failure if one did."""
        progress = self._progress
        assert progress is not None
        progress.clear()
        await progress.wait()
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        """Send the open batch and wait until every record written so far is acknowledged
        (at-least-once: the runtime flushes at every checkpoint barrier)."""
        if self._failure is not None:
            raise self._failure
        self._cut()
        self._dispatch()
        while self._unacked:
            await self._wait_for_progress()

    def statistics(self) -> dict[str, int]:
        return {
            "records_buffered": self._unacked,
            "batches_in_flight": len(self._sending),
            "batches_ready": len(self._ready),
            "records_sent": self._records_sent,
            "batches_sent": self._batches_sent,
            "retries": self._retries,
        }

    async def close(self) -> None:
        """Stop the timer and the sends still running (after a failure or a cancelled
        job: a clean end flushed first), then close the sink's subtask copy."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        tasks = list(self._sending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._sending.clear()
        if self._opened:
            self._opened = False
            await self._sink.close()


class _TwoPhaseAsyncBatchWriter(_AsyncBatchWriter, TwoPhaseCommitSinkWriter):
    """The two-phase commit of an ``exactly_once`` :class:`AsyncBatchSink`: every hook
    first flushes the sends, then delegates to the sink's subtask copy."""

    async def pre_commit(self, checkpoint_id: int) -> Any:
        await self.flush()
        return await self._sink.pre_commit(checkpoint_id)

    async def recover(self, handles: list[Any]) -> None:
        await self._sink.recover(handles)

    async def commit(self, handle: Any) -> None:
        await self._sink.commit(handle)

    async def abort(self, handle: Any) -> None:
        await self._sink.abort(handle)

    async def finish(self) -> None:
        """End of bounded input without checkpoints: the rest is one last transaction."""
        await self.flush()
        await self._sink.commit(await self._sink.pre_commit(END_OF_INPUT))
