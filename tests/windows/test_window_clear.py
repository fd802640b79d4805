"""ProcessWindowFunction.clear runs after process, for the window's key."""

import aioflow as af
from aioflow.testing import run_collect

LOG = []


class Logged(af.ProcessWindowFunction):
    def open(self, ctx):
        self.fired = ctx.value_state("fired", default=0)

    def process(self, key, context, elements):
        self.fired.update(self.fired.value() + 1)
        LOG.append(("process", key, context.window.start))
        yield (key, context.window.start, self.fired.value())

    def clear(self, context):
        LOG.append(("clear", context.key, context.window.start))
        self.fired.clear()  # keyed state of the window's key, as for process()


def run(assigner):
    LOG.clear()
    app = af.App("clear", batch_size=1, watermark_interval=0)
    rows = [("a", 1000), ("b", 2000), ("a", 11000)]
    src = app.source(rows, timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps())
    out = src.key_by(lambda r: r[0]).window(assigner).process(Logged, name="w")
    return run_collect(out, timeout=5), list(LOG)


def test_clear_runs_after_process_fast_path():
    out, log = run(af.TumblingEventTimeWindows(10_000))
    # Flink: on the cleanup timer (== end timer when lateness is 0) the window fires, then clear()
    assert log[:4] == [("process", "a", 0), ("clear", "a", 0), ("process", "b", 0), ("clear", "b", 0)]


def test_clear_sees_the_windows_key_for_keyed_state():
    # sliding (generic path) with size == slide behaves like tumbling
    out, log = run(af.SlidingEventTimeWindows(10_000, 10_000))
    # the "fired" counter is cleared per key in clear(), so each firing sees 1
    assert [r[2] for r in out] == [1, 1, 1]


def test_clear_sees_the_windows_key_fast_path():
    out, log = run(af.TumblingEventTimeWindows(10_000))
    assert [r[2] for r in out] == [1, 1, 1]


def test_clear_sees_the_windows_key_generic_path_with_lateness():
    LOG.clear()
    app = af.App("clear2", batch_size=1, watermark_interval=0)
    rows = [("a", 1000), ("b", 2000), ("a", 11000)]
    src = app.source(rows, timestamps=lambda r: r[1], watermarks=af.MonotonousTimestamps())
    out = (
        src.key_by(lambda r: r[0])
        .window(af.SlidingEventTimeWindows(10_000, 10_000))
        .allowed_lateness(500)
        .process(Logged, name="w")
    )
    assert [r[2] for r in run_collect(out, timeout=5)] == [1, 1, 1]
