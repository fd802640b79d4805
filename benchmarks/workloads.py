"""What the benchmark workloads compute: the input data, the hand-written floors, and the
canonical form of each workload's output.

This module never imports aioflow, so a floor child process holds only Python, orjson
and the data: its peak RSS is the baseline the framework is compared with.

Every floor is what a competent engineer would write by hand for the job: one tight loop
over the same file with ``orjson.loads`` and dicts, processing the input in chunks of
``BATCH`` lines where the job needs a watermark (the watermark advances once per chunk,
as a source emitting one watermark per batch would).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "BATCH",
    "BOUND_MS",
    "FLOORS",
    "BATCH_SCORING",
    "CALL_S",
    "CAPACITY",
    "INACTIVITY_MS",
    "KEYS",
    "PARTITIONS",
    "SESSION_GAP_MS",
    "SLIDING_FLOORS",
    "SINK_SLEEP_S",
    "SLIDE_MS",
    "WINDOW_MS",
    "JobInput",
    "Prepare",
    "Run",
    "Unavailable",
    "canonical",
    "digest",
    "emit_windows",
    "floor_of",
    "ensure_events",
    "digits_data",
    "digits_records",
    "generated_records",
    "http_call",
    "http_client",
    "keyed_records",
    "simulated_call",
    "start_http_service",
]

#: Event time of the first simulated second.
START_TS = 1_700_000_000_000
#: Distinct users (``u0`` .. ``u9999``).
USERS = 10_000
#: Every event arrives strictly less than this many ms after any event with a larger ts.
MAX_DISORDER_MS = 2_000
#: Records per batch: aioflow's default ``batch_size``; floors chunk their input the same way.
BATCH = 1024
#: Bounded out-of-orderness of the event-time workloads: watermark = max ts - BOUND_MS - 1.
BOUND_MS = 2_000
#: w2: tumbling window size; sliding: the size of its sliding windows.
WINDOW_MS = 10_000
#: sliding: a window starts every ``SLIDE_MS`` (each event is in ``WINDOW_MS / SLIDE_MS`` = 5).
SLIDE_MS = 2_000
#: session: the session gap. A user has an event every 10 s on average (1000 events/s over
#: 10,000 users), so with 5 s about 40% of a user's events extend a session and the rest
#: start a new one: sessions of 1 to several events, some merged by a late bridging event.
SESSION_GAP_MS = 5_000
#: w3: a user is inactive after this long without events.
INACTIVITY_MS = 30_000
#: backpressure: the sink sleeps this long per batch.
SINK_SLEEP_S = 0.001
#: kafka: partitions of the input topic (and of each output topic).
PARTITIONS = 4
#: async_io: each record awaits a simulated call of ``CALL_S`` seconds, at most
#: ``CAPACITY`` calls at once, over ``KEYS`` keys.
CALL_S = 0.010
CAPACITY = 100
KEYS = 10_000
#: digits: images per predict call when scoring in batches.
BATCH_SCORING = 64

_MIN_TS = -(2**63)
_MAX_TS = 2**63 - 1


class Unavailable(Exception):
    """This side cannot run the workload (e.g. aioflow lacks an API the job needs)."""


@dataclass(frozen=True)
class JobInput:
    """What a job reads: the events file (file workloads) and the number of events; and,
    for the aioflow side only, where its state lives (floors ignore the last three)."""

    events: int
    path: Path | None
    #: ``"memory"``, or ``"lmdb"``: keyed state in an LMDB store under ``state_dir``.
    state_backend: str = "memory"
    #: Seconds between barrier checkpoints (``lmdb`` only); ``None``: no checkpoints.
    checkpoint_interval: float | None = None
    #: The (fresh, empty) state directory of an ``lmdb`` run.
    state_dir: Path | None = None

    @property
    def file(self) -> Path:
        """The events file; only file workloads have one."""
        if self.path is None:
            raise ValueError("this workload reads no events file")
        return self.path


#: Runs the measured part of a job and returns its output.
Run = Callable[[], Any]
#: Does the untimed set-up of a job (building the app, ...) and returns its :data:`Run`.
Prepare = Callable[[JobInput], Run]


# -- input data ------------------------------------------------------------------------


def ensure_events(events: int, seed: int, data_dir: Path) -> Path:
    """The path of the cached events file for ``(events, seed)``, generated if missing."""
    path = data_dir / f"events_{events}_{seed}.jsonl"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_suffix(".partial")
        _write_events(partial_path, events, seed)
        partial_path.replace(path)
    return path


def _write_events(path: Path, events: int, seed: int) -> None:
    """Write ``events`` JSON lines, out of order by strictly less than ``MAX_DISORDER_MS``.

    Event times are uniform over ``events`` ms (about 1000 events per simulated second).
    Each event gets an arrival time ``ts + delay`` with ``delay`` in ``[0, MAX_DISORDER_MS)``
    and the file is in arrival order, so an event arriving after another has
    ``ts > other.ts - MAX_DISORDER_MS``: no event is late for a
    ``BoundedOutOfOrderness(MAX_DISORDER_MS)`` watermark.
    """
    rng = random.Random(seed)
    randrange = rng.randrange
    rows = []
    for _ in range(events):
        ts = START_TS + randrange(events)
        rows.append((ts + randrange(MAX_DISORDER_MS), ts, randrange(USERS), randrange(100_000), randrange(10_000)))
    rows.sort()
    dumps = orjson.dumps
    chunk = 65_536
    with open(path, "wb") as file:
        for start in range(0, events, chunk):
            file.write(
                b"".join(
                    dumps({"user": f"u{user}", "item": item, "amount": cents / 100, "ts": ts}) + b"\n"
                    for _, ts, user, item, cents in rows[start : start + chunk]
                )
            )


def keyed_records(events: int) -> Iterator[dict[str, Any]]:
    """The async_io workload's input: ``{"i": i, "key": "k<i % KEYS>"}``, lazily."""
    return ({"i": i, "key": f"k{i % KEYS}"} for i in range(events))


