"""Files: the :func:`read_jsonl` and :func:`read_text` sources, and :class:`FileSink`.

Both stream: the source reads a batch of lines at a time (constant memory whatever the
file size) without ever making the event loop wait for the disk (what the page cache
holds is read at once, the rest in a thread); the sink writes one buffered chunk per
batch. orjson does the JSON.
``FileSink(exactly_once=True)`` stages each transaction in a hidden file next to the
target and appends it to the target when its checkpoint completes (two-phase commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import io
import os
import re
import shutil
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

import anyio
import orjson
import structlog

from aioflow._core.connectors.base import (
    BadRecord,
    ErrorPolicy,
    OnError,
    Sink,
    SinkWriter,
    Source,
    SourceBatch,
    SourceReader,
    TwoPhaseCommitSinkWriter,
)
from aioflow._core.errors import PipelineError, StateError, suggest_keywords

__all__ = ["FileSink", "LinesSource", "read_jsonl", "read_text"]

log = structlog.get_logger("aioflow.connectors")


def _expand(paths: str | os.PathLike[str] | list[str | os.PathLike[str]], kind: str) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"{kind}: no file matches {text!r}")
            files.extend(Path(m) for m in matches)
        else:
            files.append(Path(text))
    if not files:
        raise PipelineError(f"{kind}: no files given")
    return files


class _Format:
    """How a line-oriented format decodes lines: a whole batch at once when every line is
    good, line by line to find the bad ones otherwise."""

    def __init__(
        self,
        kind: str,
        decode: Callable[[bytes], Any],
        error: type[Exception],
        describe: Callable[[Any, bytes], str],
        skip_blank: bool,
    ) -> None:
        self.kind = kind
        self.decode = decode
        self.error = error
        #: What was wrong with a line (``describe(error, line)``), the column counted in that line.
        self.describe = describe
        self.skip_blank = skip_blank


def _line_body(line: bytes) -> bytes:
    r"""``line`` without its line break: ``\n`` or ``\r\n``, once (a lone ``\r`` is data)."""
    if line.endswith(b"\n"):
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line


def _text_line(line: bytes) -> str:
    return _line_body(line).decode()


def _json_error(error: orjson.JSONDecodeError, line: bytes) -> str:
    """orjson's message without its ``line 2 column 1 (char 7)``, which counts within the
    record, the line *with* its line break (so line 2 is the end of the file's line and
    line 1 is not the file's), but with the column in the file's line."""
    column = error.colno if error.lineno == 1 else len(_line_body(line).decode("utf-8", "replace")) + 1
    return f"{error.msg} at column {column}"


def _utf8_error(error: UnicodeDecodeError, line: bytes) -> str:
    return f"byte {error.start + 1} of the line, 0x{error.object[error.start]:02x}, is not UTF-8 ({error.reason})"


#: UTF-8 byte-order mark: skipped at the start of a file, it is not part of the first line.
BOM = b"\xef\xbb\xbf"

JSON_LINES = _Format("read_jsonl", orjson.loads, orjson.JSONDecodeError, _json_error, skip_blank=True)
TEXT_LINES = _Format("read_text", _text_line, UnicodeDecodeError, _utf8_error, skip_blank=False)


class _FileSplit:
    """One file being read: where the reader is in it (``line``, ``offset``: what was
    handed out), and what it has read ahead of that."""

    __slots__ = ("eof", "fd", "line", "lines", "nowait", "offset", "path", "read_at", "tail", "taken")

    def __init__(self, path: Path, line: int = 0, offset: int = 0) -> None:
        self.path = path
        self.line = line  # lines consumed
        self.offset = offset  # bytes consumed
        self.fd: int | None = None
        self.nowait = _NOWAIT is not None  # can read the page cache without waiting for the disk
        self.read_at = offset  # where the next chunk starts
        self.lines: Iterator[bytes] = iter(())  # the last chunk's lines not taken yet
        self.tail = b""  # a line begun at the end of the last chunk
        self.taken: list[bytes] = []  # lines of the batch being put together
        self.eof = False


#: Bytes read from a file at a time.
CHUNK = 1 << 18

#: ``preadv`` flag: fail with EAGAIN rather than wait for the disk (Linux).
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


class _NotYet(Exception):  # noqa: N818 - not an error: a blocking call still runs; never escapes the reader
    """A call in a thread did not finish within the read's timeout; it goes on."""


class _Call:
    """A blocking call running in a daemon thread of its own for a reader, and its outcome.

    A daemon thread, not a worker thread of the event loop's pool: a call can block for
    good (opening a named pipe nobody writes to), and must then keep neither the job nor
    the process from ending. A reader closed while a call runs abandons it: the file
    descriptor the call reads, or the one it opens, is closed by the thread when the call
    returns, never while it is in use."""

    def __init__(self, key: tuple[Any, ...], function: Callable[..., Any], *args: Any) -> None:
        self.key = key
        self.done = anyio.Event()
        self.result: Any = None
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._returned = False
        self._opened: int | None = None  # what an "open" call returned
        self._abandoned = False
        self._close_after: int | None = None
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._call, args=(function, args), name="aioflow-file-io", daemon=True).start()

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        result = None
        try:
            result = self.result = function(*args)
        except Exception as exc:  # raised where the reader takes the result
            self.error = exc
        with self._lock:
            self._returned = True
            if self.key[0] == "open":
                self._opened = result
            abandoned, fd = self._abandoned, self._close_after
        if abandoned:
            for unused in (self._opened, fd):
                if unused is not None:
                    os.close(unused)
            return
        with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody waits
            self._loop.call_soon_threadsafe(self.done.set)

    def abandon(self, fd: int | None) -> None:
        """The reader closes: close ``fd`` (the one the call reads, if any) and what the
        call opens, now if it returned, else when it does."""
        with self._lock:
            running = not self._returned
            if running:
                self._abandoned, self._close_after = True, fd
        if not running:
            for unused in (self._opened, fd):
                if unused is not None:
                    os.close(unused)


