"""Stop with a savepoint, resume from it (also at another parallelism), and stop by draining.

A stop with checkpointing on takes a savepoint: open windows and timers are kept in it,
not fired, so what the stopped job committed is a prefix of an undisturbed run's output,
and the resumed job completes it exactly. ``--drain`` fires them instead.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from recovery.jobs import KILLED, Worker, as_multisets, outputs, run, write_job

import aioflow as af

EVENTS = 40_000
PAUSE_AT = 20_200
"""Where the stopped jobs' source pauses (once two checkpoints completed) and the stop comes:
amid the tumbling window [100 000, 102 000), half read."""


def _gated_job(folder: Path, seed: int, parallelism: int) -> dict[str, str]:
    """The job, its input and the environment it reads, with the gated source."""
    return {**write_job(folder, EVENTS, seed=seed), "P": str(parallelism), "SOURCE": "gated"}


def _stop_with_savepoint(folder: Path, env: dict[str, str], *args: str) -> Worker:
    """Run the job until its source paused at ``PAUSE_AT``, then stop it with SIGTERM."""
    worker = Worker(folder, {**env, "PAUSE_AT": str(PAUSE_AT)}, *args)
    assert worker.wait_for("source paused"), worker.text()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.text()
    return worker


def test_sigterm_stops_with_a_savepoint_and_a_restart_completes_the_output(tmp_path: Path) -> None:
    base = _gated_job(tmp_path, seed=7, parallelism=2)
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = outputs(tmp_path, "ref")
    env = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")}

    worker = _stop_with_savepoint(tmp_path, env)
    log = worker.text()
    assert '"stop requested: with a savepoint"' in log and '"job stopped with a savepoint"' in log
    assert '"job finished"' not in log
    savepoints = list((tmp_path / "state" / "savepoints").iterdir())
    assert len(savepoints) == 1 and (savepoints[0] / "_manifest").is_file()
    stopped = outputs(tmp_path, "out")
    # Nothing fired early: every key's committed results are the start of its undisturbed ones.
    assert sum(len(lines) for per_key in stopped.values() for lines in per_key.values()) > 0
    for kind, per_key in stopped.items():
        for key, lines in per_key.items():
            assert expected[kind][key][: len(lines)] == lines, (kind, key)
    assert stopped != expected  # the stop came before the end

    restarted = Worker(tmp_path, env)
    assert restarted.wait() == 0, restarted.text()
    assert '"kind": "savepoint"' in restarted.text()  # it said what it resumed from
    assert outputs(tmp_path, "out") == expected


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)])
def test_resuming_a_savepoint_at_another_parallelism_gives_the_undisturbed_results(
    tmp_path: Path,
    before: int,
    after: int,
) -> None:
    base = _gated_job(tmp_path, seed=before, parallelism=before)
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = as_multisets(outputs(tmp_path, "ref"))

    _stop_with_savepoint(tmp_path, {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")})
    assert as_multisets(outputs(tmp_path, "out")) != expected  # the stop came before the end
    [savepoint] = (tmp_path / "state" / "savepoints").iterdir()
    # Into a new state directory, from the savepoint, at the new parallelism.
    resumed = Worker(
        tmp_path,
        {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "resumed")},
        "--from-savepoint",
        str(savepoint),
        "--parallelism",
        str(after),
    )
    assert resumed.wait() == 0, resumed.text()
    assert '"restoring from savepoint"' in resumed.text()
    assert len(list(tmp_path.glob("out-sums-*.jsonl"))) == max(before, after)
    assert as_multisets(outputs(tmp_path, "out")) == expected


def test_drain_fires_open_windows_on_stop(tmp_path: Path) -> None:
    base = _gated_job(tmp_path, seed=3, parallelism=1)
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = as_multisets(outputs(tmp_path, "ref"))
    worker = _stop_with_savepoint(
        tmp_path, {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "s")}, "--drain"
    )
    assert '"stop requested: draining"' in worker.text() and '"job finished"' in worker.text()
    assert not (tmp_path / "s" / "savepoints").exists()
    drained = as_multisets(outputs(tmp_path, "out"))
    paused_at = (PAUSE_AT - 1) * 5  # the timestamp of the last record read
    sums = [orjson.loads(line) for line in drained["sums"].elements()]
    assert max(result["ts"] for result in sums) == paused_at  # nothing read after the stop
    # The window open at the stop fired with what it had: results the undisturbed run never gives.
    assert drained["sums"] - expected["sums"]
    assert {orjson.loads(line)["ts"] // 2000 for line in drained["sums"] - expected["sums"]} == {paused_at // 2000}


def test_a_missing_savepoint_is_a_clear_error(tmp_path: Path) -> None:
    base = {**write_job(tmp_path, 10, seed=1), "P": "1", "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "s")}
    worker = Worker(tmp_path, base, "--from-savepoint", str(tmp_path / "nowhere"))
    assert worker.wait() == 3  # refused
    assert "savepoint " + str(tmp_path / "nowhere") + " does not exist" in worker.text()


# -- in one process: sources with several files change their parallelism too -------------------------------


def _files_job(folder: Path, stop_after: int | None) -> tuple[af.App, list[Any]]:
    """Window sums over four files read in parallel; ``stop_after`` records, ``app.stop()``."""
    app = af.App("files", state_dir=str(folder / "state"), checkpoint_interval=0.05, parallelism=2)
    seen = [0]

    def stop_midway(e: dict[str, Any]) -> dict[str, Any]:
        seen[0] += 1
        if seen[0] == stop_after:
            app.stop()
        return e

    events = app.source(
        af.read_jsonl(str(folder / "in-*.jsonl")),
        timestamps=lambda e: e["ts"],
        watermarks=af.BoundedOutOfOrderness(0),
        name="events",
    )
    sums = (
        events.map(stop_midway, name="stopper")
        .key_by(lambda e: e["user"])
        .window(af.TumblingEventTimeWindows(1000))
        .reduce(lambda a, b: {**a, "v": a["v"] + b["v"]}, name="sums")
    )
    sums.sink(af.FileSink(str(folder / "out.jsonl"), exactly_once=True), name="out")
    return app, seen


@pytest.mark.parametrize(("before", "after"), [(2, 3), (4, 1)])
def test_file_sources_resume_their_files_at_another_parallelism(tmp_path: Path, before: int, after: int) -> None:
    expected: collections.Counter[tuple[str, int, int]] = collections.Counter()
    for f in range(4):
        with (tmp_path / f"in-{f}.jsonl").open("wb") as out:
            for i in range(20_000):
                event = {"user": f"u{(i * 7 + f) % 50}", "ts": i * 3, "v": i % 10 + f}
                out.write(orjson.dumps(event) + b"\n")
    windows: dict[tuple[str, int], int] = collections.defaultdict(int)
    for f in range(4):
        for line in (tmp_path / f"in-{f}.jsonl").read_bytes().splitlines():
            e = orjson.loads(line)
            windows[e["user"], e["ts"] // 1000] += e["v"]
    expected.update((user, window, v) for (user, window), v in windows.items())

    app, _ = _files_job(tmp_path, stop_after=15_000)
    app.run(parallelism=before)
    assert list((tmp_path / "state" / "savepoints").iterdir())
    app, seen = _files_job(tmp_path, stop_after=None)
    app.run(parallelism=after)
    assert 0 < seen[0] < 80_000  # it resumed: read only what the first run had not

    found: collections.Counter[tuple[str, int, int]] = collections.Counter()
    for path in tmp_path.glob("out*.jsonl"):
        for line in path.read_bytes().splitlines():
            e = orjson.loads(line)
            found[e["user"], e["ts"] // 1000, e["v"]] += 1
    assert found == expected


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 3)], ids=["same-parallelism", "rescaled"])
def test_a_retained_checkpoint_rebuilds_the_state_from_checkpoint_storage(
    tmp_path: Path, before: int, after: int
) -> None:
    """A checkpoint folder in checkpoint storage works as a savepoint: the working copy is
    rebuilt from its key groups' chains of deltas (what a worker taking over partitions
    reads), in another state directory, and the job completes exactly the undisturbed
    output. A small cache makes the deltas hold state evicted between checkpoints too.
    The killed worker's source pauses at 3/4 of the input until three checkpoints (as
    many as storage retains) completed, paced so that they complete while it reads: the
    kill finds it running, with deltas on deltas in storage."""
    base = {**_gated_job(tmp_path, seed=3, parallelism=before), "CACHE": "64"}
    assert run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = outputs(tmp_path, "ref")
    env = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state"), "PACE": "4"}
    worker = Worker(tmp_path, {**env, "PAUSE_AT": str(EVENTS * 3 // 4), "GATE": "3"})
    assert worker.wait_for("source paused"), worker.text()
    worker.signal(signal.SIGKILL)
    assert worker.wait() == KILLED, worker.text()
    newest = max((tmp_path / "state" / "checkpoints").glob("*/chk-*"), key=lambda p: int(p.name[4:]))
    manifest = orjson.loads((newest / "_manifest").read_bytes())["body"]
    assert max(len(chain) for chain in manifest["key_groups"].values()) >= 2  # deltas on deltas, not one copy

    resumed = Worker(
        tmp_path,
        {**env, "STATE": str(tmp_path / "rebuilt"), "P": str(after)},
        "--from-savepoint",
        str(newest),
        log=tmp_path / "rebuilt.log",
    )
    assert resumed.wait() == 0, resumed.text()
    assert '"restored from savepoint"' in resumed.text()
    assert as_multisets(outputs(tmp_path, "out")) == as_multisets(expected)
    if before == after:
        assert outputs(tmp_path, "out") == expected
