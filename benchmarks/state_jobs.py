"""The jobs ``state.py`` measures, configured by environment variables, so that one file
runs both as ``python -m aioflow run benchmarks/state_jobs.py:app`` (a real worker's
process start, for recovery times) and as ``python benchmarks/state_jobs.py`` (the job,
then its peak memory and run time on a ``@@state-result`` line of stdout).

``BENCH_JOB=keys`` (populate, then probe): a source of keys ``k0`` .. ``k<N-1>`` and a
probe source, unioned, keyed by key, into ``count`` (a value-state counter per key). Only
probe records produce output: ``"<key> <count>"``, printed by a sink. A bounded populating
run (no probe records) leaves a checkpoint of N keys; a later run on the same state
directory restores it: the keys source resumes at its end (nothing left) while the probe
source (which keeps no position) sends its records, and a count above 1 shows the state
was restored.

``BENCH_JOB=touch`` (checkpoint cost): a source in phases into the same ``count``. Phase 0
sends every key once; each later phase a random ``BENCH_TOUCH`` fraction of them. A phase
starts only after the checkpoint taken after the previous one has *completed* (its
manifest is in checkpoint storage), so each checkpoint holds exactly one phase. At
every barrier the source logs ``touch barrier`` with what it had sent; ``state.py``
pairs those events with the ``checkpoint complete`` events of the same log.

``BENCH_JOB=timers`` (pending timers): a source of keys ``k0`` .. ``k<N-1>`` and a probe
source into ``arm``, which registers one event-time timer per key at ``FAR_FUTURE`` (the
source has no event time, so no watermark comes before the end of input and none
fires). Populating (no probe records): once every key is sent, the source waits for two
checkpoints, the one holding every timer (``full``) and the next (``unchanged``: nothing
changed since), logging ``timers barrier`` at every barrier; when the second has
completed it stops the job, which takes a savepoint and keeps the timers (a stop is not
a drain). Probing (``BENCH_PROBE`` > 0): the keys source resumes at its end and ends; the
probe records are answered at once (``probe k<i>``, the restore time), then the end of
input's final watermark fires every restored timer, and the sink prints ``firing`` when
the first one arrives and ``fired <count> <sum of i>`` when it closes.

Environment: ``BENCH_JOB``, ``BENCH_KEYS``, ``BENCH_PROBE`` (probe records, default 0),
``BENCH_STATE_DIR`` (absent: memory backend), ``BENCH_CHECKPOINT_INTERVAL`` (seconds),
``BENCH_CACHE`` (``state_cache_size``), ``BENCH_TOUCH``, ``BENCH_ROUNDS``, ``BENCH_SEED``.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog

import aioflow as af

__all__ = ["FAR_FUTURE", "FIRED", "RESULT_PREFIX", "TIMERS_BARRIER", "TOUCH_BARRIER", "app", "build_app", "timers_sink"]

#: Marks the line of stdout on which a script run reports its measurement.
RESULT_PREFIX = "@@state-result "
#: The log event of the touch source at each barrier.
TOUCH_BARRIER = "touch barrier"
#: The log event of the timers source at each barrier.
TIMERS_BARRIER = "timers barrier"
#: Where the timers job's timers are: 2100-01-01, far past any watermark but the last.
FAR_FUTURE = 4_102_444_800_000
#: The line the timers job's sink prints when it closes: ``fired <count> <sum of i>``.
FIRED = "fired"

log = structlog.get_logger("benchmarks.state")


class Count(af.KeyedProcessFunction):
    """A counter per key; a probe record ``(key, 1)`` is answered with ``"key count"``."""

    def open(self, ctx: af.OperatorContext) -> None:
        self.count = ctx.value_state("n", default=0)

    def process_element(self, value: tuple[str, int], ctx: af.OperatorContext) -> Iterator[str]:
        n = self.count.value() + 1
        self.count.update(n)
        if value[1]:
            yield f"{value[0]} {n}"


# -- the keys source: resumes in O(1) ------------------------------------------------------


class _KeysReader(af.SourceReader):
    def __init__(self, keys: int) -> None:
        self._keys = keys
        self._next = 0

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        start = self._next
        if start >= self._keys:
            return None
        end = self._next = min(start + max_records, self._keys)
        return af.SourceBatch([(f"k{i}", 0) for i in range(start, end)])

    def position(self) -> int:
        return self._next

    def restore(self, position: Any) -> None:
        self._next = int(position)


class KeysSource(af.Source):
    """``("k<i>", 0)`` for ``i`` in ``range(keys)``; its position is ``i``, so a restore
    resumes without reading what came before (unlike ``from_iterable``, which skips)."""

    default_name = "keys"
    max_parallelism = 1
    replayable = True

    def __init__(self, keys: int) -> None:
        self.keys = keys

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _KeysReader(self.keys)


class _ProbeReader(af.SourceReader):
    def __init__(self, records: list[tuple[str, int]]) -> None:
        self._records = records

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        records, self._records = self._records, []
        return af.SourceBatch(records) if records else None


class ProbeSource(af.Source):
    """``("k<i>", 1)`` for ``i`` in ``range(records)``, in every run: it keeps no position,
    so each restart on the same state directory probes again."""

    default_name = "probe"
    max_parallelism = 1

    def __init__(self, records: int) -> None:
        self.records = records

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _ProbeReader([(f"k{i}", 1) for i in range(self.records)])


# -- the touch source: one phase per checkpoint --------------------------------------------


class _PhasedReader(af.SourceReader):
    IDLE_SLEEP = 0.002  # between reads while waiting: a barrier comes at most this late

    def __init__(self, keys: int, fraction: float, rounds: int, seed: int, records: Path) -> None:
        self._keys = keys
        self._touched = max(1, round(keys * fraction))
        self._rounds = rounds
        self._random = random.Random(seed)
        self._records = records
        self._phase = 0
        self._phase_keys: Sequence[int] = range(keys)
        self._offset = 0
        self._barriers = 0  # position() calls so far: one per checkpoint, ids from 1
        self._checkpoint_after_phase: int | None = None
        self._exhausted = False

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        if self._offset >= len(self._phase_keys):
            after = self._checkpoint_after_phase
            if after is None or not _completed(self._records, after):
                await anyio.sleep(min(timeout, self.IDLE_SLEEP))
                return af.SourceBatch([])
            if self._phase == self._rounds:
                self._exhausted = True
                return None
            self._phase += 1
            self._phase_keys = self._random.sample(range(self._keys), self._touched)
            self._offset = 0
            self._checkpoint_after_phase = None
        start = self._offset
        self._offset = end = min(start + max_records, len(self._phase_keys))
        return af.SourceBatch([(f"k{i}", 0) for i in self._phase_keys[start:end]])

    def position(self) -> dict[str, int]:
        self._barriers += 1
        complete = self._offset >= len(self._phase_keys)
        if complete and self._checkpoint_after_phase is None and not self._exhausted:
            self._checkpoint_after_phase = self._barriers
        log.info(
            TOUCH_BARRIER,
            barrier=self._barriers,
            phase=self._phase,
            sent=self._offset,
            phase_size=len(self._phase_keys),
            complete=complete,
            final=self._exhausted,
        )
        return {"phase": self._phase, "sent": self._offset}


class PhasedSource(af.Source):
    """Every key once, then ``rounds`` random ``fraction`` s of them, one per checkpoint."""

    default_name = "phases"
    max_parallelism = 1

    def __init__(self, keys: int, fraction: float, rounds: int, seed: int, state_dir: Path) -> None:
        self.keys, self.fraction, self.rounds, self.seed = keys, fraction, rounds, seed
        self.records = state_dir / "checkpoints"

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _PhasedReader(self.keys, self.fraction, self.rounds, self.seed, self.records)


# -- the timers job: a timer per key, kept over a stop -------------------------------------


class Arm(af.KeyedProcessFunction):
    """Registers one event-time timer per key at ``FAR_FUTURE``; answers a probe record
    ``(key, 1)`` with ``("probe", key)`` at once; a timer that fires yields ``("fired", key)``."""

    def process_element(self, value: tuple[str, int], ctx: af.OperatorContext) -> Iterator[tuple[str, str]]:
        if value[1]:
            yield ("probe", value[0])
        else:
            ctx.timer_service.register_event_time_timer(FAR_FUTURE)

    def on_timer(self, timestamp: int, ctx: af.OperatorContext) -> Iterator[tuple[str, str]]:
        yield ("fired", ctx.key)


class _TimersReader(_KeysReader):
    IDLE_SLEEP = 0.002  # between reads while waiting: a barrier comes at most this late

    def __init__(self, keys: int, records: Path | None, on_held: Callable[[], None]) -> None:
        super().__init__(keys)
        self._records = records  # None: bounded (probing)
        self._on_held = on_held
        self._barriers = 0  # position() calls so far: one per checkpoint, ids from 1 in a fresh job
        self._full: int | None = None
        self._unchanged: int | None = None
        self._stopping = False

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        batch = await super().read(max_records, timeout)
        if batch is not None or self._records is None:
            return batch
        after = self._unchanged
        if not self._stopping and after is not None and _completed(self._records, after):
            self._stopping = True
            self._on_held()
        await anyio.sleep(min(timeout, self.IDLE_SLEEP))
        return af.SourceBatch([])

    def position(self) -> int:
        self._barriers += 1
        complete = self._next >= self._keys
        role = None
        if complete and self._records is not None and not self._stopping:
            if self._full is None:
                self._full, role = self._barriers, "full"
            elif self._unchanged is None:
                self._unchanged, role = self._barriers, "unchanged"
        log.info(TIMERS_BARRIER, barrier=self._barriers, sent=self._next, keys=self._keys, complete=complete, role=role)
        return self._next


class TimersSource(KeysSource):
    """``KeysSource`` that, populating, waits after its keys for the checkpoints holding
    every timer and then calls ``on_held`` (``app.stop``); probing, it ends like
    ``KeysSource``."""

    default_name = "timer-keys"

    def __init__(self, keys: int, state_dir: Path, on_held: Callable[[], None], *, probing: bool) -> None:
        super().__init__(keys)
        self.records = None if probing else state_dir / "checkpoints"
        self.on_held = on_held

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _TimersReader(self.keys, self.records, self.on_held)


class _TimersWriter(af.SinkWriter):
    def __init__(self, sink: TimersSink) -> None:
        self._sink = sink

    async def write(self, values: list[tuple[str, str]]) -> None:
        sink = self._sink
        lines = []
        for kind, key in values:
            if kind == "probe":
                lines.append(f"probe {key}\n")
            else:
                if not sink.fired:
                    lines.append("firing\n")
                sink.fired += 1
                sink.index_sum += int(key[1:])
        if lines:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()

    async def close(self) -> None:
        sys.stdout.write(f"{FIRED} {self._sink.fired} {self._sink.index_sum}\n")
        sys.stdout.flush()


class TimersSink(af.Sink):
    """Prints probe answers at once, counts fired timers (and sums their key indexes, to
    tell every key fired once from miscounts) and prints the totals when it closes.
    Parallelism 1 (the benchmark's jobs run with 1): one writer keeps the counts."""

    default_name = "timers-out"

    def __init__(self) -> None:
        self.fired = 0
        self.index_sum = 0

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        return _TimersWriter(self)


#: The timers job's sink: script mode reports its count of fired timers (0 when populating).
timers_sink = TimersSink()


# -- the app ---------------------------------------------------------------------------------


def build_app(environ: dict[str, str] | os._Environ[str]) -> af.App:
    """The app ``environ`` describes (see the module docstring)."""
    job = environ.get("BENCH_JOB", "keys")
    keys = int(environ.get("BENCH_KEYS", "0"))
    state_dir = environ.get("BENCH_STATE_DIR")
    options: dict[str, Any] = {}
    if state_dir:
        interval = environ.get("BENCH_CHECKPOINT_INTERVAL")
        options.update(
            state_dir=state_dir, state_backend="lmdb", checkpoint_interval=float(interval) if interval else None
        )
        if "BENCH_CACHE" in environ:
            options["state_cache_size"] = int(environ["BENCH_CACHE"])
    app = af.App(f"state-{job}", **options)
    if job == "touch":
        if not state_dir:
            raise ValueError("the touch job needs BENCH_STATE_DIR: it measures checkpoints")
        source = PhasedSource(
            keys,
            float(environ.get("BENCH_TOUCH", "0.01")),
            int(environ.get("BENCH_ROUNDS", "4")),
            int(environ.get("BENCH_SEED", "1")),
            Path(state_dir),
        )
        app.source(source, name="phases").key_by(lambda r: r[0]).process(Count(), name="count")
        return app
    probe = ProbeSource(int(environ.get("BENCH_PROBE", "0")))
    if job == "timers":
        if not state_dir:
            raise ValueError("the timers job needs BENCH_STATE_DIR: it measures checkpoints and restores")
        keys_source = TimersSource(keys, Path(state_dir), app.stop, probing=probe.records > 0)
        records = app.source(keys_source, name="keys").union(app.source(probe, name="probe"))
        records.key_by(lambda r: r[0]).process(Arm(), name="arm").sink(timers_sink, name="out")
        return app
    if job != "keys":
        raise ValueError(f"BENCH_JOB must be 'keys', 'touch' or 'timers', got {job!r}")
    records = app.source(KeysSource(keys), name="keys").union(app.source(probe, name="probe"))
    records.key_by(lambda r: r[0]).process(Count(), name="count").sink(af.PrintSink(), name="out")
    return app


app = build_app(os.environ)


# -- script mode: run, then report time and peak memory ---------------------------------------


def _status() -> dict[str, int]:
    """``VmHWM``, ``RssAnon`` and ``RssFile`` of this process, in kB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0])
    return fields


class _PeakSampler(threading.Thread):
    """Samples ``RssAnon`` and ``RssFile`` every ``interval`` s: ``VmHWM`` is their peak sum;
    this says how much of it was the process's own memory and how much mapped LMDB pages."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(name="peak-sampler", daemon=True)
        self.interval = interval
        self.peak_anon = self.peak_file = 0
        self._done = threading.Event()

    def sample(self) -> None:
        fields = _status()
        self.peak_anon = max(self.peak_anon, fields.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, fields.get("RssFile", 0))

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def main() -> int:
    sampler = _PeakSampler()
    sampler.start()
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    sampler.stop()
    result = {
        "seconds": seconds,
        "peak_rss_mb": _status().get("VmHWM", 0) / 1024,
        "peak_anon_mb": sampler.peak_anon / 1024,
        "peak_file_mb": sampler.peak_file / 1024,
        "fired": timers_sink.fired,
    }
    sys.stdout.write(RESULT_PREFIX + orjson.dumps(result).decode() + "\n")
    return 0


def _completed(storage: Path, checkpoint_id: int) -> bool:
    """Checkpoint ``checkpoint_id``'s manifest is in checkpoint storage: it completed."""
    return any(storage.glob(f"*/chk-{checkpoint_id}/_manifest"))


if __name__ == "__main__":
    sys.exit(main())
