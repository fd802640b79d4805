"""What makes stored state verifiable, and private.

- Values in the working copy carry a CRC-32 of their key and payload (:func:`seal_value`,
  :func:`open_value`): a flipped bit in a value, or a value found under another key, is
  caught the moment it is read. CRC-32 is what zlib computes in C at several GB/s; it
  detects every burst error up to 32 bits and all but one in 4 billion others, which is
  the point here (damage, not attackers: whoever can write the state directory can also
  rewrite a checksum).
- Documents (the store's metadata, checkpoint manifests) are JSON sealed with a SHA-256
  of their body (:func:`seal_document`, :func:`open_document`).
- Everything aioflow creates for state is private to the user, whatever the umask
  (:func:`private_dir`, :func:`private_file`): with ``serializer="pickle"``, whoever can
  write the state can run code in the worker.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "Damaged",
    "open_document",
    "open_value",
    "private_dir",
    "private_file",
    "seal_document",
    "seal_value",
]

DIR_MODE = 0o700
FILE_MODE = 0o600

_CRC = struct.Struct(">I")


class Damaged(Exception):
    """Stored bytes failed verification; callers turn it into an error naming what was read
    (a :class:`~aioflow._core.errors.CorruptStateError`), so it never reaches users and is
    not in the tree of :mod:`aioflow._core.errors`."""


def seal_value(key: bytes, payload: bytes) -> bytes:
    """``payload`` as stored under ``key``: its CRC-32 (over key and payload) first."""
    return _CRC.pack(zlib.crc32(payload, zlib.crc32(key))) + payload


def open_value(key: bytes, stored: bytes) -> bytes:
    """The payload of a value :func:`seal_value` stored under ``key``; :class:`Damaged` if
    it does not verify."""
    if len(stored) < 4:
        raise Damaged(f"a stored value of {len(stored)} bytes is shorter than its checksum")
    payload = stored[4:]
    if _CRC.unpack_from(stored)[0] != zlib.crc32(payload, zlib.crc32(key)):
        raise Damaged("checksum mismatch")
    return payload


_HEAD = b'{"sha256":"'
_BODY = b'","body":'


def seal_document(body: Any) -> bytes:
    """JSON of ``body`` with the SHA-256 of its bytes: ``{"sha256":"…","body":…}``."""
    data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    return _HEAD + hashlib.sha256(data).hexdigest().encode() + _BODY + data + b"}"


def open_document(data: bytes) -> Any:
    """The body :func:`seal_document` sealed; :class:`Damaged` if it does not verify (the
    digest is checked over the body's bytes exactly as stored)."""
    start = len(_HEAD) + 64 + len(_BODY)
    if not data.startswith(_HEAD) or data[len(_HEAD) + 64 : start] != _BODY or not data.endswith(b"}"):
        raise Damaged("not a sealed document")
    body = data[start:-1]
    if hashlib.sha256(body).hexdigest().encode() != data[len(_HEAD) : len(_HEAD) + 64]:
        raise Damaged("checksum mismatch")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Damaged(f"not JSON ({exc})") from None


def private_dir(path: Path) -> Path:
    """Create ``path`` as a directory only its owner can use, and any missing parents
    likewise (an existing parent is left as it is)."""
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    os.chmod(path, DIR_MODE)  # it may have existed with another mode
    return path


def private_file(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``path`` atomically (a temporary file renamed over it), readable by its owner
    only; ``durable`` syncs the file and its directory first."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if durable:
        sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
