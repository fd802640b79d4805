"""StateTable and StateBackend: the write-back cache, snapshots, eviction and restore."""

import pytest

from aioflow._core.errors import CorruptStateError, PipelineError, StateError
from aioflow._core.state.durable import LmdbBackend
from aioflow._core.state.handles import ValueState
from aioflow._core.state.memory import MemoryBackend
from aioflow._core.state.serializers import JsonSerializer, PickleSerializer, decode_key, encode_key, serializer_named


class Current:
    def __init__(self, key=None):
        self.key = key


# -- the cache, on both backends ---------------------------------------------------------------


def test_put_get_delete(make_backend):
    table = make_backend().table("op", "t", "value")
    assert table.get("a") is None and table.get("a", default=0) == 0
    table.put("a", 1)
    table.put("b", 2)
    table.put("a", 3, namespace="w")
    assert (table.get("a"), table.get("b"), table.get("a", namespace="w")) == (1, 2, 3)
    table.delete("a")
    table.delete("never there")
    assert table.get("a", default="absent") == "absent"
    assert table.get("a", namespace="w") == 3
    assert sorted(table.keys_in()) == ["b"]


def test_drop_removes_one_namespace(make_backend):
    table = make_backend().table("op", "t", "window")
    for ns in ("w1", "w2"):
        for key in ("a", "b"):
            table.put(key, f"{ns}-{key}", namespace=ns)
    table.drop("w1")
    table.drop("never there")
    assert list(table.keys_in("w1")) == []
    assert table.get("a", namespace="w1") is None
    assert sorted(table.keys_in("w2")) == ["a", "b"]
    assert table.cached_entries() == 2


def test_declaring_a_table_again_returns_the_same_table(make_backend):
    backend = make_backend()
    assert backend.table("op", "t", "value") is backend.table("op", "t", "value")
    assert backend.table("op", "t", "value") is not backend.table("other op", "t", "value")


def test_memory_backend_is_not_durable_and_trim_keeps_everything():
    backend = MemoryBackend()
    table = backend.table("op", "t", "value")
    for i in range(10):
        table.put(i, i)
    backend.trim()
    assert not backend.durable
    assert table.cached_entries() == 10 == backend.cached_entries


# -- snapshots --------------------------------------------------------------------------------


def _changes(backend, checkpoint_id):
    """What a snapshot hands the checkpoint: ``{stored key: payload or None}`` (values
    without their checksum); a key changed in several checkpoints since the last completed
    one comes once per checkpoint, with its value now."""
    return {key: None if value is None else value[4:] for _, key, value in backend.snapshot(checkpoint_id)}


def test_snapshot_writes_only_what_changed_since_the_last_completed_checkpoint(durable):
    backend = durable.open()
    table = backend.table("op", "t", "value")
    table.put("a", 1)
    table.put("b", 2)
    assert sorted(_changes(backend, 1).values()) == [b"1", b"2"]
    durable.checkpoint(backend)  # checkpoint 1 completes (its snapshot is taken again: nothing new)
    assert _changes(backend, 3) == {}
    table.put("a", 5)
    table.delete("b")
    assert sorted(_changes(backend, 4).values(), key=repr) == [None, b"5"]


def test_a_snapshot_whose_checkpoint_did_not_complete_is_taken_again(durable):
    """A checkpoint that failed leaves its changes for the next one: every snapshot holds
    what changed since the last *completed* checkpoint; reads see the latest values."""
    backend = durable.open(cache_size=1)
    table = backend.table("op", "t", "value")
    table.put("a", 1)
    durable.checkpoint(backend)
    table.delete("a")
    table.put("b", 2)
    first = _changes(backend, 2)  # checkpoint 2 never completes
    backend.trim()  # written out, then evicted
    assert table.get("a") is None and table.get("b") == 2
    table.put("c", 3)
    second = _changes(backend, 3)
    assert set(first) < set(second) and len(second) == 3
    assert sorted(second.values(), key=repr) == [None, b"2", b"3"]


