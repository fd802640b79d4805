"""Every kind of window keeps its state durably: the same job gives the same output with
its state in memory and with its state in LMDB under checkpoints every 100 ms.

The matrix: each window assigner (tumbling, sliding, session with a fixed and a dynamic
gap, count windows, global windows with a user-written trigger) with and without an
evictor, with continuous and purging triggers where they apply, finished by
``aggregate``, ``reduce`` and ``process`` (``reduce`` only without an evictor: with
one, the window keeps its records whatever the function), at parallelism 1 and 2.

The durable runs keep a small state cache, so window contents, trigger state and timers
are written to LMDB and read back between checkpoints, not only at them. Their source
pauses halfway, with windows open, until two checkpoints completed, so every run
checkpoints open windows (nothing depends on timing). The savepoint variant stops there
with a savepoint (``app.stop()``) and resumes the job from it in a second run: the two
runs' outputs together must be the in-memory run's.

Outputs are compared as multisets and per key in order (results of different keys may
interleave differently at parallelism 2). Records are never late (their disorder stays
within the watermark's bound), so the output does not depend on when watermarks go out.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from recovery.gated import GatedSource, at_least_checkpoints, completed_checkpoints

import aioflow as af

EVENTS = 1_200
PAUSE_AT = 600  # halfway: a multiple of the source's batch of 50
KEYS = 5
DISORDER = 40  # ms: within the watermark bound below, so no record is ever late
BOUND = 50


def _events(seed: int = 11) -> list[dict[str, Any]]:
    """``{"k", "id", "ts", "v"}`` with mildly shuffled timestamps, pauses that end every
    session now and then, and a ``"mark"`` on a few records (the custom trigger's cue)."""
    rng = random.Random(seed)
    events, clock = [], 1_000
    for i in range(EVENTS):
        clock += rng.choice((1, 5, 10, 20, 40)) + (700 if rng.random() < 0.02 else 0)
        event = {"k": f"k{rng.randrange(KEYS)}", "id": i, "ts": clock - rng.randrange(DISORDER), "v": rng.randrange(10)}
        if rng.random() < 0.03:
            event["mark"] = True
        events.append(event)
    return events


EVENT_LIST = _events()


# -- functions ----------------------------------------------------------------------------------------------


class SumCount(af.AggregateFunction):
    """``[count, sum of v, smallest id, largest id]``: lists, which a stored value keeps as they are."""

    def create_accumulator(self):
        return [0, 0, None, None]

    def add(self, value, acc):
        low = value["id"] if acc[2] is None else min(acc[2], value["id"])
        high = value["id"] if acc[3] is None else max(acc[3], value["id"])
        return [acc[0] + 1, acc[1] + value["v"], low, high]

    def get_result(self, acc):
        return {"n": acc[0], "sum": acc[1], "ids": [acc[2], acc[3]]}

    def merge(self, a, b):
        lows = [x for x in (a[2], b[2]) if x is not None]
        highs = [x for x in (a[3], b[3]) if x is not None]
        return [a[0] + b[0], a[1] + b[1], min(lows) if lows else None, max(highs) if highs else None]


def _bounds(window: Any) -> list[int] | str:
    return [window.start, window.end] if isinstance(window, af.TimeWindow) else "global"


class WithWindow(af.ProcessWindowFunction):
    """The aggregate's result with its key and window."""

    def process(self, key, context, elements):
        for result in elements:
            yield {"k": key, "window": _bounds(context.window), **result}


class Elements(af.ProcessWindowFunction):
    """Everything a firing saw: the ids of the window's records, in order."""

    def process(self, key, context, elements):
        yield {
            "k": key,
            "window": _bounds(context.window),
            "ids": [e["id"] for e in elements],
            "sum": sum(e["v"] for e in elements),
        }


def add_up(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "k": a["k"],
        "id": max(a["id"], b["id"]),
        "ts": max(a["ts"], b["ts"]),
        "v": a["v"] + b["v"],
        "n": a.get("n", 1) + b.get("n", 1),
    }


class EveryNOrMark(af.Trigger):
    """A user's trigger with per-window state and timers: fires every ``n`` records of a
    window, fires and purges on a record marked ``"mark"``, and fires 300 ms of event time
    after the first record since the window last fired by time. Merges (sessions)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_element(self, element, timestamp, window, ctx):
        if element.get("mark"):
            self.clear(window, ctx)
            return af.TriggerResult.FIRE_AND_PURGE
        deadline = ctx.window_state("deadline")
        if deadline.value() is None:
            deadline.update(timestamp + 300)
            ctx.register_event_time_timer(timestamp + 300)
        seen = ctx.window_state("seen", 0)
        if seen.value() + 1 >= self.n:
            seen.clear()
            return af.TriggerResult.FIRE
        seen.update(seen.value() + 1)
        return af.TriggerResult.CONTINUE

    def on_event_time(self, time, window, ctx):
        deadline = ctx.window_state("deadline")
        if deadline.value() == time:
            deadline.clear()
            return af.TriggerResult.FIRE
        return af.TriggerResult.CONTINUE

    def can_merge(self):
        return True

    def on_merge(self, window, ctx):
        ctx.merge_window_state("seen", lambda a, b: a + b)
        ctx.merge_window_state("deadline", min)
        deadline = ctx.window_state("deadline").value()
        if deadline is not None:
            ctx.register_event_time_timer(deadline)

    def clear(self, window, ctx):
        deadline = ctx.window_state("deadline")
        if deadline.value() is not None:
            ctx.delete_event_time_timer(deadline.value())
            deadline.clear()
        ctx.window_state("seen", 0).clear()

    def __repr__(self) -> str:
        return f"EveryNOrMark({self.n})"


def _gap_of(event: dict[str, Any]) -> int:
    return 150 + 50 * (event["v"] % 4)


# -- the matrix ---------------------------------------------------------------------------------------------

Windowing = Callable[[af.KeyedStream], af.WindowedStream]

#: name -> (how the keyed stream is windowed, whether the window has an evictor)
WINDOWS: dict[str, tuple[Windowing, bool]] = {
    "tumbling": (lambda k: k.window(af.TumblingEventTimeWindows(1000)), False),
    "tumbling-count-evictor": (lambda k: k.window(af.TumblingEventTimeWindows(1000)).evictor(af.CountEvictor(3)), True),
    "tumbling-continuous": (
        lambda k: k.window(af.TumblingEventTimeWindows(1000)).trigger(af.ContinuousEventTimeTrigger(100)),
        False,
    ),
    "tumbling-purging-continuous": (
        lambda k: k.window(af.TumblingEventTimeWindows(1000)).trigger(
            af.PurgingTrigger(af.ContinuousEventTimeTrigger(100))
        ),
        False,
    ),
    "sliding": (lambda k: k.window(af.SlidingEventTimeWindows(1000, 250)), False),
    "sliding-time-evictor": (
        lambda k: k.window(af.SlidingEventTimeWindows(1000, 250)).evictor(af.TimeEvictor(150)),
        True,
    ),
    "session": (lambda k: k.window(af.EventTimeSessionWindows(300)), False),
    "session-count-evictor": (lambda k: k.window(af.EventTimeSessionWindows(300)).evictor(af.CountEvictor(3)), True),
    "session-continuous": (
        lambda k: k.window(af.EventTimeSessionWindows(300)).trigger(af.ContinuousEventTimeTrigger(100)),
        False,
    ),
    "session-custom-trigger": (lambda k: k.window(af.EventTimeSessionWindows(300)).trigger(EveryNOrMark(4)), False),
    "dynamic-session": (lambda k: k.window(af.EventTimeSessionWindows.with_dynamic_gap(_gap_of)), False),
    "count": (lambda k: k.count_window(4), False),
    "count-sliding": (lambda k: k.count_window(5, 2), True),  # a CountEvictor and a CountTrigger
    "global-custom-trigger": (lambda k: k.window(af.GlobalWindows()).trigger(EveryNOrMark(4)), False),
    "global-custom-trigger-count-evictor": (
        lambda k: k.window(af.GlobalWindows()).trigger(EveryNOrMark(4)).evictor(af.CountEvictor(6)),
        True,
    ),
}

FUNCTIONS = ("aggregate", "reduce", "process")


def _finish(windowed: af.WindowedStream, function: str) -> af.Stream:
    if function == "aggregate":
        return windowed.aggregate(SumCount(), window_function=WithWindow(), name="windows")
    if function == "reduce":
        return windowed.reduce(add_up, name="windows")
    return windowed.process(Elements(), name="windows")


def _cases() -> list[Any]:
    cases = []
    for window, (_, evicting) in WINDOWS.items():
        for function in FUNCTIONS:
            if evicting and function == "reduce":
                continue  # with an evictor the window keeps its records: reduce adds nothing to aggregate
            cases.append(pytest.param(window, function, 2, id=f"{window}-{function}-p2"))
        # At parallelism 1 one function does: what differs is how key groups map to subtasks.
        cases.append(pytest.param(window, "process", 1, id=f"{window}-process-p1"))
    return cases


def _job(
    window: str, function: str, source: GatedSource, *, parallelism: int, state_dir: Path | None = None
) -> tuple[af.App, af.CollectSink]:
    durable: dict[str, Any] = {}
    if state_dir is not None:
        durable = {
            "state_dir": str(state_dir),
            "checkpoint_interval": 0.1,
            "state_cache_size": 16,
            "restart_strategy": af.NoRestart(),
        }  # a failure fails the test, not a silent restart
    app = af.App(f"matrix-{window}", parallelism=parallelism, **durable)
    sink = af.CollectSink()
    keyed = app.source(
        source, name="events", timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(BOUND), parallelism=1
    ).key_by(lambda e: e["k"])
    _finish(WINDOWS[window][0](keyed), function).sink(sink, name="out", parallelism=1)
    return app, sink


async def _run(app: af.App) -> None:
    with anyio.fail_after(60):
        await app.run_async()


def _per_key(results: list[Any]) -> dict[str, list[bytes]]:
    per_key: dict[str, list[bytes]] = {}
    for result in results:
        per_key.setdefault(result["k"], []).append(orjson.dumps(result, option=orjson.OPT_SORT_KEYS))
    return per_key


def _assert_same(found: list[Any], expected: list[Any]) -> None:
    found_keys, expected_keys = _per_key(found), _per_key(expected)
    as_multiset = collections.Counter
    missing = as_multiset(line for lines in expected_keys.values() for line in lines) - as_multiset(
        line for lines in found_keys.values() for line in lines
    )
    extra = as_multiset(line for lines in found_keys.values() for line in lines) - as_multiset(
        line for lines in expected_keys.values() for line in lines
    )
    assert not missing and not extra, (
        f"{sum(missing.values())} results missing, e.g. {list(missing)[:3]}; "
        f"{sum(extra.values())} not expected, e.g. {list(extra)[:3]}"
    )
    for key, lines in expected_keys.items():
        assert found_keys.get(key) == lines, f"key {key!r}: the same results in another order"


async def _in_memory(window: str, function: str, parallelism: int) -> list[Any]:
    app, sink = _job(window, function, GatedSource(EVENT_LIST, pause_at=PAUSE_AT), parallelism=parallelism)
    await _run(app)
    assert len(sink.results) >= 20, f"the reference run gave only {sink.results}"
    return sink.results


@pytest.mark.parametrize(("window", "function", "parallelism"), _cases())
async def test_state_in_lmdb_under_checkpoints_gives_the_in_memory_output(
    tmp_path: Path,
    window: str,
    function: str,
    parallelism: int,
) -> None:
    expected = await _in_memory(window, function, parallelism)

    state = tmp_path / "state"
    source = GatedSource(EVENT_LIST, pause_at=PAUSE_AT, until=at_least_checkpoints(state, 2))
    app, sink = _job(window, function, source, parallelism=parallelism, state_dir=state)
    await _run(app)
    assert source.paused  # two checkpoints completed with the first half's windows open
    assert completed_checkpoints(state, "checkpoint") >= 2 and completed_checkpoints(state, "final") == 1
    _assert_same(sink.results, expected)


def _savepoint_cases() -> list[Any]:
    """Every window with ``process`` (its records are stored), and with ``aggregate`` (an
    accumulator is) where it has no evictor; at parallelism 2."""
    return [
        pytest.param(window, function, id=f"{window}-{function}")
        for window, (_, evicting) in WINDOWS.items()
        for function in ("aggregate", "process")
        if function == "process" or not evicting
    ]


@pytest.mark.parametrize(("window", "function"), _savepoint_cases())
async def test_a_job_stopped_with_a_savepoint_resumes_every_open_window(
    tmp_path: Path,
    window: str,
    function: str,
) -> None:
    expected = await _in_memory(window, function, 2)

    state = tmp_path / "state"
    stopped: list[af.App] = []
    source = GatedSource(
        EVENT_LIST, pause_at=PAUSE_AT, until=at_least_checkpoints(state, 2), then=lambda: stopped[0].stop(), hold=True
    )
    app, first = _job(window, function, source, parallelism=2, state_dir=state)
    stopped.append(app)
    await _run(app)
    assert source.paused
    assert (state / "savepoints").is_dir() and any((state / "savepoints").iterdir()), "the stop took no savepoint"
    assert len(first.results) < len(expected)  # windows were open at the stop: the rest comes from the savepoint

    source = GatedSource(EVENT_LIST)
    app, second = _job(window, function, source, parallelism=2, state_dir=state)
    await _run(app)
    assert source.restored_at == PAUSE_AT  # it resumed where the savepoint stopped
    _assert_same(first.results + second.results, expected)
