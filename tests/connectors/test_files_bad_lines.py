"""What a file source says about a line it cannot decode: the file's line, the column in
that line (not orjson's line and column within the record), and how to skip such lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

import aioflow as af
from aioflow.testing import run_collect


def _failure(source: af.Source) -> af.BadRecordError:
    app = af.App("bad-lines")
    with pytest.raises(af.BadRecordError) as info:
        run_collect(app.source(source, name="in"))
    return info.value


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_an_unterminated_line_is_placed_by_file_line_and_column(tmp_path: Path, newline: bytes) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(newline.join([b'{"a": 1}', b'{"a": ', b'{"a": 3}', b""]))
    error = _failure(af.read_jsonl(path))
    message = str(error)
    assert error.location == f"{path}:2"
    assert f"at {path}:2: unexpected end of data at column 7\n" in message
    assert "line 2 column 1" not in message and "(char " not in message  # orjson's count within the record


def test_the_column_counts_characters_of_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"n": 1}\n\n{"é": 1} x\n', encoding="utf-8")
    error = _failure(af.read_jsonl(path))
    assert f"at {path}:3: unexpected content after document at column 10\n" in str(error)


def test_the_message_says_how_to_skip_bad_lines_and_that_way_works(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    message = str(_failure(af.read_jsonl(path)))
    assert 'on_error="skip"' in message and 'on_error=af.OutputTag("bad_records")' in message
    app = af.App("skipping")
    assert run_collect(app.source(af.read_jsonl(path, on_error="skip"))) == [{"a": 1}, {"a": 3}]


def test_logs_and_dead_letters_carry_the_column_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n[1, 2,, 3]\n')
    app = af.App("skip-log")
    with structlog.testing.capture_logs() as logs:
        run_collect(app.source(af.read_jsonl(path, on_error="skip")))
    skipped = [entry for entry in logs if entry["event"] == "skipped bad record"]
    assert len(skipped) == 1 and skipped[0]["error"].endswith(" at column 7")  # orjson's words, then ours

    tag = af.OutputTag("bad")
    app = af.App("dead-letters")
    source = app.source(af.read_jsonl(path, on_error=tag), name="in")
    _, bad = run_collect(source, source.get_side_output(tag))
    assert [(b.location, b.error) for b in bad] == [(f"{path}:2", skipped[0]["error"])]


def test_a_line_of_text_that_is_not_utf8_names_the_byte_in_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nab\xffc\n")
    error = _failure(af.read_text(path))
    assert f"at {path}:2: byte 3 of the line, 0xff, is not UTF-8 (invalid start byte)\n" in str(error)
