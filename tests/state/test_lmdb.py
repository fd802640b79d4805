"""LmdbStore: the worker's working copy of its state, verified, private, and undoable."""

import os
import stat

import lmdb
import pytest

from aioflow._core.errors import CorruptStateError, IncompatibleStateError, StateError
from aioflow._core.state.lmdb import FORMAT, KEY_GROUP, PREFIX, LmdbStore, StoredValueDamaged


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


def _key(group: int, name: bytes) -> bytes:
    return KEY_GROUP.pack(group) + b"\x00\x00\x00\x01\x00\x00" + name


# -- opening ----------------------------------------------------------------------------------


def test_open_creates_a_private_directory_whatever_the_umask(tmp_path, opened):
    path = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        store = opened(path)
        store.write([(_key(0, b"k"), b"v")], None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb", "lock"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600, name


def test_a_directory_with_a_file_that_is_not_lmdb_is_refused(tmp_path):
    (tmp_path / "data.mdb").write_bytes(b"garbage, not an LMDB environment " * 1024)
    with pytest.raises(CorruptStateError, match="cannot open the LMDB environment") as info:
        LmdbStore(tmp_path)
    assert f"state directory {tmp_path}:" in str(info.value)


def test_a_working_copy_of_an_older_format_is_refused_naming_both(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"aioflow-state/1", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(CorruptStateError, match="incompatible version") as info:
        LmdbStore(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "aioflow-state/1" in message and FORMAT in message


def test_an_lmdb_environment_aioflow_did_not_write_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"some key", b"some value", db=env.open_db(b"live", txn=txn))
    env.close()
    with pytest.raises(CorruptStateError, match="no aioflow format marker") as info:
        LmdbStore(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_truncated_data_file_is_refused_before_a_page_is_read(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(0, b"k%05d" % i), b"v" * 200) for i in range(5000)], None)
    store.close()
    data = tmp_path / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(CorruptStateError, match="data.mdb is truncated") as info:
        LmdbStore(tmp_path)
    assert f"{size // 2} bytes" in str(info.value)


def test_an_empty_data_file_is_a_new_working_copy(tmp_path, opened):
    (tmp_path / "data.mdb").write_bytes(b"")
    store = opened(tmp_path)
    assert not store.existed and store.identity is None and store.manifest is None


def _flip_page_number(path, flags: int) -> int:
    """Flip a bit of the page number in the header of the last page of kind ``flags``
    (LMDB's ``P_BRANCH`` 1, ``P_LEAF`` 2, ``P_OVERFLOW`` 4) that says it is where it is."""
    data = bytearray((path / "data.mdb").read_bytes())
    pages = [
        number
        for number in range(2, len(data) // 4096)
        if int.from_bytes(data[number * 4096 : number * 4096 + 8], "little") == number
        and int.from_bytes(data[number * 4096 + 10 : number * 4096 + 12], "little") & flags
    ]
    data[pages[-1] * 4096] ^= 0x08
    (path / "data.mdb").write_bytes(bytes(data))
    return pages[-1]


@pytest.mark.parametrize("flags", [1, 2, 4], ids=["branch", "leaf", "overflow"])
def test_a_page_whose_header_names_another_page_is_refused_at_open(tmp_path, opened, flags):
    """LMDB frees a page by the number its own header gives when it first writes it: a
    damaged header would free, and later overwrite, a page in use. Found before then."""
    store = opened(tmp_path)
    store.write([(_key(0, b"k%05d" % i), b"v" * 200) for i in range(5000)], None)
    store.write([(_key(1, b"large"), b"x" * 20_000)], None)  # on overflow pages
    store.close()
    page = _flip_page_number(tmp_path, flags)
    with pytest.raises(CorruptStateError, match="data.mdb is damaged") as info:
        LmdbStore(tmp_path)
    assert f"page {page} says it is page {page ^ 0x08}" in str(info.value)
    assert f"state directory {tmp_path}" in str(info.value)


def _pages_of_kind(data: bytearray, flags: int) -> list[int]:
    return [
        number
        for number in range(2, len(data) // 4096)
        if int.from_bytes(data[number * 4096 : number * 4096 + 8], "little") == number
        and int.from_bytes(data[number * 4096 + 10 : number * 4096 + 12], "little") & flags
    ]


def test_a_page_header_that_hides_an_entry_is_refused_at_open(tmp_path, opened):
    """One slot fewer in a leaf's header (its ``lower`` bound two bytes down) hides that
    leaf's last entry from every lookup and scan without failing any checksum: the tree
    then holds fewer entries than its database record counts."""
    store = opened(tmp_path)
    store.write([(_key(0, b"k%05d" % i), b"v" * 200) for i in range(5000)], None)
    store.close()
    data = bytearray((tmp_path / "data.mdb").read_bytes())
    leaf = _pages_of_kind(data, 2)[-1] * 4096
    lower = int.from_bytes(data[leaf + 12 : leaf + 14], "little")
    data[leaf + 12 : leaf + 14] = (lower - 2).to_bytes(2, "little")
    (tmp_path / "data.mdb").write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match="entries in its pages, and its record says"):
        LmdbStore(tmp_path)


def test_an_overflow_page_counting_other_pages_is_refused_at_open(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(1, b"large"), b"x" * 20_000)], None)  # 5 pages of 4096 bytes
    store.close()
    data = bytearray((tmp_path / "data.mdb").read_bytes())
    head = _pages_of_kind(data, 4)[-1] * 4096
    assert int.from_bytes(data[head + 12 : head + 16], "little") == 5
    data[head + 12] ^= 0x02
    (tmp_path / "data.mdb").write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match="counts 7 pages for a value that needs 5"):
        LmdbStore(tmp_path)