def _open_split(path: Path) -> int:
    """In a thread: a file descriptor of ``path`` (a named pipe waits for its writer)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def _read_nowait(fd: int, offset: int, buffer: bytearray) -> memoryview | None:
    """The chunk at ``offset``, read into ``buffer`` as far as the page cache holds it,
    without waiting for the disk: ``None`` when it would have to wait."""
    try:
        size = os.preadv(fd, [buffer], offset, _NOWAIT or 0)
    except BlockingIOError:
        return None
    return memoryview(buffer)[:size]


class _LinesReader(SourceReader):
    """Reads its files a batch at a time, taking turns, so every unfinished file is an
    active split: the source's watermark waits for the slowest file instead of making
    the records of files read later look late.

    The event loop never waits for the disk: a chunk the page cache holds is read at once
    (``preadv`` with ``RWF_NOWAIT``, Linux), anything else (a chunk of a slow or cold
    disk, opening a file, a named pipe) in a thread. A read whose batch is not
    complete within its timeout returns an empty batch and completes it at the next read,
    so the batches are the same whatever the timing: ``max_records`` lines per turn.
    """

    def __init__(self, source: LinesSource, files: list[Path]) -> None:
        self._source = source
        self._format = source.format
        self._files = files
        self._active: deque[_FileSplit] = deque(_FileSplit(path) for path in files)
        self._records = 0
        self._policy = ErrorPolicy(source.on_error, source.name)
        self._call: _Call | None = None  # the blocking call under way, if any
        self._buffer = bytearray(CHUNK)  # what a read from the page cache goes into

    async def open(self) -> None:
        for split in self._active:
            path = split.path
            if not (path.is_file() or (path.exists() and stat.S_ISFIFO(path.stat().st_mode))):
                raise FileNotFoundError(f"{self._format.kind}: {path} does not exist or is not a file")

    def splits(self) -> list[str]:
        return [str(split.path) for split in self._active]

    def backlogged_splits(self) -> set[str]:
        """Every file not read to its end: a file waiting for its turn is not idle."""
        return {str(split.path) for split in self._active}

    async def _in_thread(self, timeout: float, key: tuple[Any, ...], function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a thread; raises :class:`_NotYet` when it takes
        longer than ``timeout``: it goes on, and the next call with the same ``key`` (the
        reader asks for it again, having nothing else to do) waits for it again."""
        call = self._call
        if call is None:
            call = self._call = _Call(key, function, *args)
        assert call.key == key, (call.key, key)
        if not call.done.is_set():
            with anyio.move_on_after(timeout):
                await call.done.wait()
            if not call.done.is_set():
                raise _NotYet
        self._call = None
        if call.error is not None:
            raise call.error
        return call.result

    async def _next_chunk(self, split: _FileSplit, timeout: float) -> bytes | memoryview:
        """The next chunk of ``split`` (empty at its end); a view of the reader's buffer,
        valid until the next chunk is read."""
        if split.fd is None:
            split.fd = await self._in_thread(timeout, ("open", split.path), _open_split, split.path)
            if not stat.S_ISREG(os.fstat(split.fd).st_mode):
                split.nowait = False  # a pipe: read what comes, in a thread
                if split.read_at:
                    raise StateError(f"{split.path} is a pipe: it cannot resume at byte {split.read_at}")
        fd, at = split.fd, split.read_at
        chunk: bytes | memoryview | None = None
        if split.nowait:
            try:
                chunk = _read_nowait(fd, at, self._buffer)
            except OSError as exc:  # a file system without RWF_NOWAIT: read in a thread
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                split.nowait = False
        if chunk is None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                chunk = await self._in_thread(timeout, ("pread", split.path, at), os.pread, fd, CHUNK, at)
            else:
                chunk = await self._in_thread(timeout, ("read", split.path, at), os.read, fd, CHUNK)
        split.read_at = at + len(chunk)
        return chunk

    async def _take(self, split: _FileSplit, count: int, timeout: float) -> list[bytes] | None:
        """The next ``count`` lines of ``split`` (fewer at its end, none once it ended);
        ``None`` when the disk did not deliver them within ``timeout`` (the lines taken
        so far stay for the next call)."""
        taken = split.taken
        while True:
            taken.extend(islice(split.lines, count - len(taken)))
            if taken and not split.eof and not taken[-1].endswith(b"\n"):
                split.tail = taken.pop()  # the chunk ended inside this line: the rest is in the next one
            if len(taken) >= count or split.eof:
                break
            try:
                chunk = await self._next_chunk(split, timeout)
            except _NotYet:
                return None
            if not chunk:
                split.eof = True
                if split.tail:  # the last line, without a line break
                    taken.append(split.tail)
                    split.tail = b""
                break
            data = split.tail + chunk  # bytes: io.BytesIO shares them instead of copying
            if split.read_at == len(chunk) and data.startswith(BOM):  # the file's first chunk
                data = data[len(BOM) :]
                split.offset = len(BOM)
            split.lines = iter(io.BytesIO(data))
            split.tail = b""
        split.taken = []
        return taken

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        active = self._active
        while active:
            split = active[0]
            lines = await self._take(split, max_records, timeout)
            if lines is None:
                return SourceBatch([])  # the disk or the pipe is slow
            if not lines:
                if split.fd is not None:
                    os.close(split.fd)
                    split.fd = None
                active.popleft()
                continue
            active.rotate(-1)
            first = split.line + 1
            split.line += len(lines)
            split.offset += sum(map(len, lines))
            bad: list[BadRecord] = []
            try:
                records = list(map(self._format.decode, lines))
            except self._format.error:
                records = self._decode_carefully(lines, split.path, first, bad)
            self._records += len(records)
            return SourceBatch(records, str(split.path), bad or None)
        return None

    def _decode_carefully(self, lines: list[bytes], path: Path, first: int, bad: list[BadRecord]) -> list[Any]:
        """Line by line: blank lines are skipped (JSON), bad ones go to the error policy."""
        records = []
        decode, error, skip_blank = self._format.decode, self._format.error, self._format.skip_blank
        for number, line in enumerate(lines, first):
            try:
                records.append(decode(line))
            except error as exc:
                if skip_blank and not line.strip():
                    continue
                self._policy.handle(self._format.describe(exc, line), f"{path}:{number}", _line_body(line), bad)
        return records

    def position(self) -> dict[str, Any]:
        """How far each unfinished file was read, and which files were read to the end."""
        reading = {str(s.path) for s in self._active}
        return {
            "reading": [{"path": str(s.path), "line": s.line, "offset": s.offset} for s in self._active],
            "finished": [str(path) for path in self._files if str(path) not in reading],
        }

    def restore(self, position: Any) -> None:
        """Resume each file where it was, taking turns in the recorded order (so records
        interleave as they would have); a file the position does not know (one added to
        the source since) is read from its start, after them."""
        mine = {str(path): path for path in self._files}
        known = {p["path"] for p in position["reading"]} | set(position["finished"])
        active = deque(
            _FileSplit(mine[p["path"]], p["line"], p["offset"]) for p in position["reading"] if p["path"] in mine
        )
        active.extend(_FileSplit(path) for name, path in mine.items() if name not in known)
        self._active = active

    def statistics(self) -> dict[str, int]:
        return {
            "records_read": self._records,
            "records_skipped": self._policy.skipped,
            "records_dead_lettered": self._policy.dead_lettered,
        }

    async def close(self) -> None:
        self._policy.close()
        call, self._call = self._call, None
        for split in self._active:
            fd, split.fd = split.fd, None
            if call is not None and call.key[1] == split.path:
                call.abandon(fd)  # the call may still use it
            elif fd is not None:
                os.close(fd)


