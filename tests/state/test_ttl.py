"""State TTL: expiry per kind on both backends, lazy and background cleanup, restore.

Processing time comes from a fake clock given to the backend (``MemoryBackend(clock=)``),
so nothing sleeps. The durable backend has a two-entry cache and the tests evict
(``churn``) between steps, so most reads there come back from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import aioflow as af
import aioflow._core.state.durable as durable_module
import aioflow._core.state.memory as memory_module
from aioflow._core.errors import PipelineError, StateError
from aioflow._core.functions import AggregateFunction
from aioflow._core.operators.context import OperatorContext
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.handles import AggregatingState, ListState, MapState, ReducingState, ValueState
from aioflow._core.state.memory import MemoryBackend
from aioflow._core.state.ttl import TTL_CLEANUP_BUDGET, TTL_CLEANUP_INTERVAL_MS, StateTtl
from aioflow.testing import run_collect

START = 1_700_000_000_000


class Clock:
    """Processing time that moves only when told to."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1000)


@dataclass
class Setup:
    backend: MemoryBackend | LmdbBackend
    clock: Clock
    durable: object | None  # conftest's Durable, for the LMDB backend

    def context(self, key=None) -> OperatorContext:
        ctx = OperatorContext("op", 0, 1, keyed=True, backend=self.backend, schedule_processing_time=lambda at: None)
        ctx.key = key
        return ctx

    def churn(self) -> None:
        """Write other state and trim: the durable cache evicts what the test wrote."""
        table = self.backend.table("op", "filler", "value")
        for i in range(20):
            table.put(f"filler-{i}", i)
        self.backend.trim()

    def checkpoint(self) -> None:
        if self.durable is not None:
            self.durable.checkpoint(self.backend)


def _open(durable, clock: Clock, cache_size: int = 2) -> LmdbBackend:
    durable.open(cache_size=cache_size)
    return LmdbBackend(durable.store, cache_size=cache_size, clock=clock)


@pytest.fixture(params=["memory", "durable"])
def setup(request: pytest.FixtureRequest, durable) -> Setup:
    clock = Clock()
    if request.param == "memory":
        return Setup(MemoryBackend(clock=clock), clock, None)
    return Setup(_open(durable, clock), clock, durable)


class Average(AggregateFunction):
    def create_accumulator(self):
        return [0, 0]

    def add(self, value, accumulator):
        return [accumulator[0] + value, accumulator[1] + 1]

    def get_result(self, accumulator):
        return accumulator[0] / accumulator[1]


# -- the config ----------------------------------------------------------------------------------


