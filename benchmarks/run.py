"""aioflow benchmarks: each workload run by aioflow and by a hand-written floor.

    python benchmarks/run.py --workload w1 --events 1000000 --json
    python benchmarks/run.py --workload all --repeat 3
    python benchmarks/run.py --workload w2 --state-backend lmdb --checkpoint-interval 1 --versus-memory
    python benchmarks/run.py --workload kafka --state-backend lmdb --checkpoint-interval 1 --versus-memory

Every measurement runs in a fresh child process (this file with ``--child``), so its peak
RSS is its own; floor and aioflow runs alternate, and the best run of each side is
reported. Input files are generated (untimed) into ``benchmarks/.data`` and reused. The
two sides' outputs must be equal, or the workload is reported as failed.

``--state-backend lmdb`` runs the aioflow side with its keyed state in LMDB, in a fresh
temporary state directory per run (removed after it), and ``--checkpoint-interval`` adds
periodic checkpoints; ``--versus-memory`` then also runs the aioflow side with the
memory backend, alternating with the other two, and reports the ratio of the two.

The ``kafka`` workload is w2 between Kafka topics on a Tansu broker it starts itself; each
of its runs is a whole process (``aioflow run`` for aioflow), timed from its start, and
it also reports the time to the first record. See ``kafka_bench.py`` and the README.

With ``--json`` each workload prints one JSON object on its own line as it finishes (the
last line is the last workload's); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from reporting import RESULT_PREFIX, ChildFailed, completed_checkpoints, peak_rss_mb
from workloads import (
    FLOORS,
    PARTITIONS,
    SLIDING_FLOORS,
    JobInput,
    Prepare,
    Unavailable,
    canonical,
    digest,
    ensure_events,
    floor_of,
)

DATA_DIR = Path(__file__).resolve().parent / ".data"
FLOOR, AIOFLOW = "floor", "aioflow"
#: The aioflow side with the memory backend and no checkpoints (``--versus-memory``).
MEMORY = "aioflow-memory"


@dataclass(frozen=True)
class StateConfig:
    """Where the aioflow side keeps its keyed state: ``"memory"``, or ``"lmdb"`` (in a fresh
    temporary state directory per run), with a checkpoint every ``checkpoint_interval`` s."""

    backend: str = "memory"
    checkpoint_interval: float | None = None


IN_MEMORY = StateConfig()


@dataclass(frozen=True)
class Workload:
    """A benchmark: its name, what it measures, its default size and its memory limit."""

    name: str
    description: str
    default_events: int
    reads_file: bool = True
    rss_limit_mb: float | None = None


WORKLOADS = {
    w.name: w
    for w in (
        Workload("w1", "parse JSON lines, filter amount > 10, map to (user, amount * 1.1), count", 1_000_000),
        Workload(
            "backpressure",
            "generator into a sink sleeping 1 ms per batch; peak RSS must stay small",
            5_000_000,
            reads_file=False,
            rss_limit_mb=250.0,
        ),
        Workload("w2", "key by user, 10 s tumbling event-time windows: (user, start, count, sum)", 1_000_000),
        Workload("w3", "keyed process function: running count, 30 s inactivity event-time timers", 1_000_000),
        Workload(
            "sliding", "key by user, 10 s event-time windows sliding by 2 s: (user, start, count, sum)", 1_000_000
        ),
        Workload(
            "session", "key by user, event-time session windows, 5 s gap: (user, start, end, count, sum)", 1_000_000
        ),
        Workload(
            "async_io",
            "each record awaits a 10 ms call after key_by (10k keys); floor: asyncio.gather, at most 100 at once",
            20_000,
            reads_file=False,
        ),
        Workload(
            "async_io_ordered",
            "each record awaits a 10 ms call through map_async (capacity 100), results "
            "in input order; floor: asyncio.gather",
            20_000,
            reads_file=False,
        ),
        Workload("async_io_unordered", "as async_io_ordered, results as they complete", 20_000, reads_file=False),
        Workload(
            "async_http",
            "map_async of an HTTP GET (aiohttp) to a local service answering after 10 ms, "
            "capacity 100; floor: asyncio.gather of the same requests",
            20_000,
            reads_file=False,
        ),
        Workload(
            "digits",
            "scikit-learn SVC predict over 8x8 digits with map_batch (64 per call); floor: the "
            "same batched predict loop",
            20_000,
            reads_file=False,
        ),
        Workload("digits_per_record", "as digits, one predict call per image in a map", 20_000, reads_file=False),
        Workload(
            "kafka", "w2 from a 4-partition Kafka topic to a Kafka topic, each side a process of its own", 1_000_000
        ),
    )
}


# -- child: one measurement --------------------------------------------------------------


def _prepare(side: str, workload: str, sliding_floor: str) -> Prepare:
    if side == FLOOR:
        return floor_of(workload, sliding_floor)
    import aioflow_jobs  # only here: a floor child never imports aioflow

    aioflow_jobs.warm_up()
    return aioflow_jobs.JOBS[workload]


def measure(side: str, workload: str, job: JobInput, sliding_floor: str = "panes") -> dict[str, Any]:
    """Run one side of a workload once; its time, peak RSS and output fingerprint."""
    try:
        run = _prepare(side, workload, sliding_floor)(job)
    except Unavailable as exc:
        return {"unavailable": str(exc)}
    started, cpu_started = time.perf_counter(), time.process_time()
    output = run()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    rss_mb = peak_rss_mb()
    result = canonical(workload, output)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": rss_mb,
        "outputs": result if isinstance(result, int) else len(result),
        "digest": digest(result),
    }


def child_main(args: argparse.Namespace) -> int:
    (workload,) = args.workload
    path = Path(args.path) if args.path else None
    job = JobInput(args.events, path, args.state_backend, args.checkpoint_interval)
    if args.child == AIOFLOW and args.state_backend == "lmdb":
        with tempfile.TemporaryDirectory(prefix="aioflow-bench-state-") as state_dir:
            result = measure(args.child, workload, replace(job, state_dir=Path(state_dir)), args.sliding_floor)
    else:
        result = measure(args.child, workload, job, args.sliding_floor)
    print(RESULT_PREFIX + orjson.dumps(result).decode(), flush=True)
    return 0


# -- parent: the harness -------------------------------------------------------------------


def run_child(
    side: str, workload: str, job: JobInput, state: StateConfig = IN_MEMORY, sliding_floor: str = "panes"
) -> dict[str, Any]:
    """Measure one side of ``workload`` in a fresh Python process (the aioflow side with
    its state configured by ``state``; the sliding floor as ``sliding_floor`` says)."""
    child = AIOFLOW if side == MEMORY else side
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        child,
        "--workload",
        workload,
        "--events",
        str(job.events),
        "--state-backend",
        state.backend,
        "--sliding-floor",
        sliding_floor,
    ]
    if state.checkpoint_interval is not None:
        command += ["--checkpoint-interval", repr(state.checkpoint_interval)]
    if job.path is not None:
        command += ["--path", str(job.path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = orjson.loads(line[len(RESULT_PREFIX) :])
            durations = completed_checkpoints(done.stderr)
            result["checkpoints"] = len(durations)
            result["checkpoint_max_ms"] = max(durations, default=None)
            return result
    raise ChildFailed(f"{side} run of {workload} exited with {done.returncode}:\n{done.stderr.strip()[-3000:]}")


@dataclass
class Side:
    """The runs of one side of a workload."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    unavailable: str | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.unavailable is None and self.error is None

    def record(self, side: str, workload: str, measure: Callable[[], dict[str, Any]]) -> None:
        """Add the result of ``measure()``, one run of ``side``; a failure ends the side."""
        try:
            result = measure()
        except ChildFailed as exc:
            self.error = str(exc)
            return
        if "unavailable" in result:
            self.unavailable = result["unavailable"]
        else:
            self.runs.append(result)
        _progress(f"{workload}: {side} {describe_error_run(result)}")

    def best(self) -> dict[str, Any] | None:
        return min(self.runs, key=lambda r: r["seconds"]) if self.runs else None

    def min_cpu_seconds(self) -> float | None:
        return min(r["cpu_seconds"] for r in self.runs) if self.runs else None

    def max_rss_mb(self) -> float | None:
        return round(max(r["peak_rss_mb"] for r in self.runs), 1) if self.runs else None


