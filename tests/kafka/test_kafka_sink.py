"""KafkaSink against real brokers: formats, keys, topics per record, the delivery
guarantees, and exactly-once transactions recovered after a crash (noida-db's Kafka, which
has transactions; Tansu has none)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError
from kafka.topics import create_topic, read, refused_port, unique_name
from support import run_to_failure

import aioflow as af
import aioflow.kafka
from aioflow._core.connectors.kafka_sink import KafkaSink, _hand_over
from aioflow.testing import run_collect_async


def test_the_public_module_exports_the_sink() -> None:
    assert af.kafka.KafkaSink is KafkaSink
    assert "KafkaSink" in aioflow.kafka.__all__


@pytest.mark.parametrize(
    ("value_format", "values", "raw"),
    [
        ("json", [{"i": 1}, [2, "x"]], [b'{"i":1}', b'[2,"x"]']),
        ("str", ["é", "b"], ["é".encode(), b"b"]),
        ("bytes", [b"\x00", b"\xff"], [b"\x00", b"\xff"]),
        (lambda v: str(v * 2).encode(), [1, 2], [b"2", b"4"]),
    ],
    ids=["json", "str", "bytes", "callable"],
)
async def test_round_trip_with_each_value_format(
    kafka_broker: str, value_format: Any, values: list[Any], raw: list[bytes]
) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-formats")
    app.source(values).sink(KafkaSink(topic, bootstrap_servers=kafka_broker, value_format=value_format))
    await app.run_async()
    assert [m.value for m in await read(kafka_broker, topic, len(values))] == raw


async def test_keys_headers_and_a_topic_per_record(kafka_broker: str) -> None:
    odd, even = await create_topic(kafka_broker, 3), await create_topic(kafka_broker, 3)
    app = af.App("kafka-sink-keys")
    records = [{"user": f"u{i % 4}", "i": i} for i in range(40)]
    app.source(records).sink(
        KafkaSink(
            lambda r: odd if r["i"] % 2 else even,
            bootstrap_servers=kafka_broker,
            key=lambda r: r["user"],
            headers=lambda r: [("i", str(r["i"]).encode())],
        )
    )
    await app.run_async()
    messages = await read(kafka_broker, odd, 20) + await read(kafka_broker, even, 20)
    assert sorted(orjson.loads(m.value)["i"] for m in messages) == list(range(40))
    for m in messages:
        value = orjson.loads(m.value)
        assert m.topic == (odd if value["i"] % 2 else even)
        assert m.key == value["user"].encode() and m.headers == (("i", str(value["i"]).encode()),)
    partitions: dict[tuple[str, bytes], set[int]] = {}
    for m in messages:  # one key, one partition
        partitions.setdefault((m.topic, m.key), set()).add(m.partition)
    assert all(len(p) == 1 for p in partitions.values())


async def test_delivery_none_sends_without_waiting(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-none")
    app.source(range(100)).sink(KafkaSink(topic, bootstrap_servers=kafka_broker, delivery="none"))
    await app.run_async()
    assert sorted(orjson.loads(m.value) for m in await read(kafka_broker, topic, 100)) == list(range(100))


async def test_records_filling_many_producer_batches_arrive_in_order_per_partition(kafka_broker: str) -> None:
    """The sink fills aiokafka record batches itself: with small ones (512 bytes), a send
    of 1000 records hands several batches per partition over, one after the other."""
    topic = await create_topic(kafka_broker, 3)
    app = af.App("kafka-sink-batches")
    records = [{"user": f"u{i % 5}", "i": i} for i in range(3000)]
    app.source(records).sink(
        KafkaSink(
            topic, bootstrap_servers=kafka_broker, key=lambda r: r["user"], producer_options={"max_batch_size": 512}
        )
    )
    await app.run_async()
    messages = await read(kafka_broker, topic, len(records))
    assert len(messages) == len(records)
    per_key: dict[bytes, list[int]] = {}
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        per_key.setdefault(m.key, []).append(orjson.loads(m.value)["i"])
    assert per_key == {f"u{k}".encode(): list(range(k, 3000, 5)) for k in range(5)}


async def test_a_hand_over_timing_out_early_is_tried_again_until_the_request_timeout(
    kafka_broker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's ``send_batch`` can raise ``KafkaTimeoutError`` long before
    ``request_timeout_ms`` (it deducts its whole wait after each of several short ones):
    the batch was not taken, so it is handed over again; after the timeout, the error stands."""
    topic = await create_topic(kafka_broker, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, request_timeout_ms=2000)
    await producer.start()
    try:
        send_batch, calls = producer.send_batch, []

        async def early_timeouts(batch: Any, topic: str, *, partition: int) -> Any:
            calls.append(partition)
            if len(calls) <= 2:
                raise KafkaTimeoutError()
            return await send_batch(batch, topic, partition=partition)

        monkeypatch.setattr(producer, "send_batch", early_timeouts)
        batch = producer.create_batch()
        batch.append(key=None, value=b"once", timestamp=None)
        await (await _hand_over(producer, batch, topic, 0))
        assert calls == [0, 0, 0]
        assert [m.value for m in await read(kafka_broker, topic, 1)] == [b"once"]

        async def always_timing_out(batch: Any, topic: str, *, partition: int) -> Any:
            await anyio.sleep(0.1)
            raise KafkaTimeoutError()

        monkeypatch.setattr(producer, "send_batch", always_timing_out)
        with anyio.fail_after(10), pytest.raises(KafkaTimeoutError):
            await _hand_over(producer, producer.create_batch(), topic, 0)
    finally:
        await producer.stop()


