"""The Kafka examples, run as `aioflow run examples/kafka_*.py:app` workers against the
session's brokers: the test produces their input, sets their topics through the environment
and reads what they wrote with a consumer. Waits are bounded: for a log line, for a number
of messages, or for the worker to exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent.parent
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z: a multiple of the clickstream's 10 s windows


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _topics(broker: str, *partitions: int) -> list[str]:
    """New topics with these numbers of partitions."""
    names = [_name("t") for _ in partitions]

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1)
                                       for name, n in zip(names, partitions)])
        finally:
            await admin.close()

    anyio.run(create)
    return names


def _produce(broker: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Each dict holds send() arguments: value, and optionally key, partition, timestamp_ms."""
    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            for record in records:
                await producer.send_and_wait(topic, **record)
        finally:
            await producer.stop()

    anyio.run(produce)


def _read(broker: str, topic: str, count: int, *, committed: bool = False, seconds: float = 60) -> list[Any]:
    """The first ``count`` messages of ``topic``, waiting for them at most ``seconds``."""
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                                    isolation_level="read_committed" if committed else "read_uncommitted")
        await consumer.start()
        found: list[Any] = []
        try:
            with anyio.move_on_after(seconds):
                while len(found) < count:
                    for messages in (await consumer.getmany(timeout_ms=200)).values():
                        found.extend(messages)
        finally:
            await consumer.stop()
        return found

    return anyio.run(read)


def _read_all(broker: str, topic: str, partitions: int, *, committed: bool = False) -> list[Any]:
    """Every message ``topic`` holds now, up to the end offsets (its writer has finished)."""
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                                    isolation_level="read_committed" if committed else "read_uncommitted")
        await consumer.start()
        found: list[Any] = []
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            with anyio.fail_after(30):
                while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                    for messages in (await consumer.getmany(timeout_ms=200)).values():
                        found.extend(messages)
        finally:
            await consumer.stop()
        return found

    return anyio.run(read)