def describe_error_run(result: dict[str, Any]) -> str:
    if "unavailable" in result:
        return f"unavailable: {result['unavailable']}"
    first = f", first record after {result['first_record_s']:.3f} s" if "first_record_s" in result else ""
    return f"{result['seconds']:.3f} s, {result['peak_rss_mb']:.0f} MB, {result['outputs']} outputs{first}"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def benchmark(
    workload: Workload,
    events: int,
    seed: int,
    repeat: int,
    state: StateConfig = IN_MEMORY,
    versus_memory: bool = False,
    sliding_floor: str = "panes",
) -> dict[str, Any]:
    """Alternate floor and aioflow runs (and aioflow in memory, with ``versus_memory``)
    ``repeat`` times; the report of the best of each. ``sliding_floor``: which of
    ``SLIDING_FLOORS`` is the ``sliding`` workload's floor."""
    path = None
    if workload.reads_file:
        _progress(f"{workload.name}: preparing {events} events (seed {seed})")
        path = ensure_events(events, seed, DATA_DIR)
    job = JobInput(events, path)
    floor, framework = Side(), Side()
    memory = Side() if versus_memory else None
    for _ in range(repeat):
        for side_name, side, side_state in _in_turn(floor, memory, framework, state):
            if side.active:
                side.record(
                    side_name,
                    workload.name,
                    partial(run_child, side_name, workload.name, job, side_state, sliding_floor),
                )
    result = report(workload, job, seed, repeat, floor, framework, state, memory)
    if workload.name == "sliding":
        result["sliding_floor"] = sliding_floor
    return result


