"""Kafka connectors: ``af.kafka.KafkaSource`` and ``af.kafka.KafkaSink`` (see
:mod:`aioflow.connectors.kafka` and :mod:`aioflow.connectors.kafka_sink`)."""

from aioflow.connectors.kafka import KafkaRecord, KafkaSource
from aioflow.connectors.kafka_sink import KafkaSink

__all__ = ["KafkaRecord", "KafkaSink", "KafkaSource"]
