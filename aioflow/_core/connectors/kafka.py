"""Kafka: :class:`KafkaSource`, on aiokafka.

Positions are owned by checkpoints: a reader's position is ``{"topic:partition":
next_offset}``, stored in every checkpoint and restored on start. When a checkpoint
completes, its offsets are committed to the consumer group, so lag tools see them; a
partition without a checkpointed position starts from the group's committed offset, and
only without one from ``starting_offsets``.

Two ways to get partitions:

- unbounded (the default): consumer-group membership (``subscribe``); a rebalance
  listener seeks each newly assigned partition to its restored position. Any reader may
  get any partition, so every reader must be restored with the positions of all of them
  (:meth:`KafkaSource.rescale` merges them).
- ``bounded=True``: a fixed, manual assignment (partition ``i`` of the sorted list of the
  topics' partitions goes to subtask ``i % parallelism``), and end offsets captured at
  open. With group membership a bounded reader could not tell when it is done: one that
  has no partition yet may get some in the next rebalance, and one that finishes and
  leaves the group triggers a rebalance that moves partitions in the middle of the
  others' reads. A fixed assignment has a clear end and reads the same split each run.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from aioflow._core.connectors.base import BadRecord, ErrorPolicy, OnError, Source, SourceBatch, SourceReader
from aioflow._core.errors import ConnectorError, PipelineError, StateError, suggest_keywords

__all__ = ["KafkaRecord", "KafkaSource"]

log = structlog.get_logger("aioflow.connectors.kafka")

#: Consumer options the source sets itself: passing them in ``consumer_options`` is an error.
_RESERVED_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "auto_offset_reset",
        "key_deserializer",
        "value_deserializer",
    }
)

_Errors = tuple[type[Exception], ...]

#: Consumer options that also configure the admin client of the worker check (security).
_ADMIN_OPTIONS = frozenset(
    {
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
        "api_version",
        "request_timeout_ms",
        "metadata_max_age_ms",
    }
)

_FORMATS: dict[str, tuple[Callable[[bytes], Any], _Errors]] = {
    "json": (orjson.loads, (orjson.JSONDecodeError,)),
    "str": (lambda raw: raw.decode("utf-8"), (UnicodeDecodeError,)),
    "bytes": (lambda raw: raw, ()),
}


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A Kafka record with its metadata, as ``KafkaSource(output="record")`` yields it.

    ``key`` and ``value`` are decoded by ``key_format`` and ``value_format`` (``None``
    when the record has none); ``headers`` are ``(name, bytes)`` pairs; ``timestamp`` is
    the record's timestamp in ms (its event time unless ``app.source`` has ``timestamps=``).
    """

    key: Any
    value: Any
    topic: str
    partition: int
    offset: int
    timestamp: int
    headers: tuple[tuple[str, bytes], ...] = ()


def _decoder(fmt: str | Callable[[bytes], Any], what: str) -> tuple[Callable[[bytes], Any], _Errors]:
    """The decode function of a ``value_format``/``key_format`` and the errors it raises."""
    if callable(fmt):
        return fmt, (Exception,)
    if fmt in _FORMATS:
        return _FORMATS[fmt]
    raise PipelineError(f"{what} must be 'json', 'str', 'bytes' or a callable(bytes), got {fmt!r}")


def unreachable(connector: str, servers: str | list[str], error: Exception) -> ConnectorError:
    """The error for Kafka brokers a client could not connect to at start."""
    return ConnectorError(
        connector,
        f"cannot reach the Kafka brokers at {servers} ({error}); "
        "is the broker running, and are bootstrap_servers right?",
    )


async def _leave_group(consumer: AIOKafkaConsumer, source: str) -> None:
    """Leave the consumer group, so that its partitions go to the other members at once.
    aiokafka does not for a static member (it would keep its partitions until its session
    times out, so that a restart finds them still its own); a reader closed by aioflow is
    gone for good, or about to rejoin. A SIGKILLed worker never gets here: its successor
    takes its place back by its instance id. Then ``consumer.stop()`` closes the rest."""
    coordinator = consumer._coordinator  # aiokafka has no public calls for any of this
    if coordinator is None or not coordinator.member_id or coordinator.coordinator_id is None:
        return
    group, member, node = coordinator.group_id, coordinator.member_id, coordinator.coordinator_id
    await coordinator.close()  # first, or it would join again as soon as it has left
    try:
        await consumer._client.send(node, LeaveGroupRequest(group, member))
    except KafkaError as exc:  # the group drops the member at its session timeout instead
        log.warning("leaving the consumer group failed", source=source, group=group, error=repr(exc))