def _in_turn(
    floor: Side, memory: Side | None, framework: Side, state: StateConfig
) -> list[tuple[str, Side, StateConfig]]:
    """The sides in the order their runs alternate: floor, memory (if any), aioflow; each
    with its name and state configuration."""
    sides = [(FLOOR, floor, IN_MEMORY)]
    if memory is not None:
        sides.append((MEMORY, memory, IN_MEMORY))
    sides.append((AIOFLOW, framework, state))
    return sides


def benchmark_kafka(
    workload: Workload,
    events: int,
    seed: int,
    repeat: int,
    state: StateConfig = IN_MEMORY,
    versus_memory: bool = False,
    floor_batches: bool = False,
) -> dict[str, Any]:
    """The ``kafka`` workload: a broker of its own, the events in a topic (untimed), then
    floor and aioflow processes alternating as in :func:`benchmark` (see ``kafka_bench``);
    ``floor_batches``: the floor produces record batches instead of a send per result."""
    import kafka_bench  # only here: aiokafka stays out of the other workloads' processes

    _progress(f"{workload.name}: preparing {events} events (seed {seed})")
    job = JobInput(events, ensure_events(events, seed, DATA_DIR))
    floor, framework = Side(), Side()
    memory = Side() if versus_memory else None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="aioflow-bench-kafka-") as folder,
            kafka_bench.tansu_broker(Path(folder) / "broker.log") as servers,
        ):
            started = time.perf_counter()
            kafka_bench.produce_events(servers, "events", job.file)
            _progress(
                f"{workload.name}: {events} events in a {PARTITIONS}-partition topic on {servers} "
                f"({time.perf_counter() - started:.1f} s)"
            )
            for _ in range(repeat):
                for side_name, side, side_state in _in_turn(floor, memory, framework, state):
                    if side.active:
                        run = kafka_bench.KafkaRun(
                            servers, "events", events, side_state.backend, side_state.checkpoint_interval, floor_batches
                        )
                        side.record(
                            side_name,
                            workload.name,
                            partial(kafka_bench.run_side, FLOOR if side_name == FLOOR else AIOFLOW, run),
                        )
    except Unavailable as exc:
        floor.unavailable = framework.unavailable = str(exc)
    except ChildFailed as exc:  # the broker
        floor.error = str(exc)
    result = report(workload, job, seed, repeat, floor, framework, state, memory)
    # Both sides must also agree with w2 over the events file: the same job, without Kafka.
    runs = floor.runs + framework.runs + (memory.runs if memory is not None else [])
    if runs:
        expected = digest(canonical("w2", FLOORS["w2"](job)()))
        if any(r["digest"] != expected for r in runs):
            result["problems"].append("the results differ from w2's over the events file")
            result["ok"] = False
    result["kafka_floor"] = "batches" if floor_batches else "send"
    return result


def _rate(events: int, run: dict[str, Any] | None) -> float | None:
    return round(events / run["seconds"]) if run else None


def _least(side: Side, key: str) -> float | None:
    """The least ``key`` over a side's runs (``None`` if its runs do not measure it)."""
    values = [r[key] for r in side.runs if r.get(key) is not None]
    return round(min(values), 3) if values else None


