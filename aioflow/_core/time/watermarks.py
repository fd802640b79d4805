"""Watermark strategies and generators, as in Flink's WatermarkStrategy / WatermarkGenerator.

A watermark ``W`` says "no record with a timestamp ``<= W`` follows". Sources generate
them per split (file, partition): each split has its own generator and the source's
watermark is the minimum over its active splits. Generators are called once per batch
(``on_batch``; its default calls ``on_event`` per record) and every
``watermark_interval`` seconds (``on_periodic_emit``).

Strategies:

- :class:`BoundedOutOfOrderness` ``(ms)``: records arrive at most ``ms`` late; emits
  ``max_timestamp - ms - 1`` periodically.
- :class:`MonotonousTimestamps`: timestamps never decrease (bounded by 0 ms).
- subclass :class:`WatermarkStrategy` and :class:`WatermarkGenerator` for anything else.

``idle_timeout`` (ms) marks a split idle when it has produced nothing for that long, so it
no longer holds the watermark back; it becomes active again with its next record. Only a
split with nothing to read goes idle, never one the source has not got to: a split the
reader knows holds records (:meth:`SourceReader.backlogged_splits`) stays active, and
when the reader cannot tell, the time the source was held back by the pipeline
(backpressure, a slow operator in its chain) does not count towards the timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from aioflow._core.errors import OperatorError, PipelineError, UserFunctionTypeError, suggest_keywords
from aioflow._core.runtime.calls import describe_error, map_into
from aioflow._core.runtime.events import MIN_WATERMARK, Batch
from aioflow._core.time.timers import now_ms

__all__ = [
    "PERIODIC_WATERMARK_INTERVAL",
    "BoundedOutOfOrderness",
    "MonotonousTimestamps",
    "SourceWatermarks",
    "WatermarkGenerator",
    "WatermarkOutput",
    "WatermarkStrategy",
]


#: Seconds between watermarks of live sources, and of mid-stream assigners, by default.
PERIODIC_WATERMARK_INTERVAL = 0.2


class WatermarkOutput:
    """Where a generator emits: ``emit_watermark(ts)``, ``mark_idle()``, ``mark_active()``."""

    __slots__ = ("idle", "watermark")

    def __init__(self) -> None:
        self.watermark = MIN_WATERMARK
        self.idle = False

    def emit_watermark(self, timestamp: int) -> None:
        """Advance to ``timestamp``; a smaller watermark than the last one is ignored."""
        if timestamp.__class__ is not int:
            raise PipelineError(f"watermarks are int milliseconds, got {timestamp!r}")
        self.idle = False
        if timestamp > self.watermark:
            self.watermark = timestamp

    def mark_idle(self) -> None:
        self.idle = True

    def mark_active(self) -> None:
        self.idle = False


class WatermarkGenerator:
    """Decides when event time advances for one split. Override ``on_event`` for
    per-record (punctuated) watermarks, ``on_periodic_emit`` for periodic ones."""

    def on_event(self, event: Any, timestamp: int, output: WatermarkOutput) -> None:
        """Called for each record (via :meth:`on_batch`)."""

    def on_batch(self, events: list[Any], timestamps: list[int], output: WatermarkOutput) -> None:
        """Called once per batch; the default calls :meth:`on_event` per record.
        Override it only when the batch can be handled at once (as a maximum can)."""
        for event, timestamp in zip(events, timestamps, strict=True):
            self.on_event(event, timestamp, output)

    def on_periodic_emit(self, output: WatermarkOutput) -> None:
        """Called every ``watermark_interval`` seconds."""


class WatermarkStrategy:
    """Creates a :class:`WatermarkGenerator` per split; optionally marks quiet splits idle."""

    def __init__(self, idle_timeout: int | None = None) -> None:
        if idle_timeout is not None and (not isinstance(idle_timeout, int) or idle_timeout <= 0):
            raise PipelineError(f"idle_timeout is a positive number of milliseconds, got {idle_timeout!r}")
        self.idle_timeout = idle_timeout

    def create_generator(self) -> WatermarkGenerator:
        raise PipelineError(f"{type(self).__name__} must implement create_generator()")

    #: True when the generator only emits from ``on_periodic_emit`` (lets the source skip
    #: checking for watermarks after every batch).
    periodic_only = False


class _BoundedGenerator(WatermarkGenerator):
    __slots__ = ("bound", "max_timestamp")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.max_timestamp = MIN_WATERMARK + bound + 1

    def on_event(self, event: Any, timestamp: int, output: WatermarkOutput) -> None:
        if timestamp > self.max_timestamp:
            self.max_timestamp = timestamp

    def on_batch(self, events: list[Any], timestamps: list[int], output: WatermarkOutput) -> None:
        highest = max(timestamps)
        if highest > self.max_timestamp:
            self.max_timestamp = highest

    def on_periodic_emit(self, output: WatermarkOutput) -> None:
        output.emit_watermark(self.max_timestamp - self.bound - 1)


class BoundedOutOfOrderness(WatermarkStrategy):
    """Records are at most ``max_out_of_orderness`` ms out of order."""

    periodic_only = True

    @suggest_keywords
    def __init__(self, max_out_of_orderness: int, idle_timeout: int | None = None) -> None:
        super().__init__(idle_timeout)
        if not isinstance(max_out_of_orderness, int) or max_out_of_orderness < 0:
            raise PipelineError(
                f"max_out_of_orderness is a non-negative number of milliseconds, got {max_out_of_orderness!r}"
            )
        self.max_out_of_orderness = max_out_of_orderness

    def create_generator(self) -> WatermarkGenerator:
        return _BoundedGenerator(self.max_out_of_orderness)

    def __repr__(self) -> str:
        return f"BoundedOutOfOrderness({self.max_out_of_orderness}, idle_timeout={self.idle_timeout})"


class MonotonousTimestamps(BoundedOutOfOrderness):
    """Timestamps never decrease: the watermark follows the largest one seen."""

    def __init__(self, idle_timeout: int | None = None) -> None:
        super().__init__(0, idle_timeout)


class _Split:
    __slots__ = ("generator", "held_back", "last_event", "output")

    def __init__(self, generator: WatermarkGenerator, held_back: int) -> None:
        self.generator = generator
        self.output = WatermarkOutput()
        #: when (ms) the split last produced records or was seen holding some
        self.last_event = now_ms()
        #: :attr:`SourceWatermarks.held_back` at ``last_event``
        self.held_back = held_back


class SourceWatermarks:
    """Timestamps and watermarks for one source subtask, with a generator per split."""

    def __init__(
        self,
        source: str,
        timestamps: Callable[[Any], Any] | None,
        strategy: WatermarkStrategy | None,
        interval: float,
    ) -> None:
        self.source = source
        self.timestamps = timestamps
        self.strategy = strategy
        #: 0 means after every batch (deterministic, for tests and benchmarks).
        self.interval_ms = int(interval * 1000)
        self._splits: dict[str, _Split] = {}
        #: since when (ms) the reader has had no split; None while it has some
        self._splitless_since: int | None = None
        #: no split for ``idle_timeout``: the subtask is idle (a Kafka subtask with no
        #: partition, when there are more subtasks than partitions, must not hold time back)
        self._splitless_idle = False
        #: ms the owner could not take input, held back by the pipeline (see :meth:`hold`)
        self.held_back = 0
        #: the reader's ``backlogged_splits``, asked at each periodic emission (sources only)
        self.backlog: Callable[[], Collection[str] | None] | None = None
        self.watermark = MIN_WATERMARK
        self.idle = False
        self.checks_each_batch = strategy is not None and not strategy.periodic_only

    def _split(self, name: str) -> _Split:
        split = self._splits.get(name)
        if split is None:
            assert self.strategy is not None
            split = self._splits[name] = _Split(self.strategy.create_generator(), self.held_back)
        return split

    def hold(self, since: int) -> int:
        """The owner could not take input from ``since`` (ms) until now: it was pushing
        records downstream, waiting for credit, taking a checkpoint. That time is not
        quiet time of any split (unless the reader says the split is caught up). Returns
        now, for the next call."""
        now = now_ms()
        if now > since:
            self.held_back += now - since
        return now

    def snapshot(self) -> dict[str, Any]:
        """The watermark and each split's generator state (its attributes), for a checkpoint."""
        return {
            "watermark": self.watermark,
            "splits": {
                name: {"watermark": split.output.watermark, "generator": vars(split.generator)}
                for name, split in self._splits.items()
            },
        }

    def restore(self, states: list[dict[str, Any]]) -> None:
        """Continue from snapshots (several after a rescale: the lowest watermark wins)."""
        self.watermark = min(state["watermark"] for state in states)
        if self.strategy is None:
            return
        for state in states:
            for name, saved in state["splits"].items():
                split = self._split(name)
                split.output.watermark = saved["watermark"]
                vars(split.generator).update(saved["generator"])

    def extract(self, records: list[Any]) -> list[int]:
        """The records' timestamps, checked to be ints."""
        fn = self.timestamps
        if fn is None:
            raise UserFunctionTypeError(
                self.source,
                "watermarks need event timestamps: pass timestamps=fn to app.source(...)",
                None,
                has_record=False,
            )
        stamps: list[Any] = []
        try:
            map_into(stamps, fn, records)
        except Exception as exc:
            raise OperatorError(
                self.source, "timestamp function " + describe_error(exc, fn), records[len(stamps)]
            ) from exc
        kinds = set(map(type, stamps))
        if kinds != {int}:
            for record, stamp in zip(records, stamps, strict=True):
                if stamp.__class__ is not int:
                    raise UserFunctionTypeError(
                        self.source,
                        f"timestamp function returned {stamp!r} ({type(stamp).__name__}); "
                        "event timestamps must be int milliseconds",
                        record,
                    )
        return stamps

    def track(self, active_splits: list[str]) -> None:
        """Follow the reader's splits: a finished split stops holding the watermark back;
        a split that has produced nothing yet holds it (until it produces or goes idle)."""
        if self.strategy is None:
            return
        active = set(active_splits)
        for gone in [name for name in self._splits if name not in active]:
            del self._splits[gone]
        for name in active_splits:
            self._split(name)
        if self._splits:
            self._splitless_since, self._splitless_idle = None, False
        elif self._splitless_since is None:
            self._splitless_since = now_ms()

    def on_batch(
        self, split: str, records: list[Any], known: list[int] | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Timestamps of a batch read from ``split`` (``known``: the ones the source gave,
        used without a timestamp function), and where the watermark advanced inside it:
        ``[(index, watermark), ...]``, the watermark to emit after ``records[:index]``
        (only generators that emit per event have any)."""
        stamps = known if known is not None and self.timestamps is None else self.extract(records)
        cuts: list[tuple[int, int]] = []
        if self.strategy is not None:
            state = self._split(split)
            state.last_event, state.held_back = now_ms(), self.held_back
            state.output.idle = False
            if not self.checks_each_batch:
                state.generator.on_batch(records, stamps, state.output)
            else:
                generator, output = state.generator, state.output
                for index, (record, stamp) in enumerate(zip(records, stamps, strict=True), 1):
                    before = output.watermark
                    generator.on_event(record, stamp, output)
                    if output.watermark != before:
                        advanced = self.combined()[1]
                        if advanced is not None:
                            cuts.append((index, advanced))
        return stamps, cuts

    async def push(
        self, target: Any, split: str, records: list[Any], active_splits: list[str], known: list[int] | None = None
    ) -> None:
        """Send ``records`` to ``target`` with their timestamps (``known``: from the
        source), and any watermark a per-event generator emitted right after the record
        that caused it (and, with ``interval_ms == 0``, the watermark over
        ``active_splits`` after the batch)."""
        self.track(active_splits)
        await self.activate(target)
        stamps, cuts = self.on_batch(split, records, known)
        start = 0
        for end, watermark in cuts:
            if end > start:
                await target.process(Batch(records[start:end], stamps[start:end]))
            await target.process_watermark(watermark)
            start = end
        if start == 0:
            await target.process(Batch(records, stamps))
        elif start < len(records):
            await target.process(Batch(records[start:], stamps[start:]))
        if self.interval_ms == 0:
            await self.emit_periodic(target, now_ms(), active_splits)

    async def activate(self, target: Any) -> None:
        """Records (or the final watermark) are coming: an idle output turns active first,
        so downstream counts this input again (Flink marks active before emitting)."""
        if self.idle:
            self.idle = False
            await target.process_watermark_status(False)

    async def emit_periodic(self, target: Any, now: int, active_splits: list[str]) -> None:
        """Run the periodic emission and send what changed to ``target``."""
        backlog = self.backlog
        idle_change, watermark = self.on_periodic(now, active_splits, None if backlog is None else backlog())
        if watermark is not None:
            await target.process_watermark(watermark)
        if idle_change is not None:
            await target.process_watermark_status(idle_change)

    def combined(self) -> tuple[bool | None, int | None]:
        """(idleness change, advanced watermark) over the tracked splits."""
        states = list(self._splits.values())
        active = [s.output.watermark for s in states if not s.output.idle]
        idle_change: bool | None = None
        all_idle = (bool(states) and not active) or self._splitless_idle
        if all_idle != self.idle:
            self.idle = idle_change = all_idle
        advanced: int | None = None
        if active:
            new = min(active)
            if new > self.watermark:
                self.watermark = advanced = new
        return idle_change, advanced

    def on_periodic(
        self, now: int, active_splits: list[str], backlogged: Collection[str] | None = None
    ) -> tuple[bool | None, int | None]:
        """Periodic emission: ask every split's generator, apply idleness, combine.

        ``backlogged``: the splits the reader knows hold records (never idle; an idle one
        turns active again), the others being caught up; ``None`` when the reader cannot
        tell, and then the time :meth:`hold` counted is not quiet time.

        A reader without splits for the idle timeout is idle as a whole. Splits that went
        quiet turn idle one at a time, the longest quiet (then the lowest
        watermark) first, each after the watermark of the others was taken: a split that
        had no records holds nothing back once it is idle, even when the one with records
        goes idle in the same round.
        """
        timeout = self.strategy.idle_timeout if self.strategy is not None else None
        self.track(active_splits)
        was_idle = self.idle
        splits = self._splits
        states = splits.values()
        for state in states:
            state.generator.on_periodic_emit(state.output)
        advanced: int | None = None
        if timeout is not None and self._splitless_since is not None:
            self._splitless_idle = now - self._splitless_since >= timeout
        if timeout is not None:
            if backlogged is None:  # quiet time: since the last records, less the time held back
                held_back = self.held_back
                quiet = [
                    s for s in states if not s.output.idle and now - s.last_event - (held_back - s.held_back) >= timeout
                ]
            else:  # the reader knows which splits are caught up: for those the wall clock counts
                for name in backlogged:
                    waiting = splits.get(name)
                    if waiting is not None:
                        waiting.last_event, waiting.output.idle = now, False
                quiet = [s for s in states if not s.output.idle and now - s.last_event >= timeout]
            for state in sorted(quiet, key=lambda s: (s.last_event, s.output.watermark)):
                step = self.combined()[1]
                advanced = step if step is not None else advanced
                state.output.idle = True
        step = self.combined()[1]
        advanced = step if step is not None else advanced
        return (self.idle if self.idle != was_idle else None), advanced