async def simulated_call(record: dict[str, Any]) -> int:
    """The async_io workload's call: ``CALL_S`` of waiting (a model server, an HTTP API),
    then a result."""
    await asyncio.sleep(CALL_S)
    return record["i"] * 2


def generated_records(events: int) -> Iterator[dict[str, int]]:
    """The backpressure workload's input: ``{"i": i}`` for ``i`` in ``range(events)``, lazily."""
    return ({"i": i} for i in range(events))


# -- floors ----------------------------------------------------------------------------


async def _gather_capped(
    records: Iterator[dict[str, Any]], call: Callable[[dict[str, Any]], Any] = simulated_call
) -> list[Any]:
    """Every record's ``call``, at most ``CAPACITY`` at once: one ``asyncio.gather``."""
    cap = asyncio.Semaphore(CAPACITY)

    async def capped(record: dict[str, Any]) -> Any:
        async with cap:
            return await call(record)

    return await asyncio.gather(*map(capped, records))


def floor_async_io(job: JobInput) -> Run:
    """The same calls with the same cap, by hand: ``asyncio.gather`` under a semaphore."""
    return lambda: asyncio.run(_gather_capped(keyed_records(job.events)))


def start_http_service() -> str:
    """``http_service.py`` in a process of its own (stopped when this one exits); its URL."""
    import atexit
    import subprocess
    import sys

    service = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("http_service.py"))], stdout=subprocess.PIPE, text=True
    )
    atexit.register(service.kill)
    assert service.stdout is not None
    return f"http://127.0.0.1:{int(service.stdout.readline())}"


