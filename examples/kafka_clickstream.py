"""Clickstream from Kafka: views per page in tumbling 10-second windows of event time.

Run it (a broker on 127.0.0.1:9092; docs/kafka-quickstart.md starts one and produces clicks):

    aioflow run examples/kafka_clickstream.py:app --http-port 9100

Clicks are JSON objects in the topic ``clicks``: ``{"user": "ada", "page": "/home"}``.
The job:

- takes each click's **event time from its Kafka timestamp**: ``app.source`` has no
  ``timestamps=`` (a click that carries its own time would use ``timestamps=lambda c:
  c["ts"]``);
- keeps **watermarks per partition** with ``af.BoundedOutOfOrderness(2_000,
  idle_timeout=5_000)``: a click may be up to 2 s out of order within its partition, and
  a partition without clicks for 5 s goes idle, so it stops holding the windows back.
  Without ``idle_timeout`` a single empty or quiet partition keeps every window open;
- counts views and distinct users per page and 10-second window, incrementally
  (``aggregate``), and writes ``{"page", "start", "end", "views", "users"}`` to the
  topic ``page-views``, keyed by page, with the window's last millisecond as the Kafka
  timestamp (its event time, for whatever reads the topic next);
- skips a click that is not JSON (``on_error="skip"``: counted in
  ``aioflow_source_records_skipped_total``, the first one logged);
- checkpoints every 5 s into ``examples/out/kafka_clickstream.state``: the offsets of
  every partition and the open windows. When a checkpoint completes, its offsets are
  committed to the consumer group (``kafka_clickstream``), so lag tools see them. Ctrl-C
  (SIGTERM) stops with a savepoint, which commits them too; the next run on the same
  state directory resumes from it, open windows included: nothing lost, nothing counted
  twice.

Environment: ``KAFKA_BOOTSTRAP`` (``127.0.0.1:9092``), ``CLICKS_TOPIC`` (``clicks``),
``PAGE_VIEWS_TOPIC`` (``page-views``), ``KAFKA_GROUP`` (``kafka_clickstream``),
``KAFKA_BOUNDED`` (``1``: read what the topic holds now, fire every window, end). The state
directory can be moved with ``--state-dir`` or ``AIOFLOW_STATE_DIR``. See docs/kafka.md.
"""

import os
from pathlib import Path

import aioflow as af

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CLICKS = os.environ.get("CLICKS_TOPIC", "clicks")
PAGE_VIEWS = os.environ.get("PAGE_VIEWS_TOPIC", "page-views")
GROUP = os.environ.get("KAFKA_GROUP", "kafka_clickstream")
BOUNDED = os.environ.get("KAFKA_BOUNDED", "") == "1"

WINDOW = 10_000  # ms


class ViewsAndUsers(af.AggregateFunction):
    """Accumulator: views per user of one page in one window (a dict: JSON state)."""

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


class WithWindow(af.ProcessWindowFunction):
    def process(self, page, context, results):
        views, users = results[0]  # after aggregate(): the window's one result
        yield {"page": page, "start": context.window.start, "end": context.window.end, "views": views, "users": users}


app = af.App(
    "kafka_clickstream",
    state_dir=str(Path(__file__).parent / "out" / "kafka_clickstream.state"),
    checkpoint_interval=5.0,  # seconds
)

clicks = app.source(
    af.kafka.KafkaSource(
        CLICKS,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        starting_offsets="earliest",
        value_format="json",
        on_error="skip",
        bounded=BOUNDED,
    ),
    name="clicks",
    # no timestamps=: the Kafka timestamp of each record is its event time
    watermarks=af.BoundedOutOfOrderness(2_000, idle_timeout=5_000),
)

page_views = (
    clicks.key_by(lambda click: click["page"])
    .window(af.TumblingEventTimeWindows(WINDOW))
    .aggregate(ViewsAndUsers(), window_function=WithWindow(), name="page_views")
)
page_views.sink(
    af.kafka.KafkaSink(
        PAGE_VIEWS,
        bootstrap_servers=BOOTSTRAP,
        key=lambda row: row["page"],
        timestamp=lambda row: row["end"] - 1,  # a window's result happens at its last millisecond
    ),
    name="page_views_topic",
)

if __name__ == "__main__":
    app.run()
