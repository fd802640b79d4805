"""Files: the :func:`read_jsonl` and :func:`read_text` sources, and :class:`FileSink`.

Both stream: the source reads a batch of lines at a time (constant memory whatever the
file size), the sink writes one buffered chunk per batch. orjson does the JSON.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson

from aioflow.connectors.base import BadRecord, ErrorPolicy, OnError, Sink, SinkWriter, Source, SourceBatch, SourceReader

__all__ = ["FileSink", "LinesSource", "read_jsonl", "read_text"]

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
        raise ValueError(f"{kind}: no files given")
    return files


class _Format:
    """How a line-oriented format decodes lines: a whole batch at once when every line is
    good, line by line to find the bad ones otherwise."""

    def __init__(self, kind: str, decode: Callable[[bytes], Any], error: type[Exception], skip_blank: bool) -> None:
        self.kind = kind
        self.decode = decode
        self.error = error
        self.skip_blank = skip_blank


def _line_body(line: bytes) -> bytes:
    r"""``line`` without its line break: ``\n`` or ``\r\n``, once (a lone ``\r`` is data)."""
    if line.endswith(b"\n"):
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line


def _text_line(line: bytes) -> str:
    return _line_body(line).decode()


#: UTF-8 byte-order mark: skipped at the start of a file, it is not part of the first line.
BOM = b"\xef\xbb\xbf"

JSON_LINES = _Format("read_jsonl", orjson.loads, orjson.JSONDecodeError, skip_blank=True)
TEXT_LINES = _Format("read_text", _text_line, UnicodeDecodeError, skip_blank=False)


class _FileSplit:
    """One file being read: where the reader is in it."""

    __slots__ = ("file", "line", "offset", "path")

    def __init__(self, path: Path, line: int = 0, offset: int = 0) -> None:
        self.path = path
        self.line = line  # lines consumed
        self.offset = offset  # bytes consumed
        self.file: IO[bytes] | None = None


class _LinesReader(SourceReader):
    """Reads its files a batch at a time, taking turns, so every unfinished file is an
    active split: the source's watermark waits for the slowest file instead of making
    the records of files read later look late."""

    def __init__(self, source: LinesSource, files: list[Path]) -> None:
        self._source = source
        self._format = source.format
        self._active: deque[_FileSplit] = deque(_FileSplit(path) for path in files)
        self._records = 0
        self._policy = ErrorPolicy(source.on_error, source.name)

    async def open(self) -> None:
        for split in self._active:
            if not split.path.is_file():
                raise FileNotFoundError(f"{self._format.kind}: {split.path} does not exist or is not a file")

    def splits(self) -> list[str]:
        return [str(split.path) for split in self._active]

    async def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        active = self._active
        while active:
            split = active[0]
            if split.file is None:
                split.file = open(split.path, "rb")  # noqa: SIM115 - closed when exhausted or in close()
                if split.offset == 0 and split.file.read(len(BOM)) == BOM:
                    split.offset = len(BOM)
                split.file.seek(split.offset)
            lines = list(islice(split.file, max_records))
            if not lines:
                split.file.close()
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
                self._policy.handle(exc, f"{path}:{number}", _line_body(line), bad)
        return records

    def position(self) -> list[dict[str, Any]]:
        """The unfinished files and how far each was read."""
        return [{"path": str(s.path), "line": s.line, "offset": s.offset} for s in self._active]

    def restore(self, position: Any) -> None:
        self._active = deque(_FileSplit(Path(p["path"]), p["line"], p["offset"]) for p in position)

    def statistics(self) -> dict[str, int]:
        return {
            "records_read": self._records,
            "records_skipped": self._policy.skipped,
            "records_dead_lettered": self._policy.dead_lettered,
        }

    async def close(self) -> None:
        self._policy.close()
        for split in self._active:
            if split.file is not None:
                split.file.close()
                split.file = None


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


def read_jsonl(
    path: str | os.PathLike[str] | list[str | os.PathLike[str]],
    *,
    on_error: OnError = "fail",
) -> Source:
    """A bounded source of the JSON values in one or more JSON-lines files.

    ``path`` is a file, a glob pattern or a list of either; each file is a split (read by
    one subtask, so parallelism is at most the number of files). Blank lines are
    ignored, and so is a UTF-8 byte-order mark at the start of a file. A line that is not
    valid JSON is handled by ``on_error``:

    - ``"fail"`` (default): the job fails with a :class:`BadRecordError` naming file and line;
    - ``"skip"``: it is dropped and counted; the first is logged in full, the rest in
      summary lines at most every 10 seconds and when the source closes;
    - an :class:`OutputTag`: it goes to that side output as a :class:`BadRecord`
      (``stream.get_side_output(tag)``) holding the line's bytes as read.
    """
    return LinesSource(_expand(path, "read_jsonl"), JSON_LINES, on_error)


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


class _FileWriter(SinkWriter):
    def __init__(self, path: Path, flush_interval: float) -> None:
        self._path = path
        self.flush_interval = flush_interval
        self._file: IO[bytes] | None = None

    async def open(self) -> None:
        _make_parents(self._path)
        self._file = open(self._path, "wb", opener=_create_0o644)  # noqa: SIM115 - closed in close()

    async def write(self, values: list[Any]) -> None:
        dumps = orjson.dumps
        option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        try:
            chunk = b"".join([dumps(value, option=option) for value in values])
        except TypeError:
            for value in values:
                try:
                    dumps(value, option=option)
                except TypeError as exc:
                    error = TypeError(f"FileSink({self._path}): record is not JSON-serialisable: {exc}")
                    error.record = value  # type: ignore[attr-defined]  # SinkOperator shows it
                    raise error from exc
            raise
        assert self._file is not None
        self._file.write(chunk)

    async def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileSink(Sink):
    """Writes each record as one JSON line (orjson) to ``path``.

    With parallelism above 1, subtask ``i`` writes ``<stem>-<i><suffix>`` next to it.
    The file is truncated when the job starts; a new file gets mode 0o644 and missing
    directories 0o755 (less the umask, so never world-writable).

    Writes are buffered. The buffer is flushed at end of input, at close, and
    ``flush_interval`` seconds after a write, even when no record follows it, so a job
    that stalls upstream does not sit on records it has processed.
    """

    default_name = "file_sink"

    def __init__(self, path: str | os.PathLike[str], *, flush_interval: float = 1.0) -> None:
        if not isinstance(flush_interval, (int, float)) or not flush_interval >= 0:
            raise ValueError(f"FileSink: flush_interval must be a number of seconds >= 0, got {flush_interval!r}")
        self.path = Path(path)
        self.flush_interval = flush_interval

    def create_writer(self, subtask_index: int, parallelism: int) -> SinkWriter:
        path = self.path
        if parallelism > 1:
            path = path.with_name(f"{path.stem}-{subtask_index}{path.suffix}")
        return _FileWriter(path, self.flush_interval)
