"""Opening a job's state at start: the working copy, checkpoint storage, and which checkpoint to resume.

The working copy (LMDB in ``state_dir``) and checkpoint storage must tell the same story:
the same job, and the working copy at the newest checkpoint storage holds (or one behind,
when the worker died between writing a manifest and recording it locally: the working
copy then has the record, written before the manifest, that it took that checkpoint's
barrier; without it, it is an older copy of the state directory). Then restart
rolls back whatever changed after that checkpoint and resumes it, reading nothing else.
Anything else is refused (:class:`~aioflow._core.errors.CorruptStateError`, exit status 3)
with what is wrong and what to do, before the job touches any consumer, producer,
output or storage: a working copy that is missing, empty, truncated, damaged or another
job's, a damaged manifest (naming an older intact checkpoint when there is one), storage
behind the working copy. Nothing falls back to an older checkpoint or to an empty state
without being told to.

``--from-savepoint FOLDER`` (a savepoint, or a retained checkpoint's folder) rebuilds the
working copy from the folder's manifest and sections, after checking all of them, and
starts a new job: its checkpoints go under a new job id in checkpoint storage, starting
with a copy of what it restored.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from aioflow._core.checkpoint.manifest import Manifest
from aioflow._core.checkpoint.storage import MANIFEST, LocalCheckpointStorage, read_manifest, read_section
from aioflow._core.errors import CorruptStateError, IncompatibleStateError, RefusedError
from aioflow._core.state.lmdb import KEY_GROUP, TABLE, LmdbStore, StateDirLock, after

__all__ = ["OpenedState", "open_state"]

log = structlog.get_logger("aioflow.checkpoint")


@dataclass
class OpenedState:
    store: LmdbStore
    storage: LocalCheckpointStorage
    #: The checkpoint the job resumes (``None``: it starts with empty state).
    manifest: Manifest | None
    #: The job's identity: ``{"app", "job_id"}`` (a fresh job id if it never checkpointed).
    identity: dict[str, str]


def open_state(
    state_dir: Path,
    lock: StateDirLock,
    storage: LocalCheckpointStorage,
    app: str,
    max_parallelism: int,
    from_savepoint: Path | None,
    check: Callable[[Manifest, LmdbStore | None], None] = lambda manifest, store: None,
) -> OpenedState:
    """See the module docstring. Everything is checked before anything is written: a
    refused worker leaves the state directory and checkpoint storage as they were.
    ``check`` is the job's own check of the checkpoint it would resume (refusing what it
    cannot take), called before anything changes."""
    if from_savepoint is not None:
        opened = _from_savepoint(state_dir, lock, storage, app, max_parallelism, from_savepoint, check)
    else:
        opened = _open_working_copy(state_dir, lock, storage, app, check)
    _discard_incomplete_savepoints(state_dir)
    return opened


def _discard_incomplete_savepoints(state_dir: Path) -> None:
    """Remove savepoint folders without a manifest: a worker killed while taking a
    savepoint leaves one behind (nothing refers to it, and it cannot be restored)."""
    for folder in sorted(state_dir.glob("savepoints/savepoint-*")):
        if folder.is_dir() and not (folder / MANIFEST).exists():
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed an incomplete savepoint", folder=str(folder))


def _open_working_copy(
    state_dir: Path,
    lock: StateDirLock,
    storage: LocalCheckpointStorage,
    app: str,
    check: Callable[[Manifest, LmdbStore | None], None],
) -> OpenedState:
    """Resume the working copy (no savepoint given)."""
    where = f"state directory {state_dir}"
    job = storage.job()
    latest = _latest(storage, state_dir) if job is not None else None
    data = state_dir / "data.mdb"
    if latest is not None and (not data.exists() or data.stat().st_size == 0):
        state = "empty" if data.exists() else "missing"
        raise CorruptStateError(
            f"{where} has no working copy of job {latest.job_id} (its data.mdb is {state}), "
            f"but checkpoint storage {storage.location} holds its checkpoint {latest.checkpoint_id}. Was the state "
            f"directory deleted or moved? To rebuild the working copy from that checkpoint, run with "
            f"--from-savepoint {storage.folder(latest.checkpoint_id)}"
        )
    rebuild = functools.partial(_rebuild, storage, latest) if latest is not None else str
    store = LmdbStore(state_dir, lock=lock, advice=rebuild)
    try:
        return _resume(store, storage, app, job, latest, check)
    except BaseException:
        store.close()
        raise


def _latest(storage: LocalCheckpointStorage, state_dir: Path) -> Manifest | None:
    """The storage's newest checkpoint; if no retained one is intact, say which savepoints are."""
    try:
        return storage.latest()
    except CorruptStateError as exc:
        if "is intact" in str(exc):
            raise
        savepoints = sorted(
            state_dir.glob("savepoints/savepoint-*/_manifest"), key=lambda path: int(path.parent.name.rsplit("-", 1)[1])
        )
        hint = (
            f"; the newest savepoint is {savepoints[-1].parent}: resume from it with --from-savepoint "
            f"{savepoints[-1].parent}"
            if savepoints
            else "; no savepoint is left either: start from an "
            "empty state directory and checkpoint storage, or restore them from a backup"
        )
        raise CorruptStateError(f"{exc}{hint}") from None


