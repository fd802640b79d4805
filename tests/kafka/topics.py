"""Topics for the Kafka tests: create, write, read, committed offsets. Each test makes its
own, on the session broker. The helpers are async; ``sync`` runs one from a test that is not."""

from __future__ import annotations

import functools
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

P = ParamSpec("P")
T = TypeVar("T")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sync(function: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` run to its end in an event loop of its own."""
    return anyio.run(functools.partial(function, *args, **kwargs))


async def create_topic(broker: str, partitions: int, name: str | None = None) -> str:
    """A new topic with ``partitions`` partitions, named ``name`` or a unique name; returns its name."""
    topic = name or unique_name("t")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def produce(
    broker: str, topic: str, records: list[dict[str, Any]], *, batched: bool = False, **options: Any
) -> None:
    """Each dict holds send() arguments: value, and optionally key, partition, timestamp_ms,
    headers; ``options`` go to the producer. Returns once every record is delivered. One
    record at a time by default, each in a batch of its own: after a batch of several,
    Tansu's end offset counts the batch as one record, so a bounded reader would stop
    early. ``batched`` sends them together (in order per partition), for many records."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, **options)
    await producer.start()
    try:
        if batched:
            sent = [await producer.send(topic, **record) for record in records]
            await producer.flush()
            for delivered in sent:
                await delivered  # raises if the record was not written
        else:
            for record in records:
                await producer.send_and_wait(topic, **record)
    finally:
        await producer.stop()


async def read(
    broker: str, topic: str, count: int, *, committed: bool = False, seconds: float = 60, rest: bool = False
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` messages of ``topic``, waiting for them at most ``seconds`` (fewer
    if they do not come); with ``rest``, then whatever else comes until a second passes
    without any (so that duplicates show)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        with anyio.move_on_after(seconds):
            while len(found) < count:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(messages)
        while rest and (batch := await consumer.getmany(timeout_ms=1000)):
            for messages in batch.values():
                found.extend(messages)
    finally:
        await consumer.stop()
    return found


async def read_all(
    broker: str, topic: str, partitions: int, *, committed: bool = False
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message ``topic`` holds now, up to the end offsets (its writer has finished)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
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


async def committed_offsets(broker: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The offset ``group`` committed for each partition of ``topic`` (None where it has none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def group_members(broker: str, group: str) -> list[str]:
    """The member ids ``group`` has now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return [member[0] for response in described for found in response.groups for member in found[5]]


def refused_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
