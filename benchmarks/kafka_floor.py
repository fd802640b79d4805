"""The floor of the ``kafka`` workload: w2 over a Kafka topic as a plain aiokafka loop.

    BENCH_KAFKA_SERVERS=127.0.0.1:9092 BENCH_KAFKA_INPUT=events BENCH_KAFKA_OUTPUT=results \\
        python benchmarks/kafka_floor.py

What a competent engineer would write by hand, without a framework: a consumer with the
input topic's ``PARTITIONS`` partitions assigned manually, read from the beginning up to
the end offsets seen at start with ``getmany`` (at most ``BATCH`` records per call, as
aioflow's reader asks for); ``orjson.loads`` per record; one ``user -> [count, sum]``
dict per open 10 s window; and after every ``getmany`` the windows the watermark has
passed are produced (``send`` per result, then ``gather`` of the batch: acknowledged,
``acks="all"``, as ``KafkaSink(delivery="at_least_once")`` is), keyed by user, as JSON
arrays ``[user, window_start, count, sum]``. With ``BENCH_KAFKA_FLOOR_BATCHES=1`` (``run.py
--kafka-floor batches``) the results are produced as record batches built by hand
(``create_batch``/``send_batch``), the fastest way aiokafka offers.

The watermark is aioflow's for a Kafka source: each partition's is its largest ``ts`` so
far minus ``BOUND_MS`` minus 1; a partition read to its end stops holding it back; the
source's is the smallest over the partitions still being read (one not read yet holds it
at the minimum). At the end every window is produced.

Prints its :class:`~reporting.Marks` on the result line at the end. Never imports aioflow.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from reporting import Marks
from workloads import BATCH, BOUND_MS, PARTITIONS, WINDOW_MS, emit_windows

_MIN_TS = -(2**63)
_MAX_TS = 2**63 - 1


async def _send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    rows: list[tuple[str, int, int, float]],
    partitioner: DefaultPartitioner,
    partition_of: dict[bytes, int],
) -> list[Any]:
    """Hand ``rows`` over as record batches, one (or more, as they fill) per partition:
    the batch-producing variant of the floor. Their delivery futures."""
    ids = list(range(PARTITIONS))
    filling: dict[int, Any] = {}
    sent = []
    for row in rows:
        key = row[0].encode()
        partition = partition_of.get(key)
        if partition is None:
            partition = partition_of[key] = partitioner(key, ids, ids)
        value = orjson.dumps(row)
        batch = filling.get(partition)
        if batch is None:
            batch = filling[partition] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = filling[partition] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    for partition, batch in filling.items():
        sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


async def floor(servers: str, input_topic: str, output_topic: str, marks: Marks, *, batches: bool = False) -> None:
    """Read ``input_topic`` to its end, produce w2's windows to ``output_topic`` (with
    ``batches``, as record batches built by hand instead of a ``send`` per result)."""
    loads, dumps, gather = orjson.loads, orjson.dumps, asyncio.gather
    partitioner, partition_of = DefaultPartitioner(), {}
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(input_topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        # the partitions still being read -> their largest ts so far
        reading = {tp: _MIN_TS for tp in partitions if end[tp] > await consumer.position(tp)}
        windows: dict[int, dict[str, list[Any]]] = {}  # window start -> user -> [count, sum]
        while reading:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for tp, records in fetched.items():
                last = end[tp] - 1
                max_ts = reading[tp]
                for record in records:
                    if record.offset > last:
                        break
                    e = loads(record.value)
                    ts = e["ts"]
                    if ts > max_ts:
                        max_ts = ts
                    start = ts - ts % WINDOW_MS
                    window = windows.get(start)
                    if window is None:
                        window = windows[start] = {}
                    acc = window.get(e["user"])
                    if acc is None:
                        window[e["user"]] = [1, e["amount"]]
                    else:
                        acc[0] += 1
                        acc[1] += e["amount"]
                marks.read(len(records))
                if records[-1].offset >= last:
                    del reading[tp]
                    consumer.pause(tp)
                else:
                    reading[tp] = max_ts
            watermark = min(reading.values()) - BOUND_MS - 1 if reading else _MAX_TS
            out: list[tuple[str, int, int, float]] = []
            emit_windows(windows, watermark, out)
            if out:
                if batches:
                    await gather(*await _send_batches(producer, output_topic, out, partitioner, partition_of))
                else:
                    await gather(*[await producer.send(output_topic, dumps(row), key=row[0].encode()) for row in out])
                marks.delivered(len(out))
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    marks = Marks()
    environ = os.environ
    asyncio.run(
        floor(
            environ["BENCH_KAFKA_SERVERS"],
            environ["BENCH_KAFKA_INPUT"],
            environ["BENCH_KAFKA_OUTPUT"],
            marks,
            batches=environ.get("BENCH_KAFKA_FLOOR_BATCHES") == "1",
        )
    )
    marks.report()


if __name__ == "__main__":
    main()