def test_state_ttl_holds_milliseconds_and_its_refresh_mode():
    ttl = StateTtl(1.5, refresh_on_read=True)
    assert (ttl.ttl_ms, ttl.refresh_on_read) == (1500, True)
    assert StateTtl(3600) == StateTtl(3600.0) and not StateTtl(10).refresh_on_read


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("10",), {}, r"takes a number of seconds, got '10' \(str\)"),
        ((True,), {}, r"takes a number of seconds, got True \(bool\)"),
        ((None,), {}, r"takes a number of seconds, got None"),
        ((0,), {}, r"must be positive and finite, got 0; for state that never expires, leave ttl= out"),
        ((-5,), {}, r"must be positive and finite, got -5"),
        ((float("inf"),), {}, r"must be positive and finite, got inf"),
        ((float("nan"),), {}, r"must be positive and finite, got nan"),
        ((0.0001,), {}, r"at least 0.001 .*milliseconds.*got 0.0001"),
        ((10,), {"refresh_on_read": "yes"}, r"refresh_on_read=\) takes True or False, got 'yes'"),
    ],
)
def test_state_ttl_refuses_bad_arguments(args, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        StateTtl(*args, **kwargs)


def test_refresh_on_read_is_keyword_only():
    with pytest.raises(TypeError):
        StateTtl(10, True)  # type: ignore[misc]


def test_ttl_must_be_a_state_ttl(setup):
    ctx = setup.context("a")
    for declare in (lambda: ctx.value_state("v", ttl=30), lambda: ctx.map_state("m", ttl={"seconds": 30})):
        with pytest.raises(
            PipelineError,
            match=r"operator 'op': (value|map) state '(v|m)': ttl= takes "
            r"aioflow.StateTtl\(seconds\) or None, got (30|\{'seconds': 30\})",
        ):
            declare()


def test_state_without_ttl_keeps_the_plain_handles(setup):
    """The per-record path of state without a TTL is exactly what it was."""
    ctx = setup.context("a")
    assert type(ctx.value_state("v")) is ValueState
    assert type(ctx.list_state("l")) is ListState
    assert type(ctx.map_state("m")) is MapState
    assert type(ctx.reducing_state("r", lambda a, b: a + b)) is ReducingState
    assert type(ctx.aggregating_state("g", Average())) is AggregatingState


def test_a_state_is_declared_with_a_ttl_everywhere_or_nowhere(setup):
    ctx = setup.context("a")
    ctx.value_state("v")
    with pytest.raises(
        PipelineError,
        match=r"state 'v' was declared as value state, cannot declare it again as "
        r"TTL value state",
    ):
        ctx.value_state("v", ttl=StateTtl(10))


def test_a_restart_that_adds_a_ttl_is_refused(durable):
    """Stored values of a TTL state carry their expiry: reading plain ones as such would misread them."""
    clock = Clock()
    backend = _open(durable, clock)
    Setup(backend, clock, durable).context("a").value_state("v").update(1)  # declared without a TTL
    durable.checkpoint(backend)
    ctx = Setup(_open(durable, clock), clock, durable).context("a")
    with pytest.raises(StateError, match=r"state 'v' was checkpointed as value state .* now declared as TTL value"):
        ctx.value_state("v", ttl=StateTtl(10))


# -- value state ---------------------------------------------------------------------------------


def test_value_expires_and_returns_the_default(setup):
    ctx = setup.context("a")
    state = ctx.value_state("v", default="none", ttl=StateTtl(10))
    table = setup.backend.table("op", "v", "value", ttl=True)
    state.update("x")
    ctx.key = "b"
    setup.clock.advance(9.999)
    state.update("y")
    setup.churn()
    ctx.key = "a"
    assert state.value() == "x"
    setup.clock.advance(0.001)  # exactly 10 s after the write
    setup.churn()
    assert state.value() == "none"
    assert table.get("a", default="absent") == "absent"  # the read deleted it
    ctx.key = "b"
    assert state.value() == "y"


def test_a_write_starts_the_time_again_and_a_read_does_not(setup):
    ctx = setup.context("a")
    state = ctx.value_state("v", default=0, ttl=StateTtl(10))
    state.update(1)
    setup.clock.advance(8)
    state.update(2)
    setup.churn()
    setup.clock.advance(8)  # 16 s after the first write, 8 after the second
    assert state.value() == 2
    setup.churn()
    setup.clock.advance(2)
    assert state.value() == 0


def test_refresh_on_read_starts_the_time_again_and_reaches_the_store(setup):
    ctx = setup.context("a")
    state = ctx.value_state("v", ttl=StateTtl(10, refresh_on_read=True))
    state.update("x")
    setup.churn()
    setup.clock.advance(8)
    assert state.value() == "x"  # now lives until 18 s
    setup.churn()  # the refreshed entry is evicted: its new expiry must go with it
    setup.clock.advance(8)
    assert state.value() == "x"
    setup.churn()
    setup.clock.advance(10)
    assert state.value() is None


def test_mutable_default_of_an_expired_value_is_fresh(setup):
    ctx = setup.context("a")
    state = ctx.value_state("v", default=[], ttl=StateTtl(1))
    state.update([1])
    setup.clock.advance(1)
    first = state.value()
    first.append(2)
    assert state.value() == []


# -- list state ----------------------------------------------------------------------------------


def test_list_elements_expire_one_by_one(setup):
    ctx = setup.context("a")
    items = ctx.list_state("l", ttl=StateTtl(10))
    table = setup.backend.table("op", "l", "list", ttl=True)
    items.add(1)  # at 0: until 10
    setup.clock.advance(4)
    items.add_all([2, 3])  # until 14
    setup.churn()
    setup.clock.advance(4)
    items.add(4)  # until 18
    setup.churn()
    setup.clock.advance(2)
    assert items.get() == [2, 3, 4]
    setup.churn()
    setup.clock.advance(4)
    assert items.get() == [4]
    items.update([5, 6])  # at 14: until 24
    setup.churn()
    setup.clock.advance(6)
    assert items.get() == [5, 6]
    setup.clock.advance(4)
    assert items.get() == []
    assert table.get("a", default="absent") == "absent"


def test_list_refresh_on_read(setup):
    ctx = setup.context("a")
    items = ctx.list_state("l", ttl=StateTtl(10, refresh_on_read=True))
    items.add(1)
    setup.clock.advance(8)
    assert items.get() == [1]  # until 18
    setup.churn()
    setup.clock.advance(8)
    assert items.get() == [1]
    setup.clock.advance(10)
    assert items.get() == []


# -- map state -----------------------------------------------------------------------------------


def test_map_entries_expire_one_by_one(setup):
    ctx = setup.context("a")
    mapping = ctx.map_state("m", ttl=StateTtl(10))
    table = setup.backend.table("op", "m", "map", ttl=True)
    mapping.put("x", 1)  # until 10
    setup.clock.advance(5)
    mapping.put_all({"y": 2, "z": 3})  # until 15
    setup.churn()
    setup.clock.advance(5)
    assert mapping.get("x") is None and mapping.get("x", "gone") == "gone" and not mapping.contains("x")
    assert mapping.get("y") == 2 and mapping.contains("z")
    assert sorted(mapping.keys()) == ["y", "z"]
    assert sorted(mapping.values()) == [2, 3]
    mapping.put("y", 20)  # at 10: until 20
    setup.churn()
    setup.clock.advance(5)
    assert list(mapping.items()) == [("y", 20)] and not mapping.is_empty()
    setup.churn()
    setup.clock.advance(5)
    assert mapping.is_empty() and list(mapping.items()) == []
    assert table.get("a", default="absent") == "absent"


def test_map_get_of_an_expired_entry_deletes_only_that_entry(setup):
    ctx = setup.context("a")
    mapping = ctx.map_state("m", ttl=StateTtl(10))
    table = setup.backend.table("op", "m", "map", ttl=True)
    mapping.put("old", 1)
    setup.clock.advance(5)
    mapping.put("new", 2)
    setup.clock.advance(5)
    assert mapping.get("old") is None
    assert list(table.get("a")) == ["new"]
    setup.clock.advance(5)
    assert not mapping.contains("new")
    assert table.get("a", default="absent") == "absent"


def test_map_refresh_on_read(setup):
    ctx = setup.context("a")
    mapping = ctx.map_state("m", ttl=StateTtl(10, refresh_on_read=True))
    mapping.put_all({"x": 1, "y": 2})
    setup.clock.advance(8)
    assert mapping.get("x") == 1  # x until 18, y still until 10
    setup.churn()
    setup.clock.advance(4)
    assert dict(mapping.items()) == {"x": 1}  # until 22
    setup.churn()
    setup.clock.advance(9)
    assert mapping.contains("x")


# -- reducing and aggregating state --------------------------------------------------------------


def test_reducing_state_expires_and_starts_again(setup):
    ctx = setup.context("a")
    state = ctx.reducing_state("r", lambda a, b: a + b, ttl=StateTtl(10))
    state.add(1)
    setup.clock.advance(5)
    state.add(2)  # 3, until 15
    setup.churn()
    setup.clock.advance(9)
    assert state.get() == 3
    setup.clock.advance(1)
    assert state.get() is None
    state.add(5)
    setup.churn()
    assert state.get() == 5


def test_aggregating_state_expires_and_starts_again(setup):
    ctx = setup.context("a")
    state = ctx.aggregating_state("g", Average(), ttl=StateTtl(10, refresh_on_read=True))
    state.add(2)
    state.add(4)
    setup.churn()
    setup.clock.advance(9)
    assert state.get() == 3  # read: until 19
    setup.churn()
    setup.clock.advance(9)
    assert state.get() == 3
    setup.clock.advance(10)
    state.add(10)  # the expired accumulator is not continued
    setup.churn()
    assert state.get() == 10


# -- background cleanup --------------------------------------------------------------------------


def _stored_keys(table) -> list:
    return sorted(key for _, key, _ in table.stored())


def test_background_cleanup_removes_expired_entries_never_read_again(setup):
    ctx = setup.context()
    state = ctx.value_state("v", ttl=StateTtl(10))
    table = setup.backend.table("op", "v", "value", ttl=True)
    for i in range(10):
        ctx.key = f"old-{i}"
        state.update(i)
    setup.checkpoint()  # durable: in the checkpoint...
    ctx.key = "old-spilled"
    state.update("x")
    setup.clock.advance(5)
    for i in range(5):
        ctx.key = f"new-{i}"
        state.update(i)
    setup.churn()  # ... and in the working area, not in the cache
    setup.clock.advance(5)  # the old ones expired

    removed = []
    for _ in range(12):
        removed.append(setup.backend.cleanup_expired(setup.clock(), 3))
    assert max(removed) <= 3 and sum(removed) == 11
    new = [f"new-{i}" for i in range(5)]
    if setup.durable is None:
        assert sorted(table.keys_in()) == new
    else:
        # stored entries were read, not cached: what the cache holds is the 11 deletions to write
        assert table.cached_entries() <= 2 + 11
        assert sorted(table.keys_in()) == new
        setup.checkpoint()
        assert _stored_keys(table) == new
        setup.backend = _open(setup.durable, setup.clock)  # restored into a fresh backend
        assert _stored_keys(setup.backend.table("op", "v", "value", ttl=True)) == new
    ctx = setup.context()
    state = ctx.value_state("v", ttl=StateTtl(10))
    for i in range(5):
        ctx.key = f"new-{i}"
        assert state.value() == i


def test_background_cleanup_prunes_lists_and_maps(setup):
    ctx = setup.context("a")
    items = ctx.list_state("l", ttl=StateTtl(10))
    mapping = ctx.map_state("m", ttl=StateTtl(10))
    items.add("old")
    mapping.put("old", 1)
    setup.clock.advance(5)
    items.add("new")
    mapping.put("new", 2)
    setup.churn()
    setup.clock.advance(5)
    assert setup.backend.cleanup_expired(setup.clock(), 100) == 2
    lists, maps = setup.backend.table("op", "l", "list", ttl=True), setup.backend.table("op", "m", "map", ttl=True)
    assert [element for _, element in lists.get("a")] == ["new"]
    assert list(maps.get("a")) == ["new"]
    setup.clock.advance(5)
    assert setup.backend.cleanup_expired(setup.clock(), 100) == 2
    assert lists.get("a") is None and maps.get("a") is None


def test_the_budget_spans_tables(setup):
    """One call looks at no more than its budget, across tables; the next goes on from there."""
    ctx = setup.context()
    states = [ctx.value_state(name, ttl=StateTtl(1)) for name in ("s1", "s2", "s3")]
    for state in states:
        for i in range(4):
            ctx.key = i
            state.update(i)
    setup.churn()
    setup.clock.advance(1)
    assert [setup.backend.cleanup_expired(setup.clock(), 5) for _ in range(4)] == [5, 5, 2, 0]
    for name in ("s1", "s2", "s3"):
        table = setup.backend.table("op", name, "value", ttl=True)
        deletions = 4 if setup.durable is not None else 0  # a durable table holds them until they are written
        assert table.cached_entries() == deletions and [table.get(i) for i in range(4)] == [None] * 4


def test_cleanup_with_nothing_to_do_returns_at_once(setup):
    assert setup.backend.cleanup_expired(setup.clock(), 10) == 0
    ctx = setup.context("a")
    ctx.value_state("v", ttl=StateTtl(10)).update(1)
    assert setup.backend.cleanup_expired(setup.clock(), 10) == 0
    with pytest.raises(ValueError, match="budget must be at least 1"):
        setup.backend.cleanup_expired(setup.clock(), 0)


async def test_the_runtime_cleans_up_every_second_with_a_bounded_budget():
    clock = Clock()
    scheduled: list = []

    def schedule(at, callback):
        scheduled.append((at, callback))

    backend = MemoryBackend(clock=clock)
    backend.schedule_maintenance(schedule)
    assert scheduled == []  # no TTL state: nothing to do

    ctx = Setup(backend, clock, None).context()
    state = ctx.value_state("v", ttl=StateTtl(1))
    for i in range(TTL_CLEANUP_BUDGET + 500):
        ctx.key = i
        state.update(i)
    table = backend.table("op", "v", "value", ttl=True)
    backend.schedule_maintenance(schedule)
    assert [at for at, _ in scheduled] == [0]  # at once: restored state may be long expired
    clock.advance(1)
    await scheduled[0][1](5_000)  # the scheduler's wall clock
    assert table.cached_entries() == 500
    assert scheduled[1][0] == 5_000 + TTL_CLEANUP_INTERVAL_MS
    await scheduled[1][1](6_000)
    assert table.cached_entries() == 0


# -- checkpoints and restore ---------------------------------------------------------------------


def _declare(ctx):
    ttl = StateTtl(10)
    return (
        ctx.value_state("v", ttl=ttl),
        ctx.list_state("l", ttl=ttl),
        ctx.map_state("m", ttl=ttl),
        ctx.reducing_state("r", lambda a, b: a + b, ttl=ttl),
        ctx.aggregating_state("g", Average(), ttl=ttl),
    )


@pytest.mark.parametrize("cache_size", [100_000, 2])
def test_expiry_survives_a_checkpoint_and_restore(durable, cache_size):
    """The expiry is stored with the value: a restore neither resets nor loses it, and
    what expired is gone from the store after the next checkpoint."""
    clock = Clock()
    backend = _open(durable, clock, cache_size)
    ctx = Setup(backend, clock, durable).context()
    handles = _declare(ctx)
    for key in ("early", "late"):
        ctx.key = key
        value, items, mapping, reducing, aggregating = handles
        value.update(key)
        items.add(key)
        mapping.put("k", key)
        reducing.add(1)
        aggregating.add(1)
        clock.advance(6)
    durable.checkpoint(backend)

    clock.advance(-1)  # 11 s after "early", 5 s after "late"
    backend = _open(durable, clock, cache_size)
    ctx = Setup(backend, clock, durable).context()
    value, items, mapping, reducing, aggregating = _declare(ctx)
    ctx.key = "late"
    assert (value.value(), items.get(), dict(mapping.items()), reducing.get(), aggregating.get()) == (
        "late",
        ["late"],
        {"k": "late"},
        1,
        1,
    )
    ctx.key = "early"
    assert (value.value(), items.get(), mapping.is_empty(), reducing.get(), aggregating.get()) == (
        None,
        [],
        True,
        None,
        None,
    )
    durable.checkpoint(backend)

    backend = _open(durable, clock, cache_size)
    for name, kind in (("v", "value"), ("l", "list"), ("m", "map"), ("r", "reducing"), ("g", "aggregating")):
        assert _stored_keys(backend.table("op", name, kind, ttl=True)) == ["late"], name
    clock.advance(5)  # 10 s after "late": the restored expiry holds
    ctx = Setup(backend, clock, durable).context("late")
    value, items, mapping, reducing, aggregating = _declare(ctx)
    assert (value.value(), items.get(), mapping.is_empty(), reducing.get(), aggregating.get()) == (
        None,
        [],
        True,
        None,
        None,
    )


def test_background_cleanup_of_a_restored_table_reads_the_store(durable):
    clock = Clock()
    backend = _open(durable, clock)
    ctx = Setup(backend, clock, durable).context()
    state = ctx.value_state("v", ttl=StateTtl(10))
    for i in range(6):
        ctx.key = i
        state.update(i)
        clock.advance(1)
    durable.checkpoint(backend)

    clock.advance(6)  # at 12 s: 0, 1 and 2 (written at 0, 1 and 2 s) expired
    backend = _open(durable, clock)
    ctx = Setup(backend, clock, durable).context()
    ctx.value_state("v", ttl=StateTtl(10))
    table = backend.table("op", "v", "value", ttl=True)
    assert table.cached_entries() == 0
    assert sum(backend.cleanup_expired(clock(), 2) for _ in range(5)) == 3
    assert table.cached_entries() == 3  # the three deletions, to be written: nothing read was kept
    durable.checkpoint(backend)
    assert _stored_keys(table) == [3, 4, 5]


# -- through a pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_value_state_with_ttl_in_a_keyed_process_function(tmp_path, monkeypatch, backend):
    clock = Clock(0)
    monkeypatch.setattr(memory_module, "now_ms", clock)  # the backends' processing time
    monkeypatch.setattr(durable_module, "now_ms", clock)

    class Last(af.KeyedProcessFunction):
        def open(self, ctx):
            self.last = ctx.value_state("x", default="-", ttl=StateTtl(10))

        def process_element(self, value, ctx):
            key, at, text = value
            clock.now = at
            yield (key, at, self.last.value())
            self.last.update(text)

    rows = [
        ("a", 0, "a0"),
        ("b", 1_000, "b0"),
        ("a", 9_000, "a1"),
        ("b", 11_000, "b1"),
        ("a", 18_999, "a2"),
        ("a", 30_000, "a3"),
    ]
    app = af.App(
        "ttl", batch_size=1, watermark_interval=0, state_dir=str(tmp_path / "state") if backend == "lmdb" else None
    )
    out = run_collect(app.source(rows).key_by(lambda r: r[0]).process(Last, name="last"))
    assert out == [
        ("a", 0, "-"),
        ("b", 1_000, "-"),
        ("a", 9_000, "a0"),
        ("b", 11_000, "-"),
        ("a", 18_999, "a1"),
        ("a", 30_000, "-"),
    ]
