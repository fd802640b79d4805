"""The test broker speaks what the Kafka connectors need: produce, consume, consumer groups
and committed offsets (with aiokafka, as the connectors will)."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def test_produce_consume_and_commit_a_group_offset(kafka_broker: str) -> None:
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"v{i}".encode(), partition=i % 2)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        while len(seen) < 10:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, f"only {len(seen)} of 10 records arrived"
            for records in batches.values():
                seen.extend(record.value for record in records)
        assert sorted(seen) == sorted(f"v{i}".encode() for i in range(10))
        await consumer.commit({TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 5})
        assert await consumer.committed(TopicPartition(topic, 0)) == 5
    finally:
        await consumer.stop()
