"""Kafka connectors: ``af.kafka.KafkaSource`` (see :mod:`aioflow.connectors.kafka`)."""

from aioflow.connectors.kafka import KafkaRecord, KafkaSource

__all__ = ["KafkaRecord", "KafkaSource"]
