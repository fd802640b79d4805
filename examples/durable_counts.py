"""Durable counts: page views per user and minute, with state that survives ``kill -9``.

Run it:  aioflow run examples/durable_counts.py:app

Page views (``{"user", "page", "ts"}``) are counted per user in tumbling one-minute
windows of event time; each result also carries the user's running total, kept in keyed
state across windows. The job checkpoints every 0.5 s into its state directory,
``examples/out/durable_counts.state``, and writes its results to
``examples/out/durable_counts.jsonl`` with an exactly-once file sink: a result is appended
to the file when the first checkpoint after it completes, so the file only ever holds
results of completed checkpoints. The results are also printed as they are computed.
A ``paced`` step stands in for real work and makes the run last about 3 s, time enough
to kill it.

Kill it, look, restart it::

    rm -rf examples/out/durable_counts* examples/out/.durable_counts*   # a fresh start (see below)
    aioflow run examples/durable_counts.py:app & sleep 2; kill -9 $!
    wc -l examples/out/durable_counts.jsonl      # the results the completed checkpoints committed
    aioflow run examples/durable_counts.py:app   # logs "restoring" with the checkpoint's id

The restarted worker reopens the last completed checkpoint: the file source goes back to
the line that checkpoint recorded; the open windows, the running totals and the
watermark are as they were then; and the sink first commits what that checkpoint had
pre-committed, if the kill came before it did. The file then holds the same 147 results
as a run that was never killed, each once; compare with one::

    DURABLE_COUNTS_DIR=/tmp/undisturbed aioflow run examples/durable_counts.py:app > /dev/null
    diff <(sort /tmp/undisturbed/durable_counts.jsonl) <(sort examples/out/durable_counts.jsonl)

Each user's results are in the same order; results of different users for the same
minute may be in another order after a restart. The *printed* results are not
transactional: those printed after the last checkpoint and before the kill are printed
again by the restarted worker.

Ctrl-C (or SIGTERM) stops the worker with a savepoint instead (under
``examples/out/durable_counts.state/savepoints/``): nothing is lost or printed twice, and
the next run resumes from it. A run that reached the end of its input leaves a final
checkpoint behind, so running it again resumes at the end of the input and adds nothing:
to start from the beginning, delete the state directory *and* the output file (the
exactly-once sink never truncates it), as the ``rm`` above does.

``DURABLE_COUNTS_DIR`` puts the state directory and the output file in another folder.
See docs/fault-tolerance.md.
"""

import os
from pathlib import Path

import anyio

import aioflow as af

HERE = Path(__file__).parent
DATA = HERE / "data" / "page_views.jsonl"
OUT = Path(os.environ.get("DURABLE_COUNTS_DIR", HERE / "out"))

MINUTE = 60_000  # ms

app = af.App(
    "durable_counts",
    state_dir=str(OUT / "durable_counts.state"),
    checkpoint_interval=0.5,  # seconds
    batch_size=25,  # small batches: checkpoint barriers go between them
)

views = app.source(
    af.read_jsonl(DATA),
    name="views",
    timestamps=lambda view: view["ts"],
    watermarks=af.BoundedOutOfOrderness(5_000),
)


@views.map(max_concurrency=1)  # one view at a time: async calls otherwise overlap (docs/async.md)
async def paced(view: dict) -> dict:
    """Stands in for real work (a lookup, say): about 3 s for the whole file."""
    await anyio.sleep(0.005)
    return view


class CountViews(af.AggregateFunction):
    def create_accumulator(self):
        return 0

    def add(self, view, count):
        return count + 1

    def get_result(self, count):
        return count

    def merge(self, a, b):
        return a + b


class PerMinute(af.ProcessWindowFunction):
    def open(self, ctx):
        self.total = ctx.value_state("total", default=0)  # per user, across windows

    def process(self, user, context, counts):
        views = counts[0]  # after aggregate(): the one result
        self.total.update(self.total.value() + views)
        yield {"user": user, "minute": context.window.start, "views": views, "total": self.total.value()}


per_minute = (
    paced.key_by(lambda view: view["user"])
    .window(af.TumblingEventTimeWindows(MINUTE))
    .aggregate(CountViews(), window_function=PerMinute(), name="per_minute")
)
per_minute.sink(af.FileSink(OUT / "durable_counts.jsonl", exactly_once=True), name="counts_file")
per_minute.sink(af.PrintSink(), name="print")

if __name__ == "__main__":
    app.run()
