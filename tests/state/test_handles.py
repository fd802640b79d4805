"""Keyed state handles, over the in-memory backend and over LMDB.

Each handle test runs on both backends (``make_backend``). The durable one has a
two-entry cache and the tests call ``backend.trim()`` between steps, so most reads there
miss the cache and come back from the store's working area or its checkpoint.
"""

import pytest

import aioflow as af
from aioflow._core.functions import AggregateFunction
from aioflow._core.state.handles import AggregatingState, ListState, MapState, ReducingState, ValueState
from aioflow._core.state.serializers import PickleSerializer
from aioflow.testing import run_collect


class Current:
    """Stands for the operator context: handles read the current key from ``.key``."""

    def __init__(self, key=None):
        self.key = key


def test_value_state_mutable_default_not_shared_between_keys():
    app = af.App("vs", batch_size=1, watermark_interval=0)

    class Collect(af.KeyedProcessFunction):
        def open(self, ctx):
            self.seen = ctx.value_state("seen", default=[])

        def process_element(self, value, ctx):
            items = self.seen.value()
            items.append(value[1])
            self.seen.update(items)
            yield (ctx.key, list(items))

    out = run_collect(app.source([("a", 1), ("b", 2)]).key_by(lambda r: r[0]).process(Collect, name="c"))
    assert out == [("a", [1]), ("b", [2])]


class Average(AggregateFunction):
    def create_accumulator(self):
        return [0, 0]

    def add(self, value, accumulator):
        return [accumulator[0] + value, accumulator[1] + 1]

    def get_result(self, accumulator):
        return accumulator[0] / accumulator[1]


def _fill(backend, current, table, keys=20):
    """Give ``keys`` other keys a value each, so that a two-entry cache must evict."""
    saved = current.key
    state = ValueState(backend.table("op", table, "value"), current)
    for i in range(keys):
        current.key = f"filler-{i}"
        state.update(i)
    current.key = saved
    backend.trim()


# -- value state ------------------------------------------------------------------------------


def test_value_state_default_update_and_clear(make_backend):
    backend, current = make_backend(), Current("a")
    state = ValueState(backend.table("op", "v", "value"), current, default=0)
    assert state.value() == 0
    state.update(5)
    current.key = "b"
    assert state.value() == 0
    state.update(7)
    _fill(backend, current, "other")
    current.key = "a"
    assert state.value() == 5
    state.clear()
    assert state.value() == 0
    current.key = "b"
    assert state.value() == 7


def test_value_state_update_none_clears(make_backend):
    backend, current = make_backend(), Current("a")
    table = backend.table("op", "v", "value")
    state = ValueState(table, current)
    state.update({"n": 1})
    backend.trim()
    state.update(None)
    _fill(backend, current, "other")
    assert state.value() is None
    assert table.get("a", default="absent") == "absent"


def test_value_state_mutable_default_is_fresh_per_key(make_backend):
    backend, current = make_backend(), Current("a")
    state = ValueState(backend.table("op", "v", "value"), current, default={"items": []})
    first = state.value()
    first["items"].append(1)  # changed in place, not written back: not state
    assert state.value() == {"items": []}
    current.key = "b"
    second = state.value()
    assert second == {"items": []} and second is not first
    second["items"].append(2)
    state.update(second)
    _fill(backend, current, "other")
    assert state.value() == {"items": [2]}
    current.key = "a"
    assert state.value() == {"items": []}


def test_value_state_immutable_default_is_returned_as_is(make_backend):
    backend = make_backend()
    default = ("x", 1)
    state = ValueState(backend.table("op", "v", "value"), Current("a"), default=default)
    assert state.value() is default


def test_value_states_of_one_table_share_it(make_backend):
    backend, current = make_backend(), Current("a")
    one = ValueState(backend.table("op", "v", "value"), current)
    two = ValueState(backend.table("op", "v", "value"), current)
    one.update("from one")
    backend.trim()
    assert two.value() == "from one"


def test_namespaced_value_state_is_separate_per_namespace(make_backend):
    backend, current = make_backend(), Current("a")
    table = backend.table("op", "trigger", "value")
    plain = ValueState(table, current, default=0)

    def windows() -> tuple[ValueState, ValueState]:  # a window's handle lasts until the next trim, as triggers use it
        return (
            ValueState(table, current, default=0, namespace=(0, 10)),
            ValueState(table, current, default=0, namespace=(10, 20)),
        )

    for i in range(10):
        current.key = f"k{i}"
        plain.update(i)
        w1, w2 = windows()
        w1.update(100 + i)
        w2.update(200 + i)
        backend.trim()
    _fill(backend, current, "other")
    for i in range(10):
        current.key = f"k{i}"
        w1, w2 = windows()
        assert (plain.value(), w1.value(), w2.value()) == (i, 100 + i, 200 + i)
    assert table.get("k3", namespace=(0, 10)) == 103