def http_client(service: str) -> Any:
    """An aiohttp session for ``service``, with as many connections as calls at once."""
    try:
        import aiohttp
    except ImportError as exc:
        raise Unavailable("the async_http workload needs aiohttp (pip install -e '.[dev]')") from exc
    return aiohttp.ClientSession(base_url=service, connector=aiohttp.TCPConnector(limit=CAPACITY))


async def http_call(session: Any, record: dict[str, Any]) -> int:
    """The async_http workload's call: ``GET /<i>`` of the local service, its ``double``."""
    async with session.get(f"/{record['i']}") as response:
        return (await response.json())["double"]


def floor_async_http(job: JobInput) -> Run:
    """``floor_async_io`` with a real HTTP call (aiohttp) to the local service."""
    service = start_http_service()

    async def run() -> list[int]:
        async with http_client(service) as client:
            return await _gather_capped(keyed_records(job.events), partial(http_call, client))

    return lambda: asyncio.run(run())


def digits_data() -> tuple[Any, list[dict[str, Any]]]:
    """The digits workloads' model (an SVC trained on the first half of scikit-learn's
    bundled digits) and records: the other half, repeated to fill ``events``."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.svm import SVC
    except ImportError as exc:
        raise Unavailable("the digits workloads need scikit-learn (pip install -e '.[dev]')") from exc
    digits = load_digits()
    half = len(digits.images) // 2
    model = SVC(gamma=0.001).fit(digits.data[:half], digits.target[:half])
    return model, [{"i": i, "pixels": row.tolist()} for i, row in enumerate(digits.data[half:])]


def digits_records(images: list[dict[str, Any]], events: int) -> list[dict[str, Any]]:
    return [images[i % len(images)] for i in range(events)]


def floor_digits(job: JobInput) -> Run:
    """``predict`` over the records in chunks of ``BATCH_SCORING``, by hand: the ceiling."""
    import numpy as np

    model, images = digits_data()
    records = digits_records(images, job.events)

    def run() -> list[int]:
        out: list[int] = []
        for start in range(0, len(records), BATCH_SCORING):
            chunk = records[start : start + BATCH_SCORING]
            out.extend(model.predict(np.array([r["pixels"] for r in chunk])).tolist())
        return out

    return run


def _w1(path: Path) -> int:
    loads = orjson.loads
    n = 0
    with open(path, "rb") as file:
        for e in map(loads, file):
            if e["amount"] > 10:
                t = (e["user"], e["amount"] * 1.1)  # noqa: F841 - the map's work, as in the job
                n += 1
    return n


async def _sleepy_count(records: Iterator[Any]) -> int:
    n = 0
    while batch := list(islice(records, BATCH)):
        n += len(batch)
        await asyncio.sleep(SINK_SLEEP_S)
    return n


def floor_backpressure(job: JobInput) -> Run:
    """The generator read in batches of ``BATCH``, sleeping ``SINK_SLEEP_S`` per batch, as the
    aioflow sink does: the floor is the same sleep-bound job without a framework."""
    records = generated_records(job.events)
    return lambda: asyncio.run(_sleepy_count(records))


def emit_windows(windows: dict[int, dict[str, list[Any]]], watermark: int, out: list[Any]) -> None:
    """Emit and drop every window whose last millisecond is at or before ``watermark``."""
    for start in sorted(start for start in windows if start + WINDOW_MS - 1 <= watermark):
        out.extend((user, start, count, total) for user, (count, total) in windows.pop(start).items())


def _w2(path: Path) -> list[tuple[str, int, int, float]]:
    loads = orjson.loads
    windows: dict[int, dict[str, list[Any]]] = {}  # window start -> user -> [count, sum]
    out: list[Any] = []
    max_ts = _MIN_TS
    with open(path, "rb") as file:
        while lines := list(islice(file, BATCH)):
            for e in map(loads, lines):
                ts = e["ts"]
                if ts > max_ts:
                    max_ts = ts
                start = ts - ts % WINDOW_MS
                window = windows.get(start)
                if window is None:
                    window = windows[start] = {}
                acc = window.get(e["user"])
                if acc is None:
                    window[e["user"]] = [1, e["amount"]]
                else:
                    acc[0] += 1
                    acc[1] += e["amount"]
            emit_windows(windows, max_ts - BOUND_MS - 1, out)
    emit_windows(windows, _MAX_TS, out)
    return out


class _Inactivity:
    """w3's keyed state and event-time timers, by hand: Flink's semantics for timers
    (one per (key, timestamp), fired in timestamp order once the watermark reaches them)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last_ts: dict[str, int] = {}
        self.timers: dict[int, dict[str, None]] = {}  # timestamp -> users, in registration order
        self.heap: list[int] = []
        self.out: list[tuple[str, int]] = []

    def fire(self, watermark: int) -> None:
        """Run every timer at or before ``watermark``."""
        heap, timers, counts, last_ts = self.heap, self.timers, self.counts, self.last_ts
        while heap and heap[0] <= watermark:
            timestamp = heapq.heappop(heap)
            for user in timers.pop(timestamp):
                if last_ts.get(user, _MIN_TS) + INACTIVITY_MS == timestamp:
                    self.out.append((user, counts.pop(user)))
                    del last_ts[user]

    def run(self, path: Path) -> list[tuple[str, int]]:
        loads = orjson.loads
        counts, last_ts, timers, heap = self.counts, self.last_ts, self.timers, self.heap
        max_ts = _MIN_TS
        with open(path, "rb") as file:
            while lines := list(islice(file, BATCH)):
                for e in map(loads, lines):
                    user, ts = e["user"], e["ts"]
                    if ts > max_ts:
                        max_ts = ts
                    counts[user] = counts.get(user, 0) + 1
                    last_ts[user] = ts
                    at = ts + INACTIVITY_MS
                    users = timers.get(at)
                    if users is None:
                        timers[at] = {user: None}
                        heapq.heappush(heap, at)
                    else:
                        users[user] = None
                self.fire(max_ts - BOUND_MS - 1)
        self.fire(_MAX_TS)
        return self.out


