"""LmdbStore: the worker's state directory."""

import lmdb
import pytest

from aioflow.errors import StateError
from aioflow.state.lmdb import FORMAT, LmdbStore


@pytest.fixture
def opened():
    stores = []

    def open_store(path, **kwargs):
        store = LmdbStore(path, **kwargs)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        store.close()  # closing twice is harmless


def _close(store):
    store.close()


# -- opening ----------------------------------------------------------------------------------


def test_open_creates_the_directory_and_marks_the_format(tmp_path, opened):
    path = tmp_path / "a" / "b"
    store = opened(path)
    assert (path / "data.mdb").exists()
    assert store.read_meta(b"format") == FORMAT


def test_a_directory_with_a_file_that_is_not_lmdb_is_refused(tmp_path):
    (tmp_path / "data.mdb").write_bytes(b"garbage, not an LMDB environment " * 1024)
    with pytest.raises(StateError, match="cannot open the LMDB environment") as info:
        LmdbStore(tmp_path)
    assert f"state directory {tmp_path}:" in str(info.value)


def test_a_store_of_another_format_version_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"aioflow-state/0", db=env.open_db(b"meta", txn=txn))
    env.close()

    with pytest.raises(StateError, match="incompatible") as info:
        LmdbStore(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "aioflow-state/0" in message and FORMAT.decode() in message


def test_an_lmdb_environment_aioflow_did_not_write_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"some key", b"some value", db=env.open_db(b"state", txn=txn))
    env.close()

    with pytest.raises(StateError, match="did not write") as info:
        LmdbStore(tmp_path)
    assert str(tmp_path) in str(info.value)


# -- the map grows ----------------------------------------------------------------------------


def test_the_map_grows_for_a_large_checkpoint(tmp_path, opened):
    store = opened(tmp_path, map_size=1 << 20)
    value = b"v" * 1000
    writes = [(b"key %06d" % i, value) for i in range(5000)]  # ~5 MB into a 1 MB map
    assert store.commit(writes, {}, set()) == sum(len(k) + len(v) for k, v in writes)
    assert store.env.info()["map_size"] >= 5 * (1 << 20)
    assert store.get(b"key 004999") == value
    _close(store)

    store = opened(tmp_path, map_size=1 << 20)
    assert len(store.keys_with_prefix(b"key ")) == 5000
    store.commit([(b"more %06d" % i, value) for i in range(2000)], {}, set())
    assert store.get(b"more 001999") == value


def test_the_map_grows_for_a_large_spill(tmp_path, opened):
    store = opened(tmp_path, map_size=1 << 20)
    store.spill([(b"key %06d" % i, b"w" * 1000) for i in range(5000)])
    assert store.get(b"key 000000") == b"w" * 1000
    assert store.get_working(b"key 004999") == b"w" * 1000


# -- reads and writes -------------------------------------------------------------------------


def test_reads_see_each_commit(tmp_path, opened):
    store = opened(tmp_path)
    store.commit([(b"k", b"1")], {}, set())
    assert store.get(b"k") == b"1"
    store.commit([(b"k", b"2")], {}, set())
    assert store.get(b"k") == b"2"
    store.commit([(b"k", None), (b"never written", None)], {}, set())
    assert store.get(b"k") is None


def test_get_prefers_the_working_area(tmp_path, opened):
    store = opened(tmp_path)
    store.commit([(b"k", b"checkpointed")], {}, set())
    store.spill([(b"k", b"evicted")])
    assert store.get(b"k") == b"evicted"
    assert store.get_working(b"k") == b"evicted"
    assert store.keys_with_prefix(b"k") == [b"k"]
    assert list(store.items_with_prefix(b"k")) == [(b"k", b"checkpointed")]
    assert list(store.items_with_prefix(b"k", working=True)) == [(b"k", b"evicted")]