def test_a_handle_created_before_a_checkpoint_keeps_marking_changes(durable):
    """Handles live as long as the operator: their dirty markers must outlive checkpoints."""
    backend, current = durable.open(), Current("a")
    state = ValueState(backend.table("op", "v", "value"), current)
    state.update(1)
    durable.checkpoint(backend)
    state.update(2)
    assert list(_changes(backend, 2).values()) == [b"2"]
    state.clear()
    assert set(_changes(backend, 3).values()) == {None}


def test_tuple_keys_and_namespaces_round_trip_as_tuples(durable):
    backend = durable.open()
    table = backend.table("op", "t", "window")
    table.put(("user", 1), "v", namespace=(0, 10))
    durable.checkpoint(backend)
    durable.close()

    table = durable.open().table("op", "t", "window")
    assert list(table.stored()) == [((0, 10), ("user", 1), "v")]
    assert table.get(("user", 1), namespace=(0, 10)) == "v"
    assert list(table.keys_in((0, 10))) == [("user", 1)]


def test_encode_key_and_decode_key():
    assert decode_key(encode_key(("a", (1, 2)))) == ("a", (1, 2))
    assert decode_key(encode_key("a")) == "a"
    assert encode_key(("a", 1)) == encode_key(["a", 1]) == b'["a",1]'


# -- namespaces through a checkpoint ----------------------------------------------------------


@pytest.mark.parametrize("cache_size", [100_000, 5])
def test_namespaced_entries_and_drop_survive_reopen(durable, cache_size):
    backend = durable.open(cache_size=cache_size)
    table = backend.table("op", "panes", "window")
    for ns in (0, 10, 20):
        for i in range(10):
            table.put(f"k{i}", ns + i, namespace=ns)
        backend.trim()
    durable.checkpoint(backend)
    table.drop(10)
    table.put("k0", "changed", namespace=20)
    table.delete("k1", namespace=20)
    backend.trim()
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open(cache_size=cache_size)
    table = backend.table("op", "panes", "window")
    assert sorted(table.keys_in(0)) == [f"k{i}" for i in range(10)]
    assert list(table.keys_in(10)) == []
    assert table.get("k3", namespace=10, default="absent") == "absent"
    assert table.get("k3", namespace=0) == 3
    assert table.get("k0", namespace=20) == "changed"
    assert table.get("k1", namespace=20, default="absent") == "absent"
    assert sorted(ns for ns, _, _ in table.stored()) == [0] * 10 + [20] * 9


def test_drop_of_a_namespace_whose_entries_were_evicted(durable):
    """Entries evicted to the working area before the namespace was dropped are gone too."""
    backend = durable.open(cache_size=2)
    table = backend.table("op", "panes", "window")
    for i in range(10):
        table.put(f"k{i}", i, namespace="w")
    table.put("other", 1, namespace="x")
    backend.trim()
    table.drop("w")
    assert table.get("k0", namespace="w") is None
    durable.checkpoint(backend)
    assert table.get("k0", namespace="w") is None
    durable.close()

    table = durable.open().table("op", "panes", "window")
    assert [ns for ns, _, _ in table.stored()] == ["x"]


def test_a_dropped_namespace_used_again_starts_empty(durable):
    backend = durable.open(cache_size=2)
    table = backend.table("op", "panes", "window")
    for i in range(5):
        table.put(f"k{i}", "old", namespace="w")
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open(cache_size=2)  # restored: any namespace may have stored entries
    table = backend.table("op", "panes", "window")
    table.drop("w")
    table.put("k0", "new", namespace="w")
    assert table.get("k1", namespace="w") is None
    assert list(table.keys_in("w")) == ["k0"]
    for i in range(5, 10):
        table.put(f"k{i}", "new", namespace="w")
    backend.trim()  # evicts from the namespace again: it is incomplete once more
    assert table.get("k1", namespace="w") is None
    assert sorted(table.keys_in("w")) == ["k0", "k5", "k6", "k7", "k8", "k9"]
    durable.checkpoint(backend)
    durable.close()

    table = durable.open().table("op", "panes", "window")
    assert sorted((key, value) for _, key, value in table.stored()) == [
        ("k0", "new"),
        ("k5", "new"),
        ("k6", "new"),
        ("k7", "new"),
        ("k8", "new"),
        ("k9", "new"),
    ]


