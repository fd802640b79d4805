"""The job of the state-compatibility test: every kind of state a savepoint holds.

Keyed value, list and map state with event-time timers (a process function), and
tumbling (fast path), sliding, session and evicting (generic path) windows, behind one
replayable source, at parallelism 2. ``build(state_dir, stop_after=N)`` stops the run
with a savepoint after ``N`` records.

A savepoint this job wrote with an earlier aioflow is committed under
``tests/data/compat/<version>/`` and must keep restoring. To add one for a new state
format: ``python tests/checkpoint/compat_job.py tests/data/compat/<version>``.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

import aioflow as af

#: Input records; the run that wrote a savepoint stopped after ``STOP_AFTER`` of them.
EVENTS = 30_000
STOP_AFTER = 12_000


def events() -> list[dict[str, Any]]:
    """Arithmetic, not random: the same on every Python."""
    return [{"user": f"u{(i * 7) % 23}", "ts": i * 3 + (i % 5) + (i // 1000) * 200, "v": i % 11} for i in range(EVENTS)]


class Tally(af.KeyedProcessFunction):
    """Per user: a count (value state), the last three values (list state), values seen
    per residue (map state); a timer at the end of each second with records reports them."""

    def open(self, ctx: af.OperatorContext) -> None:
        self.count = ctx.value_state("count", default=0)
        self.recent = ctx.list_state("recent")
        self.by_residue = ctx.map_state("by-residue")

    def process_element(self, value: dict[str, Any], ctx: af.OperatorContext) -> Iterator[Any]:
        self.count.update(self.count.value() + 1)
        self.recent.update([*self.recent.get(), value["v"]][-3:])
        residue = str(value["v"] % 3)
        self.by_residue.put(residue, (self.by_residue.get(residue) or 0) + 1)
        ctx.timer_service.register_event_time_timer(value["ts"] // 1000 * 1000 + 999)
        yield from ()

    def on_timer(self, timestamp: int, ctx: af.OperatorContext) -> Iterator[Any]:
        yield [
            "tally",
            ctx.key,
            timestamp,
            self.count.value(),
            list(self.recent.get()),
            sorted(self.by_residue.items()),
        ]


class Sum(af.AggregateFunction):
    def create_accumulator(self) -> list[int]:
        return [0, 0]

    def add(self, value: dict[str, Any], acc: list[int]) -> list[int]:
        return [acc[0] + 1, acc[1] + value["v"]]

    def get_result(self, acc: list[int]) -> list[int]:
        return acc

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return [a[0] + b[0], a[1] + b[1]]


def _labelled(label: str) -> type[af.ProcessWindowFunction]:
    class Label(af.ProcessWindowFunction):
        def process(self, key: str, context: Any, elements: Any) -> Iterator[Any]:
            for result in elements:
                yield [label, key, context.window.start, context.window.end, result]

    return Label


class Values(af.ProcessWindowFunction):
    def process(self, key: str, context: Any, elements: Any) -> Iterator[Any]:
        yield ["evicting", key, context.window.start, sorted(e["v"] for e in elements)]


def build(state_dir: Path, stop_after: int | None = None) -> tuple[af.App, af.CollectSink]:
    app = af.App("compat", state_dir=str(state_dir), checkpoint_interval=0.05, parallelism=2)
    seen = [0]

    def stopper(e: dict[str, Any]) -> dict[str, Any]:
        seen[0] += 1
        if seen[0] == stop_after:
            app.stop()
        return e

    results = af.CollectSink()
    source = app.source(
        af.from_iterable(events()), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(10), name="events"
    )
    users = source.map(stopper, name="stopper").key_by(lambda e: e["user"])
    users.process(Tally, name="tally").sink(results, name="out-tally")
    users.window(af.TumblingEventTimeWindows(1000)).aggregate(
        Sum(), window_function=_labelled("tumbling")(), name="tumbling"
    ).sink(results, name="out-tumbling")
    users.window(af.SlidingEventTimeWindows(1000, 500)).aggregate(
        Sum(), window_function=_labelled("sliding")(), name="sliding"
    ).sink(results, name="out-sliding")
    users.window(af.EventTimeSessionWindows(100)).aggregate(
        Sum(), window_function=_labelled("session")(), name="session"
    ).sink(results, name="out-session")
    users.window(af.TumblingEventTimeWindows(1000)).evictor(af.CountEvictor(4)).process(Values(), name="evicting").sink(
        results, name="out-evicting"
    )
    return app, results


def canonical(results: list[Any]) -> list[Any]:
    """Results in a canonical order (subtasks interleave) and JSON's types."""
    return sorted(orjson.loads(orjson.dumps(results)), key=orjson.dumps)


def write_fixture(folder: Path) -> None:
    """Run the job until ``STOP_AFTER`` records, then keep its savepoint and what it
    emitted before stopping under ``folder``."""
    with tempfile.TemporaryDirectory() as scratch:
        app, results = build(Path(scratch), stop_after=STOP_AFTER)
        app.run()
        [savepoint] = (Path(scratch) / "savepoints").iterdir()
        shutil.copytree(savepoint, folder / "savepoint")
        (folder / "before.json.gz").write_bytes(gzip.compress(orjson.dumps(canonical(results.results)), mtime=0))


if __name__ == "__main__":
    write_fixture(Path(sys.argv[1]))
