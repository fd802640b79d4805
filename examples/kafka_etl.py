"""Kafka to Kafka ETL with dead letters: orders in, clean orders out, bad records aside.

Run it (a broker on 127.0.0.1:9092; docs/kafka-quickstart.md shows how to start one):

    aioflow run examples/kafka_etl.py:app

Orders are JSON objects in the topic ``orders``: ``{"order": 17, "user": "ada",
"amount": 12.5, "currency": "EUR"}``. The job:

- decodes each value with ``parse``, which keeps the bytes next to the decoded order, and
  asks for ``KafkaRecord`` s (``output="record"``), which carry topic, partition and offset;
- sends **malformed JSON** to a side output: ``on_error=BAD_JSON`` turns such a record into
  an ``af.BadRecord`` with its raw bytes and its location, ``orders:0@17``
  (``topic:partition@offset``), instead of failing the job;
- **validates** the others in ``checked``: an order without a user, with an amount that is
  not a positive number, or in an unknown currency becomes an ``af.BadRecord`` of the same
  shape, on another side output;
- writes every dead letter to ``orders-dead-letters``: the message's value is the record's
  bytes exactly as read, its headers say where it came from (``location``) and what was
  wrong (``error``);
- writes the valid orders, amounts in cents, to ``orders-clean``, keyed by user.

Delivery is at least once by default: after a crash, what was written since the last
checkpoint (every 2 s) is written again. ``KAFKA_DELIVERY=exactly_once`` writes in Kafka
transactions committed with each checkpoint: a consumer reading with
``isolation_level="read_committed"`` then sees each result once, whatever crashes (the
broker must support transactions).

Environment: ``KAFKA_BOOTSTRAP`` (``127.0.0.1:9092``), ``ORDERS_TOPIC`` (``orders``),
``CLEAN_TOPIC`` (``orders-clean``), ``DEAD_LETTER_TOPIC`` (``orders-dead-letters``),
``KAFKA_GROUP`` (``kafka_etl``), ``KAFKA_DELIVERY`` (``at_least_once``),
``KAFKA_TRANSACTIONAL_ID_PREFIX`` (``kafka_etl``: use a new one when you delete the state
directory and start over), ``KAFKA_BOUNDED`` (``1``: read what the topic holds now, then
end; by default the job runs until it is stopped). State and checkpoints go to
``examples/out/kafka_etl.state`` (``--state-dir`` or ``AIOFLOW_STATE_DIR`` to move them).
See docs/kafka.md.
"""

import os
from pathlib import Path

import orjson

import aioflow as af

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
ORDERS = os.environ.get("ORDERS_TOPIC", "orders")
CLEAN = os.environ.get("CLEAN_TOPIC", "orders-clean")
DEAD_LETTERS = os.environ.get("DEAD_LETTER_TOPIC", "orders-dead-letters")
GROUP = os.environ.get("KAFKA_GROUP", "kafka_etl")
DELIVERY = os.environ.get("KAFKA_DELIVERY", "at_least_once")
PREFIX = os.environ.get("KAFKA_TRANSACTIONAL_ID_PREFIX", "kafka_etl")
BOUNDED = os.environ.get("KAFKA_BOUNDED", "") == "1"

CURRENCIES = {"EUR", "USD", "GBP"}
BAD_JSON = af.OutputTag("bad_json")
INVALID = af.OutputTag("invalid")


def parse(raw: bytes) -> tuple[bytes, object]:
    """The source's value_format: the order, with its bytes kept for a dead letter.
    Malformed JSON raises here, and the source's ``on_error`` takes over."""
    return raw, orjson.loads(raw)


def problem(order: object) -> str | None:
    """What is wrong with an order, or None."""
    if not isinstance(order, dict):
        return "not a JSON object"
    if not isinstance(order.get("user"), str) or not order["user"]:
        return "no user"
    amount = order.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
        return f"amount must be a positive number, got {amount!r}"
    if order.get("currency") not in CURRENCIES:
        return f"unknown currency {order.get('currency')!r}"
    return None


def kafka_sink(topic: str, name: str, **options) -> af.kafka.KafkaSink:
    """A sink with this job's delivery; each exactly-once sink needs its own transactional ids."""
    prefix = f"{PREFIX}-{name}" if DELIVERY == "exactly_once" else None
    return af.kafka.KafkaSink(
        topic, bootstrap_servers=BOOTSTRAP, delivery=DELIVERY, transactional_id_prefix=prefix, **options
    )


app = af.App(
    "kafka_etl",
    state_dir=str(Path(__file__).parent / "out" / "kafka_etl.state"),
    checkpoint_interval=2.0,  # seconds: offsets, and (exactly once) the transactions to commit
)

orders = app.source(
    af.kafka.KafkaSource(
        ORDERS,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,  # the group's offsets move when checkpoints complete
        starting_offsets="earliest",  # where a partition starts the first time
        value_format=parse,
        output="record",  # KafkaRecord: key, value, topic, partition, offset, timestamp, headers
        on_error=BAD_JSON,
        bounded=BOUNDED,
    ),
    name="orders",
)


@orders.process
def checked(record: af.kafka.KafkaRecord, ctx):
    if record.value is None:  # a tombstone (no value): nothing to load
        return
    raw, order = record.value
    error = problem(order)
    if error is not None:
        location = f"{record.topic}:{record.partition}@{record.offset}"  # as the source's BadRecords
        yield INVALID, af.BadRecord(source="checked", location=location, error=error, raw=raw)
        return
    yield {
        "order": order.get("order"),
        "user": order["user"],
        "amount_cents": round(order["amount"] * 100),
        "currency": order["currency"],
    }


checked.sink(kafka_sink(CLEAN, "clean", key=lambda order: order["user"]), name="clean_orders")

dead_letters = orders.get_side_output(BAD_JSON).union(checked.get_side_output(INVALID), name="dead_letters")
dead_letters.sink(
    kafka_sink(
        DEAD_LETTERS,
        "dead",
        value_format=lambda bad: bad.raw,  # the bytes exactly as read
        headers=lambda bad: [("location", bad.location.encode()), ("error", bad.error.encode())],
    ),
    name="dead_letter_topic",
)

if __name__ == "__main__":
    app.run()
