"""Checkpoint storage: where completed checkpoints live, apart from the working copy.

The unit is what moving state between workers needs: each checkpoint writes, per key
group, the changes since the last one (a *delta*, or now and then a full copy), and a
manifest saying which sections of which files make up each key group's state. Writing
the manifest completes the checkpoint; the last ``retained`` ones are kept, and files no
kept manifest uses are deleted.

:class:`LocalCheckpointStorage` is a directory: by default ``state_dir/checkpoints``, or
any path or ``file://`` URL (a shared directory that every worker mounts works the
same). Its layout, as in Flink, keeps each job's checkpoints apart::

    JOB                       the job whose checkpoints these are now (sealed JSON)
    <job id>/chk-<id>/_manifest
    <job id>/shared/<name>.sections

A checkpoint folder (``chk-<id>``) is also what ``--from-savepoint`` takes, as is a
savepoint folder (which holds its own data files): :func:`read_manifest` and
:func:`read_section` read either.

Every file is written whole, synced, and renamed into place; sections carry a SHA-256
that is checked when they are read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import structlog

from aioflow._core.checkpoint.manifest import Manifest, Section
from aioflow._core.errors import CorruptStateError, PipelineError, RefusedError, StateError
from aioflow._core.state.integrity import (
    FILE_MODE,
    Damaged,
    open_document,
    private_dir,
    private_file,
    seal_document,
    sync_dir,
)

__all__ = [
    "MANIFEST",
    "CheckpointStorage",
    "LocalCheckpointStorage",
    "SectionWriter",
    "read_manifest",
    "read_section",
    "storage_at",
]

log = structlog.get_logger("aioflow.checkpoint")

MANIFEST = "_manifest"
_MAGIC = b"AIOFLOW-SECTIONS/1\n"
_LENGTH = struct.Struct(">I")
_DELETED = 0xFFFFFFFF


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Writing ``path`` in checkpoint storage: an ``OSError`` (a full disk, a read-only or
    vanished mount) becomes a :class:`StateError` naming it, which no restart retries."""
    try:
        yield
    except OSError as exc:
        full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StateError(f"checkpoint storage: writing {path} failed: {exc}{full}") from exc


