"""The job the recovery tests run as a real ``aioflow run`` process, and how they drive it.

The job counts events per user with a keyed process function and event-time timers, and
sums them in tumbling event-time windows; both results go to exactly-once file sinks
when ``STATE`` (the state directory) is set. ``CACHE`` sets the state cache size: a small
one makes most state live in LMDB, evicted and reloaded between checkpoints. ``ASYNC``
makes the counting function ``async def``, many keys at once. ``PACE`` (milliseconds)
pauses on every record whose ``v`` is 0 (one in 100), so that a signal finds the job
running: a pause costs no CPU, where more input would. ``BATCH`` sets the batch size.
Its input is a replayable file, so an undisturbed run is the reference any disturbed one
must match.

``SOURCE=gated`` reads the input with :class:`gated.GatedSource` instead of
``read_jsonl``: with ``PAUSE_AT=N`` it stops reading after N records until ``GATE``
(default 2) checkpoints completed, then logs ``source paused`` and reads no more, so that
a signal comes at exactly that position, whatever the machine's speed.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

JOB = """
import os
import time
import aioflow as af

state = os.environ.get("STATE")
app = af.App("crash", state_dir=state, checkpoint_interval=0.1 if state else None,
             parallelism=int(os.environ["P"]), state_cache_size=int(os.environ.get("CACHE", 100_000)),
             batch_size=int(os.environ.get("BATCH", 1024)))
if os.environ.get("SOURCE") == "gated":  # see the docstring of tests/recovery/jobs.py
    import orjson
    import structlog
    from gated import GatedSource, at_least_checkpoints

    with open(os.environ["EVENTS"], "rb") as f:
        records = [orjson.loads(line) for line in f]
    pause_at = int(os.environ["PAUSE_AT"]) if os.environ.get("PAUSE_AT") else None
    source = GatedSource(
        records, batch=100, pause_at=pause_at, hold=True,
        then=lambda: structlog.get_logger("tests").info("source paused", position=pause_at),
        until=at_least_checkpoints(state, int(os.environ.get("GATE", 2))) if state else None)
else:
    source = af.read_jsonl(os.environ["EVENTS"])
events = app.source(source, timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(100), parallelism=1)


def pace(e):
    if os.environ.get("PACE") and e["v"] == 0:  # slower, so that a signal finds it running
        time.sleep(float(os.environ["PACE"]) / 1000)
    return e


class Count(af.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, e, ctx):
        self.n.update(self.n.value() + 1)
        ctx.timer_service.register_event_time_timer(ctx.timestamp - ctx.timestamp % 1000 + 999)

    def on_timer(self, ts, ctx):
        yield {"user": ctx.key, "ts": ts, "n": self.n.value()}


if os.environ.get("ASYNC"):  # the same counts, async: keys overlap across the awaits
    import anyio

    class Count(Count):
        async def process_element(self, e, ctx):
            n = self.n.value()
            await anyio.sleep(0)
            self.n.update(n + 1)
            ctx.timer_service.register_event_time_timer(ctx.timestamp - ctx.timestamp % 1000 + 999)

        async def on_timer(self, ts, ctx):
            await anyio.sleep(0)
            return [{"user": ctx.key, "ts": ts, "n": self.n.value()}]


paced = events.map(pace, name="pace", parallelism=1)  # chained to the source: the order stays
counts = paced.key_by(lambda e: e["user"]).process(Count(), name="count")
windows = paced.key_by(lambda e: e["user"]).window(af.TumblingEventTimeWindows(2000)).reduce(
    lambda a, b: {"user": a["user"], "ts": max(a["ts"], b["ts"]), "v": a["v"] + b["v"]}, name="sums")
