"""What a checkpoint keeps, and what a restore refuses: broadcast state (also across a
change of parallelism), a corrupt checkpoint or state directory, state of an operator the
job no longer has, a state declared with another serializer.

Jobs run in-process on bounded sources with a long checkpoint interval, so the only
checkpoint is the final one a finished job takes: nothing depends on timing.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from recovery.gated import checkpoint_manifests

import aioflow as af
from aioflow._core.errors import CorruptStateError, StateError
from aioflow._core.operators.coprocess import BroadcastProcessOperator
from aioflow._core.runtime.events import Batch
from aioflow._core.runtime.operator import Output
from aioflow._core.runtime.task import SubtaskEnvironment
from aioflow._core.state.lmdb import LmdbStore, StoredValueDamaged
from aioflow._core.state.memory import MemoryBackend

NO_PERIODIC_CHECKPOINT = 3600.0  # seconds: the final checkpoint of a finished job is the only one


async def _run(app: af.App, **options: Any) -> None:
    with anyio.fail_after(60):
        await app.run_async(**options)


def _last_record(state_dir: Path) -> dict[str, Any]:
    """The manifest of the newest checkpoint."""
    return checkpoint_manifests(state_dir)[-1]


# -- broadcast state -------------------------------------------------------------------------


class Alerts(af.KeyedBroadcastProcessFunction):
    """Alerts for orders above a rule's limit. The handle is taken in ``open``: a restore
    must fill that very handle, not a new one."""

    def open(self, ctx):
        self.rules = ctx.broadcast_state("rules")

    def process_element(self, order, ctx):
        for name, limit in sorted(self.rules.items()):
            if order["amount"] > limit:
                yield (order["user"], order["amount"], name, ctx.subtask_index)

    def process_broadcast_element(self, rule, ctx):
        ctx.broadcast_state("rules").put(rule["name"], rule["limit"])
        yield from ()


RULES = [{"name": "big", "limit": 100}, {"name": "huge", "limit": 1000}]


def _alerts_app(
    state_dir: Path, rules: list[Any], orders: list[Any], parallelism: int
) -> tuple[af.App, af.CollectSink]:
    app = af.App(
        "alerts", state_dir=str(state_dir), checkpoint_interval=NO_PERIODIC_CHECKPOINT, parallelism=parallelism
    )
    sink = af.CollectSink()
    rule_stream = app.source(af.from_iterable(rules), name="rules")
    orders_stream = app.source(af.from_iterable(orders), name="orders")
    orders_stream.key_by(lambda o: o["user"]).connect(rule_stream.broadcast("rules")).process(
        Alerts, name="alerts"
    ).sink(sink, name="out")
    return app, sink


def _expected(orders: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return sorted(
        (o["user"], o["amount"], rule["name"]) for o in orders for rule in RULES if o["amount"] > rule["limit"]
    )


async def test_broadcast_state_survives_a_restore(tmp_path: Path) -> None:
    # Run 1: only rules. The final checkpoint holds them.
    app, sink = _alerts_app(tmp_path, RULES, [], parallelism=1)
    await _run(app)
    assert sink.results == []
    (state,) = _last_record(tmp_path)["operators"]["alerts"]
    assert state["broadcast"] == {"rules": [["big", 100], ["huge", 1000]]}

    # Run 2: no rules come; the restored "orders" source (at position 0) reads the new orders.
    orders = [{"user": "ann", "amount": 50}, {"user": "bob", "amount": 500}, {"user": "cy", "amount": 5000}]
    app, sink = _alerts_app(tmp_path, [], orders, parallelism=1)
    await _run(app)
    assert (
        sorted(alert[:3] for alert in sink.results)
        == _expected(orders)
        == [
            ("bob", 500, "big"),
            ("cy", 5000, "big"),
            ("cy", 5000, "huge"),
        ]
    )


async def test_broadcast_state_survives_a_parallelism_change(tmp_path: Path) -> None:
    app, _ = _alerts_app(tmp_path, RULES, [], parallelism=2)
    await _run(app)
    assert len(_last_record(tmp_path)["operators"]["alerts"]) == 2

    orders = [{"user": f"u{i}", "amount": 10 ** (i % 4 + 1)} for i in range(40)]
    app, sink = _alerts_app(tmp_path, [], orders, parallelism=3)
    assert app.plan().tasks[-1].parallelism == 3
    await _run(app)
    assert sorted(alert[:3] for alert in sink.results) == _expected(orders)
    assert {alert[3] for alert in sink.results} == {0, 1, 2}  # every new subtask had the rules
    assert len(_last_record(tmp_path)["operators"]["alerts"]) == 3


class Table(af.BroadcastProcessFunction):
    """Not keyed: broadcast entries ``(state, key, value)`` fill the states; queries
    ``(state, key)`` look a key up."""

    def process_element(self, query, ctx):
        yield ctx.broadcast_state(query[0]).get(query[1], "missing")

    def process_broadcast_element(self, entry, ctx):
        ctx.broadcast_state(entry[0]).put(entry[1], entry[2])
        yield from ()


def _table_app(
    state_dir: Path, entries: list[Any], queries: list[Any], names: tuple[str, ...] = ("table",)
) -> tuple[af.App, af.CollectSink]:
    app = af.App("table", state_dir=str(state_dir), checkpoint_interval=NO_PERIODIC_CHECKPOINT)
    sink = af.CollectSink()
    app.source(af.from_iterable(queries), name="queries").connect(
        app.source(af.from_iterable(entries), name="entries").broadcast(*names)
    ).process(Table, name="table").sink(sink, name="out")
    return app, sink


async def test_restored_broadcast_keys_are_equal_and_values_are_json(tmp_path: Path) -> None:
    app, _ = _table_app(tmp_path, [("table", ("eu", 1), {"limit": 100, "tags": ("a", "b")})], [])
    await _run(app)
    app, sink = _table_app(tmp_path, [], [("table", ("eu", 1)), ("table", ("us", 1))])
    await _run(app)
    # the tuple key is found again; a tuple in a value comes back as a list, as with keyed state
    assert sink.results == [{"limit": 100, "tags": ["a", "b"]}, "missing"]


async def test_broadcast_state_no_longer_declared_is_kept_for_a_later_job(tmp_path: Path) -> None:
    app, _ = _table_app(tmp_path, [("table", "k", 1), ("old", "k", 2)], [], names=("table", "old"))
    await _run(app)
    app, _ = _table_app(tmp_path, [], [], names=("table",))  # "old" is not declared: not restored ...
    await _run(app)
    (state,) = _last_record(tmp_path)["operators"]["table"]
    assert state["broadcast"] == {"table": [["k", 1]], "old": [["k", 2]]}  # ... but kept, as Flink does
    app, sink = _table_app(tmp_path, [], [("old", "k"), ("table", "k")], names=("table", "old"))
    await _run(app)
    assert sink.results == [2, 1]


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        (("rules", {1, 2}), "a value of type set under key 'rules'"),
        (("rules", {1: "int keys"}), "a value of type dict under key 'rules'"),
        ((frozenset({1}), "x"), "a key of type frozenset"),
    ],
)
async def test_a_broadcast_entry_json_cannot_carry_is_refused_by_name(tmp_path: Path, entry: Any, what: str) -> None:
    class Keep(af.BroadcastProcessFunction):
        def process_element(self, value, ctx):
            yield from ()

        def process_broadcast_element(self, value, ctx):
            ctx.broadcast_state("table").put(*value)
            yield from ()

    app = af.App("bad", state_dir=str(tmp_path), checkpoint_interval=NO_PERIODIC_CHECKPOINT)
    app.source(af.from_iterable([]), name="data").connect(
        app.source(af.from_iterable([entry]), name="entries").broadcast("table")
    ).process(Keep, name="keep").sink(af.CollectSink())
    with pytest.raises(StateError) as info:
        await _run(app)
    message = str(info.value)
    assert "operator 'keep': broadcast state 'table' cannot serialise " + what in message
    assert "JSON" in message


class _Capture(Output):
    def __init__(self) -> None:
        self.values: list[Any] = []

    async def process(self, batch: Batch) -> None:
        self.values.extend(batch.values)


async def _opened(index: int, parallelism: int) -> BroadcastProcessOperator:
    operator = BroadcastProcessOperator("table", Table(), None, ("table",))
    operator.out = _Capture()
    await operator.open(SubtaskEnvironment("t", index, parallelism, 128, 1024, MemoryBackend()))
    return operator


async def test_a_snapshot_is_a_copy_and_each_new_subtask_takes_one_old_subtasks_state() -> None:
    operator = await _opened(0, 1)
    await operator.process2(Batch([("table", "a", [1])]))
    snapshot = await operator.snapshot_state(1)
    await operator.process2(Batch([("table", "b", 2)]))  # after the barrier: not in checkpoint 1
    assert operator.ctx is not None
    operator.ctx.broadcast_state("table").get("a").append(99)  # nor is this
    assert snapshot["broadcast"] == {"table": [["a", [1]]]}

    # subtasks hold the same broadcast state; were they to differ, new subtask i takes old i % n
    old = [
        {"watermark": 5, "broadcast": {"table": [["from", 0]]}},
        {"watermark": 7, "broadcast": {"table": [["from", 1]]}},
    ]
    taken = []
    for index in range(3):
        restored = await _opened(index, 3)
        await restored.restore_state(old)
        assert restored.ctx is not None
        taken.append(restored.ctx.broadcast_state("table").get("from"))
        assert restored.ctx.timer_service.watermark == 5
    assert taken == [0, 1, 0]


# -- corrupt checkpoints and state directories ---------------------------------------------


class Count(af.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, value, ctx):
        self.n.update(self.n.value() + 1)
        yield (ctx.key, self.n.value())


def _count_app(state_dir: Path, values: list[Any]) -> tuple[af.App, af.CollectSink]:
    app = af.App("count", state_dir=str(state_dir), checkpoint_interval=NO_PERIODIC_CHECKPOINT)
    sink = af.CollectSink()
    app.source(af.from_iterable(values), name="src").key_by(lambda v: v).process(Count, name="a").sink(sink, name="out")
    return app, sink


def _corrupt_manifest(data: bytes, how: str) -> bytes:
    if how == "garbled":  # bytes flipped in the middle
        middle = len(data) // 2
        return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]
    assert b'"checkpoint_id": 1' in data  # valid JSON still, but not what was checksummed
    return data.replace(b'"checkpoint_id": 1', b'"checkpoint_id": 7')


@pytest.mark.parametrize("how", ["garbled", "tampered"])
async def test_a_damaged_manifest_in_checkpoint_storage_is_refused(tmp_path: Path, how: str) -> None:
    app, _ = _count_app(tmp_path, ["x", "y"])
    await _run(app)
    [manifest] = (tmp_path / "checkpoints").glob("*/chk-*/_manifest")
    manifest.write_bytes(_corrupt_manifest(manifest.read_bytes(), how))

    app, sink = _count_app(tmp_path, ["x", "y", "x"])
    with pytest.raises(CorruptStateError, match="manifest is damaged") as info:
        await _run(app)
    assert str(manifest.parent) in str(info.value)
    assert sink.results == []


async def test_a_state_directory_of_garbage_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(random.Random(1).randbytes(64 * 1024))
    app, sink = _count_app(tmp_path, ["x"])
    with pytest.raises(CorruptStateError, match="cannot open the LMDB environment") as info:
        await _run(app)
    assert f"state directory {tmp_path}:" in str(info.value)
    assert sink.results == []


def _everything(store: LmdbStore) -> list[tuple[bytes, bytes | None]]:
    return list(store.scan(b"", b"\xff" * 8))


async def test_a_damaged_page_is_refused_or_harmless_never_misread(tmp_path: Path) -> None:
    """LMDB has no checksums of its own: a damaged page is found (or not) when it is read.
    Whatever the page, opening and reading the working copy either gives exactly what was
    written (the page was not in use) or is refused naming the directory: never a bare
    lmdb exception, never a wrong value."""
    base = tmp_path / "base"
    app, _ = _count_app(base, [f"k{i}" for i in range(200)])
    await _run(app)
    store = LmdbStore(base)
    try:
        written = _everything(store)
    finally:
        store.close()
    page_size = 4096
    pages = (base / "data.mdb").stat().st_size // page_size
    refused = 0
    for page in range(2, pages):  # pages 0 and 1 are LMDB's meta pages: see the garbage test
        damaged = tmp_path / f"page-{page}"
        shutil.copytree(base, damaged)
        with (damaged / "data.mdb").open("r+b") as file:
            file.seek(page * page_size)
            file.write(random.Random(page).randbytes(page_size))
        try:
            store = LmdbStore(damaged)
            try:
                read = _everything(store)
            finally:
                store.close()
        except CorruptStateError as exc:
            assert f"state directory {damaged}" in str(exc)
            refused += 1
        except StoredValueDamaged:
            refused += 1  # a table that read it says which operator, state and key
        else:
            assert read == written, f"page {page}: damage read back as state"
    assert refused > 0


# -- what a restore refuses -------------------------------------------------------------------


class Total(af.KeyedProcessFunction):
    def open(self, ctx):
        self.total = ctx.value_state("total", 0)

    def process_element(self, value, ctx):
        self.total.update(self.total.value() + value[1])
        yield value


def _two_operator_app(state_dir: Path, values: list[Any], with_b: bool) -> tuple[af.App, af.CollectSink]:
    app = af.App("two", state_dir=str(state_dir), checkpoint_interval=NO_PERIODIC_CHECKPOINT)
    sink = af.CollectSink()
    counted = app.source(af.from_iterable(values), name="src").key_by(lambda v: v).process(Count, name="a")
    if with_b:
        counted = counted.key_by(lambda v: v[0]).process(Total, name="b")
    counted.sink(sink, name="out")
    return app, sink


async def test_state_of_a_removed_operator_is_refused_unless_allowed(tmp_path: Path) -> None:
    app, _ = _two_operator_app(tmp_path, ["x", "y", "x"], with_b=True)
    await _run(app)

    app, sink = _two_operator_app(tmp_path, ["x", "y", "x", "x"], with_b=False)
    with pytest.raises(StateError) as info:
        await _run(app)
    message = str(info.value)
    assert "'b'" in message and "'a'" not in message
    assert "--allow-non-restored-state" in message and str(tmp_path) in message
    assert sink.results == []

    app, sink = _two_operator_app(tmp_path, ["x", "y", "x", "x"], with_b=False)
    await _run(app, allow_non_restored_state=True)
    assert sink.results == [("x", 3)]  # "a" restored its counts; the source went on where it was

    # The dropped state is gone for good: the next restart needs no flag.
    app, sink = _two_operator_app(tmp_path, ["x", "y", "x", "x", "y"], with_b=False)
    await _run(app)
    assert sink.results == [("y", 2)]
    store = LmdbStore(tmp_path)
    try:
        assert store.operators() == {"a"}
    finally:
        store.close()


async def test_a_changed_max_parallelism_is_refused(tmp_path: Path) -> None:
    app, _ = _two_operator_app(tmp_path, ["x", "y"], with_b=False)
    await _run(app)
    app = af.App("two", state_dir=str(tmp_path), checkpoint_interval=NO_PERIODIC_CHECKPOINT, max_parallelism=64)
    app.source(af.from_iterable(["x"]), name="src").key_by(lambda v: v).process(Count, name="a").sink(
        af.CollectSink(), name="out"
    )
    with pytest.raises(StateError, match="taken with max_parallelism 128 and the app now has 64"):
        await _run(app)


def test_one_state_directory_serves_one_worker(tmp_path: Path) -> None:
    first = LmdbStore(tmp_path)
    try:
        with pytest.raises(StateError, match=rf"state directory {tmp_path} is in use by process \d+"):
            LmdbStore(tmp_path)
    finally:
        first.close()
    LmdbStore(tmp_path).close()  # free again once closed


async def test_a_state_declared_with_another_serializer_is_refused(tmp_path: Path) -> None:
    def app_with(serializer: str) -> af.App:
        class Declared(af.KeyedProcessFunction):
            def open(self, ctx):
                self.n = ctx.value_state("n", 0, serializer=serializer)

            def process_element(self, value, ctx):
                self.n.update(self.n.value() + 1)
                yield from ()

        app = af.App("serializers", state_dir=str(tmp_path), checkpoint_interval=NO_PERIODIC_CHECKPOINT)
        app.source(af.from_iterable(["x"]), name="src").key_by(lambda v: v).process(Declared, name="declared").sink(
            af.CollectSink(), name="out"
        )
        return app

    await _run(app_with("json"))
    with pytest.raises(StateError) as info:
        await _run(app_with("pickle"))
    message = str(info.value)
    assert "operator 'declared': state 'n'" in message and "'json'" in message and "'pickle'" in message