class SectionWriter:
    """Writes one file of sections, one per key group, from ``(key group, key, value)``
    changes given key group by key group (a value of ``None`` is a deletion)."""

    def __init__(self, path: Path, *, full: bool, tables: tuple[int, ...]) -> None:
        self.path = path
        self.full = full
        self.tables = tables
        self.size = 0
        with _writing(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._offset = len(_MAGIC)
        self._write(_MAGIC)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with _writing(self.path):
            while view:
                view = view[os.write(self._fd, view) :]

    def write(self, changes: Iterable[tuple[int, bytes, bytes | None]], relative: str) -> dict[int, list[Section]]:
        """Write ``changes``; their sections, named by ``relative`` (the file's path as
        the manifest will name it). Syncs and closes the file."""
        sections: dict[int, list[Section]] = {}
        group: int | None = None
        buffer: list[bytes] = []
        records = 0
        digest = hashlib.sha256()
        start = self._offset

        def close_section() -> None:
            nonlocal buffer, records, digest, start
            if group is None:
                return
            if buffer:
                data = b"".join(buffer)
                digest.update(data)
                self._write(data)
                self._offset += len(data)
            sections.setdefault(group, []).append(
                Section(relative, start, self._offset - start, digest.hexdigest(), records, self.full, self.tables)
            )
            buffer, records, digest, start = [], 0, hashlib.sha256(), self._offset

        pending = 0
        try:
            for key_group, key, value in changes:
                if key_group != group:
                    close_section()
                    group = key_group
                record = (
                    _LENGTH.pack(len(key))
                    + key
                    + (_LENGTH.pack(_DELETED) if value is None else _LENGTH.pack(len(value)) + value)
                )
                buffer.append(record)
                records += 1
                pending += len(record)
                if pending >= 1 << 20:  # keep what waits in memory small
                    data = b"".join(buffer)
                    digest.update(data)
                    self._write(data)
                    self._offset += len(data)
                    buffer, pending = [], 0
            close_section()
            with _writing(self.path):
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
        self.size = self._offset if sections else 0
        if not sections:
            self.path.unlink()  # nothing to keep
        return sections


def read_section(folder: Path, section: Section) -> Iterator[tuple[bytes, bytes | None]]:
    """The ``(key, value or None)`` records of ``section`` of a checkpoint in ``folder``,
    after checking its SHA-256 (:class:`CorruptStateError` naming the file otherwise)."""
    path = folder / section.file
    try:
        with path.open("rb") as file:
            file.seek(section.offset)
            data = file.read(section.length)
    except OSError as exc:
        raise CorruptStateError(f"checkpoint {folder}: cannot read {path}: {exc}") from exc
    if len(data) != section.length or hashlib.sha256(data).hexdigest() != section.sha256:
        raise CorruptStateError(
            f"checkpoint {folder}: {path} is damaged (a section of {section.length} bytes at "
            f"{section.offset} does not match its checksum)"
        )
    view, position = memoryview(data), 0
    while position < len(data):
        (size,) = _LENGTH.unpack_from(view, position)
        key = bytes(view[position + 4 : position + 4 + size])
        position += 4 + size
        (size,) = _LENGTH.unpack_from(view, position)
        position += 4
        if size == _DELETED:
            yield key, None
        else:
            yield key, bytes(view[position : position + size])
            position += size


def read_manifest(folder: Path) -> Manifest:
    """The verified manifest of the checkpoint or savepoint in ``folder``."""
    path = folder / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RefusedError(
            f"{folder} is not a checkpoint or savepoint: it has no {MANIFEST} (a savepoint is a "
            "folder aioflow wrote under <state_dir>/savepoints/, a retained checkpoint one under its "
            "checkpoint storage)"
        ) from None
    except OSError as exc:
        raise CorruptStateError(f"checkpoint {folder}: cannot read its manifest: {exc}") from exc
    return Manifest.decode(data, f"checkpoint {folder}")


class CheckpointStorage(Protocol):
    """Where checkpoints live (see the module docstring). Local directories today; object
    storage implements the same."""

    @property
    def location(self) -> str: ...

    def job(self) -> dict[str, str] | None:
        """The identity (``{"app", "job_id"}``) of the job whose checkpoints these are."""
        ...

    def start_job(self, identity: dict[str, str]) -> None:
        """From now on, checkpoints are ``identity``'s (a job restored from a savepoint is a new one)."""
        ...

    def checkpoints(self) -> list[int]:
        """Ids of the current job's completed checkpoints, oldest first."""
        ...

    def folder(self, checkpoint_id: int) -> Path:
        """The folder of checkpoint ``checkpoint_id`` (what ``--from-savepoint`` takes)."""
        ...

    def latest(self) -> Manifest | None:
        """The newest completed checkpoint of the current job, verified."""
        ...

    def write(
        self, changes: Iterable[tuple[int, bytes, bytes | None]], *, full: bool, tables: tuple[int, ...]
    ) -> tuple[dict[int, list[Section]], int]:
        """Write one file of sections of ``tables`` (ids); their references (relative to a
        checkpoint folder) and its size."""
        ...

    def commit(self, manifest: Manifest) -> None:
        """Complete the checkpoint: write its manifest, durably."""
        ...

    def retain(self, keep: int, in_use: set[str]) -> None:
        """Keep the newest ``keep`` checkpoints of the current job; delete older ones and
        files nothing kept uses (but ``in_use``, sections not yet in a manifest)."""
        ...


class LocalCheckpointStorage:
    """Checkpoint storage in a directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._job: dict[str, str] | None = None
        self._read_job()

    def __repr__(self) -> str:
        return f"LocalCheckpointStorage({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    def _read_job(self) -> None:
        path = self.root / "JOB"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"checkpoint storage {self.root}: cannot read {path}: {exc}") from exc
        try:
            self._job = open_document(data)
        except Damaged as exc:
            raise CorruptStateError(
                f"checkpoint storage {self.root}: its JOB file, which names the job whose checkpoints these are, is "
                f"damaged ({exc}). Restore it from a backup; or resume from a savepoint with --from-savepoint (a "
                "new job, its checkpoints apart); or start from an empty state directory and checkpoint storage"
            ) from None

    def job(self) -> dict[str, str] | None:
        return self._job

    def start_job(self, identity: dict[str, str]) -> None:
        with _writing(self.root / "JOB"):
            private_dir(self.root / identity["job_id"] / "shared")
            private_file(self.root / "JOB", seal_document(identity))
        self._job = dict(identity)

    def _job_dir(self) -> Path:
        if self._job is None:
            raise StateError(f"checkpoint storage {self.root}: no job started in it")
        return self.root / self._job["job_id"]

    def checkpoints(self) -> list[int]:
        if self._job is None:
            return []
        folder = self._job_dir()
        if not folder.is_dir():
            return []
        ids = []
        for entry in folder.iterdir():
            if entry.name.startswith("chk-") and entry.name[4:].isdigit() and (entry / MANIFEST).exists():
                ids.append(int(entry.name[4:]))
        return sorted(ids)

    def folder(self, checkpoint_id: int) -> Path:
        return self._job_dir() / f"chk-{checkpoint_id}"

    def latest(self) -> Manifest | None:
        """The newest checkpoint of the current job. If it is damaged, refuse, naming the
        newest older one that verifies (never fall back to it silently)."""
        ids = self.checkpoints()
        if not ids:
            return None
        try:
            return read_manifest(self.folder(ids[-1]))
        except CorruptStateError as exc:
            for older in reversed(ids[:-1]):
                try:
                    read_manifest(self.folder(older))
                except CorruptStateError:
                    continue
                raise CorruptStateError(
                    f"{exc}. Checkpoint {older} in {self.folder(older)} is intact: to resume from it, run with "
                    f"--from-savepoint {self.folder(older)} (output committed after it may be written again)"
                ) from None
            raise

    def write(
        self, changes: Iterable[tuple[int, bytes, bytes | None]], *, full: bool, tables: tuple[int, ...]
    ) -> tuple[dict[int, list[Section]], int]:
        shared = self._job_dir() / "shared"
        with _writing(shared):
            private_dir(shared)
        name = f"{uuid.uuid4().hex}.{'full' if full else 'delta'}"
        writer = SectionWriter(shared / name, full=full, tables=tables)
        return writer.write(changes, f"../shared/{name}"), writer.size

    def commit(self, manifest: Manifest) -> None:
        folder = self.folder(manifest.checkpoint_id)
        with _writing(folder / MANIFEST):
            private_dir(folder)
            sync_dir(folder.parent / "shared")  # the sections' files are there for good before the manifest says so
            private_file(folder / MANIFEST, manifest.encode())

    def retain(self, keep: int, in_use: set[str]) -> None:
        ids = self.checkpoints()
        for old in ids[:-keep] if keep > 0 else []:
            shutil.rmtree(self.folder(old), ignore_errors=True)
        used = set(in_use)
        for checkpoint_id in ids[-keep:]:
            try:
                manifest = read_manifest(self.folder(checkpoint_id))
            except (CorruptStateError, StateError):
                return  # keep everything while a kept manifest cannot be read
            used.update(Path(section.file).name for chain in manifest.key_groups.values() for section in chain)
        shared = self._job_dir() / "shared"
        if shared.is_dir():
            for entry in shared.iterdir():
                if entry.name not in used and not entry.name.startswith("."):
                    entry.unlink(missing_ok=True)

    def copy_in(self, folder: Path, manifest: Manifest) -> Manifest:
        """Take the checkpoint or savepoint in ``folder`` (another job's, or one moved from
        elsewhere) as this job's: copy its files into this storage and commit its manifest
        with the current job's identity."""
        shared = self._job_dir() / "shared"
        private_dir(shared)
        renamed: dict[str, str] = {}
        for chain in manifest.key_groups.values():
            for section in chain:
                if section.file not in renamed:
                    name = f"{uuid.uuid4().hex}{Path(section.file).suffix}"
                    shutil.copyfile(folder / section.file, shared / name)
                    os.chmod(shared / name, FILE_MODE)
                    renamed[section.file] = f"../shared/{name}"
        assert self._job is not None
        adopted = Manifest(
            manifest.checkpoint_id,
            manifest.kind,
            manifest.time_ms,
            self._job["app"],
            self._job["job_id"],
            manifest.max_parallelism,
            manifest.duration_ms,
            manifest.size_bytes,
            manifest.operators,
            manifest.tables,
            {
                group: [
                    Section(renamed[s.file], s.offset, s.length, s.sha256, s.records, s.full, s.tables) for s in chain
                ]
                for group, chain in manifest.key_groups.items()
            },
        )
        self.commit(adopted)
        return adopted


def storage_at(location: str | os.PathLike[str]) -> LocalCheckpointStorage:
    """The checkpoint storage a path or ``file://`` URL names."""
    text = os.fspath(location)
    if "://" in text:
        url = urlparse(text)
        if url.scheme != "file":
            raise PipelineError(
                f"checkpoint_storage {text!r}: only directories are supported (a path or a file:// "
                "URL); object storage comes later"
            )
        if url.netloc not in ("", "localhost"):
            raise PipelineError(f"checkpoint_storage {text!r}: a file:// URL names a local path (file:///path)")
        text = unquote(url.path)
    if not text:
        raise PipelineError("checkpoint_storage is empty")
    return LocalCheckpointStorage(Path(text))