async def test_a_none_record_without_a_key_is_refused_naming_the_sink(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-tombstone")
    app.source([None]).sink(KafkaSink(topic, bootstrap_servers=kafka_broker))
    with pytest.raises(af.OperatorError, match="tombstone"):
        await app.run_async()


async def test_unreachable_brokers_fail_the_job_naming_the_sink_and_leave_no_producer_open() -> None:
    servers = f"127.0.0.1:{refused_port()}"
    app = af.App("kafka-sink-unreachable")
    app.source([1]).sink(KafkaSink("results", bootstrap_servers=servers))
    with pytest.raises(af.ConnectorError, match=rf"kafka\(results\): cannot reach the Kafka brokers at {servers}"):
        await app.run_async()
    sink = KafkaSink("results", bootstrap_servers=servers)
    producer = sink._new_producer()
    with pytest.raises(af.ConnectorError):
        await sink._started(producer)
    assert producer._closed  # stopped: no connection or background task left behind


async def test_a_key_of_the_wrong_type_fails_naming_the_record(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-bad-key")
    app.source([{"user": 7}]).sink(KafkaSink(topic, bootstrap_servers=kafka_broker, key=lambda r: r["user"]))
    with pytest.raises(af.OperatorError, match=r"key function returned 7 \(int\)") as info:
        await app.run_async()
    assert "{'user': 7}" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delivery": "maybe"}, "delivery"),
        ({"delivery": "exactly_once"}, "transactional_id_prefix"),
        ({"value_format": "avro"}, "value_format"),
        ({"producer_options": {"transactional_id": "x"}}, "transactional_id"),
        ({"key": "user"}, "key="),
    ],
)
def test_bad_arguments_are_refused_saying_what_was_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(af.PipelineError, match=message):
        KafkaSink("t", bootstrap_servers="127.0.0.1:1", **kwargs)


async def test_exactly_once_results_are_visible_when_the_checkpoint_completes(
    transactional_kafka_broker: str, tmp_path: Path
) -> None:
    """Records sent in a transaction stay invisible to a read_committed consumer until the
    checkpoint after them completes; then each is there once."""
    broker = transactional_kafka_broker
    topic = await create_topic(broker, 1)
    app = af.App("kafka-sink-eo", state_dir=str(tmp_path / "state"), checkpoint_interval=3600, batch_size=7)
    sink = KafkaSink(
        topic, bootstrap_servers=broker, delivery="exactly_once", transactional_id_prefix=unique_name("x"), max_linger=0
    )
    gate = anyio.Event()

    async def wait_for_gate(v: int) -> int:
        if v == 49:
            await gate.wait()
        return v

    app.source(range(50)).map(wait_for_gate).sink(sink)  # 7 batches of 7 reach the sink, then 49 waits
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            assert len(await read(broker, topic, 49, seconds=3)) == 49  # sent, in the open transaction
            assert await read(broker, topic, 1, committed=True, seconds=2) == []  # not committed yet
            gate.set()  # the end of input: the final checkpoint commits
    assert sorted(orjson.loads(m.value) for m in await read(broker, topic, 50, committed=True)) == list(range(50))