def report(
    workload: Workload,
    job: JobInput,
    seed: int,
    repeat: int,
    floor: Side,
    framework: Side,
    state: StateConfig = IN_MEMORY,
    memory: Side | None = None,
) -> dict[str, Any]:
    """The JSON report of one workload, with the checks that decide ``ok``."""
    best, floor_best = framework.best(), floor.best()
    rate, floor_rate = _rate(job.events, best), _rate(job.events, floor_best)
    memory = memory or Side()
    memory_best = memory.best()
    memory_rate = _rate(job.events, memory_best)
    cpu, memory_cpu = framework.min_cpu_seconds(), memory.min_cpu_seconds()
    floor_cpu = floor.min_cpu_seconds()
    first_record, floor_first_record = _least(framework, "first_record_s"), _least(floor, "first_record_s")
    digests = {r["digest"] for r in floor.runs + memory.runs + framework.runs}
    problems = [error for error in (floor.error, memory.error, framework.error) if error]
    if len(digests) > 1:
        problems.append("outputs differ between floor and aioflow (or between runs)")
    peak = framework.max_rss_mb()
    if workload.rss_limit_mb is not None and peak is not None and peak >= workload.rss_limit_mb:
        problems.append(f"peak RSS {peak} MB is over the {workload.rss_limit_mb} MB limit")
    return {
        "workload": workload.name,
        "events": job.events,
        "seconds": round(best["seconds"], 4) if best else None,
        "events_per_sec": rate,
        "floor_seconds": round(floor_best["seconds"], 4) if floor_best else None,
        "floor_events_per_sec": floor_rate,
        "ratio_to_floor": round(rate / floor_rate, 3) if rate and floor_rate else None,
        "peak_rss_mb": peak,
        "floor_peak_rss_mb": floor.max_rss_mb(),
        "rss_limit_mb": workload.rss_limit_mb,
        "state_backend": state.backend,
        "checkpoint_interval": state.checkpoint_interval,
        "checkpoints": best["checkpoints"] if best else None,
        "checkpoint_max_ms": best["checkpoint_max_ms"] if best else None,
        "memory_seconds": round(memory_best["seconds"], 4) if memory_best else None,
        "memory_events_per_sec": memory_rate,
        "ratio_to_memory": round(rate / memory_rate, 3) if rate and memory_rate else None,
        "cpu_seconds": round(cpu, 4) if cpu is not None else None,
        "memory_cpu_seconds": round(memory_cpu, 4) if memory_cpu is not None else None,
        "floor_cpu_seconds": round(floor_cpu, 4) if floor_cpu is not None else None,
        "cpu_ratio_to_memory": round(memory_cpu / cpu, 3) if cpu and memory_cpu else None,
        "memory_peak_rss_mb": memory.max_rss_mb(),
        "memory_ratio_to_floor": round(memory_rate / floor_rate, 3) if memory_rate and floor_rate else None,
        "first_record_s": first_record,
        "floor_first_record_s": floor_first_record,
        "memory_first_record_s": _least(memory, "first_record_s"),
        "first_record_delta_s": round(first_record - floor_first_record, 3)
        if first_record is not None and floor_first_record is not None
        else None,
        "first_result_s": _least(framework, "first_result_s"),
        "floor_first_result_s": _least(floor, "first_result_s"),
        "memory_first_result_s": _least(memory, "first_result_s"),
        "exit_s": _least(framework, "exit_s"),
        "floor_exit_s": _least(floor, "exit_s"),
        "memory_exit_s": _least(memory, "exit_s"),
        "outputs": (best or floor_best or {}).get("outputs"),
        "outputs_equal": len(digests) == 1 if best and floor_best else None,
        "unavailable": framework.unavailable,
        "ok": not problems,
        "problems": problems,
        "repeat": repeat,
        "seed": seed,
        "all_seconds": [round(r["seconds"], 4) for r in framework.runs],
        "all_floor_seconds": [round(r["seconds"], 4) for r in floor.runs],
        "all_memory_seconds": [round(r["seconds"], 4) for r in memory.runs],
        "all_cpu_seconds": [round(r["cpu_seconds"], 4) for r in framework.runs],
        "all_memory_cpu_seconds": [round(r["cpu_seconds"], 4) for r in memory.runs],
        "all_first_record_s": [round(r["first_record_s"], 3) for r in framework.runs if "first_record_s" in r],
        "all_floor_first_record_s": [round(r["first_record_s"], 3) for r in floor.runs if "first_record_s" in r],
        "all_memory_first_record_s": [round(r["first_record_s"], 3) for r in memory.runs if "first_record_s" in r],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aioflow_version": importlib.metadata.version("aioflow"),
    }


# -- output ------------------------------------------------------------------------------

