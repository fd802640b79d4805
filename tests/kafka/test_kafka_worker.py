"""Kafka jobs run as real ``aioflow run`` workers: SIGKILLed and restarted (at least once,
and exactly once through transactions), two workers in one group, a graceful stop that
commits to the group, and the refusal of a stateful job beside another worker."""

from __future__ import annotations

import collections
import random
import signal
import time
from pathlib import Path
from typing import Any

import orjson
from kafka.topics import committed_offsets, create_topic, group_members, produce, read, sync, unique_name
from recovery.jobs import Worker

JOB = '''
import os
import time
import aioflow as af

app = af.App("kafka-worker", state_dir=os.environ["STATE"], checkpoint_interval=0.2)


class Count(af.KeyedProcessFunction):
    """The running count of each user's events: any replay or loss shows in the output."""

    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, e, ctx):
        self.n.update(self.n.value() + 1)
        yield {"user": e["user"], "i": e["i"], "n": self.n.value()}


def pace(e):
    time.sleep(float(os.environ.get("PACE", "0")))  # slower, so that a kill finds it working
    return e


events = app.source(af.kafka.KafkaSource(os.environ["IN"], bootstrap_servers=os.environ["BROKER"],
                                         group_id=os.environ["GROUP"]))
if os.environ.get("STATELESS"):
    out = events.map(pace).map(lambda e: {**e, "worker": os.environ["WORKER"]})
else:
    out = events.map(pace).key_by(lambda e: e["user"]).process(Count())
out.sink(af.kafka.KafkaSink(os.environ["OUT"], bootstrap_servers=os.environ["BROKER"], key=lambda r: r["user"],
                            delivery=os.environ["DELIVERY"], transactional_id_prefix=os.environ.get("TXN")))
'''

USERS = 20


def _setup(folder: Path, broker: str, delivery: str, partitions: int = 4, **env: str) -> dict[str, str]:
    topics = {key: sync(create_topic, broker, partitions, unique_name(key.lower())) for key in ("IN", "OUT")}
    (folder / "job.py").write_text(JOB)
    return {
        **topics,
        "BROKER": broker,
        "GROUP": unique_name("g"),
        "STATE": str(folder / "state"),
        "DELIVERY": delivery,
        "TXN": unique_name("txn"),
        **env,
    }


def _produce(broker: str, topic: str, start: int, count: int) -> None:
    """Events ``start .. start+count``, keyed by user: a user's events stay in order in one partition."""
    users = {i: f"u{i % USERS}" for i in range(start, start + count)}
    records = [{"value": orjson.dumps({"user": user, "i": i}), "key": user.encode()} for i, user in users.items()]
    sync(produce, broker, topic, records, batched=True, linger_ms=20)


