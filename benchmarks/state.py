"""State benchmarks: checkpoint cost, recovery time and peak memory of LMDB-backed state.

    python benchmarks/state.py                      # everything, at the sizes of the issue
    python benchmarks/state.py --keys 100000        # quick: no measurement above 100k keys
    python benchmarks/state.py --only recovery --json

Every job runs in its own process (the jobs are in ``state_jobs.py``), in state
directories under a fresh temporary folder that is removed at the end (``--keep`` keeps
it). All checkpoint numbers are read from the jobs' logs: each completed checkpoint logs
``checkpoint complete`` with its id, duration (``ms``) and size (``bytes``), and the
manifests still in checkpoint storage (``checkpoints/<job id>/chk-<id>/_manifest``) are checked against them.

- **checkpoint**: a job puts ``--checkpoint-keys`` keys in keyed state, then touches a
  random ``--touch`` fraction of them between checkpoints, ``--rounds`` times; its source
  waits for each checkpoint to complete before the next phase, and logs what it had sent
  at every barrier, so each checkpoint is known to hold exactly one phase. Reported: the
  first checkpoint (all keys: the full copy) against the incremental ones, as ratios.
- **recovery**: for each of ``--recovery-keys``, a bounded run puts that many keys in
  state and ends with a final checkpoint; then new processes ``python -m aioflow run
  state_jobs.py:app`` restore it and a second source sends a few probe records: the time
  from process start to the first output line. The baseline is the same job on an empty
  state directory. Runs alternate between sizes, ``--repeat`` times.
- **rss**: the peak RSS (and the sampled peak of ``RssAnon``, the process's own memory) of
  the populating run for ``--rss-keys`` keys at each cache size of ``--rss-caches``, side
  by side, and of the same job with the memory backend (``--memory-keys``).
- **timers**: a job with ``--timer-keys`` pending event-time timers (one per key, far in
  the future), for each cache size of ``--timer-caches``: the peak ``RssAnon`` of putting
  them in, the checkpoint that writes them all and the next one (nothing changed), then
  the restore: process start to the first answer to a probe record, and, apart from it,
  the end of input's watermark firing every restored timer (their count is checked).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
JOBS = HERE / "state_jobs.py"
#: As in ``state_jobs.py`` (not imported from there: importing it builds its app).
RESULT_PREFIX = "@@state-result "
TOUCH_BARRIER = "touch barrier"
TIMERS_BARRIER = "timers barrier"
FIRED = "fired"
CHECKPOINT_COMPLETE = "checkpoint complete"
SECTIONS = ("checkpoint", "recovery", "rss", "timers")


class ChildFailed(Exception):
    """A job process failed or reported nothing."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _environment(**values: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BENCH_")}
    env.update({f"BENCH_{key.upper()}": str(value) for key, value in values.items() if value is not None})
    return env


def _log_events(log: bytes) -> list[dict[str, Any]]:
    """The JSON log lines of a job (aioflow logs JSON lines when stderr is not a terminal)."""
    events = []
    for line in log.splitlines():
        if line.startswith(b"{"):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def _epoch(event: dict[str, Any]) -> float:
    """The wall-clock time of a log event, in seconds since the epoch."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _disk_mb(folder: Path) -> float:
    """Disk space the files under ``folder`` take (allocated blocks, not apparent sizes)."""
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file()) / 2**20


def run_script(env: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``state_jobs.py`` as a script: its measurement and its log events."""
    done = subprocess.run([sys.executable, str(JOBS)], env=env, capture_output=True, check=False)
    for line in reversed(done.stdout.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return orjson.loads(line[len(RESULT_PREFIX) :]), _log_events(done.stderr)
    raise ChildFailed(f"{JOBS.name} exited with {done.returncode}:\n{done.stderr.decode(errors='replace')[-3000:]}")


def _rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}


# -- checkpoint cost -------------------------------------------------------------------------


