"""Sinks and sources across a resume: a plain FileSink appends (at-least-once) instead of
starting afresh, a torn last line is cut, and a used-up iterator is refused, not skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from recovery.gated import checkpoint_manifests

import aioflow as af
from aioflow._core.connectors.files import _truncate_torn_line


def _flaky_job(folder: Path, fail_at: int, source: Any) -> af.App:
    app = af.App(
        "resume",
        state_dir=str(folder / "state"),
        checkpoint_interval=0.005,
        restart_strategy=af.FixedDelayRestart(attempts=1, delay=0),
    )
    failed: list[int] = []

    def once(v: int) -> int:
        if v >= fail_at and not failed and checkpoint_manifests(folder / "state"):
            failed.append(v)
            raise ConnectionError("flaky")
        return v

    app.source(source, name="numbers").map(once, name="flaky").sink(af.FileSink(str(folder / "out.jsonl")), name="out")
    return app


def test_a_plain_file_sink_keeps_what_it_wrote_before_a_restart(tmp_path: Path) -> None:
    _flaky_job(tmp_path, 5_000, list(range(20_000))).run()
    written = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert set(written) == set(range(20_000))  # at least once: nothing lost to a truncation


def test_a_used_up_generator_is_refused_on_restart(tmp_path: Path) -> None:
    with pytest.raises(af.StateError, match=r"from_iterable\(generator\) can be read only once"):
        _flaky_job(tmp_path, 5_000, af.from_iterable(i for i in range(20_000))).run()


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b"", b""),
        (b"a\n", b"a\n"),
        (b"a\nb\nhalf", b"a\nb\n"),
        (b"torn", b""),
        (b"x" * 70_000 + b"\n" + b"y" * 70_000, b"x" * 70_000 + b"\n"),
    ],
)
def test_a_torn_last_line_is_cut(tmp_path: Path, content: bytes, kept: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    with path.open("r+b") as f:
        _truncate_torn_line(f)
        f.write(b"next\n")
    assert path.read_bytes() == kept + b"next\n"


def _sets_job(folder: Path, serializer: str) -> af.App:
    class Seen(af.KeyedProcessFunction):
        def open(self, ctx: Any) -> None:
            self.seen = ctx.value_state("seen", serializer=serializer)

        def process_element(self, v: int, ctx: Any) -> Any:
            self.seen.update({v})  # a set: JSON cannot store it
            yield v

    app = af.App("sets", state_dir=str(folder / "state"), checkpoint_interval=3600)
    app.source(list(range(100)), name="numbers").key_by(lambda v: v % 3).process(Seen, name="seen").sink(
        af.FileSink(str(folder / "out.jsonl"), exactly_once=True), name="out"
    )
    return app


def test_the_end_of_input_commits_only_with_the_final_checkpoint(tmp_path: Path) -> None:
    """A final checkpoint that fails leaves the exactly-once output uncommitted, so the fixed job's
    rerun writes every record once (committed at the end of input, it would write them twice)."""
    with pytest.raises(af.StateError, match="cannot serialise a value of type set"):
        _sets_job(tmp_path, "json").run()
    out = tmp_path / "out.jsonl"
    assert not out.exists() or out.read_bytes() == b""
    _sets_job(tmp_path, "pickle").run()
    assert sorted(orjson.loads(line) for line in out.read_bytes().splitlines()) == list(range(100))