def _fetch_state(consumer: AIOKafkaConsumer, tp: TopicPartition) -> Any:
    """aiokafka's fetch state of assigned partition ``tp`` (``position``,
    ``has_valid_position``, ``highwater``, ``lso``), or ``None`` when it is not assigned.
    aiokafka answers ``highwater()`` from it without I/O, but ``position()`` only as a
    coroutine that may wait for a reset: this reads the position the same way."""
    subscription = consumer._subscription.subscription
    assignment = None if subscription is None else subscription.assignment
    if assignment is None:
        return None
    return assignment.state_value(tp)


def split_name(tp: TopicPartition) -> str:
    """``topic:partition``: the split name of a partition (watermarks, positions)."""
    return f"{tp.topic}:{tp.partition}"


def _partition(split: str) -> TopicPartition:
    topic, _, partition = split.rpartition(":")
    if not topic:
        raise ValueError(f"not a 'topic:partition' split: {split!r}")
    return TopicPartition(topic, int(partition))


class KafkaSource(Source):
    """Records from Kafka topics, read by a consumer group.

    ``topics`` is a topic name or a list of them; or ``pattern``, a regular expression
    that topic names must match in full (topics created later join at the next metadata
    refresh, ``metadata_max_age_ms``). ``starting_offsets`` says where a
    partition starts when neither a checkpoint nor the group has a position for it:
    ``"earliest"``, ``"latest"``, ``"committed"`` (there must be a committed offset: the
    job fails otherwise) or an int timestamp in ms (the first record at or after it).
    ``value_format`` decodes each record's value: ``"json"`` (orjson), ``"str"``
    (UTF-8), ``"bytes"``, or a callable taking the bytes. A record without a value (a
    tombstone) yields ``None``, undecoded. A value that fails to decode follows
    ``on_error`` as in :func:`read_jsonl`; its location is ``topic:partition@offset``
    and a dead letter carries the raw bytes.

    ``output="value"`` (the default) yields the decoded values; ``output="record"`` yields
    :class:`KafkaRecord` s, with the key decoded by ``key_format`` (default ``"bytes"``).
    Without ``timestamps=`` on ``app.source``, a record's event time is its Kafka
    timestamp; watermarks are kept per partition, so give the strategy an
    ``idle_timeout`` to keep a quiet partition from holding event time back.

    ``bounded=True`` reads up to the end offsets seen when the reader opens, then ends;
    see the module documentation for how partitions are split then.
    ``consumer_options`` go to ``AIOKafkaConsumer`` as they are (TLS, SASL, fetch sizes).

    Workers in one consumer group split the partitions. A stateful job (windows, keyed
    state, timers) refuses to start while another worker is in its group, since state
    does not move between workers yet; ``partitioned_state=True`` says that every key of
    the job's state is the topic's partitioning key, so that each worker's state belongs
    to its own partitions, and lets it run beside others.

    Offsets are committed to the group only when a checkpoint completes: without
    checkpoints the group's offsets do not move.
    """

    default_name = "kafka"
    replayable = False
    timestamped = True
    lag_metric = "aioflow_kafka_consumer_lag"
    lag_labels = ("topic", "partition")

    @suggest_keywords
    def __init__(
        self,
        topics: str | Iterable[str] | None = None,
        *,
        bootstrap_servers: str | list[str],
        group_id: str,
        pattern: str | None = None,
        starting_offsets: str | int = "earliest",
        value_format: str | Callable[[bytes], Any] = "json",
        key_format: str | Callable[[bytes], Any] = "bytes",
        output: Literal["value", "record"] = "value",
        bounded: bool = False,
        on_error: OnError = "fail",
        partitioned_state: bool = False,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        if (topics is None) == (pattern is None):
            raise PipelineError("KafkaSource needs either topics or pattern=, not both")
        topic_list = [] if topics is None else [topics] if isinstance(topics, str) else list(topics)
        if pattern is None and (not topic_list or not all(isinstance(t, str) and t for t in topic_list)):
            raise PipelineError(f"KafkaSource needs a topic name or a list of them, got {topics!r}")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise PipelineError(f"KafkaSource pattern {pattern!r} is not a regular expression: {exc}") from None
        if output not in ("value", "record"):
            raise PipelineError(f"output must be 'value' or 'record', got {output!r}")
        if not bootstrap_servers:
            raise PipelineError("KafkaSource needs bootstrap_servers='host:port'")
        if not isinstance(group_id, str) or not group_id:
            raise PipelineError(f"KafkaSource needs a group_id (a non-empty string), got {group_id!r}")
        if isinstance(starting_offsets, bool) or not (
            starting_offsets in ("earliest", "latest", "committed")
            or (isinstance(starting_offsets, int) and starting_offsets >= 0)
        ):
            raise PipelineError(
                "starting_offsets must be 'earliest', 'latest', 'committed' or a timestamp in ms "
                f"(int >= 0), got {starting_offsets!r}"
            )
        self.decode, self.decode_error = _decoder(value_format, "value_format")
        self.decode_key, self.decode_key_error = _decoder(key_format, "key_format")
        options = dict(consumer_options or {})
        reserved = sorted(_RESERVED_OPTIONS & set(options))
        if reserved:
            raise PipelineError(f"consumer_options must not set {', '.join(reserved)}: KafkaSource sets them")
        self.topics = topic_list
        self.pattern = pattern
        self.output = output
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.starting_offsets = starting_offsets
        self.value_format = value_format
        self.bounded = bool(bounded)
        self.on_error = on_error
        self.partitioned_state = bool(partitioned_state)
        self.consumer_options = options
        self.name = f"kafka({','.join(topic_list) if pattern is None else '/' + pattern + '/'})"
        self.dead_letter_tag = ErrorPolicy(on_error, self.name).dead_letter_tag  # validates on_error now

    def __repr__(self) -> str:
        topics = self.topics if self.pattern is None else f"pattern={self.pattern!r}"
        return f"<KafkaSource {topics} group={self.group_id!r} bounded={self.bounded}>"

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        return KafkaReader(self, subtask_index, parallelism)

    @property
    def positions_shared(self) -> bool:  # type: ignore[override]
        """With group membership any reader may be assigned any partition."""
        return not self.bounded

    def rescale(self, positions: list[Any], parallelism: int) -> list[Any]:
        """Every new reader gets all old positions merged (the highest offset of each
        partition): whichever reader the partition goes to resumes it."""
        return [merge_positions(positions)] * parallelism


def merge_positions(positions: Iterable[dict[str, int] | None]) -> dict[str, int]:
    """One position holding the highest offset each partition has in ``positions``."""
    merged: dict[str, int] = {}
    for position in positions:
        for split, offset in (position or {}).items():
            if offset > merged.get(split, -1):
                merged[split] = offset
    return merged


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped: the base is Any
    def __init__(self, reader: KafkaReader) -> None:
        self.reader = reader

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.reader._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.reader._assigned(assigned)


class KafkaReader(SourceReader):
    """One subtask's consumer. Batches are per partition (``SourceBatch.split`` is
    ``topic:partition``); what one fetch returned for several partitions is handed out
    over the next reads."""

    def __init__(self, source: KafkaSource, subtask_index: int, parallelism: int) -> None:
        self._source = source
        self._subtask_index = subtask_index
        self._parallelism = parallelism
        self._policy = ErrorPolicy(source.on_error, source.name)
        self._consumer: AIOKafkaConsumer | None = None
        self._next: dict[TopicPartition, int] = {}  # assigned partitions -> offset of the next record to hand out
        self._started: dict[TopicPartition, int] = {}  # assigned partitions -> the offset reading started at
        #: Assigned, still being positioned: they hold the watermark back already, or the
        #: first partition positioned would advance it past the others' records.
        self._assigning: set[TopicPartition] = set()
        self._restored: dict[str, int] = {}  # restored positions of partitions not assigned here (kept)
        self._end: dict[TopicPartition, int] | None = None  # bounded: end offsets captured at open
        self._pending: deque[tuple[TopicPartition, list[Any]]] = deque()  # fetched, not handed out yet
        self._failure: BaseException | None = None  # raised in a rebalance listener, re-raised by read()
        self._records = 0
        self._commits = 0

    # -- lifecycle --------------------------------------------------------------------

    def restore(self, position: Any) -> None:
        if not isinstance(position, dict):
            raise TypeError(f"a Kafka position is a dict of 'topic:partition' -> offset, got {position!r}")
        for split, offset in position.items():
            _partition(split)
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise TypeError(f"offset of {split!r} is not an int: {offset!r}")
        self._restored = dict(position)

    async def open(self) -> None:
        source = self._source
        options = dict(source.consumer_options)
        # Group members whose id lacks the worker id belong to other workers.
        client_id = f"{options.pop('client_id', 'aioflow')}-{self.worker_id}"
        consumer = AIOKafkaConsumer(
            bootstrap_servers=source.bootstrap_servers,
            group_id=source.group_id,
            client_id=client_id,
            # static membership: a restarted worker takes its place back at once, instead of
            # waiting for the session of its killed predecessor to expire
            group_instance_id=None if source.bounded else f"{client_id}-{self._subtask_index}",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if source.starting_offsets == "earliest" else "latest",
            **options,
        )
        self._consumer = consumer
        try:
            await consumer.start()  # close() stops it, also when this fails
        except KafkaConnectionError as exc:
            raise unreachable(source.name, source.bootstrap_servers, exc) from exc
        if not source.bounded:
            if self.stateful_job and not source.partitioned_state:
                await self._refuse_other_workers(client_id)
            if source.pattern is not None:
                consumer.subscribe(pattern=f"^(?:{source.pattern})$", listener=_Rebalance(self))
            else:
                await self._all_partitions()  # a topic that does not exist fails now, not never reads
                consumer.subscribe(topics=source.topics, listener=_Rebalance(self))
            return
        mine = [tp for i, tp in enumerate(await self._all_partitions()) if i % self._parallelism == self._subtask_index]
        consumer.assign(mine)
        self._end = await consumer.end_offsets(mine) if mine else {}
        await self._start(mine)
        for tp in mine:
            if self._next[tp] >= self._end[tp]:
                consumer.pause(tp)

    async def _refuse_other_workers(self, client_id: str) -> None:
        """A stateful job runs in one worker per group: fail, naming them, if others are in it."""
        source = self._source
        admin = AIOKafkaAdminClient(
            bootstrap_servers=source.bootstrap_servers,
            **{k: v for k, v in source.consumer_options.items() if k in _ADMIN_OPTIONS},
        )
        await admin.start()
        try:
            described = await admin.describe_consumer_groups([source.group_id])
        finally:
            await admin.close()
        others = [
            member[0]
            for response in described
            for group in response.groups
            for member in group[5]
            if not member[0].startswith(client_id)
        ]  # member ids start with their client id
        if others:
            raise StateError(
                f"{source.name}: group {source.group_id!r} already has {len(others)} member(s) of another worker "
                f"({', '.join(sorted(others)[:3])}); this job keeps state (windows, keyed state or timers), which "
                "does not move between workers yet, so it runs in one worker per group. Stop the other worker, "
                "or, if every key of the job's state is the topic's partitioning key, pass "
                "KafkaSource(partitioned_state=True)"
            )

    async def _all_partitions(self) -> list[TopicPartition]:
        """Every partition of the source's topics, sorted; fails naming a missing topic."""
        assert self._consumer is not None
        # aiokafka has no public call that loads a topic's partitions into the consumer's metadata
        cluster = await self._consumer._client.fetch_all_metadata()
        topics = self._source.topics
        if self._source.pattern is not None:
            matching = re.compile(self._source.pattern)
            topics = sorted(t for t in cluster.topics() if matching.fullmatch(t))
        partitions: list[TopicPartition] = []
        for topic in topics:
            ids = cluster.partitions_for_topic(topic)
            if not ids:
                raise ConnectorError(
                    self._source.name, f"topic {topic!r} does not exist on {self._source.bootstrap_servers}"
                )
            partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
        return partitions

    async def close(self) -> None:
        self._policy.close()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _leave_group(consumer, self._source.name)
            await consumer.stop()

    # -- partition assignment ---------------------------------------------------------

    async def _start(self, partitions: list[TopicPartition]) -> None:
        """Seek newly assigned partitions: the restored position, else the group's
        committed offset, else ``starting_offsets``."""
        consumer, source = self._consumer, self._source
        assert consumer is not None
        for tp in partitions:
            restored = self._restored.pop(split_name(tp), None)
            if restored is not None:
                consumer.seek(tp, restored)
                self._next[tp] = self._started[tp] = restored
                continue
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            elif source.starting_offsets == "earliest":
                await consumer.seek_to_beginning(tp)
            elif source.starting_offsets == "latest":
                await consumer.seek_to_end(tp)
            elif source.starting_offsets == "committed":
                raise ConnectorError(
                    source.name,
                    f"group {source.group_id!r} has no committed offset for {split_name(tp)} "
                    "(starting_offsets='committed')",
                )
            else:
                found = (await consumer.offsets_for_times({tp: source.starting_offsets})).get(tp)
                if found is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found.offset)
            self._next[tp] = self._started[tp] = await consumer.position(tp)
        log.debug(
            "partitions assigned",
            source=source.name,
            partitions=[split_name(tp) for tp in partitions],
            positions={split_name(tp): self._next[tp] for tp in partitions},
        )

    async def _assigned(self, assigned: Any) -> None:
        new = [tp for tp in assigned if tp not in self._next]
        self._assigning.update(new)
        try:
            await self._start(new)
        except Exception as exc:  # aiokafka only logs what a listener raises; read() raises it
            self._failure = exc
        finally:
            self._assigning.difference_update(new)

    def _revoked(self, revoked: Any) -> None:
        """Drop revoked partitions: their new owner resumes them from its restored
        position or the group's committed offset (records since are read again)."""
        revoked = set(revoked)
        for tp in revoked:
            self._next.pop(tp, None)
            self._started.pop(tp, None)
        self._pending = deque((tp, records) for tp, records in self._pending if tp not in revoked)

    # -- reading ----------------------------------------------------------------------

    def splits(self) -> list[str]:
        if self._end is not None:
            return [split_name(tp) for tp, offset in self._next.items() if offset < self._end[tp]]
        return [split_name(tp) for tp in dict.fromkeys((*self._next, *self._assigning))]

    def backlogged_splits(self) -> set[str] | None:
        """Partitions with records not handed out yet: every partition of a bounded read
        short of its end offset; otherwise a partition with fetched records waiting, one
        not fetched yet, or one whose fetch position is below its high watermark (the
        last stable offset with ``isolation_level="read_committed"``), as of the last
        fetch response. The others are caught up: only they can go idle."""
        consumer = self._consumer
        if consumer is None:
            return None
        if self._end is not None:
            return set(self.splits())
        backlogged = {split_name(tp) for tp, _ in self._pending}
        backlogged.update(split_name(tp) for tp in self._assigning)
        committed = self._source.consumer_options.get("isolation_level") == "read_committed"
        for tp in list(self._next):
            state = _fetch_state(consumer, tp)
            if state is None:
                continue  # being revoked
            end = state.lso if committed else state.highwater
            if end is None or not state.has_valid_position or state.position < end:
                backlogged.add(split_name(tp))
        return backlogged

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._failure is not None:
            raise self._failure
        consumer = self._consumer
        assert consumer is not None, "read() before open()"
        if not self._pending:
            if self._end is not None and self._finished():
                return None
            fetched: dict[TopicPartition, list[Any]] = {}
            # getmany waits for a rebalance to end whatever its timeout; a read must not (or
            # checkpoints, watermarks and stops would wait for the group too)
            with anyio.move_on_after(timeout):
                fetched = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
            if self._failure is not None:
                raise self._failure
            for tp, records in fetched.items():
                if records and tp in self._next:
                    self._pending.append((tp, records))
            if not self._pending:
                if self._end is not None:
                    await self._skip_gaps()
                return SourceBatch([])
        tp, records = self._pending.popleft()
        return self._batch(tp, records)

    def _finished(self) -> bool:
        end = self._end
        assert end is not None
        return all(offset >= end[tp] for tp, offset in self._next.items())

    async def _skip_gaps(self) -> None:
        """Bounded: a partition whose fetch position passed records that are not there
        (compacted away, transaction markers) is at its end too."""
        consumer, end = self._consumer, self._end
        assert consumer is not None and end is not None
        for tp, offset in self._next.items():
            if offset < end[tp]:
                position = await consumer.position(tp)
                if position > offset:
                    self._next[tp] = min(position, end[tp])
                    if self._next[tp] >= end[tp]:
                        consumer.pause(tp)

    def _batch(self, tp: TopicPartition, records: list[Any]) -> SourceBatch:
        start = self._next[tp]
        if records[0].offset < start:  # fetched before a seek (restore or rebalance): drop what is behind it
            records = [r for r in records if r.offset >= start]
            if not records:
                return SourceBatch([], split_name(tp))
        if self._end is not None:
            end = self._end[tp]
            if records[-1].offset >= end:
                records = [r for r in records if r.offset < end]
                consumer = self._consumer
                assert consumer is not None  # bounded: the end offsets were read through it
                consumer.pause(tp)
                if not records:
                    self._next[tp] = end
                    return SourceBatch([], split_name(tp))
        self._next[tp] = records[-1].offset + 1
        source = self._source
        bad: list[BadRecord] = []
        try:
            if source.output == "value":
                decode = source.decode
                decoded = [None if r.value is None else decode(r.value) for r in records]
            else:
                decoded = [self._record(r) for r in records]
        except source.decode_error + source.decode_key_error:
            records = self._decode_carefully(tp, records, bad)
            decoded = (
                [None if r.value is None else source.decode(r.value) for r in records]
                if source.output == "value"
                else [self._record(r) for r in records]
            )
        self._records += len(decoded)
        return SourceBatch(decoded, split_name(tp), bad or None, [r.timestamp for r in records])

    def _record(self, r: Any) -> KafkaRecord:
        source = self._source
        return KafkaRecord(
            None if r.key is None else source.decode_key(r.key),
            None if r.value is None else source.decode(r.value),
            r.topic,
            r.partition,
            r.offset,
            r.timestamp,
            tuple(r.headers),
        )

    def _decode_carefully(self, tp: TopicPartition, records: list[Any], bad: list[BadRecord]) -> list[Any]:
        """The records whose key (with ``output="record"``) and value decode; the others
        go to the error policy."""
        source = self._source
        checks = [(source.decode, source.decode_error, "value")]
        if source.output == "record":
            checks.append((source.decode_key, source.decode_key_error, "key"))
        good = []
        for record in records:
            for decode, error, part in checks:
                raw = getattr(record, part)
                if raw is None:
                    continue
                try:
                    decode(raw)
                except error as exc:
                    location = f"{split_name(tp)}@{record.offset}" + (" (key)" if part == "key" else "")
                    self._policy.handle(exc, location, raw, bad)
                    break
            else:
                good.append(record)
        return good

    # -- positions and commits --------------------------------------------------------

    def position(self) -> dict[str, int]:
        """``{"topic:partition": next offset}`` of the partitions read here, plus the
        restored positions of partitions not assigned here (so they survive)."""
        return self._restored | {split_name(tp): offset for tp, offset in self._next.items()}

    async def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        """Commit the checkpoint's offsets of the partitions still assigned here to the
        group. A failed commit is logged, not raised: the next checkpoint commits again.

        An offset below where this reader started a partition is not committed: it is a
        kept restored position, older than what the partition's previous owner may have
        committed since (committing it would move the group's offset back)."""
        consumer = self._consumer
        if consumer is None:
            return
        started = self._started
        offsets = {}
        for split, offset in position.items():
            tp = _partition(split)
            if tp in started and offset >= started[tp]:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning(
                "committing offsets to the group failed",
                source=self._source.name,
                group=self._source.group_id,
                checkpoint=checkpoint_id,
                error=repr(exc),
            )
            return
        self._commits += 1

    def lag(self) -> dict[str, int]:
        """Consumer lag of each partition read here: records between the next one to hand
        out and the partition's end, as of the last fetch (unknown before one)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags = {}
        for tp, offset in list(self._next.items()):
            end = consumer.highwater(tp)
            if end is not None:
                lags[split_name(tp)] = max(end - offset, 0)
        return lags

    def statistics(self) -> dict[str, int]:
        return {
            "records_read": self._records,
            "records_skipped": self._policy.skipped,
            "records_dead_lettered": self._policy.dead_lettered,
            "partitions": len(self._next),
            "commits": self._commits,
        }