def _rebuild(storage: LocalCheckpointStorage, manifest: Manifest) -> str:
    """What to do about damage in the working copy: rebuild it from the newest checkpoint."""
    newest = storage.checkpoints()
    checkpoint_id = newest[-1] if newest else manifest.checkpoint_id
    return (
        f"rebuild it from checkpoint storage with --from-savepoint {storage.folder(checkpoint_id)} "
        "(its latest checkpoint), or start from an empty state directory"
    )


def _resume(
    store: LmdbStore,
    storage: LocalCheckpointStorage,
    app: str,
    job: dict[str, str] | None,
    latest: Manifest | None,
    check: Callable[[Manifest, LmdbStore | None], None],
) -> OpenedState:
    where = f"state directory {store.path}"
    if store.identity is None:
        if latest is not None:  # a working copy that never completed a checkpoint, beside storage that has some
            raise CorruptStateError(
                f"{where} has no working copy of job {latest.job_id} (its data.mdb is new), but checkpoint storage "
                f"{storage.location} holds its checkpoint {latest.checkpoint_id}. To rebuild the working copy from "
                f"it, run with --from-savepoint {storage.folder(latest.checkpoint_id)}"
            )
        store.reset()  # state of a run that never completed a checkpoint: not to be resumed
        return OpenedState(store, storage, None, {"app": app, "job_id": uuid.uuid4().hex})
    identity = store.identity
    if job is None:
        raise CorruptStateError(
            f"{where} holds the state of job {identity.get('job_id')} (app {identity.get('app')!r}) at its "
            f"checkpoint {_held_id(store)}, but checkpoint storage {storage.location} holds no job's checkpoints: "
            "was it deleted, or does checkpoint_storage (--checkpoint-storage, AIOFLOW_CHECKPOINT_STORAGE) name "
            "another place than the runs before? Point it at this job's checkpoint storage; if that is lost, the "
            "state cannot be resumed: start from an empty state directory"
        )
    if job.get("job_id") != identity.get("job_id"):
        held = f"job {job['job_id']} (app {job.get('app')!r})"
        raise CorruptStateError(
            f"{where} holds the state of job {identity.get('job_id')} (app {identity.get('app')!r}), but checkpoint "
            f"storage {storage.location} holds {held}: they are not the same job's. Point checkpoint_storage at "
            "this job's storage, or use another state directory"
        )
    if identity.get("app") != app:
        raise CorruptStateError(
            f"{where} holds the state of app {identity.get('app')!r}, not of this app ({app!r}). To run a renamed "
            "job on it, restore it with --from-savepoint (its latest checkpoint works as one)"
        )
    assert store.manifest is not None
    if latest is None:
        raise CorruptStateError(
            f"{where} holds checkpoints of job {identity['job_id']}, but checkpoint storage {storage.location} has "
            "none of them: checkpoints are missing from the storage. Restore the storage, or start from an empty "
            "state directory"
        )
    try:
        held_manifest = Manifest.decode(store.manifest, where)
    except CorruptStateError as exc:
        raise CorruptStateError(
            f"{exc}. The working copy cannot be trusted: rebuild it from checkpoint storage with --from-savepoint "
            f"{storage.folder(latest.checkpoint_id)}"
        ) from None
    if latest.checkpoint_id < held_manifest.checkpoint_id:
        raise CorruptStateError(
            f"{where} holds checkpoint {held_manifest.checkpoint_id} of job {identity['job_id']}, but checkpoint "
            f"storage {storage.location} has only checkpoint {latest.checkpoint_id} of it: checkpoints are missing "
            "from the storage. Restore the storage, or start from an empty state directory"
        )
    if latest.checkpoint_id > held_manifest.checkpoint_id and store.prepared != latest.checkpoint_id:
        raise CorruptStateError(
            f"{where} holds checkpoint {held_manifest.checkpoint_id} of job {identity['job_id']}, but checkpoint "
            f"storage {storage.location} has its checkpoint {latest.checkpoint_id}, which this working copy never "
            "took: it is an older copy (restored from a backup or snapshot?). Rebuild it from checkpoint storage "
            f"with --from-savepoint {storage.folder(latest.checkpoint_id)}"
        )
    manifest = held_manifest if latest.checkpoint_id == held_manifest.checkpoint_id else latest
    check(manifest, store)
    if latest.checkpoint_id > held_manifest.checkpoint_id:  # the manifest was written, the working copy not told
        log.info("completing the checkpoint the last run wrote", checkpoint=latest.checkpoint_id)
        store.complete(latest.checkpoint_id, identity, latest.encode())
    undone = store.rollback(manifest.checkpoint_id)
    log.info(
        "restoring",
        checkpoint=manifest.checkpoint_id,
        kind=manifest.kind,
        state_dir=str(store.path),
        taken_at=manifest.time_ms,
        rolled_back=undone,
    )
    return OpenedState(store, storage, manifest, dict(identity))