def test_commit_clears_working_copies_except_those_kept(tmp_path, opened):
    store = opened(tmp_path)
    store.spill([(b"a", b"old a"), (b"b", b"old b"), (b"c", b"c")])
    store.commit([(b"a", b"old a"), (b"b", b"old b")], {}, {b"b"})
    assert store.get_working(b"a") is None
    assert store.get_working(b"b") == b"old b"  # spilled again after the snapshot
    assert store.get_working(b"c") == b"c"  # not part of this checkpoint
    assert store.get(b"a") == b"old a"


def test_the_working_area_is_cleared_on_open(tmp_path, opened):
    store = opened(tmp_path)
    store.commit([(b"k", b"committed")], {}, set())
    store.spill([(b"k", b"uncommitted"), (b"new", b"uncommitted")])
    _close(store)

    store = opened(tmp_path)
    assert store.get(b"k") == b"committed"
    assert store.get(b"new") is None
    assert store.keys_with_prefix(b"", working=True) == []


def test_items_with_prefix_in_key_order_within_the_prefix(tmp_path, opened):
    store = opened(tmp_path)
    store.commit([(b"b2", b"2"), (b"a", b"0"), (b"b1", b"1"), (b"c", b"3"), (b"b", b"x")], {}, set())
    assert list(store.items_with_prefix(b"b")) == [(b"b", b"x"), (b"b1", b"1"), (b"b2", b"2")]
    assert store.keys_with_prefix(b"d") == []


def test_meta_is_committed_with_the_checkpoint(tmp_path, opened):
    store = opened(tmp_path)
    store.commit([], {b"checkpoint": b"7"}, set())
    _close(store)
    assert opened(tmp_path).read_meta(b"checkpoint") == b"7"


# -- the table registry -----------------------------------------------------------------------


def test_table_ids_are_stable_once_committed(tmp_path, opened):
    store = opened(tmp_path)
    one = store.register_table("op", "one", "value", "json")
    two = store.register_table("op", "two", "list", "pickle")
    assert one == (1, False) and two == (2, False)
    assert store.register_table("op", "one", "value", "json") == (1, False)
    assert store.operators() == set()
    store.commit([], {}, set())
    assert store.operators() == {"op"}
    _close(store)

    store = opened(tmp_path)
    assert store.register_table("op", "two", "list", "pickle") == (2, True)
    assert store.register_table("op", "one", "value", "json") == (1, True)
    assert store.register_table("other", "one", "value", "json") == (3, False)


def test_a_registration_without_a_checkpoint_is_not_kept(tmp_path, opened):
    store = opened(tmp_path)
    store.register_table("op", "one", "value", "json")
    _close(store)

    store = opened(tmp_path)
    assert store.register_table("op", "other", "value", "json") == (1, False)
    assert store.operators() == set()


@pytest.mark.parametrize(("kind", "serializer"), [("map", "json"), ("value", "pickle")])
def test_a_table_declared_otherwise_after_a_restart_is_refused(tmp_path, opened, kind, serializer):
    store = opened(tmp_path)
    store.register_table("counter", "seen", "value", "json")
    store.commit([], {}, set())
    _close(store)

    store = opened(tmp_path)
    with pytest.raises(StateError, match=r"operator 'counter': state 'seen' was checkpointed as value state "
                                         r"with the 'json' serializer"):
        store.register_table("counter", "seen", kind, serializer)


def test_copy_to_makes_an_openable_copy(tmp_path, opened):
    store = opened(tmp_path / "live")
    store.register_table("op", "one", "value", "json")
    store.commit([(b"k", b"v")], {b"checkpoint": b"3"}, set())
    store.spill([(b"k", b"uncommitted")])
    store.copy_to(tmp_path / "copy")

    copy = opened(tmp_path / "copy")
    assert copy.get(b"k") == b"v"
    assert copy.read_meta(b"checkpoint") == b"3"
    assert copy.register_table("op", "one", "value", "json") == (1, True)
