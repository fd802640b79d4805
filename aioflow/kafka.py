"""Kafka connectors: ``af.kafka.KafkaSource`` and ``af.kafka.KafkaSink`` (see
:mod:`aioflow._core.connectors.kafka` and :mod:`aioflow._core.connectors.kafka_sink`)."""

from aioflow._core.connectors.kafka import KafkaRecord, KafkaSource
from aioflow._core.connectors.kafka_sink import KafkaSink

__all__ = ["KafkaRecord", "KafkaSink", "KafkaSource"]