# -- list state --------------------------------------------------------------------------------


def test_list_state_add_add_all_update_clear(make_backend):
    backend, current = make_backend(), Current("a")
    state = ListState(backend.table("op", "l", "list"), current)
    assert state.get() == []
    state.add(1)
    backend.trim()
    state.add(2)
    state.add_all([3, 4])
    state.add_all([])
    current.key = "b"
    state.add_all(["x"])
    _fill(backend, current, "other")
    current.key = "a"
    assert state.get() == [1, 2, 3, 4]
    state.update([9])
    _fill(backend, current, "other")
    assert state.get() == [9]
    state.update([])
    assert state.get() == []
    current.key = "b"
    assert state.get() == ["x"]
    state.clear()
    assert state.get() == []


def test_list_state_get_returns_a_copy(make_backend):
    backend, current = make_backend(), Current("a")
    state = ListState(backend.table("op", "l", "list"), current)
    state.add_all([1, 2])
    got = state.get()
    got.append(3)
    _fill(backend, current, "other")
    assert state.get() == [1, 2]


def test_list_state_update_empty_deletes_the_entry(make_backend):
    backend = make_backend()
    table = backend.table("op", "l", "list")
    state = ListState(table, Current("a"))
    state.add(1)
    state.update([])
    assert table.get("a", default="absent") == "absent"


# -- map state ---------------------------------------------------------------------------------


def test_map_state_operations(make_backend):
    backend, current = make_backend(), Current("a")
    state = MapState(backend.table("op", "m", "map"), current)
    assert state.is_empty() and state.get("x") is None and state.get("x", 0) == 0
    state.put("x", 1)
    backend.trim()
    state.put_all({"y": 2, "z": 3})
    state.put_all({})
    current.key = "b"
    state.put("x", "other key")
    _fill(backend, current, "other")
    current.key = "a"
    assert state.get("x") == 1 and state.contains("y") and not state.contains("w")
    assert sorted(state.keys()) == ["x", "y", "z"]
    assert sorted(state.values()) == [1, 2, 3]
    assert sorted(state.items()) == [("x", 1), ("y", 2), ("z", 3)]
    assert not state.is_empty()
    state.remove("y")
    state.remove("not there")
    _fill(backend, current, "other")
    assert sorted(state.items()) == [("x", 1), ("z", 3)]
    current.key = "b"
    assert list(state.items()) == [("x", "other key")]


def test_map_state_keys_iterate_a_copy(make_backend):
    backend = make_backend()
    state = MapState(backend.table("op", "m", "map"), Current("a"))
    state.put_all({"x": 1, "y": 2})
    for key in state.keys():  # noqa: SIM118 (MapState is not iterable)
        state.remove(key)  # no "dictionary changed size during iteration"
    assert state.is_empty()


def test_map_state_removing_the_last_entry_deletes_the_key(make_backend):
    backend, current = make_backend(), Current("a")
    table = backend.table("op", "m", "map")
    state = MapState(table, current)
    state.put("x", 1)
    _fill(backend, current, "other")
    state.remove("x")
    _fill(backend, current, "other")
    assert state.is_empty()
    assert table.get("a", default="absent") == "absent"


# -- reducing and aggregating state ------------------------------------------------------------


def test_reducing_state(make_backend):
    backend, current = make_backend(), Current("a")
    state = ReducingState(backend.table("op", "r", "reducing"), current, lambda a, b: a + b)
    assert state.get() is None
    for value in (1, 2, 3):
        state.add(value)
        _fill(backend, current, "other")
    current.key = "b"
    state.add(10)
    current.key = "a"
    assert state.get() == 6
    state.clear()
    assert state.get() is None
    state.add(4)
    assert state.get() == 4
    current.key = "b"
    assert state.get() == 10


def test_aggregating_state(make_backend):
    backend, current = make_backend(), Current("a")
    state = AggregatingState(backend.table("op", "g", "aggregating"), current, Average())
    assert state.get() is None
    for value in (1, 2, 6):
        state.add(value)
        _fill(backend, current, "other")
    assert state.get() == 3
    current.key = "b"
    assert state.get() is None
    state.add(10)
    assert state.get() == 10
    current.key = "a"
    state.clear()
    assert state.get() is None


def test_tuple_keys(make_backend):
    backend, current = make_backend(), Current(("user", 1))
    state = ValueState(backend.table("op", "v", "value"), current)
    state.update("one")
    current.key = ("user", 2)
    state.update("two")
    _fill(backend, current, "other")
    current.key = ("user", 1)
    assert state.value() == "one"


