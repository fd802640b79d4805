"""Same job, same input: aioflow's output equals Apache Flink 2.3's (see tests/data/flink/README.md)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import aioflow as af
from aioflow.testing import run_collect

DATA = Path(__file__).parent / "data" / "flink"


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flink") / "events_100k.jsonl"
    path.write_bytes(gzip.decompress((DATA / "events_100k.jsonl.gz").read_bytes()))
    return path


def expected(name: str) -> list[str]:
    return sorted(gzip.decompress((DATA / f"{name}.txt.gz").read_bytes()).decode().splitlines())


class SumCount(af.AggregateFunction):
    def create_accumulator(self):
        return (0, 0.0)

    def add(self, value, acc):
        return (acc[0] + 1, acc[1] + value["amount"])

    def get_result(self, acc):
        return acc

    def merge(self, a, b):
        return (a[0] + b[0], a[1] + b[1])


class WithStart(af.ProcessWindowFunction):
    def process(self, key, context, elements):
        count, total = elements[0]
        yield f"{key},{context.window.start},{count},{total:.2f}"


class GenericEventTimeTrigger(af.EventTimeTrigger):
    """Same behaviour as the default trigger, but forces the generic window path."""


def tumbling_job(events_file: Path, parallelism: int, trigger: af.Trigger | None = None) -> af.Stream:
    app = af.App("flink-tumbling", parallelism=parallelism)
    events = app.source(
        af.read_jsonl(events_file), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(2000)
    )
    windowed = events.key_by(lambda e: e["user"]).window(af.TumblingEventTimeWindows(10_000))
    if trigger is not None:
        windowed = windowed.trigger(trigger)
    return windowed.aggregate(SumCount(), window_function=WithStart())


@pytest.mark.parametrize(
    ("parallelism", "trigger"),
    [(1, None), (4, None), (1, GenericEventTimeTrigger())],
    ids=["fast-path", "parallel", "generic-path"],
)
def test_tumbling_windows_equal_flink(events_file: Path, parallelism: int, trigger: af.Trigger | None) -> None:
    assert sorted(run_collect(tumbling_job(events_file, parallelism, trigger))) == expected("flink_tumbling_100k")


class CountUpTo(af.KeyedProcessFunction):
    def open(self, ctx):
        self.seen = ctx.map_state("seen")

    def process_element(self, event, ctx):
        self.seen.put(ctx.timestamp, self.seen.get(ctx.timestamp, 0) + 1)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + 5000)
        yield from ()

    def on_timer(self, timestamp, ctx):
        yield f"{ctx.key},{timestamp},{sum(n for ts, n in self.seen.items() if ts <= timestamp)}"


@pytest.mark.parametrize("parallelism", [1, 3])
def test_timers_equal_flink(events_file: Path, parallelism: int) -> None:
    app = af.App("flink-timers", parallelism=parallelism)
    events = app.source(
        af.read_jsonl(events_file), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(2000)
    )
    out = events.key_by(lambda e: e["user"]).process(CountUpTo)
    assert sorted(run_collect(out)) == expected("flink_timers_100k")