counts.sink(af.FileSink(os.environ["OUT"] + "-counts.jsonl", exactly_once=bool(state)), name="counts-out")
windows.sink(af.FileSink(os.environ["OUT"] + "-sums.jsonl", exactly_once=bool(state)), name="sums-out")
"""


def write_events(folder: Path, events: int, seed: int) -> dict[str, str]:
    """The jobs' input in ``folder``: an event every 5 ms, of one of 300 users; returns the
    environment the jobs read it from."""
    rng = random.Random(seed)
    with (folder / "events.jsonl").open("wb") as f:
        for i in range(events):
            f.write(orjson.dumps({"user": f"u{rng.randrange(300)}", "ts": i * 5, "v": rng.randrange(100)}) + b"\n")
    return {"EVENTS": str(folder / "events.jsonl")}


def write_job(folder: Path, events: int, seed: int) -> dict[str, str]:
    """The job file and its input in ``folder`` (and the gated source the job imports with
    ``SOURCE=gated``); returns the environment the job reads."""
    env = write_events(folder, events, seed)
    (folder / "job.py").write_text(JOB)
    shutil.copy(Path(__file__).with_name("gated.py"), folder / "gated.py")
    return env


WINDOW_JOB = str(Path(__file__).with_name("window_job.py")) + ":app"
"""The window job (``Worker(..., target=WINDOW_JOB)``): its module says what it reads."""


class Worker:
    """One ``aioflow run TARGET`` process (by default the job in ``folder``), its JSON log in
    ``log`` (default ``folder/worker.log``)."""

    def __init__(
        self,
        folder: Path,
        env: dict[str, str],
        *args: str,
        target: str | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log = log or folder / "worker.log"
        self._stderr = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aioflow",
                "run",
                target or str(folder / "job.py") + ":app",
                "--log-format",
                "json",
                *args,
            ],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill the process if it still runs (the test failed while it ran)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, event: str, count: int = 1, seconds: float = 60) -> bool:
        """Wait until the log has ``count`` lines of ``event``; False if the process ended first."""
        deadline = time.monotonic() + seconds
        needle = f'"event": "{event}"'.encode()
        while self.log.read_bytes().count(needle) < count:
            if self.process.poll() is not None:
                return self.log.read_bytes().count(needle) >= count
            assert time.monotonic() < deadline, f"no {count} x {event!r} within {seconds} s:\n{self.text()}"
            time.sleep(0.005)
        return True

    def event(self, event: str, seconds: float = 60) -> dict[str, Any]:
        """The first log line of ``event``, waiting for it like ``wait_for``."""
        assert self.wait_for(event, seconds=seconds), f"the worker ended without {event!r}:\n{self.text()}"
        lines = (orjson.loads(line) for line in self.log.read_bytes().splitlines() if line.startswith(b"{"))
        return next(line for line in lines if line["event"] == event)  # lazily: later lines may be unfinished

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=120)
        finally:
            self.process.kill()
            self._stderr.close()


def explain(worker: Worker) -> str:
    """What a worker's log says went wrong, for an assertion message: its last warning and
    error lines without their tracebacks (or, without any, the end of the log)."""
    found = []
    for raw in worker.log.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("level") in ("warning", "error", "critical"):
            found.append(orjson.dumps({k: v for k, v in line.items() if k not in ("exception", "timestamp")}).decode())
    return "\n".join(found[-10:]) or worker.text()[-3000:]


def run(folder: Path, env: dict[str, str], *args: str) -> int:
    """Run the job to its end; returns the exit status."""
    return Worker(folder, env, *args).wait()


def outputs(folder: Path, stem: str) -> dict[str, dict[str, list[bytes]]]:
    """Each output kind's lines (all subtasks' files of it), per key in file order: what
    must match exactly. (Results of different keys fired by the same watermark may come
    in another order after a restore.) The kind is the file name's next part after the
    stem: ``counts`` of ``out-counts.jsonl`` or ``out-counts-1.jsonl``."""
    found: dict[str, dict[str, list[bytes]]] = {}
    for path in sorted(folder.glob(f"{stem}-*.jsonl")):
        kind = path.name[len(stem) + 1 :].split(".")[0].split("-")[0]
        per_key = found.setdefault(kind, {})
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"torn line in {path}: {line!r}"
            per_key.setdefault(orjson.loads(line)["user"], []).append(line)
    return found


def as_multisets(found: dict[str, dict[str, list[bytes]]]) -> dict[str, collections.Counter[bytes]]:
    """Each output kind's lines, in any order (after a rescale a key's results are in the
    files of two subtasks)."""
    return {
        kind: collections.Counter(line for lines in per_key.values() for line in lines)
        for kind, per_key in found.items()
    }


KILLED = -signal.SIGKILL