def _touch_run(
    state_dir: Path, keys: int, touch: float, rounds: int, interval: float, cache: int
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Run the touch job once: its measurement, its checkpoints (one per phase, paired with
    the source's barrier log events), and what went wrong."""
    result, events = run_script(
        _environment(
            job="touch",
            keys=keys,
            touch=touch,
            rounds=rounds,
            seed=1,
            state_dir=state_dir,
            checkpoint_interval=interval,
            cache=cache,
        )
    )
    completed = {int(e["checkpoint"]): e for e in events if e["event"] == CHECKPOINT_COMPLETE}
    problems = []
    checkpoints = []
    for barrier in (e for e in events if e["event"] == TOUCH_BARRIER and not e["final"]):
        checkpoint_id = int(barrier["barrier"])
        done = completed.get(checkpoint_id)
        if done is None:
            problems.append(f"checkpoint {checkpoint_id} (barrier at phase {barrier['phase']}) did not complete")
            continue
        if not barrier["complete"]:
            problems.append(
                f"checkpoint {checkpoint_id} came in the middle of phase {barrier['phase']} "
                f"({barrier['sent']:,} of {barrier['phase_size']:,} records sent)"
            )
        checkpoints.append(
            {
                "checkpoint": checkpoint_id,
                "phase": barrier["phase"],
                "keys_changed": barrier["sent"] if barrier["phase"] == 0 else barrier["phase_size"],
                "whole_phase": barrier["complete"],
                "ms": int(done["ms"]),
                "bytes": int(done["bytes"]),
                "barrier_to_durable_ms": round((_epoch(done) - _epoch(barrier)) * 1000, 1),
            }
        )
    # The records the coordinator keeps on disk (the last few) must say what the log said.
    records = sorted((state_dir / "checkpoints").glob("*/chk-*/_manifest"))
    disagree = []
    for path in records:
        body = orjson.loads(path.read_bytes())["body"]
        logged = completed.get(int(body["checkpoint_id"]))
        if logged is None or logged["bytes"] != body["size_bytes"]:
            disagree.append(path.parent.name)
    if disagree:
        problems.append(f"checkpoint records {disagree} disagree with the log")
    result["records_checked"] = len(records)
    return result, checkpoints, problems


def checkpoint_cost(root: Path, keys: int, touch: float, rounds: int, interval: float, cache: int) -> dict[str, Any]:
    """A full checkpoint of ``keys`` keys against incremental ones touching ``touch`` of them.

    The full copy is the first checkpoint, and must hold every key: when its barrier came
    before all keys were in (the interval was shorter than that took), the job runs again
    with twice the interval, at most twice."""
    for attempt in range(3):
        state_dir = root / f"checkpoint-cost-{attempt}"
        _progress(
            f"checkpoint: {keys:,} keys, then {rounds} rounds touching {touch:.1%}, a checkpoint every {interval:g} s"
        )
        result, checkpoints, problems = _touch_run(state_dir, keys, touch, rounds, interval, cache)
        full = checkpoints[0] if checkpoints and checkpoints[0]["phase"] == 0 else None
        if full is not None and full["whole_phase"]:
            break
        _progress(f"  the first checkpoint came before all keys were in: {problems[:1]}")
        shutil.rmtree(state_dir, ignore_errors=True)
        if attempt < 2:
            interval *= 2
    else:
        problems.append("the first checkpoint never held every key; raise --checkpoint-interval")
        full = None
    incremental = [c for c in checkpoints if c["phase"] > 0 and c["whole_phase"]]
    if not incremental:
        problems.append("no incremental checkpoint to compare with the full copy")
    summary: dict[str, Any] = {
        "keys": keys,
        "touched_fraction": touch,
        "rounds": rounds,
        "checkpoint_interval": interval,
        "attempts": attempt + 1,
        "state_cache_size": cache,
    }
    if full is not None and incremental:
        for field in ("ms", "bytes", "barrier_to_durable_ms"):
            median = round(statistics.median(c[field] for c in incremental), 1)
            summary[f"full_{field}"] = full[field]
            summary[f"incremental_{field}"] = median
            summary[f"ratio_{field}"] = round(median / full[field], 4) if full[field] else None
    summary.update(
        checkpoints=checkpoints,
        records_checked=result["records_checked"],
        run_seconds=round(result["seconds"], 2),
        peak_rss_mb=round(result["peak_rss_mb"], 1),
        state_dir_mb=round(_disk_mb(state_dir), 1) if state_dir.exists() else None,
        problems=problems,
    )
    return summary


# -- recovery ---------------------------------------------------------------------------------


def build(state_dir: Path | None, keys: int, cache: int, interval: float) -> dict[str, Any]:
    """A bounded run putting ``keys`` keys in state (LMDB under ``state_dir``, or memory)."""
    result, events = run_script(
        _environment(
            job="keys",
            keys=keys,
            state_dir=state_dir,
            cache=cache if state_dir else None,
            checkpoint_interval=interval if state_dir else None,
        )
    )
    checkpoints = [e for e in events if e["event"] == CHECKPOINT_COMPLETE]
    result = _rounded(result)
    result.update(
        keys=keys,
        backend="lmdb" if state_dir else "memory",
        keys_per_sec=round(keys / result["seconds"]) if result["seconds"] else None,
    )
    if state_dir is not None:
        if not checkpoints:
            raise ChildFailed(f"the populating run of {keys:,} keys took no checkpoint")
        result.update(
            state_cache_size=cache,
            checkpoint_interval=interval,
            checkpoints=len(checkpoints),
            checkpoint_max_ms=max(int(e["ms"]) for e in checkpoints),
            state_dir_mb=round(_disk_mb(state_dir), 1),
        )
    return result


def probe(state_dir: Path, keys: int, records: int) -> dict[str, Any]:
    """Start a worker on ``state_dir`` and time it up to its first output line and its exit."""
    env = _environment(job="keys", keys=keys, probe=records, state_dir=state_dir, checkpoint_interval=3600)
    command = [sys.executable, "-m", "aioflow", "run", f"{JOBS}:app", "--log-format", "json"]
    with tempfile.TemporaryFile() as stderr:
        started_wall, started = time.time(), time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=stderr)
        assert process.stdout is not None
        first = process.stdout.readline()
        first_record = time.perf_counter() - started
        lines = [first, *process.stdout.read().splitlines(keepends=True)] if first else []
        code = process.wait(timeout=600)
        exited = time.perf_counter() - started
        stderr.seek(0)
        log = stderr.read()
    if code != 0 or not first:
        raise ChildFailed(f"the probe run on {state_dir} exited with {code}:\n{log.decode(errors='replace')[-3000:]}")
    events = {e["event"]: e for e in _log_events(log)}
    counts = [int(line.split()[1]) for line in lines]
    result = {
        "first_record_s": first_record,
        "exit_s": exited,
        "job_started_s": _epoch(events["job started"]) - started_wall if "job started" in events else None,
        "restoring_s": _epoch(events["restoring"]) - started_wall if "restoring" in events else None,
        "restored": "restoring" in events,
        "outputs": len(lines),
        "min_count": min(counts),
    }
    return result


def recovery(
    root: Path, sizes: list[int], repeat: int, cache: int, interval: float, builds: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Recovery time for each of ``sizes`` keys, against a start with no state."""
    probes = 3
    for keys in sizes:
        _progress(f"recovery: populating {keys:,} keys (cache {cache:,}, a checkpoint every {interval:g} s)")
        builds[keys] = build(root / f"keys-{keys}", keys, cache, interval)
        _progress(
            f"  {builds[keys]['seconds']:.1f} s, peak RSS {builds[keys]['peak_rss_mb']:.0f} MB, "
            f"{builds[keys]['checkpoints']} checkpoints"
        )
    runs: dict[str, list[dict[str, Any]]] = {"none": [], **{str(keys): [] for keys in sizes}}
    problems = []
    for round_ in range(repeat):
        baseline = root / f"empty-{round_}"
        runs["none"].append(probe(baseline, 0, probes))
        shutil.rmtree(baseline, ignore_errors=True)
        for keys in sizes:
            run = probe(root / f"keys-{keys}", keys, probes)
            if not run["restored"] or run["min_count"] < 2:
                problems.append(f"the run on {keys:,} keys did not restore them (count {run['min_count']})")
            runs[str(keys)].append(run)
        _progress(
            "  round {}: {}".format(
                round_ + 1, ", ".join(f"{name}: {rows[-1]['first_record_s']:.3f} s" for name, rows in runs.items())
            )
        )
    if any(run["restored"] for run in runs["none"]):
        problems.append("the baseline run restored something: its state directory was not empty")

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": len(rows)}
        for field in ("first_record_s", "restoring_s", "job_started_s", "exit_s"):
            values = [row[field] for row in rows if row[field] is not None]
            if values:
                out[field] = round(statistics.median(values), 3)
                out[f"min_{field}"] = round(min(values), 3)
        out["all_first_record_s"] = [round(row["first_record_s"], 3) for row in rows]
        return out

    report: dict[str, Any] = {"probe_records": probes, "no_state": summary(runs["none"]), "keys": {}}
    base = report["no_state"]["first_record_s"]
    smallest = None
    for keys in sizes:
        entry = summary(runs[str(keys)])
        smallest = smallest or entry["first_record_s"]
        entry["ratio_to_no_state"] = round(entry["first_record_s"] / base, 3)
        entry["ratio_to_smallest"] = round(entry["first_record_s"] / smallest, 3)
        entry["state_dir_mb"] = builds[keys]["state_dir_mb"]
        report["keys"][str(keys)] = entry
    report["problems"] = problems
    return report


# -- peak RSS -----------------------------------------------------------------------------------


def rss(
    root: Path,
    keys: int,
    caches: list[int],
    memory_keys: int,
    interval: float,
    keep: bool,
    builds: dict[int, dict[str, Any]],
    recovery_cache: int,
) -> dict[str, Any]:
    """Peak memory of populating ``keys`` keys with LMDB at each of ``caches``, and of
    ``memory_keys`` keys with the memory backend: one fresh process each. A recovery build
    of the same size and cache is reused rather than run again."""
    lmdb: dict[str, dict[str, Any]] = {}
    for cache in caches:
        run = builds.get(keys) if cache == recovery_cache else None
        if run is None:
            _progress(f"rss: populating {keys:,} keys in LMDB (cache {cache:,})")
            state_dir = root / f"rss-{keys}-{cache}"
            run = build(state_dir, keys, cache, interval)
            if not keep:  # 5M keys take hundreds of MB: one state directory on disk at a time
                shutil.rmtree(state_dir, ignore_errors=True)
        _progress(
            f"  peak RssAnon {run['peak_anon_mb']:.0f} MB, VmHWM {run['peak_rss_mb']:.0f} MB, {run['seconds']:.1f} s"
        )
        lmdb[str(cache)] = run
    _progress(f"rss: populating {memory_keys:,} keys in memory")
    memory = build(None, memory_keys, 0, interval)
    return {
        "keys": keys,
        "lmdb": lmdb,
        "memory": memory,
        "peak_anon_mb": {
            **{cache: run["peak_anon_mb"] for cache, run in lmdb.items()},
            "memory": memory["peak_anon_mb"],
        },
        "problems": [],
    }


# -- pending timers -----------------------------------------------------------------------------


def _timers_run(
    state_dir: Path, keys: int, cache: int, interval: float
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str], bool]:
    """Populate ``keys`` pending timers once: the run's measurement, its checkpoints by role
    (``full``: the first, holding every timer; ``unchanged``: the next; ``savepoint``: the
    stop's), what went wrong, and whether the first checkpoint came too early (before
    every timer was in, so that no checkpoint writes them all)."""
    result, events = run_script(
        _environment(
            job="timers",
            keys=keys,
            state_dir=state_dir,
            checkpoint_interval=interval,
            cache=cache,
        )
    )
    completed = {int(e["checkpoint"]): e for e in events if e["event"] == CHECKPOINT_COMPLETE}
    barriers = [e for e in events if e["event"] == TIMERS_BARRIER]
    problems = []
    early = bool(barriers) and not barriers[0]["complete"]
    if early:
        problems.append(
            f"checkpoint {barriers[0]['barrier']} came before every timer was in "
            f"({barriers[0]['sent']:,} of {keys:,} keys sent)"
        )
    checkpoints: dict[str, dict[str, Any]] = {}
    for barrier in barriers:
        done = completed.get(int(barrier["barrier"]))
        role = barrier["role"] or (done["kind"] if done is not None and done["kind"] == "savepoint" else None)
        if role is None:
            continue
        if done is None:
            problems.append(f"the {role} checkpoint {barrier['barrier']} did not complete")
            continue
        checkpoints[role] = {
            "checkpoint": int(done["checkpoint"]),
            "ms": int(done["ms"]),
            "bytes": int(done["bytes"]),
            "barrier_to_durable_ms": round((_epoch(done) - _epoch(barrier)) * 1000, 1),
        }
    for role in ("full", "unchanged", "savepoint"):
        if role not in checkpoints:
            problems.append(f"no {role} checkpoint in the log")
    if result.get("fired"):
        problems.append(f"{result['fired']:,} timers fired while populating; none should")
    return result, checkpoints, problems, early


def held_timers(root: Path, keys: int, cache: int, interval: float) -> tuple[dict[str, Any], Path]:
    """Put ``keys`` pending timers in LMDB state with ``cache``; the report and the state
    directory, which holds them in its last checkpoint (the stop's savepoint). The first
    checkpoint must come after every timer is in; when it did not, the run is repeated
    with twice the interval, at most twice."""
    for attempt in range(3):
        state_dir = root / f"timers-{keys}-{cache}-{attempt}"
        _progress(f"timers: {keys:,} pending timers, cache {cache:,}, a checkpoint every {interval:g} s")
        result, checkpoints, problems, early = _timers_run(state_dir, keys, cache, interval)
        if not early:
            break
        _progress(f"  {problems[0]}")
        if attempt < 2:  # the last attempt's state directory stays, to be reported and probed
            shutil.rmtree(state_dir, ignore_errors=True)
            interval *= 2
    else:
        problems.append("the first checkpoint never held every timer; raise --checkpoint-interval")
    report = {
        "keys": keys,
        "state_cache_size": cache,
        "checkpoint_interval": interval,
        "attempts": attempt + 1,
        **_rounded(result),
        **{f"{role}_checkpoint": c for role, c in checkpoints.items()},
        "state_dir_mb": round(_disk_mb(state_dir), 1) if state_dir.exists() else None,
        "problems": problems,
    }
    full = checkpoints.get("full")
    _progress(
        f"  {result['seconds']:.1f} s, peak RssAnon {result['peak_anon_mb']:.0f} MB"
        + (
            f", full checkpoint {full['ms']} ms logged, {full['barrier_to_durable_ms']:.0f} ms "
            f"barrier to durable, {full['bytes']:,} bytes"
            if full
            else ""
        )
    )
    return report, state_dir


class _AnonSampler(threading.Thread):
    """Samples another process's ``RssAnon`` every ``interval`` s until it ends."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(name=f"anon-sampler-{pid}", daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.peak_kb = 0
        self._done = threading.Event()

    def sample(self) -> bool:
        try:
            for line in self.status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    return True
        except (OSError, ValueError):
            pass
        return False

    def run(self) -> None:
        while self.sample() and not self._done.wait(self.interval):
            pass

    def stop(self) -> None:
        self._done.set()
        self.join()


def timers_probe(state_dir: Path, keys: int, cache: int, records: int) -> dict[str, Any]:
    """Start a worker on a copy of ``state_dir`` (made before the clock starts: the probe's
    end of input fires the timers and checkpoints that) and time it: to the first answer
    to a probe record (the restore), to the first fired timer, to the sink's count of
    fired timers, to its exit; with its sampled peak ``RssAnon``."""
    work = state_dir.with_name(state_dir.name + "-probe")
    shutil.rmtree(work, ignore_errors=True)
    if state_dir.exists():
        shutil.copytree(state_dir, work)
    env = _environment(job="timers", keys=keys, probe=records, state_dir=work, checkpoint_interval=3600, cache=cache)
    command = [sys.executable, "-m", "aioflow", "run", f"{JOBS}:app", "--log-format", "json"]
    marks: dict[str, float] = {}
    answers, fired, index_sum, anon_at_first_kb = 0, None, None, 0
    try:
        with tempfile.TemporaryFile() as stderr:
            started_wall, started = time.time(), time.perf_counter()
            process = subprocess.Popen(command, env=env, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=stderr)
            sampler = _AnonSampler(process.pid)
            sampler.start()
            assert process.stdout is not None
            for raw in process.stdout:
                now = time.perf_counter() - started
                line = raw.decode(errors="replace").split()
                if line and line[0] == "probe":
                    answers += 1
                    if "first_record_s" not in marks:
                        marks["first_record_s"] = now
                        anon_at_first_kb = sampler.peak_kb
                elif line and line[0] == "firing":
                    marks["firing_s"] = now
                elif len(line) == 3 and line[0] == FIRED:
                    marks["fired_s"] = now
                    fired, index_sum = int(line[1]), int(line[2])
            code = process.wait(timeout=600)
            marks["exit_s"] = time.perf_counter() - started
            sampler.stop()
            stderr.seek(0)
            log = stderr.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if code != 0 or "first_record_s" not in marks:
        raise ChildFailed(
            f"the timers probe on {state_dir} exited with {code}:\n{log.decode(errors='replace')[-3000:]}"
        )
    events = _log_events(log)
    restoring = [e for e in events if e["event"] == "restoring"]
    final = [e for e in events if e["event"] == CHECKPOINT_COMPLETE and e.get("kind") == "final"]
    return {
        **marks,
        "restoring_s": _epoch(restoring[0]) - started_wall if restoring else None,
        "restored": bool(restoring),
        "answers": answers,
        "fired": fired,
        "index_sum": index_sum,
        "final_checkpoint_ms": int(final[0]["ms"]) if final else None,
        "anon_at_first_record_mb": anon_at_first_kb / 1024,
        "peak_anon_mb": sampler.peak_kb / 1024,
    }


def timers(root: Path, keys: int, caches: list[int], repeat: int, interval: float, keep: bool) -> dict[str, Any]:
    """Pending timers: populate and checkpoint them at each cache size, then restore each
    ``repeat`` times, alternating with a start on an empty state directory."""
    probes = 3
    report: dict[str, Any] = {"keys": keys, "probe_records": probes, "caches": {}}
    problems: list[str] = []
    dirs = {}
    for cache in caches:
        entry, dirs[cache] = held_timers(root, keys, cache, interval)
        problems += [f"cache {cache:,}: {p}" for p in entry.pop("problems")]
        report["caches"][str(cache)] = entry
    runs: dict[str, list[dict[str, Any]]] = {"none": [], **{str(cache): [] for cache in caches}}
    expected_sum = keys * (keys - 1) // 2
    for round_ in range(repeat):
        runs["none"].append(timers_probe(root / f"timers-empty-{round_}", 0, caches[0], probes))
        for cache in caches:
            run = timers_probe(dirs[cache], keys, cache, probes)
            if not run["restored"]:
                problems.append(f"cache {cache:,}: the probe restored nothing")
            if (run["fired"], run["index_sum"]) != (keys, expected_sum):
                problems.append(
                    f"cache {cache:,}: {run['fired']} timers fired after the restore (key index sum "
                    f"{run['index_sum']}), expected {keys:,} ({expected_sum})"
                )
            if run["answers"] != probes:
                problems.append(f"cache {cache:,}: {run['answers']} probe answers, expected {probes}")
            runs[str(cache)].append(run)
        _progress(
            "  restore round {}: {}".format(
                round_ + 1,
                ", ".join(
                    f"{'no state' if name == 'none' else 'cache ' + name}: "
                    f"first record {rows[-1]['first_record_s']:.3f} s, "
                    f"exit {rows[-1]['exit_s']:.3f} s"
                    for name, rows in runs.items()
                ),
            )
        )
    if any(run["restored"] or run["fired"] for run in runs["none"]):
        problems.append("the no-state probe restored or fired something: its state directory was not empty")

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": len(rows)}
        for field in (
            "first_record_s",
            "restoring_s",
            "firing_s",
            "fired_s",
            "exit_s",
            "final_checkpoint_ms",
            "anon_at_first_record_mb",
            "peak_anon_mb",
        ):
            values = [row[field] for row in rows if row.get(field) is not None]
            if values:
                out[field] = round(statistics.median(values), 3)
                out[f"min_{field}"] = round(min(values), 3)
        out["fired"] = rows[-1]["fired"]
        out["all_first_record_s"] = [round(row["first_record_s"], 3) for row in rows]
        return out

    report["no_state"] = summary(runs["none"])
    for cache in caches:
        restore = summary(runs[str(cache)])
        restore["ratio_to_no_state"] = round(restore["first_record_s"] / report["no_state"]["first_record_s"], 3)
        report["caches"][str(cache)]["restore"] = restore
    if not keep:
        for state_dir in dirs.values():
            shutil.rmtree(state_dir, ignore_errors=True)
    report["problems"] = problems
    return report


# -- command line -----------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated key counts, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"key counts must be positive, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Checkpoint cost, recovery time and peak RSS of aioflow's state.")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this part (repeatable)")
    parser.add_argument("--keys", type=int, help="quick run: no measurement uses more than this many keys")
    parser.add_argument("--checkpoint-keys", type=int, default=1_000_000, help="keys of the checkpoint-cost job")
    parser.add_argument("--touch", type=float, default=0.01, help="fraction of the keys touched between checkpoints")
    parser.add_argument("--rounds", type=int, default=3, help="incremental checkpoints measured")
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="checkpoint interval of the checkpoint-cost and timers jobs: more than putting in the keys takes "
        "(else doubled)",
    )
    parser.add_argument(
        "--recovery-keys",
        type=_sizes,
        default=[50_000, 1_000_000, 5_000_000],
        help="comma-separated state sizes (keys) to recover",
    )
    parser.add_argument("--repeat", type=int, default=3, help="recovery runs per size (median and min reported)")
    parser.add_argument("--rss-keys", type=int, default=5_000_000, help="keys of the peak-RSS runs with LMDB")
    parser.add_argument(
        "--rss-caches",
        type=_sizes,
        default=[10_000, 100_000, 1_000_000],
        help="comma-separated state_cache_size values of the peak-RSS runs, one run each",
    )
    parser.add_argument("--memory-keys", type=int, help="keys of the memory-backend run (default: --rss-keys)")
    parser.add_argument(
        "--timer-keys",
        type=int,
        default=1_000_000,
        help="pending event-time timers (one per key) of the timers section",
    )
    parser.add_argument(
        "--timer-caches",
        type=_sizes,
        default=[10_000, 100_000],
        help="comma-separated state_cache_size values of the timers section, one job each",
    )
    parser.add_argument(
        "--cache", type=int, default=100_000, help="state_cache_size of the checkpoint-cost and recovery runs"
    )
    parser.add_argument(
        "--build-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="checkpoint interval of the populating runs (recovery and RSS)",
    )
    parser.add_argument("--state-root", type=Path, help="where the state directories go (default: the temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the state directories")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    args.only = args.only or list(SECTIONS)
    args.memory_keys = args.memory_keys or args.rss_keys
    if args.keys is not None:
        if args.keys < 1:
            parser.error("--keys must be positive")
        cap = args.keys
        args.checkpoint_keys = min(args.checkpoint_keys, cap)
        args.recovery_keys = sorted({min(keys, cap) for keys in args.recovery_keys})
        args.rss_keys, args.memory_keys = min(args.rss_keys, cap), min(args.memory_keys, cap)
        args.timer_keys = min(args.timer_keys, cap)
    if not 0 < args.touch <= 1 or args.rounds < 1 or args.repeat < 1 or args.checkpoint_interval <= 0:
        parser.error("--touch must be in (0, 1]; --rounds, --repeat and --checkpoint-interval positive")
    if args.timer_keys < 1 or args.rss_keys < 1:
        parser.error("--timer-keys and --rss-keys must be positive")
    return args


def _text(results: dict[str, Any]) -> str:
    lines = []
    cost = results.get("checkpoint")
    if cost and "full_ms" in cost:
        lines += [
            f"checkpoint cost, {cost['keys']:,} keys, {cost['touched_fraction']:.1%} touched "
            f"(median of {len([c for c in cost['checkpoints'] if c['phase'] > 0])} incremental checkpoints):",
            f"  {'':22}{'full copy':>14}{'incremental':>14}{'ratio':>9}",
        ]
        for field, label in (
            ("ms", "duration ms (logged)"),
            ("bytes", "size bytes"),
            ("barrier_to_durable_ms", "barrier->durable ms"),
        ):
            lines.append(
                f"  {label:22}{cost[f'full_{field}']:>14,.0f}{cost[f'incremental_{field}']:>14,.0f}"
                f"{cost[f'ratio_{field}']:>9.4f}"
            )
        lines.append(f"  run {cost['run_seconds']} s, peak RSS {cost['peak_rss_mb']} MB")
    rec = results.get("recovery")
    if rec:
        base = rec["no_state"]
        lines += [
            "recovery: process start to first record (median; min)",
            f"  no state      {base['first_record_s']:.3f} s; {base['min_first_record_s']:.3f} s",
        ]
        for keys, entry in rec["keys"].items():
            lines.append(
                f"  {int(keys):>9,} keys {entry['first_record_s']:.3f} s; {entry['min_first_record_s']:.3f} s"
                f"   x{entry['ratio_to_no_state']:.2f} of no state, x{entry['ratio_to_smallest']:.2f} of "
                f"the smallest, restoring logged at {entry.get('restoring_s', float('nan')):.3f} s, "
                f"{entry['state_dir_mb']} MB on disk"
            )
    rss = results.get("rss")
    if rss:
        lines += [
            "peak memory of the populating run (MB; RssAnon and RssFile sampled every 20 ms):",
            f"  {'backend':8}{'cache':>11}{'keys':>11}{'RssAnon':>9}{'RssFile':>9}{'VmHWM':>7}"
            f"{'seconds':>9}{'checkpoints':>13}",
        ]
        for run in [*rss["lmdb"].values(), rss["memory"]]:
            cache = f"{run['state_cache_size']:,}" if run["backend"] == "lmdb" else "-"
            lines.append(
                f"  {run['backend']:8}{cache:>11}{run['keys']:>11,}{run['peak_anon_mb']:>9.0f}"
                f"{run['peak_file_mb']:>9.0f}{run['peak_rss_mb']:>7.0f}{run['seconds']:>9.1f}"
                f"{run.get('checkpoints', '-'):>13}"
            )
    held = results.get("timers")
    if held:
        lines.append(
            f"{held['keys']:,} pending event-time timers (LMDB): populate, checkpoint, restore "
            "(restore: median of the runs; min)"
        )
        base = held["no_state"]
        lines.append(f"  no state: first record {base['first_record_s']:.3f} s; {base['min_first_record_s']:.3f} s")
        for cache, entry in held["caches"].items():
            lines.append(
                f"  cache {int(cache):,}: populating run {entry['seconds']:.1f} s (two checkpoint intervals "
                f"of waiting included), peak RssAnon {entry['peak_anon_mb']:.0f} MB, "
                f"{entry['state_dir_mb']} MB on disk"
            )
            for role in ("full", "unchanged", "savepoint"):
                c = entry.get(f"{role}_checkpoint")
                if c:
                    lines.append(
                        f"    {role + ' checkpoint':22}{c['ms']:>8,} ms logged"
                        f"{c['barrier_to_durable_ms']:>10,.0f} ms barrier->durable{c['bytes']:>14,} bytes"
                    )
            r = entry.get("restore")
            if r:
                lines.append(
                    f"    restore: first record {r['first_record_s']:.3f} s; {r['min_first_record_s']:.3f} s "
                    f"(x{r['ratio_to_no_state']:.2f} of no state), RssAnon at it "
                    f"{r['anon_at_first_record_mb']:.0f} MB"
                )
                lines.append(
                    f"    then: first timer fired at {r.get('firing_s', float('nan')):.3f} s, "
                    f"{r['fired']:,} fired by {r.get('fired_s', float('nan')):.3f} s, exit "
                    f"{r['exit_s']:.3f} s (final checkpoint {r.get('final_checkpoint_ms')} ms), "
                    f"peak RssAnon {r['peak_anon_mb']:.0f} MB"
                )
    for section, result in results.items():
        if isinstance(result, dict):
            lines += [f"{section}: PROBLEM: {problem}" for problem in result.get("problems", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.state_root is not None:
        args.state_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="aioflow-state-bench-", dir=args.state_root))
    results: dict[str, Any] = {}
    builds: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        if "checkpoint" in args.only:
            results["checkpoint"] = checkpoint_cost(
                root, args.checkpoint_keys, args.touch, args.rounds, args.checkpoint_interval, args.cache
            )
        if "recovery" in args.only:
            results["recovery"] = recovery(
                root, args.recovery_keys, args.repeat, args.cache, args.build_interval, builds
            )
        if "rss" in args.only:
            results["rss"] = rss(
                root,
                args.rss_keys,
                args.rss_caches,
                args.memory_keys,
                args.build_interval,
                args.keep,
                builds,
                args.cache,
            )
        if "timers" in args.only:
            results["timers"] = timers(
                root, args.timer_keys, args.timer_caches, args.repeat, args.checkpoint_interval, args.keep
            )
    except ChildFailed as exc:
        print(f"state.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            _progress(f"state directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["python"] = sys.version.split()[0]
    print(orjson.dumps(results).decode() if args.json else _text(results), flush=True)
    problems = [p for r in results.values() if isinstance(r, dict) for p in r.get("problems", [])]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