def test_two_stores_on_one_directory_are_refused(tmp_path, opened):
    opened(tmp_path)
    with pytest.raises(StateError, match="is in use by process"):
        LmdbStore(tmp_path)


# -- values are verified ----------------------------------------------------------------------


def _flip_value_byte(path, needle: bytes) -> None:
    data = bytearray((path / "data.mdb").read_bytes())
    at = data.index(needle)
    data[at] ^= 0x01
    (path / "data.mdb").write_bytes(bytes(data))


def test_a_damaged_value_is_found_when_read(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(1, b"a"), b"value of a 12345"), (_key(1, b"b"), b"value of b 67890")], None)
    store.close()
    _flip_value_byte(tmp_path, b"12345")
    store = opened(tmp_path)
    assert store.get(_key(1, b"b")) == b"value of b 67890"
    with pytest.raises(StoredValueDamaged) as info:
        store.get(_key(1, b"a"))
    assert info.value.key == _key(1, b"a")
    with pytest.raises(StoredValueDamaged):
        list(store.scan(KEY_GROUP.pack(1), KEY_GROUP.pack(2)))


def test_a_value_under_another_key_does_not_verify(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(1, b"a"), b"payload")], None)
    sealed = store.read_raw(_key(1, b"a"))
    store.load([(_key(1, b"b"), sealed)])  # the bytes of a's value, stored under b
    with pytest.raises(StoredValueDamaged):
        store.get(_key(1, b"b"))


# -- undo -------------------------------------------------------------------------------------


def test_rollback_restores_the_last_completed_checkpoint(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(0, b"a"), b"1"), (_key(5, b"b"), b"2")], 1)
    store.complete(1, {"app": "x", "job_id": "j"}, b"manifest 1")
    assert store.statistics() == {"live": 2, "undo": 0}
    store.write([(_key(0, b"a"), b"10"), (_key(5, b"b"), None), (_key(7, b"c"), b"new")], 2)
    store.write([(_key(0, b"a"), b"100")], 3)  # a second epoch: the oldest undo record wins
    assert store.statistics()["undo"] == 4
    assert store.rollback(1) == 4
    assert (store.get(_key(0, b"a")), store.get(_key(5, b"b")), store.get(_key(7, b"c"))) == (b"1", b"2", None)
    assert store.statistics() == {"live": 2, "undo": 0}


def _undo_record(path) -> tuple[bytes, bytes]:
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin() as txn:
        [(key, value)] = list(txn.cursor(db=env.open_db(b"undo", txn=txn)))
    env.close()
    return key, value


@pytest.mark.parametrize("where", ["flag", "epoch", "old value"])
def test_a_damaged_undo_record_is_refused_not_rolled_back(tmp_path, opened, where):
    """The undo log is verified like values: a present value read as absent, an epoch
    that would keep a change after the checkpoint, or a damaged old value all stop the
    rollback, naming the record, before the working copy changes."""
    store = opened(tmp_path)
    store.write([(_key(0, b"a"), b"at checkpoint 1: 4711")], 1)
    store.complete(1, {"app": "x", "job_id": "j"}, b"manifest 1")
    store.write([(_key(0, b"a"), b"after checkpoint 1")], 2)
    store.close()
    key, value = _undo_record(tmp_path)
    data = bytearray((tmp_path / "data.mdb").read_bytes())
    if where == "flag":  # the record's payload starts with its flag, after the CRC
        at = data.index(value)
        data[at + 4] ^= 0x01
    elif where == "epoch":  # key group (2) and table (4), then the epoch: 2 -> 0
        at = data.index(key)
        data[at + 6 + 7] ^= 0x02
    else:
        at = data.index(value) + value.index(b"4711")
        data[at] ^= 0x01
    (tmp_path / "data.mdb").write_bytes(bytes(data))
    store = opened(tmp_path)
    with pytest.raises(StoredValueDamaged, match="undo record") as info:
        store.rollback(1)
    assert f"state directory {tmp_path}" in str(info.value)
    assert store.statistics()["undo"] == 1  # nothing rolled back


def test_changed_keys_verify_the_undo_records_they_list(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(0, b"a"), b"1"), (_key(0, b"b"), b"keep 4711")], 1)
    store.complete(1, {"app": "x", "job_id": "j"}, b"manifest 1")
    store.write([(_key(0, b"b"), b"2")], 2)
    store.close()
    _, value = _undo_record(tmp_path)
    data = bytearray((tmp_path / "data.mdb").read_bytes())
    data[data.index(value) + value.index(b"4711")] ^= 0x01
    (tmp_path / "data.mdb").write_bytes(bytes(data))
    store = opened(tmp_path)
    with pytest.raises(StoredValueDamaged, match="undo record"):
        list(store.changed_keys([_key(0, b"")[:PREFIX]], 1))