class LinesSource(Source):
    """Line-oriented files; each file is a split."""

    replayable = True

    def __init__(self, files: list[Path], format: _Format, on_error: OnError) -> None:
        self.files = files
        self.format = format
        self.on_error = on_error
        self.default_name = format.kind
        self.name = f"{format.kind}({files[0]}{'...' if len(files) > 1 else ''})"
        self.max_parallelism = len(files)
        self.dead_letter_tag = ErrorPolicy(on_error, self.name).dead_letter_tag  # validates on_error now

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        return _LinesReader(self, self.files[subtask_index::parallelism])

    def rescale(self, positions: list[Any], parallelism: int) -> list[Any]:
        """Files are dealt to subtasks by index: each new subtask resumes its own files
        from whichever old subtask read them."""
        merged = {
            "reading": [entry for position in positions for entry in position["reading"]],
            "finished": [path for position in positions for path in position["finished"]],
        }
        return [merged] * parallelism  # each reader picks its own files out of all of them


@suggest_keywords
def read_jsonl(
    path: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    on_error: OnError = "fail",
) -> Source:
    """A bounded source of the JSON values in one or more JSON-lines files.

    ``path`` is a file, a glob pattern or a list of either; each file is a split (read by
    one subtask, so parallelism is at most the number of files). A slow disk never
    stalls the event loop: what the page cache does not hold is read in a thread. A named
    pipe is read, in batches, until its writer closes it. Blank lines are ignored, and
    so is a UTF-8 byte-order mark at the start of a file. A line that is not valid JSON
    is handled by ``on_error``:

    - ``"fail"`` (default): the job fails with a :class:`BadRecordError` naming file and line;
    - ``"skip"``: it is dropped and counted; the first is logged in full, the rest in
      summary lines at most every 10 seconds and when the source closes;
    - an :class:`OutputTag`: it goes to that side output as a :class:`BadRecord`
      (``stream.get_side_output(tag)``) holding the line's bytes as read.
    """
    return LinesSource(_expand(path, "read_jsonl"), JSON_LINES, on_error)