def _w3(path: Path) -> list[tuple[str, int]]:
    return _Inactivity().run(path)


def _fire_sliding_panes(panes: dict[int, dict[str, list[Any]]], next_start: int, watermark: int, out: list[Any]) -> int:
    """Emit every sliding window whose last millisecond is at or before ``watermark``, from
    its ``WINDOW_MS / SLIDE_MS`` panes, oldest first; drop each pane once the last window
    holding it has fired. Returns the start of the next window to fire.

    Windows start every ``SLIDE_MS``; the first to fire is at or after ``next_start`` and
    no earlier than the oldest pane's first window (so empty stretches are skipped). A
    window with no events in any of its panes is not emitted, as in Flink (a window exists
    only once a record was assigned to it).
    """
    span = WINDOW_MS - SLIDE_MS
    while panes:
        start = max(next_start, min(panes) - span)
        if start + WINDOW_MS - 1 > watermark:
            return start
        totals: dict[str, list[Any]] = {}
        for pane_start in range(start, start + WINDOW_MS, SLIDE_MS):
            pane = panes.get(pane_start)
            if pane:
                for user, (count, total) in pane.items():
                    acc = totals.get(user)
                    if acc is None:
                        totals[user] = [count, total]
                    else:
                        acc[0] += count
                        acc[1] += total
        out.extend((user, start, count, total) for user, (count, total) in totals.items())
        panes.pop(start, None)  # the last window holding this pane
        next_start = start + SLIDE_MS
    return next_start