def test_prepare_is_kept_until_the_working_copy_is_reset(tmp_path, opened):
    store = opened(tmp_path)
    assert store.prepared is None
    store.prepare(3)
    store.close()
    store = opened(tmp_path)
    assert store.prepared == 3
    store.reset()
    store.close()
    assert opened(tmp_path).prepared is None


def test_rollback_of_some_key_groups_only(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(0, b"a"), b"1"), (_key(5, b"b"), b"2")], 1)
    store.complete(1, {"app": "x", "job_id": "j"}, b"manifest 1")
    store.write([(_key(0, b"a"), b"10"), (_key(5, b"b"), b"20")], 2)
    store.rollback(1, groups=frozenset({5}))
    assert (store.get(_key(0, b"a")), store.get(_key(5, b"b"))) == (b"10", b"2")
    assert [key for _, key in store.changed_keys([_key(0, b"")[:PREFIX], _key(5, b"")[:PREFIX]], 1)] == [_key(0, b"a")]


def test_changed_keys_are_listed_key_group_by_key_group(tmp_path, opened):
    store = opened(tmp_path)
    store.write([(_key(3, b"x"), b"1"), (_key(1, b"y"), b"1")], 1)
    store.complete(1, {"app": "x", "job_id": "j"}, b"m")
    store.write([(_key(3, b"z"), b"1"), (_key(1, b"y"), b"2")], 2)
    store.write([(_key(1, b"y"), b"3")], 3)
    prefixes = [_key(1, b"")[:PREFIX], _key(3, b"")[:PREFIX]]
    assert list(store.changed_keys(prefixes, 1)) == [(1, _key(1, b"y")), (1, _key(1, b"y")), (3, _key(3, b"z"))]
    store.complete(2, {"app": "x", "job_id": "j"}, b"m")
    assert list(store.changed_keys(prefixes, 2)) == [(1, _key(1, b"y"))]


def test_identity_and_manifest_survive_reopen(tmp_path, opened):
    store = opened(tmp_path)
    store.complete(4, {"app": "x", "job_id": "j"}, b"the manifest")
    store.close()
    store = opened(tmp_path)
    assert store.identity == {"app": "x", "job_id": "j"} and store.manifest == b"the manifest"


def test_damaged_metadata_is_refused(tmp_path, opened):
    store = opened(tmp_path)
    store.complete(4, {"app": "application-name", "job_id": "j"}, b"m")
    store.close()
    _flip_value_byte(tmp_path, b"application-name")
    with pytest.raises(CorruptStateError, match="job identity is damaged"):
        LmdbStore(tmp_path)


# -- tables -----------------------------------------------------------------------------------


def test_table_ids_are_stable_once_completed(tmp_path, opened):
    store = opened(tmp_path)
    assert store.register_table("op", "a", "value", "json") == (1, False)
    assert store.register_table("op", "b", "list", "json") == (2, False)
    store.complete(1, {"app": "x", "job_id": "j"}, b"m")
    store.close()
    store = opened(tmp_path)
    assert store.register_table("op", "b", "list", "json") == (2, True)
    assert store.register_table("op", "c", "value", "json") == (3, False)


@pytest.mark.parametrize(("kind", "serializer"), [("map", "json"), ("value", "pickle")])
def test_a_table_declared_otherwise_after_a_restart_is_refused(tmp_path, opened, kind, serializer):
    store = opened(tmp_path)
    store.register_table("op", "a", "value", "json")
    store.complete(1, {"app": "x", "job_id": "j"}, b"m")
    store.close()
    store = opened(tmp_path)
    with pytest.raises(
        IncompatibleStateError, match="operator 'op': state 'a' was checkpointed as value state"
    ) as info:
        store.register_table("op", "a", kind, serializer)
    assert info.value.was == "value"


def test_forgotten_operators_never_give_their_ids_away(tmp_path, opened):
    store = opened(tmp_path)
    store.register_table("gone", "a", "value", "json")
    store.register_table("kept", "b", "value", "json")
    store.write([(KEY_GROUP.pack(9) + b"\x00\x00\x00\x01\x00\x00k", b"v")], None)
    store.complete(1, {"app": "x", "job_id": "j"}, b"m")
    store.forget_operators({"gone"}, 128)
    assert store.operators() == {"kept"}
    assert store.statistics()["live"] == 0
    assert store.register_table("new", "c", "value", "json") == (3, False)


# -- the map grows ----------------------------------------------------------------------------


def test_the_map_grows_for_a_large_write(tmp_path, opened):
    store = opened(tmp_path, map_size=1 << 20)
    value = b"v" * 1000
    store.write([(_key(2, b"key %06d" % i), value) for i in range(5000)], 1)  # ~10 MB with undo into 1 MB
    assert store.env.info()["map_size"] >= 8 * (1 << 20)
    assert store.get(_key(2, b"key 004999")) == value