def test_redeclaring_a_state_with_another_kind_fails(make_backend):
    backend = make_backend()
    backend.table("op", "s", "value")
    with pytest.raises(af.PipelineError, match=r"operator 'op': state 's' was declared as value state.*list"):
        backend.table("op", "s", "list")


# -- through a checkpoint ---------------------------------------------------------------------


def _declare(backend, current):
    return (
        ValueState(backend.table("op", "value", "value"), current, default=[]),
        ListState(backend.table("op", "list", "list"), current),
        MapState(backend.table("op", "map", "map"), current),
        ReducingState(backend.table("op", "reducing", "reducing"), current, lambda a, b: a + b),
        AggregatingState(backend.table("op", "aggregating", "aggregating"), current, Average()),
    )


@pytest.mark.parametrize("cache_size", [100_000, 3])
def test_every_kind_survives_a_checkpoint_and_reopen(durable, cache_size):
    backend, current = durable.open(cache_size=cache_size), Current()
    value, items, mapping, reducing, aggregating = _declare(backend, current)
    for i in range(30):
        current.key = f"k{i}"
        value.update([i, "x"])
        items.add_all([i, i + 1])
        mapping.put_all({"n": i, "s": str(i)})
        reducing.add(i)
        reducing.add(1)
        aggregating.add(i)
        aggregating.add(i + 2)
        backend.trim()
    durable.checkpoint(backend)
    durable.close()

    backend, current = durable.open(cache_size=cache_size), Current()
    value, items, mapping, reducing, aggregating = _declare(backend, current)
    for i in range(30):
        current.key = f"k{i}"
        assert value.value() == [i, "x"]
        assert items.get() == [i, i + 1]
        assert dict(mapping.items()) == {"n": i, "s": str(i)}
        assert reducing.get() == i + 1
        assert aggregating.get() == i + 1
        backend.trim()
    assert backend.table("op", "list", "list").get("k7") == [7, 8]
    assert backend.table("op", "aggregating", "aggregating").get("k7") == [16, 2]
    current.key = "never written"
    assert (value.value(), items.get(), mapping.is_empty(), reducing.get(), aggregating.get()) == (
        [],
        [],
        True,
        None,
        None,
    )


@pytest.mark.parametrize("cache_size", [100_000, 2])
def test_deletions_survive_a_checkpoint_and_reopen(durable, cache_size):
    backend, current = durable.open(cache_size=cache_size), Current()
    value, items, mapping, reducing, aggregating = _declare(backend, current)
    for key in ("cleared", "updated-none", "kept"):
        current.key = key
        value.update([key])
        items.add(key)
        mapping.put("only", key)
        reducing.add(1)
        aggregating.add(1)
    durable.checkpoint(backend)

    current.key = "cleared"
    for state in (value, items, mapping, reducing, aggregating):
        state.clear()
    backend.trim()
    current.key = "updated-none"
    value.update(None)
    items.update([])
    mapping.remove("only")
    backend.trim()
    durable.checkpoint(backend)
    durable.close()

    backend, current = durable.open(cache_size=cache_size), Current()
    value, items, mapping, reducing, aggregating = _declare(backend, current)
    for key in ("cleared", "updated-none"):
        current.key = key
        assert (value.value(), items.get(), mapping.is_empty()) == ([], [], True)
        assert backend.table("op", "value", "value").get(key, default="absent") == "absent"
        assert backend.table("op", "map", "map").get(key, default="absent") == "absent"
    current.key = "cleared"
    assert (reducing.get(), aggregating.get()) == (None, None)
    current.key = "kept"
    assert (value.value(), items.get(), dict(mapping.items())) == (["kept"], ["kept"], {"only": "kept"})
    assert (reducing.get(), aggregating.get()) == (1, 1)


def test_restored_list_state_appends_to_the_checkpointed_list(durable):
    backend, current = durable.open(), Current("a")
    ListState(backend.table("op", "l", "list"), current).add_all([1, 2])
    durable.checkpoint(backend)
    durable.close()

    backend, current = durable.open(), Current("a")
    state = ListState(backend.table("op", "l", "list"), current)
    state.add(3)
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open()
    assert ListState(backend.table("op", "l", "list"), Current("a")).get() == [1, 2, 3]


def test_pickled_state_keeps_what_json_cannot(durable):
    backend, current = durable.open(cache_size=1), Current("a")
    state = ValueState(backend.table("op", "v", "value", serializer=PickleSerializer()), current)
    state.update({"set": {1, 2}, "tuple": (1, 2)})
    _fill(backend, current, "other")
    assert state.value() == {"set": {1, 2}, "tuple": (1, 2)}
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open()
    state = ValueState(backend.table("op", "v", "value", serializer=PickleSerializer()), Current("a"))
    assert state.value() == {"set": {1, 2}, "tuple": (1, 2)}