def _sliding(path: Path) -> list[tuple[str, int, int, float]]:
    """Sliding windows by hand, from panes: each event adds to one ``SLIDE_MS`` pane per
    user (``pane start -> user -> [count, sum]``); a window, when it fires, sums its five
    panes. One dict update per event instead of five (one per window holding it): faster
    than per-window dicts (see the README)."""
    loads = orjson.loads
    panes: dict[int, dict[str, list[Any]]] = {}
    out: list[Any] = []
    max_ts = _MIN_TS
    next_start = _MIN_TS
    with open(path, "rb") as file:
        while lines := list(islice(file, BATCH)):
            for e in map(loads, lines):
                ts = e["ts"]
                if ts > max_ts:
                    max_ts = ts
                start = ts - ts % SLIDE_MS
                pane = panes.get(start)
                if pane is None:
                    pane = panes[start] = {}
                acc = pane.get(e["user"])
                if acc is None:
                    pane[e["user"]] = [1, e["amount"]]
                else:
                    acc[0] += 1
                    acc[1] += e["amount"]
            next_start = _fire_sliding_panes(panes, next_start, max_ts - BOUND_MS - 1, out)
    _fire_sliding_panes(panes, next_start, _MAX_TS, out)
    return out


def _sliding_per_window(path: Path) -> list[tuple[str, int, int, float]]:
    """Sliding windows by hand, the other way: one ``user -> [count, sum]`` dict per window,
    each event added to the five windows holding it (w2's floor with an inner loop). Not
    the default floor (:func:`_sliding` is faster); ``run.py --sliding-floor windows``
    measures it."""
    loads = orjson.loads
    windows: dict[int, dict[str, list[Any]]] = {}
    out: list[Any] = []
    max_ts = _MIN_TS
    span = WINDOW_MS - SLIDE_MS
    with open(path, "rb") as file:
        while lines := list(islice(file, BATCH)):
            for e in map(loads, lines):
                ts, user, amount = e["ts"], e["user"], e["amount"]
                if ts > max_ts:
                    max_ts = ts
                last = ts - ts % SLIDE_MS
                for start in range(last - span, last + 1, SLIDE_MS):
                    window = windows.get(start)
                    if window is None:
                        window = windows[start] = {}
                    acc = window.get(user)
                    if acc is None:
                        window[user] = [1, amount]
                    else:
                        acc[0] += 1
                        acc[1] += amount
            _emit_sliding(windows, max_ts - BOUND_MS - 1, out)
    _emit_sliding(windows, _MAX_TS, out)
    return out


def _emit_sliding(windows: dict[int, dict[str, list[Any]]], watermark: int, out: list[Any]) -> None:
    for start in sorted(start for start in windows if start + WINDOW_MS - 1 <= watermark):
        out.extend((user, start, count, total) for user, (count, total) in windows.pop(start).items())