async def test_a_pre_committed_transaction_is_committed_by_a_new_writer_after_a_crash(
    transactional_kafka_broker: str,
) -> None:
    """The handle is all a restarted writer needs: it resumes the producer id and epoch,
    commits, and a second commit of the same handle changes nothing."""
    broker = transactional_kafka_broker
    topic, prefix = await create_topic(broker, 1), unique_name("x")
    sink = KafkaSink(topic, bootstrap_servers=broker, delivery="exactly_once", transactional_id_prefix=prefix)
    crashed = sink.create_writer(0, 1)
    await crashed.open()
    await crashed.write(["a", "b"])
    handle = await crashed.pre_commit(1)
    # the process dies here: nothing is stopped, closed or committed
    assert await read(broker, topic, 1, committed=True, seconds=2) == []

    restarted = sink.create_writer(0, 1)
    restarted.resuming = True
    await restarted.open()
    try:
        await restarted.recover([handle])
        await restarted.commit(orjson.loads(orjson.dumps(handle)))  # as stored in a checkpoint
        await restarted.commit(handle)
    finally:
        await restarted.close()
    assert [orjson.loads(m.value) for m in await read(broker, topic, 3, committed=True, seconds=5)] == ["a", "b"]


async def test_transactions_a_crash_left_open_are_aborted_on_restore(transactional_kafka_broker: str) -> None:
    """A crash after a checkpoint leaves the next transactions open; the restored writer
    aborts them, so they neither show up nor hold read_committed consumers back."""
    broker = transactional_kafka_broker
    topic, prefix = await create_topic(broker, 1), unique_name("x")
    sink = KafkaSink(topic, bootstrap_servers=broker, delivery="exactly_once", transactional_id_prefix=prefix)
    crashed = sink.create_writer(0, 1)
    await crashed.open()
    await crashed.write(["committed"])
    handle = await crashed.pre_commit(1)
    await crashed.commit(handle)
    await crashed.write(["lost-1"])
    await crashed.pre_commit(2)  # checkpoint 2 never completes
    await crashed.write(["lost-2"])
    await crashed.flush()  # sent in transaction 3, left open by the crash

    restarted = sink.create_writer(0, 1)
    restarted.resuming = True
    await restarted.open()
    try:
        await restarted.recover([handle])  # restored from checkpoint 1
        await restarted.write(["after"])
        final = await restarted.pre_commit(2)
        await restarted.commit(final)
    finally:
        await restarted.close()
    found = [orjson.loads(m.value) for m in await read(broker, topic, 3, committed=True, seconds=5)]
    assert found == ["committed", "after"]


def _counts(key: str, first: int, last: int) -> list[list[Any]]:
    """Records ``[key, n]`` for ``n`` in ``first..last``: a key's running count."""
    return [[key, n] for n in range(first, last + 1)]


async def _per_key(broker: str, topic: str, count: int) -> dict[str, list[int]]:
    """Each key's counts in the order a read_committed consumer reads them (a key's
    records are in one partition, in offset order)."""
    found: dict[str, list[int]] = {}
    for m in await read(broker, topic, count, committed=True, seconds=10, rest=True):
        key, n = orjson.loads(m.value)
        found.setdefault(key, []).append(n)
    return found


