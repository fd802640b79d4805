"""The connector seam: what a source or a sink must implement.

A :class:`Source` describes where records come from and creates one
:class:`SourceReader` per subtask; a :class:`Sink` creates one :class:`SinkWriter` per
subtask. Readers hand out whole batches and report a position that a checkpoint can
store and a restart can restore. The runtime never sees files, sockets or Kafka.
A sink whose ``exactly_once`` is true creates :class:`TwoPhaseCommitSinkWriter` s: their
output becomes visible only when a checkpoint completes.

:class:`ErrorPolicy` is shared by every source that decodes bytes: what happens to a
record that cannot be decoded is the user's choice (fail, skip, or dead-letter).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from anyio.abc import TaskGroup

from aioflow._core.errors import BadRecordError, PipelineError, StateError
from aioflow._core.functions import OutputTag

__all__ = [
    "END_OF_INPUT",
    "BadRecord",
    "ErrorPolicy",
    "Sink",
    "SinkWriter",
    "Source",
    "SourceBatch",
    "SourceReader",
    "TwoPhaseCommitSinkWriter",
]

log = structlog.get_logger("aioflow.connectors")


class SourceBatch:
    """Records read from one split (a file, a partition), plus the ones that failed to decode.

    ``timestamps`` holds each record's event time (int ms) when the source knows it (a
    Kafka record's timestamp); ``app.source(timestamps=fn)`` takes precedence.
    """

    __slots__ = ("bad", "records", "split", "timestamps")

    def __init__(
        self,
        records: list[Any],
        split: str = "",
        bad: list[BadRecord] | None = None,
        timestamps: list[int] | None = None,
    ) -> None:
        self.records = records
        self.split = split
        self.bad = bad
        self.timestamps = timestamps


class SourceReader:
    """Reads the splits assigned to one subtask.

    ``task_group`` is set by the runtime before :meth:`open`: readers may start background
    tasks on it (e.g. a fetcher filling a buffer); they are cancelled after :meth:`close`.
    """

    task_group: TaskGroup | None = None
    #: Set by the runtime before :meth:`open`: the job keeps state beyond positions and
    #: transactions (``Plan.stateful``). A reader whose input other workers share (a
    #: consumer group) refuses to run such a job beside them: its state cannot move yet.
    stateful_job: bool = False
    #: Set by the runtime before :meth:`open`: names this worker, the same across restarts.
    worker_id: str = ""

    async def open(self) -> None:
        """Acquire resources (open files, connect)."""

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for some.

        Returns an empty batch when nothing arrived in time, and ``None`` once every split
        is exhausted (bounded sources only).
        """
        raise PipelineError(f"{type(self).__name__} must implement read(max_records, timeout)")

    def splits(self) -> list[str]:
        """The splits this reader currently reads from (for per-split watermarks)."""
        return [""]

    def backlogged_splits(self) -> Collection[str] | None:
        """The splits known to hold records this reader has not handed out yet: fetched
        and buffered, or behind the split's end (a Kafka partition below its high
        watermark, a file not read to its end). ``None``: the reader cannot tell.

        This is what ``idle_timeout`` goes by. A backlogged split is never idle, however
        long it waits for its turn or for a slow pipeline downstream: it is not quiet,
        it has not been read. A split the reader knows is caught up goes idle after
        ``idle_timeout`` without records. When the reader cannot tell, only the time the
        source spent waiting for input counts towards ``idle_timeout``, never the time it
        was held back by the pipeline. Called with the periodic watermark, not per
        record: answer from what the reader already knows, without I/O.
        """
        return None

    def position(self) -> Any:
        """Where the reader is, as JSON-serialisable data (stored in checkpoints)."""
        return None

    def restore(self, position: Any) -> None:
        """Continue from a position returned by :meth:`position` (before :meth:`open`)."""

    async def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        """Checkpoint ``checkpoint_id`` completed with this reader at ``position`` (what
        :meth:`position` returned for it): e.g. commit the offsets back to a broker so
        that lag tools see them. Not called once the reader is closed."""

    def statistics(self) -> dict[str, int]:
        return {}

    def lag(self) -> dict[str, int]:
        """Records between the read position and the end of each split, e.g. Kafka
        consumer lag keyed ``"topic:partition"``; ``{}`` when unknown.

        Called when metrics are scraped, never on the hot path: answer from what the
        reader already knows (the last fetch's high watermarks), without I/O. The
        source's :attr:`Source.lag_metric` names the metric it is exported as.
        """
        return {}

    async def close(self) -> None:
        """Release resources; called once, also when the job fails."""