@suggest_keywords
def read_text(
    path: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    on_error: OnError = "fail",
) -> Source:
    r"""A bounded source of the lines (``str``) of UTF-8 text files.

    Each line loses its line break, ``\n`` or ``\r\n``, and nothing else: ``"a\r\r\n"``
    gives ``"a\r"``. A UTF-8 byte-order mark at the start of a file is dropped. ``path``
    and ``on_error`` work as in :func:`read_jsonl`; a line that is not valid UTF-8 is a
    bad record.
    """
    return LinesSource(_expand(path, "read_text"), TEXT_LINES, on_error)


def _create_0o644(path: str, flags: int) -> int:
    """``open()`` opener: a file it creates gets mode 0o644 (less the umask), not 0o666."""
    return os.open(path, flags, 0o644)


def _make_parents(path: Path) -> None:
    """Create the missing directories above ``path`` with mode 0o755 (less the umask).

    ``Path.mkdir(parents=True)`` and ``os.makedirs`` give the intermediate ones 0o777 less
    the umask: world-writable under ``umask 000``.
    """
    for directory in reversed(path.parents):
        if not directory.is_dir():
            directory.mkdir(mode=0o755, exist_ok=True)  # exist_ok: another subtask may race us


def _json_lines(values: list[Any], path: Path) -> bytes:
    """``values`` as JSON lines; a record orjson refuses raises a TypeError naming it."""
    dumps = orjson.dumps
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    try:
        return b"".join([dumps(value, option=option) for value in values])
    except TypeError:
        for value in values:
            try:
                dumps(value, option=option)
            except TypeError as exc:
                error = TypeError(f"FileSink({path}): record is not JSON-serialisable: {exc}")
                error.record = value  # type: ignore[attr-defined]  # SinkOperator shows it
                raise error from exc
        raise


