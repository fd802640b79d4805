"""The worker's durable state store: one LMDB environment under ``state_dir``.

Three databases:

- ``state``: the keyed state of the last completed checkpoint, and nothing newer. A
  checkpoint writes what changed since the previous one, with its metadata, in one
  transaction, so the store always *is* the last completed checkpoint: restarting
  reopens it (memory-mapped, no replay, no rebuild) whatever its size.
- ``working``: changed entries a cache evicted between checkpoints. They are not part of
  any checkpoint; the store clears them when it opens.
- ``meta``: the format marker, the table registry (operator, state, kind, serializer →
  table id) and the last checkpoint's metadata.

The map grows (doubling) when a transaction finds it full. Writes are batched: one
transaction per eviction round and per checkpoint, never one per record.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import lmdb
import orjson
import structlog

from aioflow.errors import IncompatibleStateError, StateError

__all__ = ["FORMAT", "LmdbStore", "StateDirLock"]

log = structlog.get_logger("aioflow.state")

FORMAT = b"aioflow-state/1"
_INITIAL_MAP_SIZE = 64 * 1024 * 1024


class StateDirLock:
    """An exclusive lock on a state directory (``flock`` on ``state_dir/lock``): two workers
    on one directory would overwrite each other's checkpoints and output."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._file = open(path / "lock", "a+")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise StateError(f"state directory {path}: cannot open it: {exc}") from exc
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise StateError(f"state directory {path} is in use by {holder}; each worker needs its own "
                             "state_dir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing drops the lock


class LmdbStore:
    """See the module docstring. One per worker process, shared by its subtasks. It takes
    the directory's :class:`StateDirLock` and releases it when closed, unless the caller
    holds the lock (``lock``) and releases it itself."""

    def __init__(self, path: str | Path, *, map_size: int = _INITIAL_MAP_SIZE,
                 lock: StateDirLock | None = None) -> None:
        self.path = Path(path)
        self._own_lock = StateDirLock(self.path) if lock is None else None
        try:
            self._open(map_size)
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self._own_lock is not None:
            self._own_lock.release()

    def _open(self, map_size: int) -> None:
        try:
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=4, subdir=True, readahead=False)
        except (lmdb.Error, OSError) as exc:
            raise self._unreadable(exc) from exc
        try:
            self._tables = self._prepare()
            self._read = self.env.begin(buffers=False)
        except BaseException as exc:
            self.env.close()
            if isinstance(exc, lmdb.Error):  # damaged pages: LMDB finds them only when it reads them
                raise self._unreadable(exc) from exc
            raise

    def _prepare(self) -> dict[str, dict[str, object]]:
        """Open the databases, check the format marker, clear the working area; the table registry."""
        self._state = self.env.open_db(b"state")
        self._working = self.env.open_db(b"working")
        self._meta = self.env.open_db(b"meta")
        with self.env.begin(write=True) as txn:
            found = txn.get(b"format", db=self._meta)
            if found is None:
                if txn.stat(self._state)["entries"]:
                    raise StateError(f"state directory {self.path} holds an LMDB environment that aioflow did not "
                                     "write (no format marker); use an empty directory")
                txn.put(b"format", FORMAT, db=self._meta)
            elif found != FORMAT:
                raise StateError(f"state directory {self.path} was written by an incompatible version "
                                 f"({found.decode(errors='replace')}, expected {FORMAT.decode()})")
            txn.drop(self._working, delete=False)  # changes after the last checkpoint are void
            registry = txn.get(b"tables", db=self._meta)
        try:
            return orjson.loads(registry) if registry else {}
        except orjson.JSONDecodeError as exc:
            raise StateError(f"state directory {self.path}: the table registry is corrupt ({exc}); restore the "
                             "directory from a copy, or start from an empty one") from exc

    def _unreadable(self, exc: BaseException) -> StateError:
        return StateError(f"state directory {self.path}: cannot open the LMDB environment: {exc}; "
                          "is it corrupt, or not an aioflow state directory?")

    def _read_failed(self, exc: lmdb.Error) -> StateError:
        return StateError(f"state directory {self.path}: reading state failed: {exc}; the store is corrupt "
                          "(restore the directory from a copy, or start from an empty one)")

    # -- tables ------------------------------------------------------------------------------

    def register_table(self, operator: str, state: str, kind: str, serializer: str) -> tuple[int, bool]:
        """The table id of ``operator``'s ``state``, and whether a checkpoint holds it. A
        restart that declares it with another kind or serializer is refused."""
        name = f"{operator}\x1f{state}"
        known = self._tables.get(name)
        if known is not None:
            if known["kind"] != kind or known["serializer"] != serializer:
                raise IncompatibleStateError(
                    f"operator {operator!r}: state {state!r} was checkpointed as {known['kind']} state with the "
                    f"{known['serializer']!r} serializer; it is now declared as {kind} state with {serializer!r}. "
                    "Keep the declaration, or start from an empty state directory", was=str(known["kind"]),
                )
            return int(known["id"]), bool(known.get("committed"))  # type: ignore[call-overload]
        ids = [int(t["id"]) for t in self._tables.values()]  # type: ignore[call-overload]
        table_id = max(ids, default=0) + 1
        self._tables[name] = {"id": table_id, "kind": kind, "serializer": serializer, "committed": False}
        return table_id, False

    def forget_operators(self, operators: set[str], meta: dict[bytes, bytes]) -> None:
        """Delete the state of ``operators`` (gone from the job) and store ``meta`` with the
        checkpoint's metadata updated to match, in one transaction."""
        doomed = {name: t for name, t in self._tables.items() if name.split("\x1f", 1)[0] in operators}
        prefixes = [struct.pack(">I", int(t["id"])) for t in doomed.values()]  # type: ignore[call-overload]
        for name in doomed:
            del self._tables[name]

        def write(txn: lmdb.Transaction) -> None:
            for prefix in prefixes:
                cursor = txn.cursor(db=self._state)
                if cursor.set_range(prefix):
                    while cursor.key().startswith(prefix) and cursor.delete():
                        pass
            for key, value in {**meta, b"tables": orjson.dumps(self._tables)}.items():
                txn.put(key, value, db=self._meta)

        self._write(write)

    def operators(self) -> set[str]:
        """Operators with state in the last checkpoint."""
        return {name.split("\x1f", 1)[0] for name, t in self._tables.items() if t.get("committed")}

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The current value: the working area's if the cache evicted it there, else the checkpoint's."""
        read = self._read
        try:
            value = read.get(key, db=self._working)
            return value if value is not None else read.get(key, db=self._state)
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc

    def get_working(self, key: bytes) -> bytes | None:
        try:
            return self._read.get(key, db=self._working)
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc

    def items_with_prefix(self, prefix: bytes, *, working: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Checkpointed entries (or, with ``working``, the working area's) whose key starts
        with ``prefix``, in key order."""
        try:
            with self.env.begin(buffers=False) as txn:
                cursor = txn.cursor(db=self._working if working else self._state)
                found = cursor.set_range(prefix)
                items = []
                while found:
                    key = cursor.key()
                    if not key.startswith(prefix):
                        break
                    items.append((key, cursor.value()))
                    found = cursor.next()
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc
        return iter(items)

    def keys_with_prefix(self, prefix: bytes, *, working: bool = False) -> list[bytes]:
        return [key for key, _ in self.items_with_prefix(prefix, working=working)]

    def read_meta(self, key: bytes) -> bytes | None:
        try:
            return self._read.get(key, db=self._meta)
        except lmdb.Error as exc:
            raise self._read_failed(exc) from exc

    # -- writes -----------------------------------------------------------------------------

    def spill(self, items: list[tuple[bytes, bytes]]) -> None:
        """Keep evicted, not yet checkpointed values in the working area."""

        def write(txn: lmdb.Transaction) -> None:
            for key, value in items:
                txn.put(key, value, db=self._working)

        self._write(write)

    def commit(self, writes: list[tuple[bytes, bytes | None]], meta: dict[bytes, bytes],
               keep_working: set[bytes]) -> int:
        """Make a checkpoint durable: apply ``writes`` to the checkpointed state and store
        ``meta``, atomically. Working-area copies of written keys go, unless a cache spilled
        them again since (``keep_working``). Returns the bytes written."""
        for name in self._tables:
            self._tables[name]["committed"] = True
        meta = {**meta, b"tables": orjson.dumps(self._tables)}
        size = 0

        def write(txn: lmdb.Transaction) -> None:
            nonlocal size
            size = 0
            state, working = self._state, self._working
            spilled = txn.stat(working)["entries"] > 0  # else there are no working copies to delete
            for key, value in writes:
                if value is None:
                    txn.delete(key, db=state)
                    size += len(key)
                else:
                    txn.put(key, value, db=state)
                    size += len(key) + len(value)
                if spilled and key not in keep_working:
                    txn.delete(key, db=working)
            for key, value in meta.items():
                txn.put(key, value, db=self._meta)

        self._write(write)
        return size

    def _write(self, write: object) -> None:
        """Run ``write(txn)`` in one write transaction, growing the map while it is full."""
        while True:
            self._read.abort()  # py-lmdb transactions have no reset/renew: end it, begin anew below
            try:
                with self.env.begin(write=True) as txn:
                    write(txn)  # type: ignore[operator]
                break
            except lmdb.MapFullError:
                size = self.env.info()["map_size"] * 2
                log.info("state store map grows", path=str(self.path), map_size=size)
                self.env.set_mapsize(size)
            except lmdb.Error as exc:
                raise StateError(f"state directory {self.path}: writing state failed: {exc} "
                                 "(is the disk full?)") from exc
            finally:
                self._read = self.env.begin(buffers=False)

    def copy_to(self, path: Path) -> None:
        """A consistent, compacted copy of the environment (for savepoints)."""
        path.mkdir(parents=True, exist_ok=True)
        self.env.copy(str(path), compact=True)

    def close(self) -> None:
        self._read.abort()
        self.env.close()
        self.release_lock()