def _held_id(store: LmdbStore) -> str:
    """The id of the checkpoint the working copy holds, for messages (``?`` if unreadable)."""
    try:
        return str(Manifest.decode(store.manifest or b"", str(store.path)).checkpoint_id)
    except CorruptStateError:
        return "?"


def _from_savepoint(
    state_dir: Path,
    lock: StateDirLock,
    storage: LocalCheckpointStorage,
    app: str,
    max_parallelism: int,
    folder: Path,
    check: Callable[[Manifest, LmdbStore | None], None],
) -> OpenedState:
    """Rebuild the working copy from the checkpoint or savepoint in ``folder``, as a new
    job: the folder is read and verified whole before the working copy changes."""
    if not folder.is_dir():
        raise RefusedError(f"savepoint {folder} does not exist")
    try:
        manifest = read_manifest(folder)
    except CorruptStateError as exc:
        raise CorruptStateError(
            f"{exc}; use another savepoint, or a retained checkpoint of checkpoint storage "
            f"{storage.location}, with --from-savepoint"
        ) from None
    log.info(
        "restoring from savepoint", savepoint=str(folder), checkpoint=manifest.checkpoint_id, state_dir=str(state_dir)
    )
    if manifest.max_parallelism != max_parallelism:
        raise IncompatibleStateError(
            f"savepoint {folder} was taken with max_parallelism {manifest.max_parallelism} and the app now has "
            f"{max_parallelism}: keyed state is split into max_parallelism key groups, which cannot change across "
            "a restore"
        )
    records = 0
    try:
        for chain in manifest.key_groups.values():
            for section in chain:
                for _ in read_section(folder, section):
                    records += 1
    except CorruptStateError as exc:
        raise CorruptStateError(
            f"{exc}; nothing was restored: use another savepoint, or a retained checkpoint of "
            f"checkpoint storage {storage.location}, with --from-savepoint"
        ) from None
    check(manifest, None)
    for name in ("data.mdb", "lock.mdb"):  # the working copy is replaced whole, whatever state it is in
        (state_dir / name).unlink(missing_ok=True)
    store = LmdbStore(state_dir, lock=lock)
    try:
        identity = {"app": app, "job_id": uuid.uuid4().hex}
        store.adopt_tables(manifest.tables)
        for group, chain in sorted(manifest.key_groups.items()):
            for section in chain:
                if section.full:  # a full copy replaces what came before it, for its tables
                    for table in section.tables:
                        prefix = KEY_GROUP.pack(group) + TABLE.pack(table)
                        store.delete_range(prefix, after(prefix), None)
                store.load(read_section(folder, section))
        storage.start_job(identity)
        adopted = storage.copy_in(folder, manifest)
        store.complete(adopted.checkpoint_id, identity, adopted.encode())
        store.advice = functools.partial(_rebuild, storage, adopted)
    except BaseException:
        store.close()
        raise
    log.info(
        "restored from savepoint",
        savepoint=str(folder),
        checkpoint=manifest.checkpoint_id,
        records=records,
        job_id=identity["job_id"],
    )
    return OpenedState(store, storage, adopted, identity)