def _truncate_torn_line(file: IO[bytes]) -> None:
    """Cut ``file`` after its last newline and leave it positioned at the end."""
    end = file.seek(0, os.SEEK_END)
    keep = end
    while keep > 0:
        start = max(0, keep - 65536)
        file.seek(start)
        chunk = file.read(keep - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        keep = start
    if keep != end:
        file.truncate(keep)
    file.seek(keep)


#: A full disk, a quota reached, a file past its size limit (``ulimit -f``).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def _disk_full_says_what_to_do(path: Path) -> Iterator[None]:
    """Re-raise the ``OSError`` of a full disk with what to do about it (its errno kept:
    the restart strategy does not retry it, as the next attempt would fail the same way)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise OSError(
            exc.errno,
            f"{exc.strerror}, writing {exc.filename or path}: free space on that disk (or raise the quota or "
            f"the file-size limit), or give FileSink a path on another disk; until then a restart fails the same way",
        ) from exc


class _FileWriter(SinkWriter):
    def __init__(self, path: Path, flush_interval: float) -> None:
        self._path = path
        self.flush_interval = flush_interval
        self._file: IO[bytes] | None = None

    async def open(self) -> None:
        """Start the file afresh; on resuming, append to it, after its last whole line (a
        line torn by a crash came after the checkpoint: its record comes again)."""
        _make_parents(self._path)
        if self.resuming and self._path.exists():
            self._file = open(self._path, "r+b")  # noqa: SIM115 - closed in close()
            _truncate_torn_line(self._file)
        else:
            self._file = open(self._path, "wb", opener=_create_0o644)  # noqa: SIM115 - closed in close()

    async def write(self, values: list[Any]) -> None:
        chunk = _json_lines(values, self._path)
        assert self._file is not None
        with _disk_full_says_what_to_do(self._path):
            self._file.write(chunk)

    async def flush(self) -> None:
        if self._file is not None:
            with _disk_full_says_what_to_do(self._path):
                self._file.flush()

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with _disk_full_says_what_to_do(self._path):
                file.close()


# Exactly-once: the files of the target <dir>/<name> live next to it, all hidden.
#
#   .<name>.inprogress                   the current transaction; never committed by anyone
#   .<name>.<checkpoint>.<token>.staged  a pre-committed transaction (the handle names it)
#   .<name>.final.<token>.staged         the rest at the end of input, committed by finish()
#   .<name>.<label>.<token>.commit       a commit under way: {"start": offset, "size": n}
#
# <token> is random per writer, so staged files of different runs never collide. A commit
# writes its .commit marker (atomically: .commit.tmp, then rename) before it appends to the
# target, and removes the marker only after the staged file. A marker on disk therefore
# means an interrupted commit, and says where the target must be truncated to redo it.
# Every commit, and open(), first completes an interrupted one, so the target has at most
# one and nothing is appended after a torn line.

_TXN_FILE = re.compile(r"(\d+|final)\.([0-9a-f]{8})\.(staged|commit|commit\.tmp)")

_target_locks: dict[str, threading.Lock] = {}
_target_locks_guard = threading.Lock()


def _target_lock(target: Path) -> threading.Lock:
    """Serialises the commits of one target within this process (they run in threads)."""
    with _target_locks_guard:
        return _target_locks.setdefault(str(target), threading.Lock())


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _fsync_dir(directory: Path) -> None:
    """Make renames, creations and removals in ``directory`` durable."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_rw_0o644(path: str, flags: int) -> int:
    """``open(path, "r+b")`` opener that creates a missing file with mode 0o644."""
    return os.open(path, flags | os.O_CREAT, 0o644)


def _copy_into(source: IO[bytes], target: IO[bytes]) -> None:
    """Append a staged file to the target (a function of its own so tests can tear it)."""
    shutil.copyfileobj(source, target, 1 << 20)


def _txn_files(target: Path) -> list[tuple[str, str, str, Path]]:
    """The transaction files of ``target``: (label, token, kind, path), in label order."""
    prefix = f".{target.name}."
    found = []
    for name in os.listdir(target.parent):
        if name.startswith(prefix) and (match := _TXN_FILE.fullmatch(name, len(prefix))):
            label, token, kind = match.groups()
            found.append((label, token, kind, target.parent / name))
    found.sort(key=lambda f: (f[0] == "final", int(f[0]) if f[0] != "final" else 0, f[1], f[2]))
    return found


def _marker_of(staged: Path) -> Path:
    return staged.with_name(staged.name.removesuffix(".staged") + ".commit")


def _staged_of(marker: Path) -> Path:
    return marker.with_name(marker.name.removesuffix(".commit") + ".staged")


def _read_marker(marker: Path) -> tuple[int, int]:
    try:
        info = orjson.loads(marker.read_bytes())
        start, size = info["start"], info["size"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StateError(f"FileSink: cannot read commit marker {marker}: {exc}") from exc
    if not (isinstance(start, int) and isinstance(size, int) and start >= 0 and size >= 0):
        raise StateError(f"FileSink: commit marker {marker} holds {info!r}, not a start offset and a size")
    return start, size


def _begin_commit(target: Path, staged: Path, size: int) -> tuple[Path, int] | None:
    """Record where the target ends now, durably, before appending ``staged`` to it.

    ``None`` when ``staged`` is gone: committed already (or aborted)."""
    staged_size = _file_size(staged)
    if staged_size is None:
        return None
    if staged_size != size:
        raise StateError(
            f"FileSink({target}): staged transaction {staged} has {staged_size} bytes, its checkpoint recorded {size}"
        )
    start = _file_size(target) or 0
    marker = _marker_of(staged)
    temporary = marker.with_name(marker.name + ".tmp")
    with open(temporary, "wb", opener=_create_0o644) as file:
        file.write(orjson.dumps({"start": start, "size": size}))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, marker)
    _fsync_dir(target.parent)
    return marker, start


def _roll_forward(target: Path, marker: Path, start: int, size: int) -> None:
    """(Re)do a commit: truncate the target to ``start``, append the staged file, fsync,
    then remove the staged file and the marker, in that order."""
    staged = _staged_of(marker)
    staged_size = _file_size(staged)
    if staged_size is not None:  # else: appended and fsynced already, only the marker was left
        if staged_size != size:
            raise StateError(
                f"FileSink({target}): staged transaction {staged} has {staged_size} bytes, "
                f"its commit marker recorded {size}"
            )
        target_size = _file_size(target)
        if (target_size or 0) < start:
            raise StateError(
                f"FileSink({target}): the file has {target_size or 0} bytes, fewer than the {start} "
                f"it had when committing {staged.name} began: something else truncated it"
            )
        with open(target, "r+b", opener=_create_rw_0o644) as out, open(staged, "rb") as source:
            out.truncate(start)  # a torn earlier attempt of this commit
            out.seek(start)
            _copy_into(source, out)
            out.flush()
            os.fsync(out.fileno())
        if target_size is None:
            _fsync_dir(target.parent)  # the target's directory entry before the staged file goes
        staged.unlink()
        _fsync_dir(target.parent)  # the staged file is gone before its marker is
    marker.unlink()


def _roll_back(target: Path, marker: Path, start: int) -> None:
    """Undo an interrupted commit: truncate the target to ``start``, drop the staged file."""
    target_size = _file_size(target)
    if target_size is not None and target_size > start:
        with open(target, "r+b") as out:
            out.truncate(start)
            out.flush()
            os.fsync(out.fileno())
    _staged_of(marker).unlink(missing_ok=True)
    _fsync_dir(target.parent)
    marker.unlink()


def _complete_interrupted(target: Path, own_token: str) -> None:
    """Finish the commit a crash or an error interrupted, if any.

    Commits of checkpoints roll forward: the checkpoint completed. The end-of-input commit
    of an earlier writer rolls back: no checkpoint holds it, its records come again."""
    for label, token, kind, marker in _txn_files(target):
        if kind != "commit":
            continue
        start, size = _read_marker(marker)
        if label == "final" and token != own_token:
            log.info("rolled back an interrupted end-of-input commit", file=str(target), marker=marker.name)
            _roll_back(target, marker, start)
        else:
            log.info("completed an interrupted commit", file=str(target), marker=marker.name)
            _roll_forward(target, marker, start, size)


def _sweep(target: Path, own_token: str) -> None:
    """Remove staged transactions of earlier writers: those of the restored checkpoint were
    committed before this writer's first commit, the rest will never be."""
    stale = [path for _, token, kind, path in _txn_files(target) if token != own_token and kind != "commit"]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(
            "removed staged transactions no checkpoint holds", file=str(target), staged=[path.name for path in stale]
        )


def _commit(target: Path, staged: str, size: int, own_token: str, sweep: bool) -> None:
    with _target_lock(target):
        _complete_interrupted(target, own_token)
        if staged and (begun := _begin_commit(target, Path(staged), size)) is not None:
            marker, start = begun
            _roll_forward(target, marker, start, size)
        if sweep:
            _sweep(target, own_token)


def _abort(target: Path, staged: str) -> None:
    if not staged:
        return
    with _target_lock(target):
        if _marker_of(Path(staged)).exists():
            raise StateError(
                f"FileSink({target}): cannot abort {staged}: its commit began, so its checkpoint "
                "completed; commit it instead"
            )
        Path(staged).unlink(missing_ok=True)


def _check_handle(handle: Any) -> tuple[Path, str, int, int]:
    """``handle`` as returned by :meth:`_ExactlyOnceFileWriter.pre_commit`, unpacked."""
    try:
        target, staged, size, checkpoint_id = (
            handle["target"],
            handle["staged"],
            handle["size"],
            handle["checkpoint_id"],
        )
    except (KeyError, TypeError):
        raise ValueError(f"FileSink: {handle!r} is not a handle returned by pre_commit") from None
    if not (
        isinstance(target, str)
        and isinstance(staged, str)
        and isinstance(size, int)
        and isinstance(checkpoint_id, int)
        and size >= 0
    ):
        raise ValueError(f"FileSink: {handle!r} is not a handle returned by pre_commit")
    path = Path(target)
    if staged:
        prefix = f".{path.name}."
        name = Path(staged).name
        match = _TXN_FILE.fullmatch(name, len(prefix)) if name.startswith(prefix) else None
        if Path(staged).parent != path.parent or match is None or match[3] != "staged":
            raise ValueError(f"FileSink: handle {handle!r} names {staged}, not a staged transaction of {target}")
    return path, staged, size, checkpoint_id


class _ExactlyOnceFileWriter(TwoPhaseCommitSinkWriter):
    """Stages each transaction in a hidden file next to the target; a commit appends it.

    Handles are ``{"target": str, "staged": str, "size": int, "checkpoint_id": int}``:
    absolute paths, and ``"staged": ""`` for a transaction without records.
    """

    def __init__(self, path: Path, flush_interval: float) -> None:
        self._path = Path(os.path.abspath(path))
        self.flush_interval = flush_interval
        self._token = os.urandom(4).hex()
        self._in_progress = self._path.with_name(f".{self._path.name}.inprogress")
        self._file: IO[bytes] | None = None
        self._pending: dict[int, dict[str, Any]] = {}  # pre-committed, by checkpoint id
        self._last_checkpoint: int | None = None
        self._swept = False  # stale staged files go at this writer's first commit

    async def open(self) -> None:
        _make_parents(self._path)
        await anyio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        with _target_lock(self._path):
            self._in_progress.unlink(missing_ok=True)  # a transaction never pre-committed
            _complete_interrupted(self._path, self._token)
            if not self._path.exists():  # exists from the start, as without exactly_once
                os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o644))
                _fsync_dir(self._path.parent)

    async def write(self, values: list[Any]) -> None:
        if not values:
            return
        chunk = _json_lines(values, self._path)
        with _disk_full_says_what_to_do(self._path):
            if self._file is None:
                self._file = open(self._in_progress, "wb", opener=_create_0o644)  # noqa: SIM115 - closed in _stage/close
            self._file.write(chunk)

    async def flush(self) -> None:
        """Push buffered records to the staging file; nothing becomes visible."""
        if self._file is not None:
            with _disk_full_says_what_to_do(self._path):
                self._file.flush()

    async def pre_commit(self, checkpoint_id: int) -> dict[str, Any]:
        if not isinstance(checkpoint_id, int) or isinstance(checkpoint_id, bool) or checkpoint_id < 0:
            raise ValueError(f"FileSink({self._path}): checkpoint_id must be an int >= 0, got {checkpoint_id!r}")
        if self._last_checkpoint is not None and checkpoint_id <= self._last_checkpoint:
            raise ValueError(
                f"FileSink({self._path}): pre_commit({checkpoint_id}) after "
                f"pre_commit({self._last_checkpoint}): checkpoint ids must increase"
            )
        with _disk_full_says_what_to_do(self._path):
            staged, size = await anyio.to_thread.run_sync(self._stage, str(checkpoint_id))
        self._last_checkpoint = checkpoint_id
        handle = {"target": str(self._path), "staged": staged, "size": size, "checkpoint_id": checkpoint_id}
        self._pending[checkpoint_id] = handle
        return dict(handle)

    def _stage(self, label: str) -> tuple[str, int]:
        """Close the current transaction into ``.<name>.<label>.<token>.staged``, durably."""
        file = self._file
        if file is None:
            return "", 0
        file.flush()
        os.fsync(file.fileno())
        size = file.tell()
        file.close()
        self._file = None
        staged = self._path.with_name(f".{self._path.name}.{label}.{self._token}.staged")
        try:
            os.replace(self._in_progress, staged)
        except OSError:  # the transaction goes on: a later pre_commit may succeed
            self._file = open(self._in_progress, "ab")  # noqa: SIM115 - closed in _stage/close
            raise
        _fsync_dir(self._path.parent)
        return str(staged), size

    async def commit(self, handle: Any) -> None:
        """Append the staged transaction to the target; commits this writer's earlier
        pre-committed transactions first (those of checkpoints that failed)."""
        target, staged, size, checkpoint_id = _check_handle(handle)
        own = self._pending.get(checkpoint_id) == handle
        with _disk_full_says_what_to_do(self._path):
            if own:
                for earlier in sorted(c for c in self._pending if c < checkpoint_id):
                    await self._commit_own(earlier)
                await self._commit_own(checkpoint_id)
            else:  # made by another writer: recovery, or another parallelism
                await anyio.to_thread.run_sync(_commit, target, staged, size, self._token, False)

    async def _commit_own(self, checkpoint_id: int) -> None:
        handle = self._pending[checkpoint_id]
        await anyio.to_thread.run_sync(
            _commit, self._path, handle["staged"], handle["size"], self._token, not self._swept
        )
        self._swept = True
        del self._pending[checkpoint_id]

    async def abort(self, handle: Any) -> None:
        target, staged, _, checkpoint_id = _check_handle(handle)
        await anyio.to_thread.run_sync(_abort, target, staged)
        if self._pending.get(checkpoint_id) == handle:
            del self._pending[checkpoint_id]

    async def finish(self) -> None:
        if self._pending:
            await self.commit(self._pending[max(self._pending)])
        with _disk_full_says_what_to_do(self._path):
            staged, size = await anyio.to_thread.run_sync(self._stage, "final")
            await anyio.to_thread.run_sync(_commit, self._path, staged, size, self._token, not self._swept)
        self._swept = True

    async def close(self) -> None:
        """Drop the transaction not pre-committed; keep pre-committed ones for recovery."""
        file, self._file = self._file, None
        if file is not None:
            try:
                with _disk_full_says_what_to_do(self._path):
                    file.close()
            finally:
                self._in_progress.unlink(missing_ok=True)