def _expected(count: int) -> collections.Counter[tuple[str, int, int]]:
    """The stateful job's results for events ``0 .. count``: (user, i, n)."""
    return collections.Counter((f"u{i % USERS}", i, i // USERS + 1) for i in range(count))


def _results(
    broker: str, topic: str, count: int, *, committed: bool = False, seconds: float = 90
) -> list[dict[str, Any]]:
    """Everything in ``topic`` once ``count`` results are there (or ``seconds`` passed), and
    whatever else is there: duplicates must show."""
    found = sync(read, broker, topic, count, committed=committed, seconds=seconds, rest=True)
    return [orjson.loads(m.value) for m in found]


def _as_counter(results: list[dict[str, Any]]) -> collections.Counter[tuple[str, int, int]]:
    return collections.Counter((r["user"], r["i"], r["n"]) for r in results)


def _per_user(results: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Each user's (i, n) in the order read: a user's results are in one partition, so this
    is the order they were committed in."""
    found: dict[str, list[tuple[int, int]]] = {}
    for r in results:
        found.setdefault(r["user"], []).append((r["i"], r["n"]))
    return found


def _kill_and_restart(folder: Path, env: dict[str, str], kills: int) -> Worker:
    """SIGKILL the worker ``kills`` times at random moments past a checkpoint; return a
    last, running one."""
    moments = random.Random()
    for _ in range(kills):
        worker = Worker(folder, env)
        worker.wait_for("checkpoint complete", moments.randint(1, 3))  # a bounded wait on its log
        time.sleep(moments.uniform(0, 0.2))  # then somewhere between two checkpoints
        worker.signal(signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL, worker.text()
    return Worker(folder, env)


def _stop(worker: Worker) -> None:
    """A graceful stop: SIGTERM once the worker's job started (its stop signal handlers are
    installed by then; a worker restarted last may find every result written already, and
    a SIGTERM while it still starts up would kill it)."""
    assert worker.wait_for("job started"), worker.text()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.text()


def test_exactly_once_through_sigkills(transactional_kafka_broker: str, tmp_path: Path) -> None:
    """A read_committed consumer sees each result exactly once, whatever the kills, and
    each user's results in order."""
    broker, events = transactional_kafka_broker, 3_000
    env = _setup(tmp_path, broker, "exactly_once", PACE="0.001")
    _produce(broker, env["IN"], 0, events)
    worker = _kill_and_restart(tmp_path, env, kills=2)
    try:
        results = _results(broker, env["OUT"], events, committed=True)
    finally:
        _stop(worker)
    assert _as_counter(results) == _expected(events)
    # and in the order of an undisturbed run, key by key
    assert _per_user(results) == _per_user([{"user": u, "i": i, "n": n} for u, i, n in sorted(_expected(events))])


def test_at_least_once_through_sigkills(kafka_broker: str, tmp_path: Path) -> None:
    """Every result is there after the restarts; some may come twice, none wrong."""
    broker, events = kafka_broker, 3_000
    env = _setup(tmp_path, broker, "at_least_once", PACE="0.001")
    _produce(broker, env["IN"], 0, events)
    worker = _kill_and_restart(tmp_path, env, kills=2)
    try:
        found = _as_counter(_results(broker, env["OUT"], events))
        while set(found) != set(_expected(events)):  # replays come after the first copies
            found = _as_counter(_results(broker, env["OUT"], len(found) + 1, seconds=30))
    finally:
        _stop(worker)
    assert set(found) == set(_expected(events))


def test_a_graceful_stop_commits_to_the_group_and_a_restart_neither_loses_nor_duplicates(
    kafka_broker: str, tmp_path: Path
) -> None:
    broker = kafka_broker
    env = _setup(tmp_path, broker, "at_least_once")
    _produce(broker, env["IN"], 0, 400)
    worker = Worker(tmp_path, env)
    assert len(_results(broker, env["OUT"], 400)) == 400
    _stop(worker)
    assert "savepoint" in worker.text()
    # it left: its partitions need not wait for a session timeout
    assert sync(group_members, broker, env["GROUP"]) == []
    committed = sync(committed_offsets, broker, env["GROUP"], env["IN"], 4)
    assert sum(offset or 0 for offset in committed.values()) == 400  # lag tools see it all read

    _produce(broker, env["IN"], 400, 200)
    worker = Worker(tmp_path, env)
    try:
        results = _results(broker, env["OUT"], 600)
    finally:
        _stop(worker)
    assert _as_counter(results) == _expected(600)


def test_two_workers_split_the_partitions_and_one_takes_over_when_the_other_dies(
    kafka_broker: str, tmp_path: Path
) -> None:
    broker = kafka_broker
    env = _setup(tmp_path, broker, "at_least_once", STATELESS="1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Worker(tmp_path, {**env, "WORKER": "a", "STATE": str(tmp_path / "a" / "state")}, log=tmp_path / "a.log")
    b = Worker(tmp_path, {**env, "WORKER": "b", "STATE": str(tmp_path / "b" / "state")}, log=tmp_path / "b.log")
    try:
        a.wait_for("checkpoint complete")
        b.wait_for("checkpoint complete")
        _produce(broker, env["IN"], 0, 400)
        first = _results(broker, env["OUT"], 400)
        assert {r["worker"] for r in first} == {"a", "b"}  # both got partitions
        a.signal(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL
        _produce(broker, env["IN"], 400, 400)
        found = {r["i"] for r in first}
        while found != set(range(800)):  # b takes a's partitions over, from their committed offsets
            found |= {r["i"] for r in _results(broker, env["OUT"], len(found) + 1, seconds=60)}
    finally:
        _stop(b)
    assert found == set(range(800))


def test_a_stateful_job_refuses_to_start_beside_another_worker(kafka_broker: str, tmp_path: Path) -> None:
    broker = kafka_broker
    env = _setup(tmp_path, broker, "at_least_once")
    first = Worker(tmp_path, env, log=tmp_path / "first.log")
    try:
        first.wait_for("checkpoint complete")
        second = Worker(tmp_path, {**env, "STATE": str(tmp_path / "second")}, log=tmp_path / "second.log")
        assert second.wait() == 1
        assert "partitioned_state=True" in second.text() and "another worker" in second.text()
    finally:
        _stop(first)
