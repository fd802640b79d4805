"""Kafka connectors: ``af.kafka.KafkaSource`` (see :mod:`aioflow.connectors.kafka`)."""

from aioflow.connectors.kafka import KafkaSource

__all__ = ["KafkaSource"]
