"""The worker's working copy of its keyed state: one LMDB environment in ``state_dir``.

Three databases:

- ``live``: every entry the subtasks' caches wrote (when they evicted it, or at a
  checkpoint barrier), under ``key group | table id | namespace | key``, so that a key
  group's state is one contiguous range. Each value carries a CRC-32 of key and payload
  (:mod:`aioflow._core.state.integrity`), checked on every read.
- ``undo``: for each entry changed since the last completed checkpoint, its value at that
  checkpoint, under ``key group | table id | epoch | rest of the live key`` (the epoch is
  the id of the checkpoint the change belongs to): what one table changed in one key group
  is one range, whichever subtask of the worker owns it. Restart rolls ``live`` back with it, so the working copy is
  exactly the last completed checkpoint: no replay, no rebuild, whatever the state's size.
  A completed checkpoint drops the undo of its epoch and earlier. Each record carries a
  CRC-32 of its key and value too, checked when it is read.
- ``meta``: the format marker, the job's identity, the table registry, the manifest of
  the checkpoint the working copy holds, and the id of the checkpoint whose barrier the
  working copy took last (written before checkpoint storage records the checkpoint: a
  copy of the working copy from before that cannot pass for it), each a sealed (SHA-256)
  JSON document.

Writes are batched (one transaction per eviction round and per barrier, never one per
record) and not synced one by one: a SIGKILL loses nothing the kernel has, and a
completed checkpoint syncs the environment. The map grows (doubling) when a transaction
finds it full.

A truncated ``data.mdb`` would make LMDB read past the end of its mapping (SIGBUS): the
store checks the file's size against LMDB's own page count before it reads a page.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import structlog

from aioflow._core.errors import CorruptStateError, DuplicateWorkerError, IncompatibleStateError, StateError
from aioflow._core.state.integrity import (
    FILE_MODE,
    Damaged,
    open_document,
    open_value,
    private_dir,
    seal_document,
    seal_value,
)

__all__ = ["FORMAT", "KEY_GROUP", "PREFIX", "TABLE", "LmdbStore", "StateDirLock", "StoredValueDamaged", "after"]

log = structlog.get_logger("aioflow.state")

_T = TypeVar("_T")

FORMAT = "aioflow-state/2"
_INITIAL_MAP_SIZE = 64 * 1024 * 1024
#: The key group prefix of every live key.
KEY_GROUP = struct.Struct(">H")
_EPOCH = struct.Struct(">Q")
#: The table id after the key group in every live key.
TABLE = struct.Struct(">I")
#: A live key's key group and table id: the head of its undo key, before the epoch.
PREFIX = KEY_GROUP.size + TABLE.size
_UNDO_HEAD = PREFIX + _EPOCH.size
_ABSENT, _PRESENT = b"\x00", b"\x01"
#: What LMDB raises when it finds its own pages damaged.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadTxnError, lmdb.PanicError)
#: Entries read per transaction when walking a range, so no read transaction stays open
#: (and holds old pages) while the walker's caller writes.
_CHUNK = 1024


class StoredValueDamaged(CorruptStateError):
    """A stored entry failed verification when read. It names the state directory and
    the stored key; a table that read it raises it again naming its operator, state and
    key. ``why`` says what did not verify."""

    def __init__(self, store: LmdbStore, key: bytes, why: str) -> None:
        super().__init__(_corrupt(store.path, f"the stored entry {key!r} is damaged ({why})", store.advice()).args[0])
        self.key = key
        self.why = why


class StateDirLock:
    """An exclusive lock on a state directory (``flock`` on ``state_dir/lock``): two workers
    on one directory would overwrite each other's checkpoints and output. Creates the
    directory private to the user (0700)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            private_dir(path)
            fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            self._file = os.fdopen(fd, "a+")
        except OSError as exc:
            raise StateError(f"state directory {path}: cannot open it: {exc}") from exc
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise DuplicateWorkerError(
                f"state directory {path} is in use by {holder}; each worker needs its own state_dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing drops the lock


def _corrupt(path: Path, what: str, advice: str = "") -> CorruptStateError:
    return CorruptStateError(
        f"state directory {path}: {what}. The working copy cannot be trusted: "
        + (
            advice
            or "restore it from checkpoint storage with --from-savepoint (a retained checkpoint works as a "
            "savepoint), or start from an empty state directory"
        )
    )


class LmdbStore:
    """See the module docstring. One per worker process, shared by its subtasks. It takes
    the directory's :class:`StateDirLock` and releases it when closed, unless the caller
    holds the lock (``lock``) and releases it itself."""

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = _INITIAL_MAP_SIZE,
        lock: StateDirLock | None = None,
        advice: Callable[[], str] = str,
    ) -> None:
        self.path = Path(path)
        #: What to do about damage found in the working copy: given by whoever knows the
        #: checkpoint storage (``""``: the general advice).
        self.advice = advice
        self._own_lock = StateDirLock(self.path) if lock is None else None
        try:
            self._open(map_size)
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self._own_lock is not None:
            self._own_lock.release()

    # -- opening ------------------------------------------------------------------------------

    @property
    def data_file(self) -> Path:
        return self.path / "data.mdb"

    def _open(self, map_size: int) -> None:
        private_dir(self.path)
        data = self.data_file
        #: The working copy existed (non-empty) before this process opened it.
        self.existed = data.exists() and data.stat().st_size > 0
        if data.exists() and not self.existed:
            data.unlink()  # an empty file: LMDB would take it for a new environment anyway
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=4,
                subdir=True,
                readahead=False,
                mode=FILE_MODE,
                sync=False,
                metasync=False,
            )
        except (lmdb.Error, OSError) as exc:
            raise _corrupt(self.path, f"cannot open the LMDB environment ({exc})", self.advice()) from exc
        for name in ("data.mdb", "lock.mdb"):
            if (self.path / name).exists():
                os.chmod(self.path / name, FILE_MODE)
        try:
            self._check_file()
            self._live = self.env.open_db(b"live")
            self._undo = self.env.open_db(b"undo")
            self._meta = self.env.open_db(b"meta")
            self._read_meta()
        except BaseException as exc:
            self.env.close()
            if isinstance(exc, lmdb.Error):  # damaged pages: LMDB finds them only when it reads them
                raise _corrupt(self.path, f"the LMDB environment is damaged ({exc})", self.advice()) from exc
            raise

    def _check_file(self) -> None:
        """Refuse a ``data.mdb`` missing pages LMDB uses (reading those would kill the
        process with SIGBUS; LMDB may count a few pages past the end of the file that it
        freed before ever writing them: those are fine, and found in its free list), or
        whose B-trees have a page that is not what its place says (see
        :func:`_check_structure`): before LMDB reads or writes any of it."""
        if not self.existed:
            return
        pages = self.env.info()["last_pgno"] + 1
        size = self.data_file.stat().st_size
        psize = self.env.stat()["psize"]
        if size < pages * psize:
            missing = range(size // psize, pages)
            try:
                free = _free_pages(self.data_file, psize, size // psize)
            except ValueError as exc:
                free, why = set(), f" ({exc})"
            else:
                why = ""
            if not all(page in free for page in missing):
                raise _corrupt(
                    self.path,
                    f"data.mdb is truncated: it has {size} bytes, and LMDB's own record says "
                    f"{pages * psize} ({pages} pages, the last ones in use){why}",
                    self.advice(),
                )
        try:
            _check_structure(self.data_file, psize, min(pages, size // psize))
        except ValueError as exc:
            raise _corrupt(self.path, f"data.mdb is damaged: {exc}", self.advice()) from None

    def _read_meta(self) -> None:
        with self.env.begin() as txn:
            marker = txn.get(b"format", db=self._meta)
            #: A new environment: the marker goes with its first write (a refused run touches nothing).
            self._unmarked = marker is None
            if marker is None:
                if txn.stat(self._live)["entries"] or txn.stat(self._undo)["entries"]:
                    raise _corrupt(self.path, "the LMDB environment has no aioflow format marker", self.advice())
                marker = seal_document({"format": FORMAT})
            found = (
                marker.decode(errors="replace")
                if marker.startswith(b"aioflow-state/")
                else self._document(marker, "format marker").get("format")
            )
            if found != FORMAT:
                raise CorruptStateError(
                    f"state directory {self.path} was written by an incompatible version of aioflow ({found}, "
                    f"this one reads {FORMAT}); its state cannot be carried over: run it with the version that "
                    "wrote it, or start from an empty state directory"
                )
            tables = txn.get(b"tables", db=self._meta)
            identity = txn.get(b"identity", db=self._meta)
            manifest = txn.get(b"manifest", db=self._meta)
            prepared = txn.get(b"prepared", db=self._meta)
        self._tables: dict[str, dict[str, Any]] = self._document(tables, "table registry") if tables else {}
        #: ``{"app": ..., "job_id": ...}`` of the job whose state this is (``None``: no
        #: checkpoint completed in it yet).
        self.identity: dict[str, str] | None = self._document(identity, "job identity") if identity else None
        #: The manifest of the checkpoint the working copy holds, as stored (sealed).
        self.manifest: bytes | None = manifest
        #: The checkpoint whose barrier the working copy took last (see :meth:`prepare`).
        self.prepared: int | None = self._document(prepared, "checkpoint record")["checkpoint"] if prepared else None

    def _document(self, data: bytes, what: str) -> Any:
        try:
            return open_document(data)
        except Damaged as exc:
            raise _corrupt(self.path, f"its {what} is damaged ({exc})", self.advice()) from None

    def _read_failed(self, exc: lmdb.Error) -> CorruptStateError:
        return _corrupt(self.path, f"reading state failed ({exc})", self.advice())

    # -- tables -------------------------------------------------------------------------------

    def register_table(self, operator: str, state: str, kind: str, serializer: str) -> tuple[int, bool]:
        """The table id of ``operator``'s ``state``, and whether the checkpoint the working
        copy holds has it. A declaration with another kind or serializer is refused."""
        name = f"{operator}\x1f{state}"
        known = self._tables.get(name)
        if known is not None:
            if known["kind"] != kind or known["serializer"] != serializer:
                raise _changed_declaration(operator, state, known, kind, serializer)
            return int(known["id"]), bool(known.get("committed"))
        table_id = max((int(t["id"]) for t in self._tables.values()), default=0) + 1
        self._tables[name] = {"id": table_id, "kind": kind, "serializer": serializer, "committed": False}
        return table_id, False

    def tables(self) -> dict[str, dict[str, Any]]:
        """The registry: ``"operator\\x1fstate" -> {"id", "kind", "serializer", "committed"}``."""
        return {name: dict(table) for name, table in self._tables.items()}

    def adopt_tables(self, tables: dict[str, dict[str, Any]]) -> None:
        """Take a checkpoint's registry (restoring from checkpoint storage)."""
        self._tables = {name: {**table, "committed": True} for name, table in tables.items()}

    def forget_operators(self, operators: set[str], max_parallelism: int) -> None:
        """Delete the state of ``operators`` (gone from the job, restored with
        ``--allow-non-restored-state``) from the working copy and the registry. Their ids
        are kept as forgotten, never given to another table."""
        doomed = {name: t for name, t in self._tables.items() if name.split("\x1f", 1)[0] in operators}
        prefixes = [struct.pack(">I", int(t["id"])) for t in doomed.values()]
        for name, table in doomed.items():
            del self._tables[name]
            self._tables[f"\x1fforgotten\x1f{table['id']}"] = {
                "id": table["id"],
                "kind": "forgotten",
                "serializer": "none",
                "committed": True,
            }
        for group in range(max_parallelism):
            for prefix in prefixes:
                start = KEY_GROUP.pack(group) + prefix
                self.delete_range(start, after(start), None)
        tables = seal_document(self._tables)
        self._write(lambda txn: txn.put(b"tables", tables, db=self._meta))

    def operators(self) -> set[str]:
        """Operators with state in the checkpoint the working copy holds."""
        return {
            name.split("\x1f", 1)[0]
            for name, t in self._tables.items()
            if t.get("committed") and t["kind"] != "forgotten"
        }

    # -- reads --------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The payload under ``key``, verified (:class:`StoredValueDamaged` if it is not)."""
        try:
            with self.env.begin(buffers=False) as txn:
                stored = txn.get(key, db=self._live)
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc
        if stored is None:
            return None
        try:
            return open_value(key, stored)
        except Damaged as exc:
            raise StoredValueDamaged(self, key, str(exc)) from None

    def scan(self, start: bytes, end: bytes, *, values: bool = True) -> Iterator[tuple[bytes, bytes | None]]:
        """``(key, payload)`` for every live key in ``[start, end)``, in key order, verified
        (``payload`` is ``None`` with ``values=False``; the check still runs). Read in
        chunks, each in a transaction of its own: writes between chunks are seen or not."""
        for key, stored in self.scan_sealed(start, end):
            yield key, open_value(key, stored)[0:] if values else None

    def scan_sealed(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value as stored)`` for every live key in ``[start, end)``, verified."""
        for key, stored in self._chunked(self._live, start, end):
            try:
                open_value(key, stored)
            except Damaged as exc:
                raise StoredValueDamaged(self, key, str(exc)) from None
            yield key, stored

    def _chunked(self, db: Any, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value as stored)`` of ``db`` in ``[start, end)``, in key order, read
        :data:`_CHUNK` entries per transaction: no read transaction stays open while the
        caller writes."""
        last: bytes | None = None
        while True:
            chunk: list[tuple[bytes, bytes]] = []
            try:
                with self.env.begin(buffers=False) as txn:
                    cursor = txn.cursor(db=db)
                    found = cursor.set_range(start if last is None else last)
                    if found and last is not None and cursor.key() == last:
                        found = cursor.next()
                    while found and len(chunk) < _CHUNK:
                        key = cursor.key()
                        if key >= end:
                            break
                        chunk.append((key, cursor.value()))
                        found = cursor.next()
            except lmdb.Error as exc:
                raise self._read_failed(exc) from exc
            yield from chunk
            if len(chunk) < _CHUNK:
                return
            last = chunk[-1][0]

    def verify(
        self, ranges: Sequence[tuple[bytes, bytes]], resume: bytes | None, budget: int
    ) -> tuple[int, bytes | None]:
        """Check the entries of ``ranges`` in key order, keys and values, from ``resume``
        (or the start) of the first range, in one read transaction
        (:class:`StoredValueDamaged` at the first that fails). Each entry costs one of
        ``budget``, and so does each range (a seek). Returns how many ranges are done and
        where to resume in the next one (``None``: at its start). Reading in order is what
        finds a damaged *key*, which a lookup by key cannot."""
        done = 0
        try:
            with self.env.begin(buffers=False) as txn:
                cursor = txn.cursor(db=self._live)
                for start, end in ranges:
                    found = cursor.set_range(resume if resume is not None and done == 0 else start)
                    while found:
                        key = cursor.key()
                        if key >= end:
                            break
                        if budget <= 0:
                            return done, bytes(key)
                        try:
                            open_value(key, cursor.value())
                        except Damaged as exc:
                            raise StoredValueDamaged(self, bytes(key), str(exc)) from None
                        budget -= 1
                        found = cursor.next()
                    done += 1
                    budget -= 1
                    if budget <= 0:
                        break
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc
        return done, None

    def first_key(self, start: bytes, end: bytes) -> bytes | None:
        """The first live key in ``[start, end)``, or ``None``."""
        try:
            with self.env.begin(buffers=False) as txn:
                cursor = txn.cursor(db=self._live)
                if cursor.set_range(start) and cursor.key() < end:
                    return bytes(cursor.key())
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc
        return None

    def changed_keys(self, prefixes: Iterable[bytes], after_epoch: int) -> Iterator[tuple[int, bytes]]:
        """``(key group, live key)`` of every entry under each of ``prefixes`` (a key group
        and table id, :data:`PREFIX` bytes, in key-group order) changed since checkpoint
        ``after_epoch`` completed (a key changed in several epochs comes once per epoch)."""
        for prefix in prefixes:
            group = KEY_GROUP.unpack_from(prefix)[0]
            for key, stored in self._chunked(self._undo, prefix + _EPOCH.pack(after_epoch + 1), after(prefix)):
                self._open_undo(key, stored)
                yield group, key[:PREFIX] + key[_UNDO_HEAD:]

    # -- writes -------------------------------------------------------------------------------

    def write(self, changes: Iterable[tuple[bytes, bytes | None]], epoch: int | None) -> int:
        """Apply ``(key, payload or None to delete)`` to ``live`` in one transaction. With
        ``epoch`` (checkpoints on), the first change of a key in an epoch keeps the key's
        previous value in ``undo``. Returns the bytes written."""
        changes = changes if isinstance(changes, list) else list(changes)
        size = 0

        def write(txn: lmdb.Transaction[bytes]) -> None:
            nonlocal size
            size = 0
            live, undo = self._live, self._undo
            stamp = None if epoch is None else _EPOCH.pack(epoch)
            for key, payload in changes:
                if payload is None:
                    old = txn.pop(key, db=live)
                    size += len(key)
                else:
                    stored = seal_value(key, payload)
                    old = txn.replace(key, stored, db=live)
                    size += len(key) + len(stored)
                if stamp is not None:
                    undo_key = key[:PREFIX] + stamp + key[PREFIX:]
                    txn.put(
                        undo_key,
                        seal_value(undo_key, _PRESENT + old if old is not None else _ABSENT),
                        db=undo,
                        overwrite=False,
                    )

        self._write(write)
        return size

    def delete_range(self, start: bytes, end: bytes, epoch: int | None) -> int:
        """Delete every live key in ``[start, end)`` (with undo, as :meth:`write`); returns
        how many there were."""
        doomed = [key for key, _ in self.scan(start, end, values=False)]
        if doomed:
            self.write([(key, None) for key in doomed], epoch)
        return len(doomed)

    def load(self, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Apply records read from checkpoint storage (sealed values or deletions) as they
        are, without undo: rebuilding the working copy. Returns how many."""
        count = 0
        batch: list[tuple[bytes, bytes | None]] = []

        def flush(txn: lmdb.Transaction[bytes]) -> None:
            for key, stored in batch:
                if stored is None:
                    txn.delete(key, db=self._live)
                else:
                    txn.put(key, stored, db=self._live)

        for record in records:
            batch.append(record)
            count += 1
            if len(batch) >= 10_000:
                self._write(flush)
                batch = []
        if batch:
            self._write(flush)
        return count

    def read_raw(self, key: bytes) -> bytes | None:
        """The value under ``key`` as stored (with its checksum), verified, for writing it on
        to checkpoint storage."""
        try:
            with self.env.begin(buffers=False) as txn:
                stored = txn.get(key, db=self._live)
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc
        if stored is not None:
            try:
                open_value(key, stored)
            except Damaged as exc:
                raise StoredValueDamaged(self, key, str(exc)) from None
        return stored

    def _open_undo(self, key: bytes, stored: bytes) -> bytes:
        """The payload of an undo record (its flag, then the live value it keeps), verified."""
        try:
            return open_value(key, stored)
        except Damaged as exc:
            raise StoredValueDamaged(self, key, f"undo record: {exc}") from None

    # -- checkpoints --------------------------------------------------------------------------

    def prepare(self, checkpoint_id: int) -> None:
        """Every subtask wrote its changes up to checkpoint ``checkpoint_id``'s barrier:
        record it before checkpoint storage does. A restart that finds storage one
        checkpoint ahead of the working copy trusts the copy to hold it only with this
        record (LMDB keeps transactions in order: the flushes before it are there too)."""
        record = seal_document({"checkpoint": checkpoint_id})

        def write(txn: lmdb.Transaction[bytes]) -> None:
            txn.put(b"prepared", record, db=self._meta)

        self._write(write)
        self.prepared = checkpoint_id

    def complete(self, checkpoint_id: int, identity: dict[str, str], manifest: bytes) -> None:
        """Checkpoint ``checkpoint_id`` completed: record it and the job's identity, drop
        the undo of its epoch and earlier, and sync the environment."""
        for table in self._tables.values():
            table["committed"] = True
        documents = {
            b"identity": seal_document(identity),
            b"tables": seal_document(self._tables),
            b"manifest": manifest,
        }

        def write(txn: lmdb.Transaction[bytes]) -> None:
            for key, value in documents.items():
                txn.put(key, value, db=self._meta)
            self._drop_undo(txn, lambda epoch: epoch <= checkpoint_id)

        self._write(write)
        self._sync()
        self.identity, self.manifest = identity, manifest

    def rollback(self, checkpoint_id: int, groups: frozenset[int] | None = None) -> int:
        """Undo every change after checkpoint ``checkpoint_id`` (in ``groups``, or all): the
        working copy holds it again. Returns how many entries were restored."""
        restored = 0

        def write(txn: lmdb.Transaction[bytes]) -> None:
            nonlocal restored
            restored = 0
            live = self._live
            cursor = txn.cursor(db=self._undo)
            found = cursor.last()  # newest epochs first, so each key ends at its oldest record
            while found:
                key = bytes(cursor.key())
                if groups is not None and KEY_GROUP.unpack_from(key)[0] not in groups:
                    found = cursor.prev()
                    continue
                value = self._open_undo(key, bytes(cursor.value()))
                if _EPOCH.unpack_from(key, PREFIX)[0] > checkpoint_id:
                    live_key = key[:PREFIX] + key[_UNDO_HEAD:]
                    if value[:1] == _PRESENT:
                        txn.put(live_key, value[1:], db=live)
                    elif value == _ABSENT:
                        txn.delete(live_key, db=live)
                    else:
                        raise StoredValueDamaged(self, key, f"undo record: unknown flag {value[:1]!r}")
                    restored += 1
                found = cursor.prev()
            self._drop_undo(txn, lambda epoch: groups is None or epoch > checkpoint_id, groups)

        self._write(write)
        self._sync()
        return restored

    def _drop_undo(
        self, txn: lmdb.Transaction[bytes], doomed: Callable[[int], bool], groups: frozenset[int] | None = None
    ) -> None:
        cursor = txn.cursor(db=self._undo)
        cursor.first()
        while key := cursor.key():  # empty once past the last record
            if (groups is None or KEY_GROUP.unpack_from(key)[0] in groups) and doomed(
                _EPOCH.unpack_from(key, PREFIX)[0]
            ):
                cursor.delete()  # and on to the next record
            elif groups is not None and KEY_GROUP.unpack_from(key)[0] not in groups:
                cursor.next()
            else:  # later epochs of this table in this key group stay: on to the next one
                cursor.set_range(after(key[:PREFIX]))

    def reset(self) -> None:
        """Empty the working copy: no state, no identity, no checkpoint (before rebuilding
        it from checkpoint storage)."""

        def write(txn: lmdb.Transaction[bytes]) -> None:
            txn.drop(self._live, delete=False)
            txn.drop(self._undo, delete=False)
            for key in (b"identity", b"tables", b"manifest", b"prepared"):
                txn.delete(key, db=self._meta)

        self._write(write)
        self._tables, self.identity, self.manifest, self.prepared = {}, None, None, None

    def _sync(self) -> None:
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise StateError(f"state directory {self.path}: syncing state to disk failed: {exc}") from exc

    def _write(self, write: Callable[[lmdb.Transaction[bytes]], object]) -> None:
        """Run ``write(txn)`` in one write transaction, growing the map while it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    if self._unmarked:
                        txn.put(b"format", seal_document({"format": FORMAT}), db=self._meta)
                    write(txn)
                self._unmarked = False
                return
            except lmdb.MapFullError:
                size = self.env.info()["map_size"] * 2
                log.info("state store map grows", path=str(self.path), map_size=size)
                self.env.set_mapsize(size)
            except _DAMAGE as exc:
                raise _corrupt(self.path, f"its LMDB pages are damaged ({exc})", self.advice()) from exc
            except lmdb.Error as exc:
                raise StateError(
                    f"state directory {self.path}: writing state failed: {exc} (is the disk full?)"
                ) from exc

    def statistics(self) -> dict[str, int]:
        """Entries in the working copy and in its undo log, for metrics and tests."""
        with self.env.begin() as txn:
            return {"live": txn.stat(self._live)["entries"], "undo": txn.stat(self._undo)["entries"]}

    def close(self) -> None:
        self.env.close()
        self.release_lock()


_PAGE_HEADER = struct.Struct("<QHHHH")  # LMDB's MDB_page: pgno, pad, flags, lower, upper
_META = struct.Struct("<IIQQ")  # MDB_meta: magic, version, address, map size; then two MDB_db, last page, txn id
_DB = struct.Struct("<IHHQQQQQ")  # MDB_db: pad, flags, depth, branch, leaf and overflow pages, entries, root
_NODE = struct.Struct("<HHHH")  # MDB_node: lo, hi, flags, key size
_P_BRANCH, _P_LEAF, _P_OVERFLOW = 0x01, 0x02, 0x04
_F_BIGDATA = 0x01
_NO_PAGE = 2**64 - 1


_F_SUBDATA = 0x02


class _PageFile:
    """LMDB 0.9's ``data.mdb`` read page by page, as far as the checks here need its
    format: the newer of the two meta pages, and B-trees walked from their roots. Every
    page read must say it is the page it was read as, and lie within the file's
    ``pages``; ``ValueError`` otherwise."""

    def __init__(self, data: mmap.mmap, psize: int, pages: int) -> None:
        self._data, self._psize, self._pages = data, psize, pages

    def page(self, number: int, flag: int = 0) -> int:
        """Where page ``number`` starts, once checked (and, with ``flag``, of that kind)."""
        if number >= self._pages:
            raise ValueError(f"page {number} is past the end of the file")
        base = number * self._psize
        found, _, flags, _, _ = _PAGE_HEADER.unpack_from(self._data, base)
        if found != number:
            raise ValueError(f"page {number} says it is page {found}")
        if flag and not flags & flag:
            raise ValueError(f"page {number} has flags {flags:#x}, not those of its place in the tree")
        return base

    def roots(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(root, entries)`` of the free and of the main database, from the newer valid
        meta page."""
        metas = []
        for number in (0, 1):
            base = self.page(number) + _PAGE_HEADER.size
            if _META.unpack_from(self._data, base)[0] != 0xBEEFC0DE:
                continue
            base += _META.size
            txnid = struct.unpack_from("<Q", self._data, base + 2 * _DB.size + 8)[0]
            free, main = _DB.unpack_from(self._data, base), _DB.unpack_from(self._data, base + _DB.size)
            metas.append((txnid, (free[7], free[6]), (main[7], main[6])))
        if not metas:
            raise ValueError("no valid meta page")
        _, free, main = max(metas)
        return free, main

    def leaves(self, root: int) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Where each leaf page of the tree at ``root`` starts, with its nodes' offsets in
        it; every branch and leaf page on the way is checked."""
        data = self._data
        stack = [root]
        while stack:
            number = stack.pop()
            if number == _NO_PAGE:
                continue
            base = self.page(number, _P_BRANCH | _P_LEAF)
            _, _, flags, lower, _ = _PAGE_HEADER.unpack_from(data, base)
            offsets = struct.unpack_from(f"<{(lower - _PAGE_HEADER.size) // 2}H", data, base + _PAGE_HEADER.size)
            if flags & _P_BRANCH:
                for offset in offsets:
                    lo, hi, node_flags, _ = _NODE.unpack_from(data, base + offset)
                    stack.append(lo | hi << 16 | node_flags << 32)
            else:
                yield base, offsets

    def value(self, base: int, offset: int) -> tuple[int, bytes]:
        """A leaf node's flags and value (read from its overflow pages if it has them)."""
        data = self._data
        lo, hi, node_flags, key_size = _NODE.unpack_from(data, base + offset)
        start, size = base + offset + _NODE.size + key_size, lo | hi << 16
        if not node_flags & _F_BIGDATA:
            return node_flags, bytes(data[start : start + size])
        first = self.page(struct.unpack_from("<Q", data, start)[0], _P_OVERFLOW) + _PAGE_HEADER.size
        if first + size > self._pages * self._psize:
            raise ValueError(f"a value on overflow pages from page {first // self._psize} runs past the file's end")
        return node_flags, bytes(data[first : first + size])

    def check_overflows(self, base: int, offsets: tuple[int, ...]) -> None:
        """Check the first overflow page of each node of the leaf at ``base`` that has one,
        and that it counts the pages its value needs."""
        page = self._data[base : base + self._psize]
        for offset in offsets:
            if page[offset + 4] & _F_BIGDATA:
                lo, hi, _, key_size = _NODE.unpack_from(page, offset)
                first = struct.unpack_from("<Q", page, offset + _NODE.size + key_size)[0]
                count = struct.unpack_from("<I", self._data, self.page(first, _P_OVERFLOW) + 12)[0]
                needed = -(-((lo | hi << 16) + _PAGE_HEADER.size) // self._psize)
                if count != needed:
                    raise ValueError(f"overflow page {first} counts {count} pages for a value that needs {needed}")


def _mapped(path: Path, check: Callable[[mmap.mmap], _T]) -> _T:
    """``check(the file's bytes)``, read through a read-only mapping (the caller bounds its
    reads by the file's size)."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as data:
        return check(data)


def _free_pages(path: Path, psize: int, pages: int) -> set[int]:
    """The page numbers in LMDB's free list, read from ``path`` (the free database's
    values are lists of free page numbers). Only pages below ``pages`` (what the file
    has) are read; ``ValueError`` when the format is not as expected, or a page needed is
    missing."""

    def free_pages(data: mmap.mmap) -> set[int]:
        pages_file = _PageFile(data, psize, pages)
        free: set[int] = set()
        for base, offsets in pages_file.leaves(pages_file.roots()[0][0]):
            for offset in offsets:
                listed = pages_file.value(base, offset)[1]
                count = struct.unpack_from("<Q", listed)[0]
                free.update(struct.unpack_from(f"<{count}Q", listed, 8))
        return free

    return _mapped(path, free_pages)


def _check_structure(path: Path, psize: int, pages: int) -> None:
    """Walk every B-tree of ``path`` (the free, main and named databases) and check each
    page on the way, the first page of every overflow value included: LMDB trusts a
    page's own header when it frees it, so a damaged one would make it free, and later
    overwrite, a page still in use. Each tree must also hold as many entries as its
    database record counts: a damaged slot count in a page header would hide entries (an
    undo record never rolled back) without failing any checksum. ``ValueError`` naming
    what is wrong."""

    def check(data: mmap.mmap) -> None:
        pages_file = _PageFile(data, psize, pages)
        free, main = pages_file.roots()
        trees = {"free list": free}
        found = 0
        for base, offsets in pages_file.leaves(main[0]):
            found += len(offsets)
            for offset in offsets:
                node_flags, value = pages_file.value(base, offset)
                if node_flags & _F_SUBDATA:
                    record = _DB.unpack_from(value)
                    key_size = _NODE.unpack_from(data, base + offset)[3]
                    start = base + offset + _NODE.size
                    trees[f"database {bytes(data[start : start + key_size]).decode(errors='replace')!r}"] = (
                        record[7],
                        record[6],
                    )
        if found != main[1]:
            raise ValueError(f"the main database has {found} entries in its pages, and its record says {main[1]}")
        for tree, (root, entries) in trees.items():
            found = 0
            for base, offsets in pages_file.leaves(root):
                found += len(offsets)
                pages_file.check_overflows(base, offsets)
            if found != entries:
                raise ValueError(f"the {tree} has {found} entries in its pages, and its record says {entries}")

    _mapped(path, check)


def after(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix`` (the end of the
    range of keys starting with it)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff" * (len(prefix) + 64)  # past any key this store writes
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _changed_declaration(
    operator: str, state: str, known: dict[str, Any], kind: str, serializer: str
) -> IncompatibleStateError:
    return IncompatibleStateError(
        f"operator {operator!r}: state {state!r} was checkpointed as {known['kind']} state with the "
        f"{known['serializer']!r} serializer; it is now declared as {kind} state with {serializer!r}. "
        "Keep the declaration, or start from an empty state directory",
        was=str(known["kind"]),
    )