class Source:
    """Describes a source of records; creates one :class:`SourceReader` per subtask."""

    #: Default operator name for streams read from this source.
    default_name = "source"
    #: Bounded sources end; the job then finishes once everything is processed.
    bounded = True
    #: Most subtasks this source can feed (``None``: no limit).
    max_parallelism: int | None = None
    #: Every run reads the same records in the same batches (files, lists), whatever the
    #: timing: watermarks then follow the data, one after each batch, so a replay gives
    #: the same output (see ``App(watermark_interval=)``).
    replayable = False
    #: Batches carry each record's event time (:attr:`SourceBatch.timestamps`), used when
    #: ``app.source`` has no ``timestamps=``.
    timestamped = False
    #: The metric :meth:`SourceReader.lag` is exported as, and the labels a split's name
    #: splits into at its colons (``"orders:3"`` -> ``topic="orders"``, ``partition="3"``),
    #: after a ``source`` label. A Kafka source sets ``"aioflow_kafka_consumer_lag"`` and
    #: ``("topic", "partition")``.
    lag_metric = "aioflow_source_lag"
    lag_labels: tuple[str, ...] = ("split",)

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        raise PipelineError(f"{type(self).__name__} must implement create_reader(subtask_index, parallelism)")

    #: Any reader may come to read any split (consumer-group assignment): every restore,
    #: not only one at another parallelism, goes through :meth:`rescale`.
    positions_shared = False

    def rescale(self, positions: list[Any], parallelism: int) -> list[Any]:
        """Positions for ``parallelism`` readers, from the ones the old readers recorded
        (one each) when a restore changes the parallelism. By default a source cannot."""
        raise StateError(f"{type(self).__name__} cannot change its parallelism across a restore")


class SinkWriter:
    """Writes the batches of one sink subtask.

    ``flush_interval`` (seconds, or ``None``) asks the runtime to call :meth:`flush` that
    long after a write that was not flushed yet, even if no record follows it.
    ``resuming`` is set before :meth:`open` when the job resumes from a checkpoint: what
    the destination already holds came from records before it, so keep it.
    """

    flush_interval: float | None = None
    resuming: bool = False

    async def open(self) -> None:
        """Acquire resources."""

    async def write(self, values: list[Any]) -> None:
        """Write one batch of records."""
        raise PipelineError(f"{type(self).__name__} must implement write(values)")

    async def flush(self) -> None:
        """Make everything written so far durable or visible (end of input, checkpoints)."""

    async def close(self) -> None:
        """Release resources; called once, also when the job fails."""


#: The checkpoint id the end of input pre-commits under: above every periodic checkpoint's.
END_OF_INPUT = 2**62


class TwoPhaseCommitSinkWriter(SinkWriter):
    """A sink writer whose output becomes visible only when a checkpoint completes: the
    two-phase commit of Flink's ``TwoPhaseCommitSinkFunction``, for exactly-once output.

    Records go to the *current transaction*; the runtime drives the protocol, per subtask:

    1. :meth:`write` adds a batch to the current transaction; :meth:`flush` may push it to
       a staging area but never makes it visible.
    2. At a checkpoint barrier, :meth:`pre_commit` makes the current transaction durable
       but not visible, returns a *handle* for it (stored in the checkpoint) and starts a
       new transaction.
    3. When that checkpoint completes, :meth:`commit` with its handle makes it visible.
    4. After a crash, the restore calls :meth:`commit` again with every handle of the
       restored checkpoint, in checkpoint order, *before* any new checkpoint completes: the
       first commit may not have run, or only in part, so commit is idempotent.
       :meth:`abort` discards a pre-committed transaction that will never be committed.
    5. At the end of bounded input, with checkpoints, :meth:`pre_commit` takes the rest,
       and the final checkpoint (which holds every task's final state) commits it;
       without checkpoints, :meth:`finish` commits everything written so far.

    :meth:`close` commits nothing: a transaction that was never pre-committed is dropped,
    and its records come again from the source after recovery. Pre-committed
    transactions survive :meth:`close` (and crashes) until committed or aborted.

    Handles are JSON data (dicts, lists, strings, ints) naming everything a commit needs,
    so a handle can be committed by a writer other than the one that made it: after a
    restart, or at another parallelism. Each handle must be committed by one writer at a
    time.
    """

    async def pre_commit(self, checkpoint_id: int) -> Any:
        """Make the current transaction durable but not visible and start a new one.

        Called at the barrier of checkpoint ``checkpoint_id`` (increasing from call to
        call). Returns a JSON-serialisable handle describing the transaction, for the
        checkpoint to store and :meth:`commit` or :meth:`abort` to take.
        """
        raise PipelineError(f"{type(self).__name__} must implement pre_commit(checkpoint_id)")

    async def recover(self, handles: list[Any]) -> None:
        """A restore is about to commit pre-committed transactions: ``handles`` are those of
        every subtask of the restored checkpoint (this writer then commits its own share).
        Called before any write, on every subtask; by default nothing happens. A writer
        whose destination keeps transactions open (Kafka) uses it to find where its own
        transactions continue and to abort the ones a crash left open."""

    async def commit(self, handle: Any) -> None:
        """Make the transaction of ``handle`` visible: its checkpoint completed.

        Idempotent: called again with the same handle during recovery, possibly after an
        earlier commit that was interrupted part-way, it completes that one and never
        duplicates data. Commit handles in checkpoint order.
        """
        raise PipelineError(f"{type(self).__name__} must implement commit(handle)")

    async def abort(self, handle: Any) -> None:
        """Discard the pre-committed transaction of ``handle``: it will never be committed.

        Only for transactions whose records the source will replay (pre-committed after
        the checkpoint a job restores). A checkpoint that merely failed does not abort its
        transaction: commit it with the next checkpoint that completes, or its records are
        lost. Aborting what is already gone does nothing.
        """
        raise PipelineError(f"{type(self).__name__} must implement abort(handle)")

    async def finish(self) -> None:
        """End of bounded input without checkpoints: commit everything written so far."""
        raise PipelineError(f"{type(self).__name__} must implement finish()")