class _Sessions:
    """Session windows by hand, with Flink's semantics: a record opens ``[ts, ts + gap)``;
    a user's windows that overlap or touch merge (so a late record between two sessions
    joins them); a session fires when the watermark reaches its last millisecond
    (``end - 1``), and is then gone.

    State: per user, the list of open sessions ``[start, end, count, sum]`` (almost always
    one, two while a bridging record may still come), and a heap of ``(end, user)`` to find
    the due ones. A heap entry whose session has since grown or merged is skipped when
    popped: no open session of that user ends there any more.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, list[list[Any]]] = {}
        self.heap: list[tuple[int, str]] = []
        self.out: list[tuple[str, int, int, int, float]] = []

    def add(self, user: str, ts: int, amount: float) -> None:
        end = ts + SESSION_GAP_MS
        open_ = self.sessions.get(user)
        if open_ is None:
            self.sessions[user] = [[ts, end, 1, amount]]
            heapq.heappush(self.heap, (end, user))
            return
        if len(open_) == 1:  # the common case: extend the one open session, or open a second
            session = open_[0]
            if session[0] <= end and session[1] >= ts:
                if ts < session[0]:
                    session[0] = ts
                if end > session[1]:
                    session[1] = end
                    heapq.heappush(self.heap, (end, user))
                session[2] += 1
                session[3] += amount
            else:
                open_.append([ts, end, 1, amount])
                heapq.heappush(self.heap, (end, user))
            return
        # Several open sessions: the new window merges every one it overlaps or touches.
        merged = [ts, end, 1, amount]
        rest = []
        for session in open_:
            if session[0] <= merged[1] and session[1] >= merged[0]:
                merged[0] = min(merged[0], session[0])
                merged[1] = max(merged[1], session[1])
                merged[2] += session[2]
                merged[3] += session[3]
            else:
                rest.append(session)
        rest.append(merged)
        self.sessions[user] = rest
        heapq.heappush(self.heap, (merged[1], user))

    def fire(self, watermark: int) -> None:
        """Emit and drop every session whose last millisecond is at or before ``watermark``."""
        heap, sessions, out = self.heap, self.sessions, self.out
        while heap and heap[0][0] - 1 <= watermark:
            end, user = heapq.heappop(heap)
            open_ = sessions.get(user)
            if open_ is None:
                continue
            for i, session in enumerate(open_):
                if session[1] == end:
                    out.append((user, session[0], end, session[2], session[3]))
                    if len(open_) == 1:
                        del sessions[user]
                    else:
                        del open_[i]
                    break

    def run(self, path: Path) -> list[tuple[str, int, int, int, float]]:
        loads = orjson.loads
        add = self.add
        max_ts = _MIN_TS
        with open(path, "rb") as file:
            while lines := list(islice(file, BATCH)):
                for e in map(loads, lines):
                    ts = e["ts"]
                    if ts > max_ts:
                        max_ts = ts
                    add(e["user"], ts, e["amount"])
                self.fire(max_ts - BOUND_MS - 1)
        self.fire(_MAX_TS)
        return self.out


def _session(path: Path) -> list[tuple[str, int, int, int, float]]:
    return _Sessions().run(path)


def _file_floor(loop: Callable[[Path], Any]) -> Prepare:
    def prepare(job: JobInput) -> Run:
        return partial(loop, job.file)

    return prepare


#: The two hand-written ways of computing sliding windows (``run.py --sliding-floor``).
SLIDING_FLOORS: dict[str, Prepare] = {"panes": _file_floor(_sliding), "windows": _file_floor(_sliding_per_window)}

FLOORS: dict[str, Prepare] = {
    "w1": _file_floor(_w1),
    "backpressure": floor_backpressure,
    "w2": _file_floor(_w2),
    "w3": _file_floor(_w3),
    "sliding": SLIDING_FLOORS["panes"],
    "session": _file_floor(_session),
    "async_io": floor_async_io,
    "async_io_ordered": floor_async_io,
    "async_io_unordered": floor_async_io,
    "async_http": floor_async_http,
    "digits": floor_digits,
    "digits_per_record": floor_digits,
}


def floor_of(workload: str, sliding_floor: str = "panes") -> Prepare:
    """The floor of ``workload``; for ``sliding``, the variant ``sliding_floor``."""
    return SLIDING_FLOORS[sliding_floor] if workload == "sliding" else FLOORS[workload]


# -- outputs ---------------------------------------------------------------------------


def canonical(workload: str, output: Any) -> Any:
    """The comparable form of a job's output: a count, or the sorted rows (the sums of w2,
    sliding and session rounded to 2 decimals: the sides may add the same amounts in
    another order)."""
    if workload in ("w1", "backpressure"):
        return int(output)
    if workload.startswith(("async_", "digits")):
        return sorted(output)
    if workload in ("w2", "sliding"):
        return sorted((user, start, count, round(total, 2)) for user, start, count, total in output)
    if workload == "session":
        return sorted((user, start, end, count, round(total, 2)) for user, start, end, count, total in output)
    return sorted((user, count) for user, count in output)


def digest(canonical_output: Any) -> str:
    """A short fingerprint of a canonical output, to compare the two sides."""
    return hashlib.sha256(orjson.dumps(canonical_output)).hexdigest()[:16]
