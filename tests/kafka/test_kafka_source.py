"""KafkaSource against a real broker: value formats, bad records, starting offsets, and
positions that checkpoints own and commit back to the consumer group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka.topics import committed_offsets, create_topic, produce, refused_port, unique_name
from support import late_records_under_backpressure

import aioflow as af
import aioflow.kafka
from aioflow._core.connectors.kafka import KafkaSource
from aioflow.testing import run_collect_async


async def _produce(broker: str, topic: str, values: list[bytes], partitions: int = 2) -> None:
    """Value ``i`` goes to partition ``i % partitions``."""
    await produce(broker, topic, [{"value": value, "partition": i % partitions} for i, value in enumerate(values)])


async def _committed(broker: str, group: str, topic: str, partitions: int = 2) -> dict[str, int | None]:
    """The group's committed offsets, keyed like the source's positions (``topic:partition``)."""
    offsets = await committed_offsets(broker, group, topic, partitions)
    return {f"{topic}:{p}": offset for p, offset in offsets.items()}


def _json(values: list[Any]) -> list[bytes]:
    return [orjson.dumps(v) for v in values]


def test_the_public_module_exports_the_source() -> None:
    assert af.kafka.KafkaSource is KafkaSource
    assert aioflow.kafka.__all__ == ["KafkaRecord", "KafkaSink", "KafkaSource"]


@pytest.mark.parametrize(
    ("value_format", "encode", "expected"),
    [
        ("json", lambda i: orjson.dumps({"i": i}), lambda i: {"i": i}),
        ("str", lambda i: f"v{i}é".encode(), lambda i: f"v{i}é"),
        ("bytes", lambda i: bytes([i, 0, 255]), lambda i: bytes([i, 0, 255])),
        (lambda raw: int(raw) * 10, lambda i: str(i).encode(), lambda i: i * 10),
    ],
    ids=["json", "str", "bytes", "callable"],
)
async def test_bounded_round_trip_with_each_value_format(
    kafka_broker: str, value_format: Any, encode: Callable[[int], bytes], expected: Callable[[int], Any]
) -> None:
    topic = await create_topic(kafka_broker, 2)
    await _produce(kafka_broker, topic, [encode(i) for i in range(20)])
    app = af.App("kafka-formats", batch_size=7)
    source = af.kafka.KafkaSource(
        topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), value_format=value_format, bounded=True
    )
    out = await run_collect_async(app.source(source))
    assert sorted(out, key=repr) == sorted((expected(i) for i in range(20)), key=repr)


async def test_bounded_readers_split_the_partitions(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 3)
    await _produce(kafka_broker, topic, _json(list(range(30))), partitions=3)
    app = af.App("kafka-split")
    source = af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True)
    out = await run_collect_async(app.source(source), parallelism=2)
    assert sorted(out) == list(range(30))
    # each partition's records stay in order
    for p in range(3):
        assert [v for v in out if v % 3 == p] == list(range(p, 30, 3))


async def test_bounded_reader_stops_at_the_end_offsets_seen_at_open(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 2)
    await _produce(kafka_broker, topic, _json([0, 1, 2, 3]))
    reader = af.kafka.KafkaSource(
        topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True
    ).create_reader(0, 1)
    await reader.open()
    try:
        await _produce(kafka_broker, topic, _json([4, 5, 6, 7]))  # after the end offsets were taken
        seen: list[Any] = []
        with anyio.fail_after(20):
            while (batch := await reader.read(100, 0.5)) is not None:
                seen.extend(batch.records)
        assert sorted(seen) == [0, 1, 2, 3]
        assert reader.position() == {f"{topic}:0": 2, f"{topic}:1": 2}
        assert reader.splits() == []
    finally:
        await reader.close()


async def test_malformed_json_fails_by_default_naming_the_offset(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await _produce(kafka_broker, topic, [b'{"i": 0}', b'{"i": 1', b'{"i": 2}'], partitions=1)
    app = af.App("kafka-fail")
    app.source(
        af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True)
    ).sink(af.CollectSink())
    with pytest.raises(af.BadRecordError) as info:
        await app.run_async()
    assert info.value.location == f"{topic}:0@1"


async def test_malformed_json_is_skipped(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await _produce(kafka_broker, topic, [b'{"i": 0}', b"oops", b'{"i": 2}', b"{"], partitions=1)
    app = af.App("kafka-skip")
    source = af.kafka.KafkaSource(
        topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True, on_error="skip"
    )
    assert await run_collect_async(app.source(source)) == [{"i": 0}, {"i": 2}]


async def test_malformed_json_goes_to_the_dead_letter_output_with_its_bytes(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await _produce(kafka_broker, topic, [b'{"i": 0}', b"caf\xe9 {", b'{"i": 2}'], partitions=1)
    dead = af.OutputTag("dead")
    app = af.App("kafka-dlq")
    events = app.source(
        af.kafka.KafkaSource(
            topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True, on_error=dead
        )
    )
    good, bad = await run_collect_async(events, events.get_side_output(dead))
    assert good == [{"i": 0}, {"i": 2}]
    assert len(bad) == 1 and isinstance(bad[0], af.BadRecord)
    assert (bad[0].source, bad[0].location, bad[0].raw) == (f"kafka({topic})", f"{topic}:0@1", b"caf\xe9 {")


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
async def test_unreachable_brokers_fail_naming_the_source(bounded: bool) -> None:
    servers = f"127.0.0.1:{refused_port()}"
    app = af.App("kafka-unreachable")
    app.source(KafkaSource("events", bootstrap_servers=servers, group_id="g", bounded=bounded)).sink(af.CollectSink())
    with (
        anyio.fail_after(60),
        pytest.raises(
            af.ConnectorError, match=rf"kafka\(events\): cannot reach the Kafka brokers at {servers}"
        ) as info,
    ):
        await app.run_async()
    assert info.value.connector == "kafka(events)"


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
async def test_a_topic_that_does_not_exist_fails_naming_it(kafka_broker: str, bounded: bool) -> None:
    missing = unique_name("missing")
    app = af.App("kafka-missing-topic")
    source = KafkaSource(missing, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=bounded)
    app.source(source).sink(af.CollectSink())
    with anyio.fail_after(60), pytest.raises(af.ConnectorError, match=f"topic '{missing}' does not exist"):
        await app.run_async()


async def test_starting_offsets_earliest_and_latest(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 2)
    await _produce(kafka_broker, topic, _json(["old"] * 4))

    async def read(starting_offsets: str, produce_when_assigned: list[Any], expected: int) -> list[Any]:
        """An unbounded reader in a fresh group: once it has its partitions, produce
        ``produce_when_assigned``; read until ``expected`` records came."""
        source = af.kafka.KafkaSource(
            topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), starting_offsets=starting_offsets
        )
        reader = source.create_reader(0, 1)
        await reader.open()
        seen: list[Any] = []
        try:
            with anyio.fail_after(30):
                while len(reader._next) < 2:  # type: ignore[attr-defined]  # group joined, partitions positioned
                    batch = await reader.read(100, 0.2)
                    assert batch is not None
                    seen.extend(batch.records)
                await _produce(kafka_broker, topic, _json(produce_when_assigned))
                while len(seen) < expected:
                    batch = await reader.read(100, 0.2)
                    assert batch is not None
                    seen.extend(batch.records)
        finally:
            await reader.close()
        return seen

    latest = await read("latest", ["new", "new"], 2)
    assert latest == ["new", "new"]
    earliest = await read("earliest", ["newer"], 7)
    assert sorted(earliest) == ["new", "new", "newer"] + ["old"] * 4


async def test_starting_offsets_committed_needs_a_committed_offset(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    app = af.App("kafka-committed")
    app.source(
        af.kafka.KafkaSource(
            topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True, starting_offsets="committed"
        )
    ).sink(af.CollectSink())
    with pytest.raises(af.ConnectorError, match="no committed offset") as caught:
        await app.run_async()
    assert caught.value.connector == f"kafka({topic})"


async def test_a_partition_without_a_restored_position_starts_at_the_groups_committed_offset(
    kafka_broker: str,
) -> None:
    topic, group = await create_topic(kafka_broker, 2), unique_name("g")
    await _produce(kafka_broker, topic, _json(list(range(10))))  # p0: 0 2 4 6 8, p1: 1 3 5 7 9
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 1})
    finally:
        await consumer.stop()
    reader = af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group, bounded=True).create_reader(
        0, 1
    )
    reader.restore({f"{topic}:1": 4, "elsewhere:0": 7})  # p0 has no restored position
    await reader.open()
    seen: list[Any] = []
    try:
        with anyio.fail_after(20):
            while (batch := await reader.read(100, 0.5)) is not None:
                seen.extend(batch.records)
        assert sorted(seen) == [6, 8, 9]
        # a restored partition this reader does not read is kept in its position
        assert reader.position() == {f"{topic}:0": 5, f"{topic}:1": 5, "elsewhere:0": 7}
    finally:
        await reader.close()


def test_rescale_gives_every_reader_the_highest_offset_of_each_partition() -> None:
    source = af.kafka.KafkaSource("t", bootstrap_servers="127.0.0.1:1", group_id="g")
    merged = source.rescale([{"t:0": 5, "t:1": 2}, {"t:0": 3, "t:2": 9}, None], 2)
    assert merged == [{"t:0": 5, "t:1": 2, "t:2": 9}] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"starting_offsets": "newest"}, "starting_offsets"),
        ({"starting_offsets": -1}, "starting_offsets"),
        ({"value_format": "avro"}, "value_format"),
        ({"on_error": "ignore"}, "on_error"),
        ({"group_id": ""}, "group_id"),
        ({"consumer_options": {"enable_auto_commit": True}}, "enable_auto_commit"),
    ],
)
def test_bad_arguments_are_refused_saying_what_was_wrong(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:1", "group_id": "g"} | kwargs
    with pytest.raises(af.PipelineError, match=message):
        af.kafka.KafkaSource("t", **arguments)


async def test_a_second_bounded_run_resumes_from_the_checkpointed_positions(kafka_broker: str, tmp_path: Path) -> None:
    topic, group = await create_topic(kafka_broker, 2), unique_name("g")

    async def run() -> list[Any]:
        app = af.App("kafka-resume", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05)
        sink = af.CollectSink()
        app.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group, bounded=True)).sink(sink)
        with anyio.fail_after(60):
            await app.run_async()
        return sink.results

    await _produce(kafka_broker, topic, _json(list(range(10))))
    assert sorted(await run()) == list(range(10))
    await _produce(kafka_broker, topic, _json(list(range(10, 16))))
    assert sorted(await run()) == list(range(10, 16))  # not the first 10 again
    assert await run() == []


async def test_completed_checkpoints_commit_their_positions_to_the_group(kafka_broker: str, tmp_path: Path) -> None:
    """An unbounded job commits each completed checkpoint's offsets; stopped (with a
    savepoint), a bounded run on the same state reads only what was produced since."""
    topic, group = await create_topic(kafka_broker, 2), unique_name("g")
    await _produce(kafka_broker, topic, _json(list(range(10))))
    state_dir = str(tmp_path / "state")
    app = af.App("kafka-commit", state_dir=state_dir, checkpoint_interval=0.05)
    sink = af.CollectSink()
    app.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group)).sink(sink)
    committed: dict[str, int | None] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while len(sink.results) < 10 or committed != {f"{topic}:0": 5, f"{topic}:1": 5}:
                await anyio.sleep(0.05)  # polling a condition, bounded by fail_after
                committed = await _committed(kafka_broker, group, topic)
            app.stop()
    assert sorted(sink.results) == list(range(10))

    await _produce(kafka_broker, topic, _json(list(range(10, 14))))
    again = af.App("kafka-commit", state_dir=state_dir, checkpoint_interval=0.05)
    resumed = af.CollectSink()
    again.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group, bounded=True)).sink(
        resumed
    )
    with anyio.fail_after(60):
        await again.run_async()
    assert sorted(resumed.results) == [10, 11, 12, 13]


async def test_unbounded_readers_split_the_partitions_through_the_group(kafka_broker: str, tmp_path: Path) -> None:
    """Two readers in one group share four partitions; a rebalance may hand a partition
    over before its first checkpoint, so records may come twice, but none is lost, and
    the group ends up with every partition committed at its end."""
    topic, group = await create_topic(kafka_broker, 4), unique_name("g")
    await _produce(kafka_broker, topic, _json(list(range(20))), partitions=4)
    app = af.App("kafka-group", state_dir=str(tmp_path / "state"), checkpoint_interval=0.05, parallelism=2)
    sink = af.CollectSink()
    app.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group)).sink(sink, parallelism=1)
    ends = {f"{topic}:{p}": 5 for p in range(4)}
    committed: dict[str, int | None] = {}
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while set(sink.results) != set(range(20)) or committed != ends:
                await anyio.sleep(0.05)  # polling a condition, bounded by fail_after
                committed = await _committed(kafka_broker, group, topic, partitions=4)
            app.stop()


async def test_partitions_being_assigned_already_hold_the_watermark_back() -> None:
    """Positioning newly assigned partitions awaits the broker; one positioned first must not
    let the watermark run past the records of the others (they would all be late)."""
    source = KafkaSource("t", bootstrap_servers="127.0.0.1:1", group_id="g")
    reader = source.create_reader(0, 1)
    release = anyio.Event()
    positioned: list[TopicPartition] = []

    async def start(partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            await release.wait()
            reader._next[tp] = 0  # type: ignore[attr-defined]
            positioned.append(tp)

    reader._start = start  # type: ignore[attr-defined]
    async with anyio.create_task_group() as group:
        group.start_soon(reader._assigned, [TopicPartition("t", 0), TopicPartition("t", 1)])  # type: ignore[attr-defined]
        await anyio.wait_all_tasks_blocked()
        assert sorted(reader.splits()) == ["t:0", "t:1"]  # neither positioned yet
        release.set()
    assert sorted(reader.splits()) == ["t:0", "t:1"] and len(positioned) == 2


class CountPerWindow(af.ProcessWindowFunction):
    def process(self, key: Any, context: Any, elements: list[Any]) -> Any:
        yield (context.window.start, len(elements))


async def test_output_record_yields_kafka_records_with_their_metadata(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await produce(
        kafka_broker,
        topic,
        [
            {"value": b'{"i": 0}', "key": b"user-1", "timestamp_ms": 1_000, "headers": [("h", b"x")]},
            {"value": None, "key": b"user-2", "timestamp_ms": 2_000},
        ],
    )
    app = af.App("kafka-records")
    source = af.kafka.KafkaSource(
        topic,
        bootstrap_servers=kafka_broker,
        group_id=unique_name("g"),
        bounded=True,
        output="record",
        key_format="str",
    )
    out = await run_collect_async(app.source(source))
    assert out == [
        af.kafka.KafkaRecord("user-1", {"i": 0}, topic, 0, 0, 1_000, (("h", b"x"),)),
        af.kafka.KafkaRecord("user-2", None, topic, 0, 1, 2_000, ()),
    ]


async def test_a_key_that_fails_to_decode_goes_to_the_dead_letter_output(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await produce(kafka_broker, topic, [{"value": b"1", "key": b"k"}, {"value": b"2", "key": b"\xff"}])
    dead = af.OutputTag("dead")
    app = af.App("kafka-bad-key")
    events = app.source(
        af.kafka.KafkaSource(
            topic,
            bootstrap_servers=kafka_broker,
            group_id=unique_name("g"),
            bounded=True,
            output="record",
            key_format="str",
            on_error=dead,
        )
    )
    good, bad = await run_collect_async(events.map(lambda r: r.value), events.get_side_output(dead))
    assert good == [1]
    assert [(b.location, b.raw) for b in bad] == [(f"{topic}:0@1 (key)", b"\xff")]


async def test_event_time_is_the_kafka_timestamp_without_a_timestamp_function(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    stamps = [1_000, 4_000, 9_000, 11_000, 12_500, 25_000]
    await produce(kafka_broker, topic, [{"value": b"1", "timestamp_ms": t} for t in stamps])
    app = af.App("kafka-event-time")
    source = af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True)
    counts = (
        app.source(source, watermarks=af.BoundedOutOfOrderness(0))
        .key_by(lambda v: "all")
        .window(af.TumblingEventTimeWindows(10_000))
        .process(CountPerWindow())
    )
    assert sorted(await run_collect_async(counts)) == [(0, 3), (10_000, 2), (20_000, 1)]


@pytest.mark.parametrize(
    ("partitions", "readers"),
    [(2, 1), (1, 2)],
    ids=["a-quiet-partition", "a-reader-without-partitions"],
)
async def test_windows_close_while_the_job_runs_past_what_has_no_records(
    kafka_broker: str, partitions: int, readers: int
) -> None:
    """Only partition 0 gets records. With an idle timeout, neither a quiet partition 1
    nor a second reader the group gives no partition holds the watermark back: the first
    window fires while the job runs (no heartbeats needed)."""
    topic = await create_topic(kafka_broker, partitions)
    await produce(
        kafka_broker, topic, [{"value": b"1", "partition": 0, "timestamp_ms": t} for t in (1_000, 2_000, 15_000)]
    )
    app = af.App("kafka-idle")
    source = af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"))
    sink = af.CollectSink()
    (
        app.source(source, watermarks=af.BoundedOutOfOrderness(0, idle_timeout=300), parallelism=readers)
        .key_by(lambda v: "all")
        .window(af.TumblingEventTimeWindows(10_000))
        .process(CountPerWindow())
        .sink(sink)
    )
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while not sink.results:
                await anyio.sleep(0.05)  # polling a condition, bounded by fail_after
            app.stop()
    assert sink.results[0] == (0, 2)


async def test_pattern_reads_every_matching_topic(kafka_broker: str) -> None:
    prefix = unique_name("p")
    for n in ("a", "b", "other"):
        await create_topic(kafka_broker, 1, f"{prefix}-{n}")
    await _produce(kafka_broker, f"{prefix}-a", _json([1, 2]), partitions=1)
    await _produce(kafka_broker, f"{prefix}-b", _json([3]), partitions=1)
    await _produce(kafka_broker, f"{prefix}-other", _json([99]), partitions=1)
    pattern = f"{prefix}-[ab]"
    bounded = af.kafka.KafkaSource(
        pattern=pattern, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True
    )
    assert sorted(await run_collect_async(af.App("kafka-pattern").source(bounded))) == [1, 2, 3]

    app = af.App("kafka-pattern-group")
    sink = af.CollectSink()
    app.source(af.kafka.KafkaSource(pattern=pattern, bootstrap_servers=kafka_broker, group_id=unique_name("g"))).sink(
        sink
    )
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while sorted(sink.results) != [1, 2, 3]:
                await anyio.sleep(0.05)  # polling a condition, bounded by fail_after
            app.stop()


async def test_a_stop_with_a_savepoint_commits_its_positions_to_the_group(kafka_broker: str, tmp_path: Path) -> None:
    """No periodic checkpoint completes (the interval is an hour): only the savepoint of
    the stop can have committed the offsets, and the group has left."""
    topic, group = await create_topic(kafka_broker, 2), unique_name("g")
    await _produce(kafka_broker, topic, _json(list(range(10))))
    app = af.App("kafka-stop-commit", state_dir=str(tmp_path / "state"), checkpoint_interval=3600)
    sink = af.CollectSink()
    app.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group)).sink(sink)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            while len(sink.results) < 10:
                await anyio.sleep(0.05)  # polling a condition, bounded by fail_after
            app.stop()
    assert await _committed(kafka_broker, group, topic) == {f"{topic}:0": 5, f"{topic}:1": 5}


async def test_the_final_checkpoint_of_a_bounded_run_commits_its_positions(kafka_broker: str, tmp_path: Path) -> None:
    topic, group = await create_topic(kafka_broker, 2), unique_name("g")
    await _produce(kafka_broker, topic, _json(list(range(6))))
    app = af.App("kafka-final-commit", state_dir=str(tmp_path / "state"), checkpoint_interval=3600)
    app.source(af.kafka.KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=group, bounded=True)).sink(
        af.CollectSink()
    )
    with anyio.fail_after(60):
        await app.run_async()
    assert await _committed(kafka_broker, group, topic) == {f"{topic}:0": 3, f"{topic}:1": 3}


async def test_lag_is_what_is_left_in_each_partition(kafka_broker: str) -> None:
    topic = await create_topic(kafka_broker, 1)
    await _produce(kafka_broker, topic, _json(list(range(10))), partitions=1)
    reader = af.kafka.KafkaSource(
        topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"), bounded=True
    ).create_reader(0, 1)
    await reader.open()
    try:
        read: list[Any] = []
        with anyio.fail_after(20):
            while not read:
                batch = await reader.read(4, 0.5)
                assert batch is not None
                read = batch.records
        assert read == [0, 1, 2, 3]
        assert reader.lag() == {f"{topic}:0": 6}
    finally:
        await reader.close()


async def test_backpressure_stops_the_reads_instead_of_buffering(kafka_broker: str) -> None:
    """A sink that blocks stops the pipeline: the source hands out no more records, and the
    consumer keeps at most one fetch per partition (aiokafka fetches a partition again only
    once its buffered records were taken)."""
    topic = await create_topic(kafka_broker, 2)
    await produce(
        kafka_broker, topic, [{"value": b"1", "partition": i % 2} for i in range(20_000)], batched=True, linger_ms=50
    )
    blocked, release = anyio.Event(), anyio.Event()
    written: list[int] = []

    class Blocking(af.Sink):
        def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
            class Writer(af.SinkWriter):
                async def write(self, values: list[Any]) -> None:
                    written.append(len(values))
                    blocked.set()
                    await release.wait()

            return Writer()

    readers: list[Any] = []

    class Recorded(KafkaSource):
        def create_reader(self, subtask_index: int, parallelism: int) -> Any:
            readers.append(super().create_reader(subtask_index, parallelism))
            return readers[-1]

    app = af.App("kafka-backpressure", batch_size=100, channel_capacity=2)
    source = Recorded(
        topic,
        bootstrap_servers=kafka_broker,
        group_id=unique_name("g"),
        consumer_options={"max_partition_fetch_bytes": 4096},
    )
    app.source(source).map(lambda v: v).sink(Blocking(), parallelism=1)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app.run_async)
            await blocked.wait()
            await anyio.sleep(1)  # time to run ahead, if it could
            assert readers and sum(r.statistics()["records_read"] for r in readers) <= 100 * 6
            for reader in readers:
                assert len(reader._consumer._fetcher._records) <= 2
            release.set()
            app.stop()


async def test_backpressure_does_not_make_partitions_with_records_idle(transactional_kafka_broker: str) -> None:
    """A bounded read held back by a slow sink, with an idle timeout far shorter than the
    stalls: every partition still has records, so none goes idle and no record is late.
    (Marking the partitions the reader had not got to idle made most of them late.)
    noida-db: a bounded read needs exact end offsets."""
    broker = transactional_kafka_broker
    partitions, total = 3, 3_000
    topic = await create_topic(broker, partitions)
    # partition i % 3, timestamps rising by 10 ms: the partitions cover the same period
    await produce(
        broker,
        topic,
        [{"value": b"1", "partition": i % partitions, "timestamp_ms": 10 * i} for i in range(total)],
        batched=True,
    )
    app = af.App("kafka-idle-backpressure", batch_size=50, channel_capacity=1, watermark_interval=0.01)
    source = KafkaSource(topic, bootstrap_servers=broker, group_id=unique_name("g"), bounded=True)
    events = app.source(source, watermarks=af.BoundedOutOfOrderness(0, idle_timeout=20))
    late, counted, backpressured = await late_records_under_backpressure(app, events)
    assert backpressured > 1.0  # the source was held back, many times the idle timeout
    assert late == 0, f"{late} of {total} records were late"
    assert counted == total


async def test_a_partition_is_backlogged_until_the_reader_caught_up_with_it(kafka_broker: str) -> None:
    """What idleness goes by: a partition with records not handed out is backlogged, an
    empty one and one read to its end are not."""
    topic = await create_topic(kafka_broker, 2)
    await produce(kafka_broker, topic, [{"value": b"1", "partition": 0} for _ in range(3)])
    source = KafkaSource(topic, bootstrap_servers=kafka_broker, group_id=unique_name("g"))
    reader = source.create_reader(0, 1)
    await reader.open()
    try:
        with anyio.fail_after(30):
            while not (batch := await reader.read(1, 0.1)) or not batch.records:
                pass  # the group assigns, the first fetch comes back
            assert f"{topic}:0" in reader.backlogged_splits()  # 2 of its 3 records not handed out
            read = 1
            while read < 3:
                batch = await reader.read(1, 0.1)
                read += len(batch.records) if batch else 0
            while reader.backlogged_splits():  # partition 1 fetched (empty), partition 0 read to its end
                assert not (await reader.read(1, 0.1)).records
    finally:
        await reader.close()