_COLUMNS = (
    ("workload", "workload", "{}"),
    ("events", "events", "{:,}"),
    ("state", "state_backend", "{}"),
    ("aioflow s", "seconds", "{:.3f}"),
    ("aioflow ev/s", "events_per_sec", "{:,}"),
    ("floor ev/s", "floor_events_per_sec", "{:,}"),
    ("ratio", "ratio_to_floor", "{:.3f}"),
    ("vs memory", "ratio_to_memory", "{:.3f}"),
    ("checkpoints", "checkpoints", "{}"),
    ("1st record s", "first_record_s", "{:.3f}"),
    ("floor 1st record s", "floor_first_record_s", "{:.3f}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("floor RSS MB", "floor_peak_rss_mb", "{:.0f}"),
)


def _row(report: dict[str, Any]) -> list[str]:
    cells = [fmt.format(report[key]) if report[key] is not None else "-" for _, key, fmt in _COLUMNS]
    status = "unavailable" if report["unavailable"] else "ok" if report["ok"] else "FAILED"
    return [*cells, status]


def table(reports: list[dict[str, Any]]) -> str:
    """The reports as a fixed-width text table, with any problems listed below it."""
    rows = [[title for title, _, _ in _COLUMNS] + ["check"]] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    for r in reports:
        notes = r["problems"] + ([f"aioflow unavailable: {r['unavailable']}"] if r["unavailable"] else [])
        if r["memory_events_per_sec"] is not None:
            memory = f"memory side: {r['memory_events_per_sec']:,} ev/s, ratio {r['memory_ratio_to_floor']}"
            if r["memory_first_record_s"] is not None:
                memory += f", first record after {r['memory_first_record_s']:.3f} s"
            notes.append(memory)
        lines += [f"{r['workload']}: {note}" for note in notes]
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------


def _workloads(text: str) -> list[str]:
    names = list(WORKLOADS) if text == "all" else text.split(",")
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark aioflow against hand-written floors.")
    parser.add_argument(
        "--workload",
        default="all",
        type=_workloads,
        help=f"one or more, comma-separated, of {', '.join(WORKLOADS)}; or all (default)",
    )
    parser.add_argument("--events", type=int, help="input size (default: per workload)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best is reported")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated events")
    parser.add_argument("--json", action="store_true", help="one JSON object per workload")
    parser.add_argument(
        "--state-backend",
        default="memory",
        choices=["memory", "lmdb"],
        help="where the aioflow side keeps keyed state; lmdb: a fresh temporary state_dir per run (default: memory)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        metavar="SECONDS",
        help="take a checkpoint every SECONDS (needs --state-backend lmdb; default: no checkpoints)",
    )
    parser.add_argument(
        "--versus-memory",
        action="store_true",
        help="also run the aioflow side with the memory backend and no checkpoints, alternating with "
        "the others, and report ratio_to_memory",
    )
    parser.add_argument(
        "--kafka-floor",
        default="send",
        choices=["send", "batches"],
        help="how the kafka workload's floor produces its results: a send() per result (the plain loop), "
        "or record batches built by hand (default: send)",
    )
    parser.add_argument(
        "--sliding-floor",
        default="panes",
        choices=list(SLIDING_FLOORS),
        help="the sliding workload's floor: partial aggregates per 2 s pane, summed when a window fires "
        "(the faster), or a dict per window with each event added to its five windows (default: panes)",
    )
    parser.add_argument("--child", choices=[FLOOR, AIOFLOW], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.events is not None and args.events < 1):
        parser.error("--repeat and --events must be positive")
    if args.checkpoint_interval is not None:
        if not args.checkpoint_interval > 0:
            parser.error(f"--checkpoint-interval must be positive seconds, got {args.checkpoint_interval:g}")
        if args.state_backend != "lmdb":
            parser.error("--checkpoint-interval needs --state-backend lmdb (checkpoints live in the LMDB store)")
    if args.versus_memory and args.state_backend == "memory":
        parser.error("--versus-memory compares another state backend with memory; add --state-backend lmdb")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    names = args.workload
    state = StateConfig(args.state_backend, args.checkpoint_interval)
    reports = []
    for name in names:
        workload = WORKLOADS[name]
        events = args.events or workload.default_events
        if name == "kafka":
            result = benchmark_kafka(
                workload,
                events,
                args.seed,
                args.repeat,
                state,
                args.versus_memory,
                floor_batches=args.kafka_floor == "batches",
            )
        else:
            result = benchmark(workload, events, args.seed, args.repeat, state, args.versus_memory, args.sliding_floor)
        reports.append(result)
        if args.json:
            print(orjson.dumps(result).decode(), flush=True)
    if not args.json:
        print(table(reports))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