def _committed(broker: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    async def committed() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            await consumer.stop()

    return anyio.run(committed)


class Worker:
    """``aioflow run examples/<example>:app`` in a subprocess; its JSON log goes to a file."""

    def __init__(self, example: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aioflow", "run", f"examples/{example}:app", "--log-format", "json", *args],
                cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=out,
            )

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:  # the test failed while it ran
            self.process.kill()
            self.process.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.startswith(b"{")]

    def wait_for(self, event: str, seconds: float = 60) -> dict[str, Any]:
        """The first log line of ``event``, waiting for it at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            for line in self.events():
                if line["event"] == event:
                    return line
            assert self.process.poll() is None, f"the worker exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"no {event!r} within {seconds} s:\n{self.log.read_text()}"
            time.sleep(0.05)  # polling the log file, bounded by the deadline

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # a 503 is an answer too
        return error.code, error.read()


# -- examples/kafka_etl.py ------------------------------------------------------------------

ORDERS = [
    b'{"order": 1, "user": "ada", "amount": 12.5, "currency": "EUR"}',
    b'{"order": 2, "user": "bob", "amount": ',  # malformed JSON
    b'{"order": 3, "user": "", "amount": 3, "currency": "EUR"}',  # no user
    b'{"order": 4, "user": "cy", "amount": 7, "currency": "USD"}',
    b'{"order": 5, "user": "ada", "amount": -1, "currency": "EUR"}',  # not a positive amount
    b'\xff{"order": 6}',  # not even UTF-8
    b'{"order": 7, "user": "bob", "amount": 0.99, "currency": "CHF"}',  # unknown currency
    b'{"order": 8, "user": "bob", "amount": 0.99, "currency": "GBP"}',
]


def _etl_env(broker: str, orders: str, clean: str, dead: str, group: str, state: Path) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP": broker, "ORDERS_TOPIC": orders, "CLEAN_TOPIC": clean, "DEAD_LETTER_TOPIC": dead,
            "KAFKA_GROUP": group, "AIOFLOW_STATE_DIR": str(state)}


def _check_etl_output(clean: list[Any], dead: list[Any], orders: str) -> None:
    assert sorted((m.key, orjson.loads(m.value)) for m in clean) == [
        (b"ada", {"order": 1, "user": "ada", "amount_cents": 1250, "currency": "EUR"}),
        (b"bob", {"order": 8, "user": "bob", "amount_cents": 99, "currency": "GBP"}),
        (b"cy", {"order": 4, "user": "cy", "amount_cents": 700, "currency": "USD"}),
    ]
    letters = {dict(m.headers)["location"].decode(): (m.value, dict(m.headers)["error"].decode()) for m in dead}
    assert sorted(letters) == [f"{orders}:0@{i}" for i in (1, 2, 4, 5, 6)]
    for offset in (1, 2, 4, 5, 6):
        raw, _ = letters[f"{orders}:0@{offset}"]
        assert raw == ORDERS[offset]  # the bytes exactly as read
    assert letters[f"{orders}:0@1"][1].startswith("unexpected end of data")
    assert letters[f"{orders}:0@2"][1] == "no user"
    assert letters[f"{orders}:0@4"][1] == "amount must be a positive number, got -1"
    assert letters[f"{orders}:0@6"][1] == "unknown currency 'CHF'"


def test_kafka_etl_bounded_and_exactly_once_splits_clean_orders_from_dead_letters(
    transactional_kafka_broker: str, tmp_path: Path
) -> None:
    broker = transactional_kafka_broker
    orders, clean, dead = _topics(broker, 1, 2, 1)
    group = _name("g")
    _produce(broker, orders, [{"value": value} for value in ORDERS])
    env = _etl_env(broker, orders, clean, dead, group, tmp_path / "state") | {
        "KAFKA_BOUNDED": "1", "KAFKA_DELIVERY": "exactly_once", "KAFKA_TRANSACTIONAL_ID_PREFIX": _name("etl"),
    }
    with Worker("kafka_etl.py", env, tmp_path / "run1.log") as worker:
        assert worker.process.wait(timeout=120) == 0, worker.log.read_text()
    assert worker.wait_for("job finished")
    _check_etl_output(_read_all(broker, clean, 2, committed=True), _read_all(broker, dead, 1, committed=True),
                      orders)
    assert _committed(broker, group, orders, 1) == {0: len(ORDERS)}  # by the final checkpoint

    # A second run on the same state directory reads only what came since.
    _produce(broker, orders, [{"value": b'{"order": 9, "user": "dee", "amount": 1, "currency": "USD"}'}])
    with Worker("kafka_etl.py", env, tmp_path / "run2.log") as worker:
        assert worker.process.wait(timeout=120) == 0, worker.log.read_text()
    clean_orders = [orjson.loads(m.value)["order"] for m in _read_all(broker, clean, 2, committed=True)]
    assert sorted(clean_orders) == [1, 4, 8, 9]
    assert len(_read_all(broker, dead, 1, committed=True)) == 5


def test_kafka_etl_runs_as_a_worker_until_sigterm(kafka_broker: str, tmp_path: Path) -> None:
    """The defaults: unbounded, at least once; a SIGTERM stops it with a savepoint."""
    broker = kafka_broker
    orders, clean, dead = _topics(broker, 1, 2, 1)
    group = _name("g")
    env = _etl_env(broker, orders, clean, dead, group, tmp_path / "state")
    with Worker("kafka_etl.py", env, tmp_path / "worker.log") as worker:
        _produce(broker, orders, [{"value": value} for value in ORDERS])
        assert len(_read(broker, clean, 3)) == 3 and len(_read(broker, dead, 5)) == 5
        assert worker.stop(signal.SIGTERM) == 0, worker.log.read_text()
    assert worker.wait_for("job stopped with a savepoint")
    _check_etl_output(_read_all(broker, clean, 2), _read_all(broker, dead, 1), orders)
    assert _committed(broker, group, orders, 1) == {0: len(ORDERS)}


# -- examples/kafka_clickstream.py ----------------------------------------------------------


def _clicks(*clicks: tuple[int, str, str]) -> list[dict[str, Any]]:
    """``(ms after T0, user, page)`` -> records for partition 0 with that Kafka timestamp."""
    return [{"value": orjson.dumps({"user": user, "page": page}), "partition": 0, "timestamp_ms": T0 + ms}
            for ms, user, page in clicks]


def _views(messages: list[Any]) -> list[tuple[str, int, int, int]]:
    rows = [orjson.loads(m.value) for m in messages]
    assert all(m.key == row["page"].encode() and row["end"] == row["start"] + 10_000 for m, row in zip(messages, rows))
    return sorted((row["page"], row["start"] - T0, row["views"], row["users"]) for row in rows)


@pytest.mark.timeout(300)  # two workers, each joining the group (Tansu takes up to ~20 s to rebalance)
def test_kafka_clickstream_worker_fires_windows_past_an_idle_partition_and_resumes_from_its_savepoint(
    kafka_broker: str, tmp_path: Path
) -> None:
    """Clicks only ever go to partition 0 of 2: partition 1 holds the watermark back until
    it goes idle (idle_timeout), then windows fire while the worker runs. Ctrl-C takes a
    savepoint (offsets committed to the group); the next run resumes the open window."""
    broker = kafka_broker
    clicks, views = _topics(broker, 2, 2)
    group = _name("g")
    env = {"KAFKA_BOOTSTRAP": broker, "CLICKS_TOPIC": clicks, "PAGE_VIEWS_TOPIC": views, "KAFKA_GROUP": group,
           "AIOFLOW_STATE_DIR": str(tmp_path / "state")}
    _produce(broker, clicks, _clicks(
        (1_000, "u1", "/home"), (2_000, "u2", "/home"), (3_000, "u1", "/home"), (4_000, "u3", "/docs"),
        (11_000, "u1", "/home"), (12_000, "u2", "/pricing"),
        (25_000, "u4", "/docs"),  # the watermark passes 20 s: the first two windows fire, [20 s, 30 s) stays open
    ))
    first_two = [("/docs", 0, 1, 1), ("/home", 0, 3, 2), ("/home", 10_000, 1, 1), ("/pricing", 10_000, 1, 1)]

    with Worker("kafka_clickstream.py", env, tmp_path / "run1.log", "--http-port", "0") as worker:
        port = worker.wait_for("http server started")["port"]
        assert _views(_read(broker, views, 4)) == first_two
        status, body = _get(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(port, "/metrics")
        assert status == 200
        assert f'aioflow_kafka_consumer_lag{{source="clicks",topic="{clicks}",partition="0"}} 0' in body.decode()
        assert worker.stop(signal.SIGINT) == 0, worker.log.read_text()
    assert worker.wait_for("job stopped with a savepoint")
    assert _committed(broker, group, clicks, 2) == {0: 7, 1: 0}

    _produce(broker, clicks, _clicks((27_000, "u5", "/docs"), (41_000, "u1", "/home")))
    with Worker("kafka_clickstream.py", env, tmp_path / "run2.log") as worker:
        assert worker.wait_for("restoring")
        assert len(_read(broker, views, 5, seconds=120)) == 5
        assert worker.stop(signal.SIGINT) == 0, worker.log.read_text()
    # each window once; /docs in [20 s, 30 s) counts the click read before the savepoint too
    assert _views(_read_all(broker, views, 2)) == sorted([*first_two, ("/docs", 20_000, 2, 2)])


def test_kafka_clickstream_bounded_fires_every_window_at_the_end(kafka_broker: str, tmp_path: Path) -> None:
    broker = kafka_broker
    clicks, views = _topics(broker, 2, 1)
    _produce(broker, clicks, _clicks((1_000, "u1", "/home"), (1_500, "u1", "/home"), (12_000, "u2", "/docs"),
                                     (13_000, "u3", "/docs")))
    _produce(broker, clicks, [{"value": b"not json", "partition": 1, "timestamp_ms": T0 + 5_000}])
    env = {"KAFKA_BOOTSTRAP": broker, "CLICKS_TOPIC": clicks, "PAGE_VIEWS_TOPIC": views, "KAFKA_GROUP": _name("g"),
           "AIOFLOW_STATE_DIR": str(tmp_path / "state"), "KAFKA_BOUNDED": "1"}
    with Worker("kafka_clickstream.py", env, tmp_path / "run.log") as worker:
        assert worker.process.wait(timeout=120) == 0, worker.log.read_text()
    assert worker.wait_for("job finished")
    assert _views(_read_all(broker, views, 1)) == [("/docs", 10_000, 2, 2), ("/home", 0, 2, 1)]
    assert worker.wait_for("skipped bad record")["location"] == f"{clicks}:1@0"
