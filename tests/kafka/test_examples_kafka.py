"""The Kafka examples, run as `aioflow run examples/kafka_*.py:app` workers against the
session's brokers: the test produces their input, sets their topics through the environment
and reads what they wrote with a consumer. Waits are bounded: for a log line, for a number
of messages, or for the worker to exit."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.conftest import _free_port, _serve
from kafka.topics import committed_offsets, create_topic, produce, read, read_all, sync, unique_name
from recovery.jobs import Worker
from worker.serving import get

ROOT = Path(__file__).resolve().parent.parent.parent
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z: a multiple of the clickstream's 10 s windows


def _worker(example: str, env: dict[str, str], log: Path, *args: str) -> Worker:
    """``aioflow run examples/<example>:app`` in a subprocess; its JSON log goes to ``log``."""
    return Worker(log.parent, env, *args, target=f"examples/{example}:app", log=log, cwd=ROOT)


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
    return {
        "KAFKA_BOOTSTRAP": broker,
        "ORDERS_TOPIC": orders,
        "CLEAN_TOPIC": clean,
        "DEAD_LETTER_TOPIC": dead,
        "KAFKA_GROUP": group,
        "AIOFLOW_STATE_DIR": str(state),
    }


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
    orders, clean, dead = [sync(create_topic, broker, n) for n in (1, 2, 1)]
    group = unique_name("g")
    sync(produce, broker, orders, [{"value": value} for value in ORDERS])
    env = _etl_env(broker, orders, clean, dead, group, tmp_path / "state") | {
        "KAFKA_BOUNDED": "1",
        "KAFKA_DELIVERY": "exactly_once",
        "KAFKA_TRANSACTIONAL_ID_PREFIX": unique_name("etl"),
    }
    with _worker("kafka_etl.py", env, tmp_path / "run1.log") as worker:
        assert worker.wait() == 0, worker.text()
    assert worker.wait_for("job finished")
    _check_etl_output(
        sync(read_all, broker, clean, 2, committed=True), sync(read_all, broker, dead, 1, committed=True), orders
    )
    assert sync(committed_offsets, broker, group, orders, 1) == {0: len(ORDERS)}  # by the final checkpoint

    # A second run on the same state directory reads only what came since.
    sync(produce, broker, orders, [{"value": b'{"order": 9, "user": "dee", "amount": 1, "currency": "USD"}'}])
    with _worker("kafka_etl.py", env, tmp_path / "run2.log") as worker:
        assert worker.wait() == 0, worker.text()
    clean_orders = [orjson.loads(m.value)["order"] for m in sync(read_all, broker, clean, 2, committed=True)]
    assert sorted(clean_orders) == [1, 4, 8, 9]
    assert len(sync(read_all, broker, dead, 1, committed=True)) == 5


def test_kafka_etl_runs_as_a_worker_until_sigterm(kafka_broker: str, tmp_path: Path) -> None:
    """The defaults: unbounded, at least once; a SIGTERM stops it with a savepoint."""
    broker = kafka_broker
    orders, clean, dead = [sync(create_topic, broker, n) for n in (1, 2, 1)]
    group = unique_name("g")
    env = _etl_env(broker, orders, clean, dead, group, tmp_path / "state")
    with _worker("kafka_etl.py", env, tmp_path / "worker.log") as worker:
        sync(produce, broker, orders, [{"value": value} for value in ORDERS])
        assert len(sync(read, broker, clean, 3)) == 3 and len(sync(read, broker, dead, 5)) == 5
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.text()
    assert worker.wait_for("job stopped with a savepoint")
    _check_etl_output(sync(read_all, broker, clean, 2), sync(read_all, broker, dead, 1), orders)
    assert sync(committed_offsets, broker, group, orders, 1) == {0: len(ORDERS)}


# -- examples/kafka_clickstream.py ----------------------------------------------------------


def _clicks(*clicks: tuple[int, str, str]) -> list[dict[str, Any]]:
    """``(ms after T0, user, page)`` -> records for partition 0 with that Kafka timestamp."""
    return [
        {"value": orjson.dumps({"user": user, "page": page}), "partition": 0, "timestamp_ms": T0 + ms}
        for ms, user, page in clicks
    ]


def _views(messages: list[Any]) -> list[tuple[str, int, int, int]]:
    rows = [orjson.loads(m.value) for m in messages]
    for m, row in zip(messages, rows, strict=True):
        assert m.key == row["page"].encode() and row["end"] == row["start"] + 10_000
        assert m.timestamp == row["end"] - 1  # the window's last millisecond: its event time
    return sorted((row["page"], row["start"] - T0, row["views"], row["users"]) for row in rows)


@pytest.mark.timeout(300)  # two workers, each joining the group (Tansu takes up to ~20 s to rebalance)
def test_kafka_clickstream_worker_fires_windows_past_an_idle_partition_and_resumes_from_its_savepoint(
    kafka_broker: str, tmp_path: Path
) -> None:
    """Clicks only ever go to partition 0 of 2: partition 1 holds the watermark back until
    it goes idle (idle_timeout), then windows fire while the worker runs. Ctrl-C takes a
    savepoint (offsets committed to the group); the next run resumes the open window."""
    broker = kafka_broker
    clicks, views = [sync(create_topic, broker, n) for n in (2, 2)]
    group = unique_name("g")
    env = {
        "KAFKA_BOOTSTRAP": broker,
        "CLICKS_TOPIC": clicks,
        "PAGE_VIEWS_TOPIC": views,
        "KAFKA_GROUP": group,
        "AIOFLOW_STATE_DIR": str(tmp_path / "state"),
    }
    sync(
        produce,
        broker,
        clicks,
        _clicks(
            (1_000, "u1", "/home"),
            (2_000, "u2", "/home"),
            (3_000, "u1", "/home"),
            (4_000, "u3", "/docs"),
            (11_000, "u1", "/home"),
            (12_000, "u2", "/pricing"),
            (25_000, "u4", "/docs"),  # the watermark passes 20 s: the first two windows fire, [20 s, 30 s) stays open
        ),
    )
    first_two = [("/docs", 0, 1, 1), ("/home", 0, 3, 2), ("/home", 10_000, 1, 1), ("/pricing", 10_000, 1, 1)]

    with _worker("kafka_clickstream.py", env, tmp_path / "run1.log", "--http-port", "0") as worker:
        port = worker.event("http server started")["port"]
        assert _views(sync(read, broker, views, 4)) == first_two
        status, body = get(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = get(port, "/metrics")
        assert status == 200
        assert f'aioflow_kafka_consumer_lag{{source="clicks",topic="{clicks}",partition="0"}} 0' in body
        worker.signal(signal.SIGINT)
        assert worker.wait() == 0, worker.text()
    assert worker.wait_for("job stopped with a savepoint")
    assert sync(committed_offsets, broker, group, clicks, 2) == {0: 7, 1: 0}

    sync(produce, broker, clicks, _clicks((27_000, "u5", "/docs"), (41_000, "u1", "/home")))
    with _worker("kafka_clickstream.py", env, tmp_path / "run2.log") as worker:
        assert worker.wait_for("restoring")
        assert len(sync(read, broker, views, 5, seconds=120)) == 5
        worker.signal(signal.SIGINT)
        assert worker.wait() == 0, worker.text()
    # each window once; /docs in [20 s, 30 s) counts the click read before the savepoint too
    assert _views(sync(read_all, broker, views, 2)) == sorted([*first_two, ("/docs", 20_000, 2, 2)])


def test_kafka_clickstream_bounded_fires_every_window_at_the_end(kafka_broker: str, tmp_path: Path) -> None:
    broker = kafka_broker
    clicks, views = [sync(create_topic, broker, n) for n in (2, 1)]
    sync(
        produce,
        broker,
        clicks,
        _clicks((1_000, "u1", "/home"), (1_500, "u1", "/home"), (12_000, "u2", "/docs"), (13_000, "u3", "/docs")),
    )
    sync(produce, broker, clicks, [{"value": b"not json", "partition": 1, "timestamp_ms": T0 + 5_000}])
    env = {
        "KAFKA_BOOTSTRAP": broker,
        "CLICKS_TOPIC": clicks,
        "PAGE_VIEWS_TOPIC": views,
        "KAFKA_GROUP": unique_name("g"),
        "AIOFLOW_STATE_DIR": str(tmp_path / "state"),
        "KAFKA_BOUNDED": "1",
    }
    with _worker("kafka_clickstream.py", env, tmp_path / "run.log") as worker:
        assert worker.wait() == 0, worker.text()
    assert worker.wait_for("job finished")
    assert _views(sync(read_all, broker, views, 1)) == [("/docs", 10_000, 2, 2), ("/home", 0, 2, 1)]
    assert worker.event("skipped bad record")["location"] == f"{clicks}:1@0"


# -- docs/kafka-quickstart.md, step 9: exactly once on noida-db -------------------------------


def test_quickstart_exactly_once_step_runs_as_written(tmp_path: Path) -> None:
    """The step's commands and files, run as written: only the port (9093 -> a free one)
    and the example's state directory (a temporary one) differ."""
    text = (ROOT / "docs" / "kafka-quickstart.md").read_text()
    step = text[text.index("## 9. Exactly once") : text.index("## Next")]
    shell = re.findall(r"```sh\n(.*?)```", step, re.S)
    files = re.findall(r"```py\n(.*?)```", step, re.S)
    expected = re.findall(r"```text\n(.*?)```", step, re.S)
    assert len(shell) == 3 and len(files) == 3 and len(expected) == 1
    port = _free_port()
    for block in files:
        name = re.match(r"# (\w+\.py):", block)
        assert name and "127.0.0.1:9093" in block, block
        (tmp_path / name.group(1)).write_text(block.replace("127.0.0.1:9093", f"127.0.0.1:{port}"))
    start = shlex.split(shell[0])
    assert start[:6] == ["noida-db", "start", "--only", "kafka", "--kafka-port", "9093"], start
    noida = shutil.which("noida-db", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert noida is not None
    assert start[6:] == ["--data-dir", "noida-data"], start
    broker = _serve([noida, *start[1:5], str(port), "--data-dir", str(tmp_path / "noida-data")], port, tmp_path / "log")
    next(broker)  # listening
    try:
        for script in ("create_topics.py", "produce_orders.py"):
            assert f"`python {script}`" in step
            subprocess.run([sys.executable, script], cwd=tmp_path, check=True, timeout=60)
        run = shell[1].strip().replace("127.0.0.1:9093", f"127.0.0.1:{port}")
        assert "KAFKA_DELIVERY=exactly_once" in run and run.endswith("aioflow run examples/kafka_etl.py:app")
        aioflow = f"{shlex.quote(sys.executable)} -m aioflow"  # this interpreter's, as the README's test does
        env = os.environ | {"AIOFLOW_STATE_DIR": str(tmp_path / "state")}  # not examples/out
        run = run.replace("aioflow run", f"{aioflow} run")
        worker = subprocess.run(["sh", "-e", "-c", run], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr
        show_command = shell[2].strip()
        assert show_command.startswith("aioflow run ")
        show = subprocess.run(
            ["sh", "-e", "-c", show_command.replace("aioflow run", f"{aioflow} run", 1)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert show.returncode == 0, show.stderr
        assert show.stdout == expected[0]
        dead = sync(read_all, f"127.0.0.1:{port}", "orders-dead-letters", 1, committed=True)
        assert sorted(dict(m.headers)["location"] for m in dead) == [b"orders:0@1", b"orders:0@2"]
    finally:
        broker.close()  # stops the broker