class Sink:
    """Describes where records go; creates one :class:`SinkWriter` per subtask."""

    default_name = "sink"
    #: The writers are :class:`TwoPhaseCommitSinkWriter` s: records become visible when a
    #: checkpoint completes (or at the end of bounded input), exactly once.
    exactly_once: bool = False

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        raise PipelineError(f"{type(self).__name__} must implement create_writer(subtask_index, parallelism)")


@dataclass(frozen=True, slots=True)
class BadRecord:
    r"""A record a source could not decode, as sent to a dead-letter side output.

    ``raw`` is the record's bytes exactly as read, so nothing is lost to decoding. For the
    file sources that is the line without its line break (``\n`` or ``\r\n``; a file's
    leading UTF-8 byte-order mark is not part of its first line). Decode it to show it,
    e.g. ``raw.decode("utf-8", "backslashreplace")``.
    """

    source: str
    location: str
    error: str
    raw: bytes


OnError = Literal["fail", "skip"] | OutputTag

#: Seconds between two summary log lines of skipped bad records (``on_error="skip"``).
SKIP_LOG_INTERVAL = 10.0


class ErrorPolicy:
    """What a source does with a record it cannot decode.

    - ``"fail"`` (the default): the job fails with :class:`BadRecordError` naming where.
    - ``"skip"``: the record is dropped and counted. The first one is logged in full
      (``skipped bad record``); after that at most one ``skipped bad records`` summary line
      per ``log_interval`` seconds gives the count since the last line and the total, so a
      file full of bad lines cannot flood the log. :meth:`close` logs what is left.
    - an :class:`OutputTag`: the record goes to that side output of the source's stream as
      a :class:`BadRecord`, where it can be sunk like any other stream.

    ``clock`` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(
        self,
        on_error: OnError,
        source: str,
        *,
        log_interval: float = SKIP_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (on_error in ("fail", "skip") or isinstance(on_error, OutputTag)):
            raise PipelineError(f"on_error must be 'fail', 'skip' or an OutputTag, got {on_error!r}")
        self.on_error = on_error
        self.source = source
        self.log_interval = log_interval
        self.clock = clock
        self.skipped = 0
        self.dead_lettered = 0
        self._unlogged = 0  # skipped since the last log line
        self._last_log = 0.0  # clock() at the last log line
        self._last_location = ""  # of the last skipped record

    @property
    def dead_letter_tag(self) -> OutputTag | None:
        return self.on_error if isinstance(self.on_error, OutputTag) else None

    def handle(self, error: Exception | str, location: str, raw: bytes, bad: list[BadRecord]) -> None:
        """Apply the policy to one undecodable record; ``bad`` collects dead letters.

        ``error`` is the decoder's exception or what was wrong, ``location`` where (a file's
        ``path:line``). ``raw`` is the record's bytes as read (for files: the line without
        its line break); messages show a decoded, shortened preview of it.
        """
        if self.on_error == "fail":
            raise BadRecordError(
                f"{self.source}: cannot decode record at {location}: {error}\n  raw: {_preview(raw)!r}\n"
                '  a restart would read it again: fix or remove the record, or pass on_error="skip" to the '
                'source (counted, the first one logged), or on_error=af.OutputTag("bad_records") to send them to a '
                "side output",
                location=location,
                raw=raw,
            )
        if self.on_error == "skip":
            self.skipped += 1
            self._unlogged += 1
            self._last_location = location
            if self.skipped == 1:
                log.warning(
                    "skipped bad record",
                    source=self.source,
                    location=location,
                    error=str(error),
                    raw=_preview(raw),
                    skipped_total=1,
                )
                self._logged()
            elif self.clock() - self._last_log >= self.log_interval:
                self._log_skipped()
            return
        self.dead_lettered += 1
        bad.append(BadRecord(self.source, location, str(error), raw))

    def close(self) -> None:
        """Log the skipped records not reported yet; called when the source closes."""
        if self._unlogged:
            self._log_skipped()

    def _log_skipped(self) -> None:
        log.warning(
            "skipped bad records",
            source=self.source,
            skipped=self._unlogged,
            skipped_total=self.skipped,
            last_location=self._last_location,
        )
        self._logged()

    def _logged(self) -> None:
        self._unlogged = 0
        self._last_log = self.clock()


def _preview(raw: bytes) -> str:
    """The first 200 characters of ``raw`` decoded, for error messages and logs."""
    return raw.decode("utf-8", "replace")[:200]