def test_keys_in_sees_evicted_entries_not_yet_checkpointed(durable):
    backend = durable.open(cache_size=3)
    table = backend.table("op", "panes", "window")
    for i in range(10):
        table.put(f"k{i}", i, namespace="w")
    backend.trim()
    assert table.cached_entries() <= 3
    assert sorted(table.keys_in("w")) == sorted(f"k{i}" for i in range(10))
    assert {key: table.get(key, namespace="w") for key in table.keys_in("w")} == {f"k{i}": i for i in range(10)}


def test_keys_in_of_a_restored_table_sees_stored_entries(durable):
    backend = durable.open()
    table = backend.table("op", "t", "value")
    for i in range(5):
        table.put(i, i * i)
    table.put("in window", 1, namespace="w")
    durable.checkpoint(backend)
    durable.close()

    table = durable.open().table("op", "t", "value")
    assert table.restored
    assert sorted(table.keys_in()) == [0, 1, 2, 3, 4]
    assert list(table.keys_in("w")) == ["in window"]
    assert table.get(3) == 9


def test_a_table_split_by_key_group_ranges(durable):
    """After a rescale, each subtask sees exactly the keys of its key groups."""
    backend = durable.open()
    table = backend.table("op", "t", "value")
    for i in range(200):
        table.put(f"k{i}", i)
    durable.checkpoint(backend)
    durable.close()

    durable.open()
    low = LmdbBackend(durable.store, key_groups=range(0, 64), max_parallelism=128).table("op", "t", "value")
    high = LmdbBackend(durable.store, key_groups=range(64, 128), max_parallelism=128).table("op", "t", "value")
    low_keys, high_keys = set(low.keys_in()), set(high.keys_in())
    assert low_keys and high_keys and not low_keys & high_keys
    assert low_keys | high_keys == {f"k{i}" for i in range(200)}


def test_subtasks_sharing_a_store_snapshot_only_their_own_tables(durable):
    """A worker's subtasks share one store, and their key groups overlap when their
    operators' parallelisms differ (a source task at parallelism 1 owns every key group):
    each snapshot and full copy holds only the tables of its own subtask."""
    everything = durable.open()  # all 128 key groups, like a source task's
    half = LmdbBackend(durable.store, key_groups=range(0, 64), max_parallelism=128)
    mine, theirs = everything.table("source", "s", "value"), half.table("window", "w", "value")
    for i in range(50):
        mine.put(f"m{i}", i)
        theirs.put(f"t{i}", i)
    half.snapshot(1)  # written to the shared store by the other subtask first
    changed = {key for _, key, _ in everything.snapshot(1)}
    full = {key for _, key, _ in everything.contents()}
    assert changed == full == {mine.stored_key(everything._group_of(f"m{i}"), None, f"m{i}") for i in range(50)}


def test_a_damaged_key_is_found_by_reading_the_working_copy_in_order(durable):
    """A lookup by key cannot find a key whose bytes were damaged (it looks for the right
    bytes); the background verification reads the working copy in key order and can."""
    backend = durable.open()
    table = backend.table("op", "count", "value")
    for i in range(100):
        table.put(f"user-{i:03d}", i)
    durable.checkpoint(backend)
    durable.close()
    data = bytearray((durable.path / "data.mdb").read_bytes())
    at = data.index(b'"user-042"') + 3
    data[at] ^= 0x01
    (durable.path / "data.mdb").write_bytes(bytes(data))

    backend = durable.open()
    table = backend.table("op", "count", "value")
    assert table.get("user-042") is None  # not found: nothing to verify
    with pytest.raises(CorruptStateError, match="operator 'op': state 'count': the stored entry of key") as info:
        for _ in range(10):
            backend.verify(30)
    assert f"state directory {durable.path}" in str(info.value) and "--from-savepoint" in str(info.value)


# -- the bounded cache ------------------------------------------------------------------------


