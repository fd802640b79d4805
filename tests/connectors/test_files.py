"""read_jsonl streams JSON lines with a bad-record policy; FileSink writes them."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import anyio
import orjson
import pytest
import structlog
from support import late_records_under_backpressure

import aioflow as af
from aioflow._core.connectors import files
from aioflow._core.connectors.files import BOM
from aioflow.testing import run_collect


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_every_line_in_order_and_ignores_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.jsonl", [orjson.dumps({"i": i}).decode() for i in range(2500)] + ["", "  "])
    app = af.App("read", batch_size=100)
    assert run_collect(app.source(af.read_jsonl(path))) == [{"i": i} for i in range(2500)]


def test_malformed_line_fails_by_default_naming_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', '{"i": 2', '{"i": 3}'])
    app = af.App("fail")
    app.source(af.read_jsonl(path)).sink(af.CollectSink())
    with pytest.raises(af.BadRecordError) as info:
        app.run()
    assert info.value.location == f"{path}:2"
    assert f"{path}:2" in str(info.value) and '{"i": 2' in str(info.value)


def test_skip_policy_logs_the_first_bad_record_and_a_summary_at_the_end(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', "oops", '{"i": 3}', "{"])
    app = af.App("skip")
    with structlog.testing.capture_logs() as logs:
        out = run_collect(app.source(af.read_jsonl(path, on_error="skip")))
    assert out == [{"i": 1}, {"i": 3}]
    skipped = [entry for entry in logs if entry["event"].startswith("skipped bad record")]
    assert [(e["event"], e.get("location"), e.get("raw"), e["skipped_total"]) for e in skipped] == [
        ("skipped bad record", f"{path}:2", "oops", 1),
        ("skipped bad records", None, None, 2),
    ]
    assert (skipped[1]["skipped"], skipped[1]["last_location"]) == (1, f"{path}:4")


async def test_skipping_many_bad_lines_logs_a_few_lines_and_counts_them_all(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ["oops"] * 1000 + ['{"i": 1}', "", '{"i": 2}'])
    reader = af.read_jsonl(path, on_error="skip").create_reader(0, 1)
    with structlog.testing.capture_logs() as logs:
        await reader.open()
        while await reader.read(100, 0) is not None:
            pass
        await reader.close()
    assert reader.statistics() == {"records_read": 2, "records_skipped": 1000, "records_dead_lettered": 0}
    first, *summaries = logs
    assert (first["event"], first["location"], first["skipped_total"]) == ("skipped bad record", f"{path}:1", 1)
    assert len(summaries) < 10  # one per 10 s of reading, plus the final one; not one per line
    assert sum(entry["skipped"] for entry in summaries) == 999
    assert summaries[-1]["skipped_total"] == 1000


async def test_reader_statistics_count_dead_letters(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', "oops", "{"])
    reader = af.read_jsonl(path, on_error=af.OutputTag("dead")).create_reader(0, 1)
    await reader.open()
    while not (batch := await reader.read(100, 0.1)).records:  # empty: the reading thread was not there yet
        pass
    await reader.close()
    assert batch is not None and [bad.raw for bad in batch.bad] == [b"oops", b"{"]
    assert reader.statistics() == {"records_read": 1, "records_skipped": 0, "records_dead_lettered": 2}


def test_dead_letter_side_output(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', "oops", '{"i": 3}'])
    dead = af.OutputTag("dead")
    app = af.App("dlq")
    events = app.source(af.read_jsonl(path, on_error=dead))
    good, bad = run_collect(events, events.get_side_output(dead))
    assert good == [{"i": 1}, {"i": 3}]
    assert len(bad) == 1
    assert isinstance(bad[0], af.BadRecord)
    assert (bad[0].location, bad[0].raw) == (f"{path}:2", b"oops")


def test_dead_letters_keep_the_exact_bytes_of_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"ok\r\ncaf\xe9 \xff\r\n\xfe\r\r\nend")
    dead = af.OutputTag("dead")
    app = af.App("raw")
    lines = app.source(af.read_text(path, on_error=dead))
    good, bad = run_collect(lines, lines.get_side_output(dead))
    assert good == ["ok", "end"]
    # only the line break goes: invalid UTF-8 is not replaced, a second \r is data
    assert [(b.location, b.raw) for b in bad] == [(f"{path}:2", b"caf\xe9 \xff"), (f"{path}:3", b"\xfe\r")]


def test_bad_record_error_holds_the_bytes_and_shows_a_readable_preview(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"caf\xe9\r\n")
    app = af.App("fail-raw")
    app.source(af.read_text(path)).sink(af.CollectSink())
    with pytest.raises(af.BadRecordError) as info:
        app.run()
    assert info.value.raw == b"caf\xe9"
    assert "raw: 'caf\ufffd'" in str(info.value)


def test_read_text_strips_one_line_break_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\r\r\nb\r\nc\n\n \t\nd\r")
    app = af.App("text")
    assert run_collect(app.source(af.read_text(path))) == ["a\r", "b", "c", "", " \t", "d\r"]


def test_a_byte_order_mark_at_the_start_of_a_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"i": 1}\r\n{"i": 2}\n')
    (tmp_path / "in.txt").write_bytes("\ufeffone\n\ufefftwo\n".encode())
    app = af.App("bom")
    assert run_collect(app.source(af.read_jsonl(tmp_path / "in.jsonl"))) == [{"i": 1}, {"i": 2}]
    app = af.App("bom-text")
    assert run_collect(app.source(af.read_text(tmp_path / "in.txt"))) == ["one", "\ufefftwo"]  # first line only


def test_bad_policy_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error must be"):
        af.read_jsonl(tmp_path / "x.jsonl", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        af.read_jsonl(str(tmp_path / "*.jsonl"))
    app = af.App("missing")
    app.source(af.read_jsonl(tmp_path / "nope.jsonl")).sink(af.CollectSink())
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        app.run()


def test_several_files_split_across_subtasks(tmp_path: Path) -> None:
    for f in range(3):
        _write(tmp_path / f"part-{f}.jsonl", [orjson.dumps({"f": f, "i": i}).decode() for i in range(100)])
    app = af.App("parts", parallelism=3)
    out = run_collect(app.source(af.read_jsonl(str(tmp_path / "part-*.jsonl"))))
    assert sorted((r["f"], r["i"]) for r in out) == [(f, i) for f in range(3) for i in range(100)]
    assert app.plan().tasks[0].parallelism == 3


def test_file_sink_round_trips_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "out" / "result.jsonl"
    app = af.App("sink")
    app.source([{"a": 1}, ("b", 2.5), "c"]).sink(af.FileSink(out))
    app.run()
    assert [orjson.loads(line) for line in out.read_bytes().splitlines()] == [{"a": 1}, ["b", 2.5], "c"]


async def test_file_sink_flushes_after_flush_interval_while_the_job_waits(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"

    async def one_then_quiet():
        yield {"a": 1}
        await anyio.sleep_forever()  # the job stalls upstream, the record already written

    app = af.App("stalls")
    app.source(af.from_iterable(one_then_quiet())).sink(af.FileSink(path, flush_interval=0.05))
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        with anyio.fail_after(10):  # bounded wait for the flush, while the job still runs
            while not path.exists() or path.read_bytes() != b'{"a":1}\n':
                await anyio.sleep(0.01)
        app.stop()


async def test_file_sink_buffers_writes_within_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = af.FileSink(path, flush_interval=3600).create_writer(0, 1)
    await writer.open()
    try:
        await writer.write([{"a": 1}])
        assert path.read_bytes() == b""
        await writer.flush()
        assert path.read_bytes() == b'{"a":1}\n'
    finally:
        await writer.close()


def test_file_sink_rejects_a_negative_flush_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_interval must be a number of seconds >= 0, got -1"):
        af.FileSink(tmp_path / "o.jsonl", flush_interval=-1)


async def test_file_sink_creates_files_and_directories_not_world_writable_under_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "o.jsonl"
    writer = af.FileSink(path).create_writer(0, 1)
    umask = os.umask(0)
    try:
        await writer.open()
        await writer.close()
    finally:
        os.umask(umask)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a", tmp_path / "a" / "b", path)}
    assert modes == {tmp_path / "a": 0o755, tmp_path / "a" / "b": 0o755, path: 0o644}


def test_file_sink_names_a_record_it_cannot_serialise(tmp_path: Path) -> None:
    app = af.App("unserialisable")
    app.source([{"a": 1}, {"a": object()}]).sink(af.FileSink(tmp_path / "o.jsonl"), name="out")
    with pytest.raises(af.OperatorError, match="operator 'out'.*not JSON-serialisable"):
        app.run()


def test_file_sink_with_parallelism_writes_one_file_per_subtask(tmp_path: Path) -> None:
    app = af.App("psink", parallelism=2)
    app.source(range(10)).rebalance().sink(af.FileSink(tmp_path / "o.jsonl"))
    app.run()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["o-0.jsonl", "o-1.jsonl"]
    values = [orjson.loads(line) for p in tmp_path.iterdir() for line in p.read_bytes().splitlines()]
    assert sorted(values) == list(range(10))


def test_files_of_one_subtask_are_read_in_turns_so_none_looks_late(tmp_path: Path) -> None:
    for name in ("a", "b"):  # overlapping time ranges, one subtask reads both
        _write(tmp_path / f"{name}.jsonl", [orjson.dumps({"f": name, "ts": t}).decode() for t in range(0, 50_000, 10)])
    late = af.OutputTag("late")
    app = af.App("splits", batch_size=100, watermark_interval=0)
    events = app.source(
        af.read_jsonl(str(tmp_path / "*.jsonl")), timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(0)
    )
    windows = events.key_by(lambda e: e["f"]).window(af.TumblingEventTimeWindows(500)).side_output_late_data(late)
    counts = windows.process(lambda key, ctx, elements: [(key, ctx.window.start, len(elements))], name="counts")
    main, late_records = run_collect(counts, counts.get_side_output(late))
    assert late_records == []
    assert sorted(main) == [(f, start, 50) for f in "ab" for start in range(0, 50_000, 500)]


async def test_files_waiting_for_their_turn_under_backpressure_are_not_idle(tmp_path: Path) -> None:
    """Three files covering the same period, read in turns by one subtask held back by a
    slow sink, with an idle timeout far shorter than the stalls: a file not read to its
    end has records, so it never goes idle and none of its records is late."""
    total = 3_000
    for f in range(3):
        _write(tmp_path / f"{f}.jsonl", [orjson.dumps({"ts": 10 * i}).decode() for i in range(f, total, 3)])
    app = af.App("files-idle-backpressure", batch_size=50, channel_capacity=1)
    events = app.source(
        af.read_jsonl(str(tmp_path / "*.jsonl")),
        timestamps=lambda e: e["ts"],
        watermarks=af.BoundedOutOfOrderness(0, idle_timeout=20),
    )
    late, counted, backpressured = await late_records_under_backpressure(app, events)
    assert backpressured > 1.0  # the source was held back, many times the idle timeout
    assert late == 0, f"{late} of {total} records were late"
    assert counted == total


async def test_a_slow_file_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """The source reads a named pipe whose writer sends a line every 0.2 s: reading it
    takes over a second, and a ticker on the same event loop keeps ticking meanwhile
    (the lines are read by a thread, never by a blocking call on the loop)."""
    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(fifo)
    lines, pause = 6, 0.2

    def write_slowly() -> None:
        with open(fifo, "wb", buffering=0) as out:  # waits for the reader to open it
            for i in range(lines):
                out.write(orjson.dumps({"i": i}) + b"\n")
                time.sleep(pause)

    writer = threading.Thread(target=write_slowly, daemon=True)
    writer.start()
    app = af.App("slow-file", batch_size=1024)
    sink = af.CollectSink()
    app.source(af.read_jsonl(fifo)).sink(sink)
    gaps: list[float] = []
    started = time.monotonic()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:

            async def tick() -> None:
                last = time.monotonic()
                while True:
                    await anyio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tasks.start_soon(tick)
            await app.run_async()
            tasks.cancel_scope.cancel()
    took = time.monotonic() - started
    writer.join()
    assert sink.results == [{"i": i} for i in range(lines)]
    assert took >= (lines - 1) * pause  # the reads were slow...
    assert len(gaps) > 20 and max(gaps) < 0.5, max(gaps)  # ...and the loop kept running


@pytest.mark.parametrize("page_cache", [True, False], ids=["page-cache-on-the-loop", "every-chunk-in-a-thread"])
async def test_lines_across_chunk_boundaries_and_positions_are_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_cache: bool
) -> None:
    """Chunks of 7 bytes: lines span chunks, one is longer than several, CRLF and a
    missing last line break; every batch has its lines whole and the position after it
    is exact, so a reader restored there goes on with the next line. Without reads of
    the page cache on the loop (not Linux), every chunk is read in a thread."""
    monkeypatch.setattr(files, "CHUNK", 7)
    if not page_cache:
        monkeypatch.setattr(files, "_NOWAIT", None)
    lines = ["a", "", "bb\r", "c" * 30, "dddd", "é", "ffffff", "g", "hh", "last"]
    path = tmp_path / "in.txt"
    path.write_bytes(BOM + "\n".join(lines).encode())  # no line break after "last"
    reader = af.read_text(path).create_reader(0, 1)
    await reader.open()
    got, positions = [], []
    while (batch := await reader.read(3, 1)) is not None:
        got.extend(batch.records)
        positions.append(reader.position()["reading"])
    await reader.close()
    assert got == [line.removesuffix("\r") for line in lines]  # "bb\r\n" is a CRLF line
    middle = positions[1][0]
    assert middle == {"path": str(path), "line": 6, "offset": len(BOM) + len("\n".join(lines[:6]).encode()) + 1}
    resumed = af.read_text(path).create_reader(0, 1)
    resumed.restore({"reading": [middle], "finished": []})
    await resumed.open()
    rest = []
    while (batch := await resumed.read(100, 1)) is not None:
        rest.extend(batch.records)
    await resumed.close()
    assert rest == lines[6:]  # no CRLF among them
