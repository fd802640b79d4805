"""Stop a worker running sliding or session windows with a savepoint (SIGTERM), resume it
from the savepoint at another parallelism, and compare with an undisturbed run.

The source stops reading halfway, once two checkpoints completed, so the savepoint
always holds open windows (and, for sessions, windows merged before it). The resumed
job's key groups are split another way: a key's windows move to another subtask, whose
output file continues what the stopped job committed for it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from recovery.jobs import WINDOW_JOB, Worker, explain, outputs, write_events

EVENTS = 40_000
PAUSE_AT = 20_000


def _files(folder: Path, stem: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob(f"{stem}-windows*.jsonl"))}


def _lines_per_key(parts: dict[str, bytes]) -> dict[str, list[tuple[str, bytes]]]:
    per_key: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in parts.items():
        for line in data.splitlines(keepends=True):
            assert line.endswith(b"\n"), f"torn line in {name}: {line!r}"
            per_key.setdefault(orjson.loads(line)["user"], []).append((name, line))
    return per_key


@pytest.mark.parametrize("windows", ["sliding", "session"])
@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)], ids=["2to3", "3to2"])
def test_a_savepoint_resumed_at_another_parallelism_completes_the_undisturbed_output(
    tmp_path: Path,
    windows: str,
    before: int,
    after: int,
) -> None:
    base = {**write_events(tmp_path, EVENTS, seed=before), "WINDOWS": windows, "SOURCE": "gated", "P": str(before)}
    reference = Worker(tmp_path, {**base, "OUT": str(tmp_path / "ref")}, target=WINDOW_JOB)
    assert reference.wait() == 0, explain(reference)
    expected = outputs(tmp_path, "ref")["windows"]

    env = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")}
    stopping = Worker(tmp_path, {**env, "PAUSE_AT": str(PAUSE_AT)}, target=WINDOW_JOB)
    assert stopping.wait_for("source paused"), explain(stopping)  # after two checkpoints completed
    stopping.signal(signal.SIGTERM)
    assert stopping.wait() == 0, explain(stopping)
    assert '"job stopped with a savepoint"' in stopping.text()
    [savepoint] = (tmp_path / "state" / "savepoints").iterdir()
    stopped = _files(tmp_path, "out")
    committed = sum(data.count(b"\n") for data in stopped.values())
    assert 0 < committed < sum(map(len, expected.values()))  # windows were open at the stop

    # Into a new state directory, from the savepoint, at the new parallelism.
    resumed = Worker(
        tmp_path,
        {**env, "STATE": str(tmp_path / "resumed")},
        "--from-savepoint",
        str(savepoint),
        "--parallelism",
        str(after),
        target=WINDOW_JOB,
        log=tmp_path / "resumed.log",
    )
    assert resumed.wait() == 0, explain(resumed)
    assert '"restoring from savepoint"' in resumed.text()
    final = _files(tmp_path, "out")
    assert len(final) == max(before, after)
    for name, data in stopped.items():
        assert final[name].startswith(data), f"{name}: what the stopped job committed was changed"
    added = {name: data[len(stopped.get(name, b"")) :] for name, data in final.items()}

    # Per key: what the stopped job committed, then what the resumed one added.
    first, then = _lines_per_key(stopped), _lines_per_key(added)
    found = {key: [line for _, line in first.get(key, []) + then.get(key, [])] for key in first.keys() | then.keys()}
    moved = {key for key in first.keys() & then.keys() if {n for n, _ in first[key]} != {n for n, _ in then[key]}}
    assert moved, "no key changed subtask: the rescale redistributed nothing"
    differing = sorted(key for key in expected.keys() | found.keys() if found.get(key) != expected.get(key))
    assert not differing, (
        f"{len(differing)} of {len(expected)} keys differ, e.g. {differing[0]!r}: expected "
        f"{len(expected.get(differing[0], []))} results, found {len(found.get(differing[0], []))}"
    )