def test_bounded_cache_with_ten_thousand_keys(durable):
    cache_size, batch = 100, 100
    backend = durable.open(cache_size=cache_size)
    table = backend.table("op", "t", "value")
    for start in range(0, 10_000, batch):
        for i in range(start, start + batch):
            table.put(i, {"n": i})
        assert table.cached_entries() <= cache_size + batch
        backend.trim()
        assert table.cached_entries() <= cache_size
    assert all(table.get(i) == {"n": i} for i in range(0, 10_000, 7))
    for start in range(0, 10_000, batch):  # reading back in batches stays bounded too
        assert all(table.get(i) == {"n": i} for i in range(start, start + batch))
        backend.trim()
        assert table.cached_entries() <= cache_size
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open(cache_size=cache_size)
    table = backend.table("op", "t", "value")
    for start in range(0, 10_000, batch):
        assert all(table.get(i) == {"n": i} for i in range(start, start + batch))
        backend.trim()
    assert table.cached_entries() <= cache_size


def test_trim_writes_every_change_and_evicts_down_to_the_low_water_mark(durable):
    backend = durable.open(cache_size=10)
    one, two = backend.table("op", "one", "value"), backend.table("op", "two", "value")
    for i in range(20):
        one.put(i, i)
        two.put(i, -i)
    assert backend.cached_entries == 40
    backend.trim()
    assert one.cached_entries() + two.cached_entries() == backend.cached_entries == 8  # 80 % of the bound
    stored = [one.stored_key(backend._group_of(i), None, i) for i in range(20)]
    assert all(durable.store.get(key) is not None for key in stored)  # every change is in the working copy
    assert durable.store.statistics()["undo"] == 40  # and can be undone: no checkpoint holds it yet
    assert [one.get(i) for i in range(20)] == list(range(20))
    assert [two.get(i) for i in range(20)] == [-i for i in range(20)]


def test_a_completed_checkpoint_drops_the_undo_of_what_it_holds(durable):
    backend = durable.open(cache_size=1)
    table = backend.table("op", "t", "value")
    for i in range(10):
        table.put(i, i)
    backend.trim()
    assert durable.store.statistics() == {"live": 10, "undo": 10}
    durable.checkpoint(backend)
    assert durable.store.statistics() == {"live": 10, "undo": 0}
    assert [table.get(i) for i in range(10)] == list(range(10))


def test_changes_after_the_last_checkpoint_are_gone_after_reopen(durable):
    backend = durable.open(cache_size=50)
    table = backend.table("op", "t", "value")
    for i in range(1000):
        table.put(i, f"committed {i}")
    backend.trim()
    durable.checkpoint(backend)
    for i in range(1000):
        table.put(i, f"uncommitted {i}")
        if i % 100 == 99:
            backend.trim()
    table.put("new", "uncommitted")
    backend.trim()
    assert table.get(3) == "uncommitted 3"  # read back from the working copy
    durable.close()  # a crash: no checkpoint

    backend = durable.open(cache_size=50)
    table = backend.table("op", "t", "value")
    assert all(table.get(i) == f"committed {i}" for i in range(1000))
    assert table.get("new") is None
    assert durable.store.statistics() == {"live": 1000, "undo": 0}


def test_deleting_an_evicted_entry(durable):
    backend = durable.open(cache_size=1)
    table = backend.table("op", "t", "value")
    for i in range(5):
        table.put(i, i)
    durable.checkpoint(backend)
    for i in range(5):
        table.put(i, i + 100)
    backend.trim()  # spilled
    table.delete(2)
    assert table.get(2) is None
    durable.checkpoint(backend)
    assert table.get(2) is None
    durable.close()

    table = durable.open().table("op", "t", "value")
    assert [table.get(i) for i in range(5)] == [100, 101, None, 103, 104]


# -- the serializer boundary ------------------------------------------------------------------


def test_a_set_in_json_state_is_refused_at_snapshot_naming_operator_state_and_type(durable):
    backend = durable.open()
    backend.table("counter", "seen", "value").put("a", {1, 2})
    with pytest.raises(StateError, match=r"operator 'counter': state 'seen'.*type set") as info:
        list(backend.snapshot(1))
    assert "serializer='pickle'" in str(info.value)