class FileSink(Sink):
    """Writes each record as one JSON line (orjson) to ``path``.

    With parallelism above 1, subtask ``i`` writes ``<stem>-<i><suffix>`` next to it.
    The file is truncated when the job starts (not with ``exactly_once``, below); a new
    file gets mode 0o644 and missing directories 0o755 (less the umask, so never
    world-writable).

    Writes are buffered. The buffer is flushed at end of input, at close, and
    ``flush_interval`` seconds after a write, even when no record follows it, so a job
    that stalls upstream does not sit on records it has processed.

    ``exactly_once=True`` makes the file hold only the records of completed checkpoints,
    each once, never a torn line, whatever crashes and restarts happen (two-phase commit):
    records are staged in a hidden file next to it (``.<name>.inprogress``, then
    ``.<name>.<checkpoint>.<token>.staged``) and appended when their checkpoint completes,
    or at the end of bounded input. Records show up with that delay: without
    checkpointing, only at the end of input. The file is never truncated, so a job that
    starts afresh appends to what an earlier run left; delete the file first for a clean
    one. Staged files are removed once committed or obsolete.
    """

    default_name = "file_sink"

    @suggest_keywords
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1.0,
        exactly_once: bool = False,
    ) -> None:
        if not isinstance(flush_interval, (int, float)) or not flush_interval >= 0:
            raise PipelineError(f"FileSink: flush_interval must be a number of seconds >= 0, got {flush_interval!r}")
        if not isinstance(exactly_once, bool):
            raise PipelineError(f"FileSink: exactly_once must be True or False, got {exactly_once!r}")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.exactly_once = exactly_once

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        path = self.path
        if parallelism > 1:
            path = path.with_name(f"{path.stem}-{subtask_index}{path.suffix}")
        if self.exactly_once:
            return _ExactlyOnceFileWriter(path, self.flush_interval)
        return _FileWriter(path, self.flush_interval)
