"""Session windows: merging across a bridge, and late records within the allowed lateness."""

import aioflow as af
from aioflow.testing import run_collect


class Sess(af.ProcessWindowFunction):
    def process(self, key, context, elements):
        yield (context.window.start, context.window.end, sorted(elements))


def test_session_bridge_merge():
    app = af.App("sess", batch_size=1, watermark_interval=0)
    rows = [0, 10, 4, 9, 30]
    src = app.source(rows, timestamps=lambda t: t, watermarks=af.BoundedOutOfOrderness(20))
    out = src.key_by(lambda t: 0).window(af.EventTimeSessionWindows(5)).process(Sess, name="s")
    assert run_collect(out, timeout=5) == [(0, 15, [0, 4, 9, 10]), (30, 35, [30])]


def test_session_late_within_lateness_merges_and_refires():
    app = af.App("sess2", batch_size=1, watermark_interval=0)
    rows = [0, 100, 6]  # after 100: watermark 99 (monotonous) -> session [0,5) fired; 6 is late
    src = app.source(rows, timestamps=lambda t: t, watermarks=af.MonotonousTimestamps())
    late = af.OutputTag("late")
    w = (
        src.key_by(lambda t: 0)
        .window(af.EventTimeSessionWindows(5))
        .allowed_lateness(200)
        .side_output_late_data(late)
        .process(Sess, name="s")
    )
    # Flink: [0,5) fires at wm 99; 6 -> window [6,11) is within lateness, fires at once alone
    # (does not touch [0,5)); [100,105) fires at the end.
    assert run_collect(w, timeout=5) == [(0, 5, [0]), (6, 11, [6]), (100, 105, [100])]
