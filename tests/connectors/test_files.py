"""read_jsonl streams JSON lines with a bad-record policy; FileSink writes them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import structlog

import aioflow as af
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


def test_skip_policy_logs_and_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', "oops", '{"i": 3}', "{"])
    app = af.App("skip")
    with structlog.testing.capture_logs() as logs:
        out = run_collect(app.source(af.read_jsonl(path, on_error="skip")))
    assert out == [{"i": 1}, {"i": 3}]
    skipped = [entry for entry in logs if entry["event"] == "skipped bad record"]
    assert [entry["location"] for entry in skipped] == [f"{path}:2", f"{path}:4"]
    assert skipped[-1]["skipped_total"] == 2


def test_dead_letter_side_output(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", ['{"i": 1}', "oops", '{"i": 3}'])
    dead = af.OutputTag("dead")
    app = af.App("dlq")
    events = app.source(af.read_jsonl(path, on_error=dead))
    good, bad = run_collect(events, events.get_side_output(dead))
    assert good == [{"i": 1}, {"i": 3}]
    assert len(bad) == 1
    assert isinstance(bad[0], af.BadRecord)
    assert (bad[0].location, bad[0].raw) == (f"{path}:2", "oops")


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
    events = app.source(af.read_jsonl(str(tmp_path / "*.jsonl")), timestamps=lambda e: e["ts"],
                        watermarks=af.BoundedOutOfOrderness(0))
    windows = events.key_by(lambda e: e["f"]).window(af.TumblingEventTimeWindows(500)).side_output_late_data(late)
    counts = windows.process(lambda key, ctx, elements: [(key, ctx.window.start, len(elements))], name="counts")
    main, late_records = run_collect(counts, counts.get_side_output(late))
    assert late_records == []
    assert sorted(main) == [(f, start, 50) for f in "ab" for start in range(0, 50_000, 500)]