async def test_a_send_starting_while_a_transaction_begins_after_a_restore_keeps_each_keys_order(
    transactional_kafka_broker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by SIGKILL campaigns (a key's counts committed as 2981, 3000-3005, 2982-2999,
    right after a checkpoint, by a restored worker). The first send of a transaction starts
    it; sends behind it wait. A send that started in the loop turn the broker's answer came
    in found the transaction open and handed its records over before the waiting ones.
    Here the answer to the restored writer's first transaction start is held back until
    two sends wait for it, and a third batch is cut in the turn it comes: each key's
    committed counts must be in the order an undisturbed writer commits them."""
    broker = transactional_kafka_broker
    disturbed, undisturbed = await create_topic(broker, 2), await create_topic(broker, 2)
    keys = ("a", "b", "c")
    before = [r for k in keys for r in _counts(k, 1, 3)]  # transaction 1, pre-committed before the crash
    first, second = _counts("a", 4, 5) + _counts("b", 4, 5), _counts("c", 4, 5) + _counts("a", 6, 7)
    third = _counts("b", 6, 7) + _counts("a", 8, 9)  # cut as the transaction's start is answered

    def sink(topic: str) -> KafkaSink:  # batches of 4, cut only when full (or at a checkpoint)
        return KafkaSink(
            topic,
            bootstrap_servers=broker,
            key=lambda r: r[0],
            delivery="exactly_once",
            transactional_id_prefix=unique_name("x"),
            max_batch_size=4,
            max_linger=None,
        )

    reference = sink(undisturbed).create_writer(0, 1)
    await reference.open()
    try:
        for checkpoint, records in enumerate((before, first + second + third), start=1):
            await reference.write(records)
            await reference.commit(await reference.pre_commit(checkpoint))
    finally:
        await reference.close()

    crashing = sink(disturbed)
    crashed = crashing.create_writer(0, 1)
    await crashed.open()
    await crashed.write(before)
    handle = await crashed.pre_commit(1)  # checkpoint 1 completes; the process dies before committing
    restarted = crashing.create_writer(0, 1)
    restarted.resuming = True
    await restarted.open()
    try:
        await restarted.recover([handle])
        await restarted.commit(handle)  # the restore finishes checkpoint 1's commit

        begin, begun, answered = AIOKafkaProducer.begin_transaction, asyncio.Event(), asyncio.Event()

        async def answered_late(producer: AIOKafkaProducer) -> None:
            await begin(producer)
            if not begun.is_set():  # the restored writer's first transaction: its start is answered late
                begun.set()
                await answered.wait()

        monkeypatch.setattr(AIOKafkaProducer, "begin_transaction", answered_late)
        await restarted.write(first + second)  # two full batches: two sends, the first starts the transaction
        await begun.wait()
        assert restarted.statistics()["batches_in_flight"] == 2  # both wait for the transaction's start
        answered.set()  # the answer is in: the waiting send resumes at the loop's next turn ...
        await restarted.write(third)  # ... and, in this same turn, a third batch is cut and its send starts
        assert restarted.statistics()["batches_in_flight"] == 3
        await restarted.commit(await restarted.pre_commit(2))
    finally:
        await restarted.close()
        await crashed.close()
    expected = await _per_key(broker, undisturbed, 21)
    assert expected == {"a": list(range(1, 10)), "b": list(range(1, 8)), "c": list(range(1, 6))}
    assert await _per_key(broker, disturbed, 21) == expected


async def test_rescaling_down_aborts_the_open_transactions_of_the_subtasks_gone(
    transactional_kafka_broker: str,
) -> None:
    broker = transactional_kafka_broker
    topic, prefix = await create_topic(broker, 1), unique_name("x")
    sink = KafkaSink(topic, bootstrap_servers=broker, delivery="exactly_once", transactional_id_prefix=prefix)
    handles, crashed = [], []
    for subtask in (0, 1):
        writer = sink.create_writer(subtask, 2)
        crashed.append(writer)
        await writer.open()
        await writer.write([f"kept-{subtask}"])
        handles.append(await writer.pre_commit(1))
        await writer.write([f"open-{subtask}"])
        await writer.flush()  # transaction 2 of each subtask stays open: the crash
    restarted = sink.create_writer(0, 1)
    restarted.resuming = True
    await restarted.open()
    try:
        await restarted.recover(handles)  # no record comes after the restore
        for handle in handles:
            await restarted.commit(handle)
    finally:
        await restarted.close()
    found = [orjson.loads(m.value) for m in await read(broker, topic, 3, committed=True, seconds=5)]
    assert sorted(found) == ["kept-0", "kept-1"]
    for writer in crashed:
        await writer.close()


async def test_run_collect_of_a_kafka_sink_pipeline_is_unaffected(kafka_broker: str) -> None:
    """A pipeline with a Kafka sink can still be tested in memory up to it."""
    app = af.App("kafka-sink-collect")
    stream = app.source([1, 2]).map(lambda v: v + 1)
    stream.sink(KafkaSink(await create_topic(kafka_broker, 1), bootstrap_servers=kafka_broker))
    assert await run_collect_async(stream) == [2, 3]


async def _topics(broker: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.parametrize("delivery", ["at_least_once", "none"])
async def test_a_topic_that_does_not_exist_fails_at_start_and_is_not_created(kafka_broker: str, delivery: str) -> None:
    missing = unique_name("missing")
    app = af.App("kafka-sink-missing")
    app.source([1]).sink(KafkaSink(missing, bootstrap_servers=kafka_broker, delivery=delivery))  # type: ignore[arg-type]
    with pytest.raises(af.ConnectorError, match=f"kafka\\({missing}\\): topic '{missing}' does not exist"):
        await app.run_async()
    assert missing not in await _topics(kafka_broker)


async def test_a_topic_per_record_that_does_not_exist_fails_at_its_first_record(kafka_broker: str) -> None:
    there, missing = await create_topic(kafka_broker, 1), unique_name("missing")
    app = af.App("kafka-sink-missing-by-record")
    app.source([there, missing]).sink(
        KafkaSink(lambda r: r, bootstrap_servers=kafka_broker, max_batch_size=1, max_in_flight=1)
    )
    with pytest.raises(af.AioflowError) as info:
        await app.run_async()
    causes = [info.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert any(isinstance(c, af.ConnectorError) and f"topic '{missing}' does not exist" in str(c) for c in causes)
    assert missing not in await _topics(kafka_broker)
    assert [m.value for m in await read(kafka_broker, there, 1)] == [orjson.dumps(there)]


async def test_exactly_once_on_a_broker_without_transactions_fails_saying_so(kafka_broker: str) -> None:
    """Tansu (kafka_broker) has no transactions."""
    app = af.App("kafka-sink-no-transactions")
    topic = await create_topic(kafka_broker, 1)
    app.source([1]).sink(
        KafkaSink(
            topic, bootstrap_servers=kafka_broker, delivery="exactly_once", transactional_id_prefix=unique_name("txn")
        )
    )
    with pytest.raises(af.RefusedError, match="refused a transactional producer .* needs a broker with transactions"):
        await app.run_async()


async def test_timestamp_sets_each_records_kafka_timestamp(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-timestamps")
    rows = [{"end": 1_704_067_210_000}, {"end": 1_704_067_220_000}]
    app.source(rows).sink(KafkaSink(topic, bootstrap_servers=kafka_broker, timestamp=lambda r: r["end"] - 1))
    await app.run_async()
    assert [m.timestamp for m in await read(kafka_broker, topic, 2)] == [1_704_067_209_999, 1_704_067_219_999]


async def test_a_timestamp_of_the_wrong_type_fails_naming_the_record(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-sink-bad-timestamp")
    app.source([{"end": 1.5}]).sink(KafkaSink(topic, bootstrap_servers=kafka_broker, timestamp=lambda r: r["end"]))
    with pytest.raises(af.OperatorError, match=r"timestamp function returned 1.5 \(float\)") as info:
        await app.run_async()
    assert "{'end': 1.5}" in str(info.value)


async def test_exactly_once_without_transactions_is_refused_not_restarted(kafka_broker: str, tmp_path: Path) -> None:
    """With checkpoints (so a restart strategy): the broker will never have transactions,
    so the job is refused at once instead of restarting three times (~7 s)."""
    app = af.App("kafka-sink-no-transactions-restarts", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05)
    topic = await create_topic(kafka_broker, 1)
    app.source([1]).sink(
        KafkaSink(
            topic, bootstrap_servers=kafka_broker, delivery="exactly_once", transactional_id_prefix=unique_name("txn")
        )
    )
    error, seconds, restarts = await run_to_failure(app)
    assert isinstance(error, af.RefusedError), repr(error)
    assert "needs a broker with transactions" in str(error) and "delivery='at_least_once'" in str(error)
    assert restarts == 0 and seconds < 3
