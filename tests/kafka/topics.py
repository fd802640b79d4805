"""Names and topics for the Kafka tests: each test makes its own, on the session broker."""

from __future__ import annotations

import socket
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topic(broker: str, partitions: int) -> str:
    """A new topic with ``partitions`` partitions; returns its name."""
    topic = unique_name("t")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


def refused_port() -> int:
    """A loopback port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
