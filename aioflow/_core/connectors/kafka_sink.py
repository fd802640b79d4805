"""Kafka output: :class:`KafkaSink`, an :class:`~aioflow.AsyncBatchSink` on aiokafka.

Three delivery guarantees:

- ``"none"``: records are handed to the producer and not waited for; a failed delivery
  is logged and counted, never retried.
- ``"at_least_once"`` (the default): every batch waits for the broker's acknowledgement
  (``acks="all"``), retryable errors are retried, and checkpoints wait for everything
  sent before them. After a crash, records since the last checkpoint are sent again.
- ``"exactly_once"``: Kafka transactions, committed when the checkpoint that follows
  them completes, so a ``read_committed`` consumer sees each result once, whatever
  crashes. How the transactions are named, kept and recovered:

  - Subtask ``i`` writes its ``n``-th transaction with the transactional id
    ``{transactional_id_prefix}-{i}-{n}``, one producer per transaction. At a checkpoint
    barrier the transaction is flushed and left open (pre-committed); its handle (the id,
    producer id and epoch) goes in the checkpoint, and the next transaction starts.
  - When the checkpoint completes, the transaction is committed. After a crash, the
    restore commits the handles of the restored checkpoint again by resuming their
    producer id and epoch (a commit that already happened is a no-op), as Flink does.
  - Transactions a crash left open after that checkpoint would block ``read_committed``
    consumers until the broker's transaction timeout: on restore (and on a fresh start)
    each subtask aborts them, fencing ``…-{n+1}``, ``…-{n+2}``, … until it reaches an id
    that was never used (epoch 0). Use a new ``transactional_id_prefix`` for a job that
    starts over from an empty ``state_dir``, or the probe walks through the old ids.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio
import orjson
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidTxnState,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
)
from aiokafka.partitioner import DefaultPartitioner

from aioflow._core.connectors.async_sink import AsyncBatchSink
from aioflow._core.connectors.kafka import unreachable
from aioflow._core.errors import ConnectorError, PipelineError, RefusedError, suggest_keywords, truncated_repr
from aioflow._core.retry import RetryPolicy

__all__ = ["KafkaSink"]

log = structlog.get_logger("aioflow.connectors.kafka")

Delivery = Literal["none", "at_least_once", "exactly_once"]

#: Producer options the sink sets itself: passing them in ``producer_options`` is an error.
_RESERVED_OPTIONS = frozenset(
    {"bootstrap_servers", "transactional_id", "value_serializer", "key_serializer", "enable_idempotence"}
)

#: The headers of a record without any (aiokafka's batch builder takes a list; it only reads it).
_NO_HEADERS: list[tuple[str, bytes]] = []

#: Most keys a sink subtask remembers the partition of, per topic (then it starts over).
_KEY_PARTITIONS = 100_000

#: Transactions stay open from their start until the checkpoint after them completes: the
#: transaction timeout must outlast a checkpoint interval. 15 min is the broker's default
#: maximum (``transaction.max.timeout.ms``).
TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000

_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "json": lambda value: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS),
    "str": lambda value: value.encode("utf-8"),
    "bytes": lambda value: value,
}


class KafkaSink(AsyncBatchSink):
    """Writes records to Kafka.

    ``topic`` is a topic name, or a function of the record returning one (a topic per
    record). ``value_format`` encodes each record: ``"json"`` (orjson), ``"str"`` (UTF-8),
    ``"bytes"``, or a callable returning bytes; a ``None`` record is sent as a tombstone.
    ``key`` returns a record's key (``str``, ``bytes`` or ``None``): records with the same
    key go to the same partition. ``headers`` returns a record's headers, ``(name,
    bytes)`` pairs. ``timestamp`` returns a record's Kafka timestamp, int milliseconds (a
    window's end, say: readers that take the Kafka timestamp as event time then see the
    result's event time); without it the producer stamps the time it sends. ``delivery``
    is ``"none"``, ``"at_least_once"`` or ``"exactly_once"`` (see the module
    documentation); ``"exactly_once"`` needs ``transactional_id_prefix``, unique to this
    sink among every job writing to the cluster, and checkpoints. ``producer_options`` go
    to ``AIOKafkaProducer`` as they are (TLS, SASL, compression, ``linger_ms``). The
    batching options are :class:`~aioflow.AsyncBatchSink`'s.
    """

    default_name = "kafka_sink"

    @suggest_keywords
    def __init__(
        self,
        topic: str | Callable[[Any], str],
        *,
        bootstrap_servers: str | list[str],
        value_format: str | Callable[[Any], bytes] = "json",
        key: Callable[[Any], str | bytes | None] | None = None,
        headers: Callable[[Any], list[tuple[str, bytes]]] | None = None,
        timestamp: Callable[[Any], int] | None = None,
        delivery: Delivery = "at_least_once",
        transactional_id_prefix: str | None = None,
        producer_options: dict[str, Any] | None = None,
        max_batch_size: int = 1000,
        max_linger: float | None = 0.05,
        max_in_flight: int = 4,
        max_buffered: int = 20_000,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not (callable(topic) or (isinstance(topic, str) and topic)):
            raise PipelineError(f"KafkaSink needs a topic name or a function returning one, got {topic!r}")
        if not bootstrap_servers:
            raise PipelineError("KafkaSink needs bootstrap_servers='host:port'")
        if callable(value_format):
            encode = value_format
        elif value_format in _ENCODERS:
            encode = _ENCODERS[value_format]
        else:
            raise PipelineError(
                f"value_format must be 'json', 'str', 'bytes' or a callable(value) -> bytes, got {value_format!r}"
            )
        for name, fn in (("key", key), ("headers", headers), ("timestamp", timestamp)):
            if fn is not None and not callable(fn):
                raise PipelineError(f"KafkaSink {name}= takes a function of the record, got {fn!r}")
        if delivery not in ("none", "at_least_once", "exactly_once"):
            raise PipelineError(f"delivery must be 'none', 'at_least_once' or 'exactly_once', got {delivery!r}")
        if delivery == "exactly_once" and not (isinstance(transactional_id_prefix, str) and transactional_id_prefix):
            raise PipelineError(
                "KafkaSink(delivery='exactly_once') needs transactional_id_prefix='...', "
                "unique to this sink among the jobs writing to the cluster"
            )
        options = dict(producer_options or {})
        reserved = sorted(_RESERVED_OPTIONS & set(options))
        if reserved:
            raise PipelineError(f"producer_options must not set {', '.join(reserved)}: KafkaSink sets them")
        super().__init__(
            max_batch_size=max_batch_size,
            max_linger=max_linger,
            max_in_flight=max_in_flight,
            max_buffered=max_buffered,
            retry=retry,
        )
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.value_format = value_format
        self.encode = encode
        self.key = key
        self.headers = headers
        self.timestamp = timestamp
        self.delivery = delivery
        self.transactional_id_prefix = transactional_id_prefix
        self.producer_options = options
        self.exactly_once = delivery == "exactly_once"
        self.name = f"kafka({topic if isinstance(topic, str) else 'by record'})"
        # per subtask, set in open()
        self._producer: AIOKafkaProducer | None = None
        self._transaction: int | None = None  # n of the open transaction (exactly once)
        self._next: int = 1  # n of the next transaction to start
        self._prepared: dict[str, AIOKafkaProducer] = {}  # pre-committed, by transactional id
        #: Concurrent sends hand their records to the producer one send after the other, in
        #: the order they started: a partition's records stay in order. Taking it is the first
        #: thing a send does, and the lock is fair. The send that finds no transaction open
        #: starts one while holding it (see send_batch).
        self._handing_over = asyncio.Lock()
        self._failed_deliveries = 0
        self._existing_topics: set[str] = set()  # checked to exist (in open, or at their first record)
        #: topic -> (its partitions, key -> partition), with the default partitioner
        self._keys_partitions: dict[str, tuple[frozenset[int], dict[bytes, int]]] = {}

    def __repr__(self) -> str:
        return f"<KafkaSink {self.name} delivery={self.delivery}>"

    # -- lifecycle ----------------------------------------------------------------------

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        options: dict[str, Any] = {"acks": "all" if self.delivery != "none" else 1} | self.producer_options
        if transactional_id is not None:
            options = {"transaction_timeout_ms": TRANSACTION_TIMEOUT_MS} | options
            options["transactional_id"] = transactional_id
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **options)

    async def _started(self, producer: AIOKafkaProducer) -> AIOKafkaProducer:
        """``producer``, started; stopped again if starting fails (no connections or tasks
        left behind), with brokers that cannot be reached named in a ``ConnectorError``
        (retried: they may come back), and brokers that refuse a transactional producer
        in a ``RefusedError`` (not retried: they have no transactions)."""
        try:
            await producer.start()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _stop_quietly(producer, self.name)
            if isinstance(exc, KafkaConnectionError):
                raise unreachable(self.name, self.bootstrap_servers, exc) from exc
            if (
                isinstance(exc, KafkaError)
                and producer._txn_manager is not None
                and producer._txn_manager.transactional_id is not None
            ):
                raise RefusedError(
                    f"{self.name}: the brokers at {self.bootstrap_servers} refused a transactional "
                    f"producer ({exc!r}): delivery='exactly_once' needs a broker with transactions "
                    "(Apache Kafka has them; Tansu has none; to try it locally, see noida-db in "
                    "docs/kafka-quickstart.md), and a restart would be refused again. Point the sink at "
                    "such brokers, or use delivery='at_least_once'"
                ) from exc
            raise
        return producer

    async def _check_topic(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Fail, naming it, if ``topic`` does not exist. The metadata of every topic is
        asked for, not of this one: a broker creates a topic asked for by name when it
        does not exist (``auto.create.topics.enable``), and a typo in a sink's topic would
        send its results to a new topic nobody reads."""
        if topic in self._existing_topics:
            return
        cluster = await producer.client.fetch_all_metadata()
        if topic not in cluster.topics():
            raise ConnectorError(
                self.name,
                f"topic {topic!r} does not exist on {self.bootstrap_servers}; "
                "create it first (the sink does not create topics)",
            )
        self._existing_topics.add(topic)

    async def open(self) -> None:
        self._prepared = {}
        self._handing_over = asyncio.Lock()
        self._transaction = None
        self._next = 1
        self._keys_partitions = {}
        self._existing_topics = set()
        producer = await self._started(self._new_producer())  # not transactional: sends, or only checks
        try:
            if isinstance(self.topic, str):
                await self._check_topic(producer, self.topic)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _stop_quietly(producer, self.name)
            raise
        if not self.exactly_once:
            self._producer = producer
            return
        await _stop_quietly(producer, self.name)  # exactly once: a producer per transaction
        if not self.resuming:  # a fresh start: abort what an earlier run left open (a restore
            await self._abort_lingering(self.subtask_index, self._next)  # does it in recover())

    async def close(self) -> None:
        """Stop the producers. An open transaction is left to be aborted on recovery (or by
        the broker's timeout); pre-committed ones stay for their commit after a restart."""
        producers = [p for p in (self._producer, *self._prepared.values()) if p is not None]
        self._producer = None
        self._prepared = {}
        for producer in producers:
            await _stop_quietly(producer, self.name)

    # -- sending ------------------------------------------------------------------------

    async def send_batch(self, records: list[Any]) -> None:
        """Send ``records``: encoded into one aiokafka record batch per partition (more
        when one fills up), each handed to the producer as a whole, so that a record costs
        no coroutine, future or callback of its own. Partitions and checks are the ones
        ``AIOKafkaProducer.send`` would apply to each record: the producer's partitioner
        (the same key, the same partition), the size limit (``max_request_size``), a key
        or a value required. Concurrent sends hand their records over in the order they
        started, so a key's records keep the stream's order, but for retries (at least once).
        With ``delivery="at_least_once"`` or ``"exactly_once"``, returns once the broker
        acknowledged every batch.

        Exactly once, the first send after a checkpoint starts the next transaction, inside
        the hand-over lock: the sends behind it wait in the order they started. (Starting it
        under a lock of its own let a send that started in the loop turn the transaction's
        start completed find it open and hand its records over before the sends still
        waiting for it: a key's records were committed out of order.)"""
        async with self._handing_over:  # the first await of a send: sends queue in the order they started
            if self.exactly_once and self._transaction is None:
                await self._begin()
            producer = self._producer
            assert producer is not None
            sent = await self._hand_over_records(producer, records)
        if self.delivery == "none":
            for future, count in sent:
                future.add_done_callback(functools.partial(self._delivered, count))
            return
        await asyncio.gather(*(future for future, _ in sent))

    async def _hand_over_records(
        self, producer: AIOKafkaProducer, records: list[Any]
    ) -> list[tuple[asyncio.Future[Any], int]]:
        """Encode ``records`` into record batches and hand them to ``producer``; each
        batch's delivery future and its number of records."""
        topic, encode, key_of, headers_of, stamp_of = self.topic, self.encode, self.key, self.headers, self.timestamp
        # aiokafka's own per-record steps of send(), without its per-record coroutine and future
        check_size, partition_of = producer._serialize, producer._partition
        known: dict[str, dict[bytes, int] | None] = {}  # topics whose metadata the producer has -> keys' partitions
        filling: dict[tuple[str, int], Any] = {}  # (topic, partition) -> the batch being filled
        sent: list[tuple[asyncio.Future[Any], int]] = []  # a handed-over batch's delivery, its records
        for record in records:
            key = key_of(record) if key_of is not None else None
            if key is not None and not isinstance(key, bytes):
                if not isinstance(key, str):
                    raise _record_error(
                        f"key function returned {key!r} ({type(key).__name__}); a key is str, bytes or None", record
                    )
                key = key.encode("utf-8")
            value = None if record is None else encode(record)
            if value is not None and not isinstance(value, bytes):
                raise _record_error(f"value_format returned {type(value).__name__}, not bytes", record)
            if value is None and key is None:
                raise _record_error("a None record (a tombstone) needs a key", record)
            headers = (headers_of(record) if headers_of is not None else None) or _NO_HEADERS
            stamp = None
            if stamp_of is not None:
                stamp = stamp_of(record)
                if stamp.__class__ is not int:
                    raise _record_error(
                        f"timestamp function returned {stamp!r} ({type(stamp).__name__}); "
                        "a Kafka timestamp is int milliseconds",
                        record,
                    )
            name = topic if isinstance(topic, str) else topic(record)
            if name not in known:
                await self._check_topic(producer, name)
                await producer.partitions_for(name)  # waits for the topic's metadata, as send() does
                known[name] = self._key_partitions(producer, name)
            check_size(key, value, headers)  # MessageSizeTooLargeError, as send() raises it
            remembered = known[name]
            if remembered is None or key is None:
                partition = partition_of(name, None, key, value, key, value)
            else:
                partition = remembered.get(key)
                if partition is None:
                    partition = remembered[key] = partition_of(name, None, key, value, key, value)
            batch = filling.get((name, partition))
            if batch is None:
                batch = filling[name, partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=stamp, headers=headers) is None:  # full: hand it over
                sent.append((await _hand_over(producer, batch, name, partition), batch.record_count()))
                batch = filling[name, partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=stamp, headers=headers)  # the first always fits
        for (name, partition), batch in filling.items():
            sent.append((await _hand_over(producer, batch, name, partition), batch.record_count()))
        return sent

    def _key_partitions(self, producer: AIOKafkaProducer, topic: str) -> dict[bytes, int] | None:
        """The partitions of ``topic`` already computed for keys, to be reused: aiokafka's
        default partitioner hashes a key (murmur2, in pure Python, a few µs) to the same
        partition for as long as the topic has the same partitions. Forgotten when they
        change, and past ``_KEY_PARTITIONS`` keys; ``None`` with another partitioner (it
        may not give a key the same partition every time)."""
        if type(producer._partitioner) is not DefaultPartitioner:
            return None
        partitions = frozenset(producer._metadata.partitions_for_topic(topic) or ())
        known = self._keys_partitions.get(topic)
        if known is None or known[0] != partitions or len(known[1]) >= _KEY_PARTITIONS:
            known = self._keys_partitions[topic] = (partitions, {})
        return known[1]

    def _delivered(self, records: int, future: asyncio.Future[Any]) -> None:
        """A batch of ``records`` sent with ``delivery="none"`` is done: count and log a
        failure (a batch cancelled when the producer stopped too)."""
        if future.cancelled() or future.exception() is not None:
            before = self._failed_deliveries
            self._failed_deliveries += records
            if before == 0 or before // 1000 != self._failed_deliveries // 1000:
                error = "cancelled" if future.cancelled() else repr(future.exception())
                log.warning(
                    "kafka delivery failed (delivery='none': not retried)",
                    sink=self.name,
                    error=error,
                    failed_total=self._failed_deliveries,
                )

    def is_retryable(self, error: Exception) -> bool:
        """Broker errors Kafka marks retriable, and connection errors; never inside a
        transaction (the job fails and resumes from the last checkpoint instead)."""
        if self.exactly_once:
            return False
        if isinstance(error, KafkaError):
            return bool(error.retriable)
        return isinstance(error, (OSError, TimeoutError))

    # -- transactions (exactly once) ----------------------------------------------------

    def _transactional_id(self, subtask: int, n: int) -> str:
        return f"{self.transactional_id_prefix}-{subtask}-{n}"

    async def _begin(self) -> None:
        """Start the next transaction; the first time, first abort what a crash left open."""
        n = self._next
        # starting fences (aborts) an open transaction of a crashed run with this id
        producer = await self._started(self._new_producer(self._transactional_id(self.subtask_index, n)))
        await producer.begin_transaction()
        self._producer, self._transaction, self._next = producer, n, n + 1

    async def pre_commit(self, checkpoint_id: int) -> Any:
        """Everything sent is acknowledged (flushed by the base): keep the transaction open
        for the commit, and name it in the handle. Without records since the last
        checkpoint there is no transaction: the handle only says where numbering is."""
        if self._transaction is None:
            return {"transactional_id": None, "subtask": self.subtask_index, "n": self._next - 1}
        producer = self._producer
        assert producer is not None
        manager = producer._txn_manager  # aiokafka has no public accessor for these
        transactional_id = self._transactional_id(self.subtask_index, self._transaction)
        handle = {
            "transactional_id": transactional_id,
            "producer_id": manager.producer_id,
            "epoch": manager.producer_epoch,
            "subtask": self.subtask_index,
            "n": self._transaction,
        }
        self._prepared[transactional_id] = producer
        self._producer, self._transaction = None, None
        return handle

    async def commit(self, handle: Any) -> None:
        """Commit a pre-committed transaction: with its own producer when this writer made
        it, else by resuming its producer id and epoch (after a restart). A transaction
        that was committed already (a commit repeated on recovery) is left as it is."""
        if handle["transactional_id"] is None:
            return
        producer = self._prepared.pop(handle["transactional_id"], None)
        if producer is not None:
            try:
                await producer.commit_transaction()
            finally:
                await producer.stop()
            return
        producer = self._new_producer(handle["transactional_id"])
        producer._txn_manager.set_pid_and_epoch(handle["producer_id"], handle["epoch"])
        await self._started(producer)
        try:
            await producer.begin_transaction()
            # The resumed transaction has partitions on the broker; aiokafka commits an empty
            # one locally, so mark one to make it send the commit.
            producer._txn_manager._txn_partitions.add(TopicPartition("", -1))
            await producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch, InvalidTxnState) as exc:
            log.warning(
                "a restored transaction was already completed or fenced",
                sink=self.name,
                transactional_id=handle["transactional_id"],
                error=repr(exc),
            )
        finally:
            await producer.stop()

    async def abort(self, handle: Any) -> None:
        """Abort a pre-committed transaction: a new producer with its id fences it."""
        if handle["transactional_id"] is None:
            return
        producer = self._prepared.pop(handle["transactional_id"], None)
        if producer is not None:
            await producer.stop()
        await self._fence(handle["transactional_id"])

    async def recover(self, handles: list[Any]) -> None:
        """Continue numbering after this subtask's last pre-committed transaction, abort
        what a crash left open after it; the first subtask also aborts those of subtasks
        the job no longer has (it was rescaled down)."""
        last: dict[int, int] = {}
        for handle in handles:
            last[handle["subtask"]] = max(last.get(handle["subtask"], 0), handle["n"])
        self._next = last.get(self.subtask_index, 0) + 1
        await self._abort_lingering(self.subtask_index, self._next)
        if self.subtask_index == 0:
            for subtask, n in sorted(last.items()):
                if subtask >= self.parallelism:
                    await self._abort_lingering(subtask, n + 1)

    async def _abort_lingering(self, subtask: int, first: int) -> None:
        """Fence the transactional ids ``first, first+1, …`` of ``subtask`` until one was
        never used: before anything is written, so that no transaction a crash left open
        holds ``read_committed`` consumers back, even if this subtask gets no records."""
        n, aborted = first, 0
        while await self._fence(self._transactional_id(subtask, n)) > 0:
            n, aborted = n + 1, aborted + 1
        if aborted:
            log.info("aborted transactions a crash left open", sink=self.name, subtask=subtask, count=aborted)

    async def _fence(self, transactional_id: str) -> int:
        """Initialise a producer with ``transactional_id`` (which aborts its open
        transaction, if any) and return the epoch it got: 0 for an id never used."""
        producer = await self._started(self._new_producer(transactional_id))
        try:
            epoch: int = producer._txn_manager.producer_epoch
            return epoch
        finally:
            await producer.stop()


async def _stop_quietly(producer: AIOKafkaProducer, sink: str) -> None:
    """Stop ``producer`` when giving it up: its connection may already be gone."""
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("stopping a producer failed", sink=sink, error=repr(exc))


async def _hand_over(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
    """``producer.send_batch``: waits while the partition has a batch not taken by the
    sender yet, up to ``request_timeout_ms`` as ``send`` does. aiokafka's ``send_batch``
    deducts the time since its start after *every* wait, so that a few short waits in a row
    (other batches of the same partition handed over meanwhile) end in ``KafkaTimeoutError``
    long before the timeout: it is called again (the batch was not taken) until the timeout
    has really passed."""
    deadline = time.monotonic() + producer._request_timeout_ms / 1000
    while True:
        try:
            delivery: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
            return delivery
        except KafkaTimeoutError:
            if time.monotonic() >= deadline:
                raise


def _record_error(message: str, record: Any) -> TypeError:
    """A wrong type from a user function, naming the record (its repr, shortened)."""
    return TypeError(f"{message}; record: {truncated_repr(record)}")
