"""Small functions several test modules use."""

from __future__ import annotations

import time

import anyio
import structlog
import structlog.testing

import aioflow as af


class Count(af.AggregateFunction):
    """Counts a window's records."""

    def create_accumulator(self):
        return 0

    def add(self, value, acc):
        return acc + 1

    def get_result(self, acc):
        return acc

    def merge(self, a, b):
        return a + b


class SlowSink(af.Sink):
    """Sleeps ``seconds`` per batch: holds the tasks before it back (real backpressure
    once a channel lies between them)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        seconds = self.seconds

        class Writer(af.SinkWriter):
            async def write(self, values: list) -> None:
                await anyio.sleep(seconds)

        return Writer()


class _PerWindow(af.ProcessWindowFunction):
    def process(self, key, context, elements):
        yield (context.window.start, sum(1 for _ in elements))


async def late_records_under_backpressure(
    app: af.App, events: af.Stream, *, window: int = 1_000, sink_seconds: float = 0.05
) -> tuple[int, int, float]:
    """Run ``events`` (a source stream with watermarks) into a slow sink over a channel,
    and into one-window-per-``window``-ms counts. Returns (records late at the window,
    records counted in windows, seconds the source was backpressured)."""
    events.sink(SlowSink(sink_seconds), parallelism=2)  # parallelism 2: a channel, not a chain
    late_tag = af.OutputTag("late")
    counted = (
        events.key_by(lambda e: "all")
        .window(af.TumblingEventTimeWindows(window))
        .side_output_late_data(late_tag)
        .process(_PerWindow(), name="per_window")
    )
    counts, late = af.CollectSink(), af.CollectSink()
    counted.sink(counts)
    counted.get_side_output(late_tag).sink(late)
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while (job := app.job) is None:
                await anyio.sleep(0.01)  # polling a condition, bounded by fail_after
    sources = [task for task in job.subtasks if task.is_source]
    backpressured = sum(
        channel.statistics().backpressured_seconds
        for task in sources
        for writer in task.writers
        for channel in writer.channels
    )
    return len(late.results), sum(n for _, n in counts.results), backpressured


async def run_to_failure(app: af.App) -> tuple[Exception, float, int]:
    """Run ``app``, which must fail: (its error, seconds until it failed, how many times
    the job restarted before, as its log says)."""
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        try:
            await app.run_async()
        except Exception as exc:
            error = exc
        else:
            raise AssertionError("the job did not fail")
    restarts = sum(entry["event"] == "job failed: restarting from the last checkpoint" for entry in logs)
    return error, time.monotonic() - started, restarts
