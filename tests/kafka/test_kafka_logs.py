"""What a Kafka worker logs: aioflow's lines, not the Kafka client's chatter. aiokafka
logs about eight ``info`` lines per worker start (coordinator found, group joined,
partitions assigned...), which ``configure_logging`` keeps out unless asked."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
from kafka.topics import create_topic, produce, sync, unique_name
from recovery.jobs import Worker

JOB = """
import os
import structlog
import aioflow as af

app = af.App("kafka-logs")
events = app.source(af.kafka.KafkaSource(os.environ["IN"], bootstrap_servers=os.environ["BROKER"],
                                         group_id=os.environ["GROUP"]), name="events")
events.map(lambda e: structlog.get_logger("job").warning("read", value=e) or e, name="seen").sink(af.CollectSink())
"""


def _run_until_read(folder: Path, broker: str, *args: str) -> list[dict[str, object]]:
    """A worker reading a topic of one record, stopped once it read it; its log lines."""
    topic = sync(create_topic, broker, 2, unique_name("logs"))
    sync(produce, broker, topic, [{"value": b"1", "key": b"k"}])
    (folder / "job.py").write_text(JOB)
    env = {"IN": topic, "BROKER": broker, "GROUP": unique_name("g")}
    with Worker(folder, env, *args) as worker:
        worker.event("read")  # the group was joined, its partitions assigned
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.text()
        return [orjson.loads(line) for line in worker.text().splitlines() if line.startswith("{")]


def test_a_worker_start_logs_no_aiokafka_info_lines(kafka_broker: str, tmp_path: Path) -> None:
    lines = _run_until_read(tmp_path, kafka_broker)
    assert [line["event"] for line in lines if str(line.get("logger", "")).startswith("aiokafka")] == []
    assert [line for line in lines if line["event"] == "read"], lines  # the group was joined: it read


def test_with_debug_logs_aiokafka_says_how_the_group_was_joined(kafka_broker: str, tmp_path: Path) -> None:
    lines = _run_until_read(tmp_path, kafka_broker, "--log-level", "debug")
    chatter = [line for line in lines if str(line.get("logger", "")).startswith("aiokafka")]
    assert any(str(line["event"]).startswith("Joined group") for line in chatter), lines
    assert {line["level"] for line in chatter} <= {"info", "warning", "error"}  # not its debug: a line per fetch
