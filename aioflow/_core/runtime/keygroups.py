"""Keys → key groups → subtasks, with a hash that is the same in every process.

Python's ``hash()`` of a string changes from one interpreter to the next, so it cannot
decide where a key's state lives. Like Flink, a key belongs to one of
``max_parallelism`` key groups, and each subtask owns a contiguous range of key groups;
changing the parallelism moves whole key groups, never single keys.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson

__all__ = ["key_group", "key_group_range", "stable_hash", "subtask_for_key_group"]

_pack_int = struct.Struct("<q").pack


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that does not depend on the process (unlike ``hash()``)."""
    cls = key.__class__
    if cls is str:
        return zlib.crc32(key.encode())
    if cls is int and -(2**63) <= key < 2**63:
        return zlib.crc32(_pack_int(key))
    if cls is bytes:
        return zlib.crc32(key)
    if cls is tuple:
        h = 0x345678
        for item in key:
            h = zlib.crc32(_pack_int(stable_hash(item)), h)
        return h
    try:
        return zlib.crc32(orjson.dumps(key, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS))
    except TypeError:
        return zlib.crc32(repr(key).encode())


def key_group(key: Any, max_parallelism: int) -> int:
    return stable_hash(key) % max_parallelism


def subtask_for_key_group(group: int, max_parallelism: int, parallelism: int) -> int:
    return group * parallelism // max_parallelism


def key_group_range(subtask: int, max_parallelism: int, parallelism: int) -> range:
    """The key groups owned by ``subtask`` (the inverse of :func:`subtask_for_key_group`)."""
    start = (subtask * max_parallelism + parallelism - 1) // parallelism
    end = ((subtask + 1) * max_parallelism + parallelism - 1) // parallelism
    return range(start, end)
