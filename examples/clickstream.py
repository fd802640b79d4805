"""Clickstream: page views per page and minute, with late clicks.

Run it:  aioflow run examples/clickstream.py:app

Clicks (``{"user", "page", "ts"}``) are keyed by page and cut into tumbling one-minute
windows of event time. It shows:

- incremental aggregation: ``.aggregate(PageViews(), window_function=WithWindowStart())``
  keeps one small accumulator per page and window (views per user), not the clicks; the
  ``ProcessWindowFunction`` adds the window start, giving
  ``(page, window_start, views, unique_users)``;
- ``.allowed_lateness(30_000)``: a window is kept 30 s of event time after it fired, and a
  click arriving in that time fires it again with the updated counts (a *late firing*);
- ``.side_output_late_data(LATE)``: a click later than that goes to a side output
  instead of being dropped, and is printed as ``('late', ...)``.

Lateness only exists relative to the watermark, and a periodic watermark
(``af.BoundedOutOfOrderness``) advances with the wall clock: a file this small is read in
one batch, before the first periodic watermark, so no click would ever be late. This
example therefore uses a *punctuated* watermark strategy (:class:`PerClickWatermarks`):
after every click, the watermark is the highest timestamp seen minus 10 s, minus 1 ms.
The output is then the same on every run, and the same as Flink's on the same input.

Expected output::

    ('/home', 1704067200000, 4, 3)
    ('/pricing', 1704067200000, 2, 2)
    ('/docs', 1704067200000, 1, 1)
    ('/pricing', 1704067200000, 3, 3)
    ('late', '/docs', 'u5', 1704067249000)
    ('/home', 1704067260000, 5, 4)
    ('/docs', 1704067260000, 2, 2)
    ('/home', 1704067320000, 1, 1)
    ('/docs', 1704067320000, 1, 1)

The first minute fires when the click at 71 s moves the watermark past its end; the
``/pricing`` click at 57 s arrives just after and fires its window again (3 views); the
``/docs`` click at 49 s arrives after the watermark passed 60 s + 30 s of allowed
lateness, so the window is gone and the click is late. The last minute fires at the
end of input (the final watermark is +infinity).
"""

from pathlib import Path

import aioflow as af

DATA = Path(__file__).parent / "data" / "clicks.jsonl"

MINUTE = 60_000  # ms
LATE = af.OutputTag("late")


class PerClickWatermarks(af.WatermarkStrategy):
    """Bounded out-of-orderness, but emitted after every record instead of periodically."""

    def __init__(self, max_out_of_orderness: int) -> None:
        super().__init__()
        self.bound = max_out_of_orderness

    def create_generator(self) -> af.WatermarkGenerator:
        return _PerClickGenerator(self.bound)


class _PerClickGenerator(af.WatermarkGenerator):
    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.highest: int | None = None

    def on_event(self, event, timestamp, output):
        if self.highest is None or timestamp > self.highest:
            self.highest = timestamp
        output.emit_watermark(self.highest - self.bound - 1)


class PageViews(af.AggregateFunction):
    """Accumulator: views per user of one page in one window."""

    def create_accumulator(self):
        return {}

    def add(self, click, views):
        views[click["user"]] = views.get(click["user"], 0) + 1
        return views

    def get_result(self, views):
        return sum(views.values()), len(views)

    def merge(self, a, b):
        for user, count in b.items():
            a[user] = a.get(user, 0) + count
        return a


class WithWindowStart(af.ProcessWindowFunction):
    def process(self, page, context, results):
        views, users = results[0]  # after aggregate(), the one result of the window
        yield (page, context.window.start, views, users)


app = af.App("clickstream")

clicks = app.source(
    af.read_jsonl(DATA),
    name="clicks",
    timestamps=lambda click: click["ts"],
    watermarks=PerClickWatermarks(10_000),
)

views = (
    clicks.key_by(lambda click: click["page"])
    .window(af.TumblingEventTimeWindows(MINUTE))
    .allowed_lateness(30_000)
    .side_output_late_data(LATE)
    .aggregate(PageViews(), window_function=WithWindowStart(), name="page_views")
)
views.sink(af.PrintSink(), name="print_views")

late = views.get_side_output(LATE).map(lambda click: ("late", click["page"], click["user"], click["ts"]), name="late")
late.sink(af.PrintSink(), name="print_late")

if __name__ == "__main__":
    app.run()
