"""Kafka connectors: ``af.kafka.KafkaSource`` and ``af.kafka.KafkaSink`` (see docs/kafka.md)."""

from aioflow._core import rehome as _rehome
from aioflow._core.connectors.kafka import KafkaRecord, KafkaSource
from aioflow._core.connectors.kafka_sink import KafkaSink

__all__ = ["KafkaRecord", "KafkaSink", "KafkaSource"]

_rehome(__all__, globals(), __name__)
