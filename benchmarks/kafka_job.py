"""The aioflow side of the ``kafka`` workload: w2 from a Kafka topic to a Kafka topic.

    BENCH_KAFKA_SERVERS=127.0.0.1:9092 BENCH_KAFKA_INPUT=events BENCH_KAFKA_OUTPUT=results \\
    BENCH_KAFKA_GROUP=bench python -m aioflow run benchmarks/kafka_job.py:app \\
        [--state-dir DIR --checkpoint-interval 1]

``KafkaSource(bounded=True)`` over the input topic, w2's pipeline
(:func:`aioflow_jobs.window_sums`: key by user, 10 s tumbling event-time windows, 2 s
bounded out-of-orderness), ``KafkaSink(delivery="at_least_once")`` keyed by user, JSON
arrays ``[user, window_start, count, sum]``: every option at its default
(``BENCH_KAFKA_STATE_CACHE_SIZE`` sets ``App(state_cache_size=...)``).

The source's reader and the sink are subclassed only to mark, per batch, the times the
floor marks too (:class:`~reporting.Marks`): first records fetched, first and last batch
of results acknowledged. The marks are printed on the result line when the process exits
(when ``BENCH_KAFKA_OUTPUT`` is set).
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from aioflow_jobs import window_sums
from reporting import Marks
from workloads import BOUND_MS

import aioflow as af
from aioflow._core.connectors.kafka import KafkaReader, KafkaSource
from aioflow._core.connectors.kafka_sink import KafkaSink

__all__ = ["app", "marks"]

marks = Marks()
if "BENCH_KAFKA_OUTPUT" in os.environ:  # run by the harness (not, say, by `aioflow plan`)
    atexit.register(marks.report)


class _MarkingReader(KafkaReader):
    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        batch = await super().read(max_records, timeout)
        if batch is not None:
            marks.read(len(batch.records))
        return batch


class MarkingKafkaSource(KafkaSource):
    """A :class:`KafkaSource` whose readers mark when records were fetched."""

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _MarkingReader(self, subtask_index, parallelism)


class MarkingKafkaSink(KafkaSink):
    """A :class:`KafkaSink` that marks when each batch was acknowledged."""

    async def send_batch(self, records: list[Any]) -> None:
        await super().send_batch(records)
        marks.delivered(len(records))


def build_app(servers: str, input_topic: str, output_topic: str, group: str) -> af.App:
    cache = os.environ.get("BENCH_KAFKA_STATE_CACHE_SIZE")  # else the default
    app = af.App("kafka_w2", **({"state_cache_size": int(cache)} if cache else {}))
    events = app.source(
        MarkingKafkaSource(input_topic, bootstrap_servers=servers, group_id=group, bounded=True),
        timestamps=lambda e: e["ts"],
        watermarks=af.BoundedOutOfOrderness(BOUND_MS),
    )
    window_sums(events).sink(
        MarkingKafkaSink(output_topic, bootstrap_servers=servers, key=lambda r: r[0], delivery="at_least_once")
    )
    return app


app = build_app(
    os.environ.get("BENCH_KAFKA_SERVERS", "127.0.0.1:9092"),
    os.environ.get("BENCH_KAFKA_INPUT", "events"),
    os.environ.get("BENCH_KAFKA_OUTPUT", "results"),
    os.environ.get("BENCH_KAFKA_GROUP", "kafka-w2-benchmark"),
)
