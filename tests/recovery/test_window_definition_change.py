"""A savepoint taken with one window definition, resumed by a job whose window definition
changed (an evictor added, another trigger, tumbling -> sliding, aggregate -> process).

The contract (docs: "a changed window definition resumes every window or is refused,
never silently emptied"): the resumed worker either

- finishes (exit status 0) with every window that was open in the savepoint in its
  output, complete: its last result counts every record it received before and after the
  savepoint, as the undisturbed old job's does (each new definition is chosen so that
  this is well defined: the evictor keeps everything, the trigger still fires at the
  window's end, the tumbling windows are among the sliding ones, the process function
  computes what the aggregate did); or
- is refused (exit status 3) with an error naming the operator and what changed, and
  leaves the committed output as it was.

Anything else fails: a crash (exit 1), or a finished job that lost or emptied a window.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from recovery.jobs import WINDOW_JOB, Worker, explain, outputs, write_events

EVENTS = 20_000
SIZE = 2_000  # the tumbling windows of the savepoint's job
OPERATOR = "user_windows"
REFUSED = 3

CHANGES = {
    # id: (environment of the new job, words one of which the refusal names what changed by)
    "unchanged": ({}, ()),  # the control: nothing changed, so nothing may be refused
    "count-evictor-added": ({"WINDOWS": "tumbling-count-evictor"}, ("evictor",)),
    "trigger-changed": ({"WINDOWS": "tumbling-continuous"}, ("trigger",)),
    "tumbling-to-sliding": ({"WINDOWS": "sliding-2000"}, ("assigner", "sliding")),
    "aggregate-to-process": ({"FUNCTION": "process"}, ("aggregate", "process", "function")),
}


def _last_results(per_key: dict[str, list[bytes]]) -> dict[tuple[str, Any], dict[str, Any]]:
    """Each (user, window)'s last result (a window that fires early fires again later)."""
    last: dict[tuple[str, Any], dict[str, Any]] = {}
    for lines in per_key.values():
        for line in lines:
            result = orjson.loads(line)
            last[result["user"], tuple(result["window"])] = result
    return last


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("out-*.jsonl"))}


def _problems(worker: Worker) -> str:
    """The worker's log lines that say what went wrong: plain text (the CLI's own
    messages) and JSON lines of level warning and above, with their exceptions."""
    found = []
    for raw in worker.log.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            found.append(raw.decode(errors="replace"))
            continue
        if not isinstance(line, dict) or line.get("level") in ("warning", "error", "critical"):
            found.append(raw.decode(errors="replace"))
    return "\n".join(found)


@pytest.mark.parametrize("pause_at", [EVENTS // 2, EVENTS], ids=["more-input", "no-more-input"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_window_definition_resumes_every_open_window_or_is_refused(
    tmp_path: Path,
    change: str,
    pause_at: int,
) -> None:
    """With ``no-more-input`` the savepoint is taken at the end of the input: the resumed
    job reads nothing and must fire the savepoint's windows from what it restored alone."""
    new_env, change_words = CHANGES[change]
    base = {**write_events(tmp_path, EVENTS, seed=5), "P": "2", "SOURCE": "gated", "WINDOWS": "tumbling"}
    reference = Worker(tmp_path, {**base, "OUT": str(tmp_path / "ref")}, target=WINDOW_JOB)
    assert reference.wait() == 0, explain(reference)
    expected = _last_results(outputs(tmp_path, "ref")["windows"])

    # The old job stops with a savepoint after pause_at records, with windows open.
    env = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")}
    stopping = Worker(tmp_path, {**env, "PAUSE_AT": str(pause_at)}, target=WINDOW_JOB)
    assert stopping.wait_for("source paused"), explain(stopping)  # after two checkpoints completed
    stopping.signal(signal.SIGTERM)
    assert stopping.wait() == 0, explain(stopping)
    [savepoint] = (tmp_path / "state" / "savepoints").iterdir()
    committed = _files(tmp_path)
    fired = _last_results(outputs(tmp_path, "out")["windows"])
    with (tmp_path / "events.jsonl").open("rb") as f:
        before = [orjson.loads(next(f)) for _ in range(pause_at)]
    started = {(e["user"], (e["ts"] - e["ts"] % SIZE, e["ts"] - e["ts"] % SIZE + SIZE)) for e in before}
    open_windows = started - fired.keys()
    assert len(open_windows) > 50, "the savepoint holds (almost) no open window: nothing to resume"

    # The new job, from the savepoint, into a new state directory.
    resumed = Worker(
        tmp_path,
        {**env, **new_env, "STATE": str(tmp_path / "resumed")},
        "--from-savepoint",
        str(savepoint),
        target=WINDOW_JOB,
        log=tmp_path / "resumed.log",
    )
    code = resumed.wait()
    assert code in ((0, REFUSED) if change_words else (0,)), (
        f"exit status {code}: neither resumed nor refused\n{explain(resumed)}"
    )
    if code == REFUSED:
        problems = _problems(resumed)
        assert OPERATOR in problems, f"the refusal does not name the operator {OPERATOR!r}:\n{problems}"
        assert any(word in problems.lower() for word in change_words), (
            f"the refusal does not say what changed ({' or '.join(change_words)}):\n{problems}"
        )
        assert _files(tmp_path) == committed, "a refused worker changed the committed output"
        return

    assert '"restoring from savepoint"' in resumed.text()
    found = _last_results(outputs(tmp_path, "out")["windows"])
    lost = sorted(w for w in open_windows if w not in found)
    emptied = sorted(w for w in open_windows if w in found and found[w] != expected[w])
    assert not lost and not emptied, (
        f"exit status 0, but of the {len(open_windows)} windows open in the savepoint {len(lost)} are missing "
        f"(e.g. {lost[:3]}) and {len(emptied)} lack records they had (e.g. "
        f"{[(found[w], expected[w]) for w in emptied[:2]]})"
    )
    for window in started:  # the windows the old job fired before the stop are as they were, too
        assert found[window] == expected[window], window
