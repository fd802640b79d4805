"""What a resume must keep beyond state: the order in which file splits take turns, the
watermark operators had reached, and a clear error when the source no longer fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from recovery.gated import checkpoint_manifests

import aioflow as af
from aioflow.testing import run_collect


def _files(folder: Path) -> str:
    for f in range(3):
        (folder / f"in-{f}.jsonl").write_bytes(
            b"".join(orjson.dumps({"id": f * 100_000 + i, "ts": i}) + b"\n" for i in range(3_000 + 1_000 * f))
        )
    return str(folder / "in-*.jsonl")


def _running(folder: Path, files: str, fail: bool) -> af.App:
    """One running total over three files read by one subtask: the output depends on how the files interleave."""
    app = af.App(
        "order",
        state_dir=str(folder / "state"),
        checkpoint_interval=0.005,
        batch_size=100,
        restart_strategy=af.FixedDelayRestart(attempts=1, delay=0),
    )
    failed: list[int] = []

    def total(e: dict[str, Any], ctx: Any) -> Any:
        if fail and not failed and e["ts"] >= 1_500 and checkpoint_manifests(folder / "state"):
            failed.append(1)
            raise ConnectionError("flaky")
        state = ctx.value_state("sum", 0)
        state.update(state.value() + e["id"])
        yield state.value()

    class Total(af.KeyedProcessFunction):
        process_element = staticmethod(total)

    app.source(af.read_jsonl(files), name="events").key_by(lambda e: "all").process(Total, name="total").sink(
        af.FileSink(str(folder / "out.jsonl"), exactly_once=True), name="out"
    )
    return app


def test_files_take_turns_after_a_restore_as_they_did_before(tmp_path: Path) -> None:
    files = _files(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _running(tmp_path / "a", files, fail=False).run()
    _running(tmp_path / "b", files, fail=True).run()
    assert (tmp_path / "b" / "out.jsonl").read_bytes() == (tmp_path / "a" / "out.jsonl").read_bytes()


def _windows(folder: Path, stop_at: int | None) -> tuple[af.App, af.CollectSink]:
    app = af.App("drained", state_dir=str(folder), checkpoint_interval=60, batch_size=1)
    sink = af.CollectSink()

    def stopper(e: dict[str, Any]) -> dict[str, Any]:
        if e["ts"] == stop_at:
            app.stop()
        return e

    app.source(
        [{"ts": t, "n": 1} for t in range(0, 3000, 100)],
        timestamps=lambda e: e["ts"],
        watermarks=af.BoundedOutOfOrderness(0),
        name="events",
    ).map(stopper, name="stopper").key_by(lambda e: "k").window(af.TumblingEventTimeWindows(1000)).reduce(
        lambda a, b: {**a, "n": a["n"] + b["n"]}, name="count", parallelism=2
    ).sink(sink, name="out")
    return app, sink


def test_a_restored_watermark_is_not_moved_back(tmp_path: Path) -> None:
    """A drained job's final checkpoint has fired every window: a rerun fires none again."""
    app, sink = _windows(tmp_path, stop_at=1500)
    app.run(drain_on_stop=True)
    drained = sink.results
    assert drained and drained[-1]["n"] < 10  # the stop fired the open window early
    app, sink = _windows(tmp_path, stop_at=None)
    app.run()  # the source resumes mid-input; every later record is late for the fired windows
    assert sink.results == []


def test_a_position_that_does_not_fit_the_source_is_a_clear_error(tmp_path: Path) -> None:
    files = _files(tmp_path)
    app = af.App("swap", state_dir=str(tmp_path / "state"), checkpoint_interval=60)
    app.source(af.read_jsonl(files), name="events").sink(af.CollectSink(), name="out")
    app.run()
    app = af.App("swap", state_dir=str(tmp_path / "state"), checkpoint_interval=60)
    app.source(af.from_iterable([1, 2]), name="events").sink(af.CollectSink(), name="out")
    with pytest.raises(af.StateError, match="source 'events': the restored checkpoint's position .* does not fit"):
        app.run()


def test_run_collect_leaves_the_state_dir_alone(tmp_path: Path) -> None:
    app = af.App("tested", state_dir=str(tmp_path / "state"), checkpoint_interval=60)
    doubled = app.source([1, 2, 3], name="numbers").map(lambda v: v * 2, name="double")
    assert run_collect(doubled) == [2, 4, 6]
    assert not (tmp_path / "state").exists()


class _Halves(af.Source):
    """Numbers 0..99 split by subtask, with positions that cannot be redistributed."""

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        class Reader(af.SourceReader):
            done = False

            async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
                if self.done:
                    return None
                self.done = True
                return af.SourceBatch(list(range(subtask_index, 100, parallelism)))

            def position(self) -> Any:
                return self.done

            def restore(self, position: Any) -> None:
                self.done = position

        return Reader()


def test_a_source_that_cannot_rescale_says_so(tmp_path: Path) -> None:
    def app() -> af.App:
        job = af.App("halves", state_dir=str(tmp_path), checkpoint_interval=60, parallelism=2)
        job.source(_Halves(), name="numbers").sink(af.CollectSink(), name="out")
        return job

    app().run()
    with pytest.raises(
        af.StateError,
        match="source 'numbers' was checkpointed with parallelism 2 and now runs with 3: "
        "_Halves cannot change its parallelism",
    ):
        app().run(parallelism=3)
