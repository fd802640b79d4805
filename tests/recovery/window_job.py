"""The window job the window recovery tests run as a real worker (``aioflow run
tests/recovery/window_job.py:app``), configured by its environment:

``EVENTS`` the input (JSON lines ``{"user", "ts", "v"}``); ``P`` the parallelism; ``OUT``
the output stem (``OUT-windows.jsonl``, one file per subtask); ``STATE`` the state
directory (checkpoints every 100 ms and exactly-once output when set); ``CACHE`` the
state cache size; ``BATCH`` the batch size; ``PACE`` (milliseconds) pauses on one record
in 100, so that a signal finds the job running.

``WINDOWS`` the window definition of the operator ``user_windows`` (see
:data:`DEFINITIONS`) and ``FUNCTION`` how it is finished (``aggregate``, the default, or ``process``); both give the same records
``{"user", "window", "n", "sum", "first", "last"}``, so one can replace the other.

``SOURCE=gated`` reads the input with :class:`gated.GatedSource` instead of
``read_jsonl``: with ``PAUSE_AT=N`` it stops reading after N records until two
checkpoints completed, then logs ``source paused`` and reads no more, so that a stop with
a savepoint (SIGTERM) comes at exactly that position, with windows open.
"""

from __future__ import annotations

import os
import time

import orjson
import structlog
from gated import GatedSource, at_least_checkpoints

import aioflow as af

state = os.environ.get("STATE")
app = af.App(
    "windows",
    state_dir=state,
    checkpoint_interval=0.1 if state else None,
    parallelism=int(os.environ["P"]),
    state_cache_size=int(os.environ.get("CACHE", 100_000)),
    batch_size=int(os.environ.get("BATCH", 1024)),
)


class Summary(af.AggregateFunction):
    """``[count, sum of v, first ts, last ts]``."""

    def create_accumulator(self):
        return [0, 0, None, None]

    def add(self, e, acc):
        return [
            acc[0] + 1,
            acc[1] + e["v"],
            e["ts"] if acc[2] is None else min(acc[2], e["ts"]),
            e["ts"] if acc[3] is None else max(acc[3], e["ts"]),
        ]

    def get_result(self, acc):
        return {"n": acc[0], "sum": acc[1], "first": acc[2], "last": acc[3]}

    def merge(self, a, b):
        firsts = [t for t in (a[2], b[2]) if t is not None]
        lasts = [t for t in (a[3], b[3]) if t is not None]
        return [a[0] + b[0], a[1] + b[1], min(firsts, default=None), max(lasts, default=None)]


def _window(window):
    return [window.start, window.end] if isinstance(window, af.TimeWindow) else "global"


class WithWindow(af.ProcessWindowFunction):
    def process(self, key, context, results):
        for result in results:
            yield {"user": key, "window": _window(context.window), **result}


class Summarise(af.ProcessWindowFunction):
    """What ``Summary`` + ``WithWindow`` give, from the window's records."""

    def process(self, key, context, elements):
        agg = Summary()
        acc = agg.create_accumulator()
        for e in elements:
            acc = agg.add(e, acc)
        yield {"user": key, "window": _window(context.window), **agg.get_result(acc)}


DEFINITIONS = {
    "tumbling": lambda k: k.window(af.TumblingEventTimeWindows(2000)),
    # Keeps every record (a window holds about 2): with it the results are the same as without.
    "tumbling-count-evictor": lambda k: k.window(af.TumblingEventTimeWindows(2000)).evictor(af.CountEvictor(100_000)),
    # Fires early every 500 ms, and at the window's end with all its records.
    "tumbling-continuous": lambda k: k.window(af.TumblingEventTimeWindows(2000)).trigger(
        af.ContinuousEventTimeTrigger(500)
    ),
    # Its windows include the tumbling ones: [0, 2000), [1000, 3000), [2000, 4000), ...
    "sliding-2000": lambda k: k.window(af.SlidingEventTimeWindows(2000, 1000)),
    "sliding": lambda k: k.window(af.SlidingEventTimeWindows(6000, 3000)),
    "session": lambda k: k.window(af.EventTimeSessionWindows(3000)),
    "count": lambda k: k.count_window(10, 5),
}


def pace(e):
    if os.environ.get("PACE") and e["v"] == 0:  # slower, so that a signal finds it running
        time.sleep(float(os.environ["PACE"]) / 1000)
    return e


def _paused() -> None:
    structlog.get_logger("tests").info("source paused", position=int(os.environ["PAUSE_AT"]))


if os.environ.get("SOURCE") == "gated":
    with open(os.environ["EVENTS"], "rb") as f:
        records = [orjson.loads(line) for line in f]
    pause_at = int(os.environ["PAUSE_AT"]) if os.environ.get("PAUSE_AT") else None
    source = GatedSource(
        records,
        batch=100,
        pause_at=pause_at,
        then=_paused,
        hold=True,
        until=at_least_checkpoints(state, 2) if state else None,
    )
else:
    source = af.read_jsonl(os.environ["EVENTS"])
events = app.source(
    source, name="events", timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(100), parallelism=1
)
windowed = DEFINITIONS[os.environ["WINDOWS"]](events.map(pace, name="pace", parallelism=1).key_by(lambda e: e["user"]))
if os.environ.get("FUNCTION", "aggregate") == "aggregate":
    windows = windowed.aggregate(Summary(), window_function=WithWindow(), name="user_windows")
else:
    windows = windowed.process(Summarise(), name="user_windows")
windows.sink(af.FileSink(os.environ["OUT"] + "-windows.jsonl", exactly_once=bool(state)), name="windows-out")