def test_a_set_in_json_state_is_refused_when_evicted(durable):
    backend = durable.open(cache_size=0)
    backend.table("counter", "seen", "value").put("a", {1, 2})
    with pytest.raises(StateError, match=r"operator 'counter': state 'seen'.*type set"):
        backend.trim()


def test_a_set_in_pickled_state_round_trips(durable):
    backend = durable.open()
    backend.table("counter", "seen", "value", serializer=PickleSerializer()).put("a", {1, 2})
    durable.checkpoint(backend)
    durable.close()

    table = durable.open().table("counter", "seen", "value", serializer=PickleSerializer())
    assert table.get("a") == {1, 2}


def test_json_state_returns_tuples_as_lists(durable):
    backend = durable.open()
    backend.table("op", "t", "value").put("a", {"pair": (1, 2)})
    durable.checkpoint(backend)
    durable.close()

    assert durable.open().table("op", "t", "value").get("a") == {"pair": [1, 2]}


def test_json_map_state_refuses_non_string_map_keys(durable):
    backend = durable.open()
    backend.table("op", "m", "map").put("a", {1: "one"})
    with pytest.raises(StateError, match=r"operator 'op': state 'm'.*type dict"):
        list(backend.snapshot(1))


def test_backend_serializer_is_the_default_for_its_tables(durable):
    durable.open()
    backend = LmdbBackend(durable.store, serializer=PickleSerializer())
    table = backend.table("op", "t", "value")
    assert table.serializer.name == "pickle"
    table.put("a", frozenset({1}))
    durable.checkpoint(backend)


@pytest.mark.parametrize(
    ("kind", "serializer"),
    [("list", None), ("value", PickleSerializer())],
    ids=["another kind", "another serializer"],
)
def test_restoring_a_table_declared_otherwise_is_refused(durable, kind, serializer):
    backend = durable.open()
    backend.table("counter", "seen", "value").put("a", 1)
    durable.checkpoint(backend)
    durable.close()

    backend = durable.open()
    with pytest.raises(StateError, match=r"operator 'counter': state 'seen' was checkpointed as value state"):
        backend.table("counter", "seen", kind, serializer=serializer)


def test_serializer_named():
    assert isinstance(serializer_named("json", "op"), JsonSerializer)
    assert isinstance(serializer_named("pickle", "op"), PickleSerializer)
    custom = PickleSerializer()
    assert serializer_named(custom, "op") is custom
    with pytest.raises(PipelineError, match="operator x: unknown serializer 'yaml'"):
        serializer_named("yaml", "operator x")
    with pytest.raises(PipelineError, match="operator x: serializer= takes"):
        serializer_named(object(), "operator x")


def test_an_entry_evicted_between_a_barrier_and_its_checkpoint_is_still_found(durable):
    """Between a snapshot and its checkpoint's completion a clean entry may be evicted:
    iterating the namespace (a window firing) must still see it."""
    backend = durable.open(cache_size=1)
    table = backend.table("op", "t", "window")
    table.put("a", 1, namespace="w")
    table.put("b", 2, namespace="w")
    _changes(backend, 1)  # taken, not yet completed
    backend.trim()  # both are clean now: evicted
    assert table.cached_entries() <= 1
    assert sorted(table.keys_in("w")) == ["a", "b"]
    assert (table.get("a", namespace="w"), table.get("b", namespace="w")) == (1, 2)
    durable.checkpoint(backend)
    backend.trim()
    assert sorted(table.keys_in("w")) == ["a", "b"]


def test_json_refuses_values_and_keys_that_would_come_back_as_another_type(durable):
    import dataclasses
    import datetime

    @dataclasses.dataclass(frozen=True)
    class UserKey:
        name: str

    backend = durable.open()
    table = backend.table("op", "t", "value")
    table.put("a", datetime.datetime(2026, 1, 1))
    with pytest.raises(StateError, match="operator 'op': state 't' cannot serialise a value of type datetime"):
        list(backend.snapshot(1))
    table.delete("a")
    table.put(UserKey("u"), 1)
    with pytest.raises(StateError, match="cannot store a key of type UserKey.*state_key"):
        list(backend.snapshot(1))
