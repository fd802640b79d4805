"""SIGKILL a real worker at random moments, restart it, and compare its committed output
with an undisturbed run's: every output file holds the same records, in the same order per key."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

JOB = '''
import os
import aioflow as af

state = os.environ.get("STATE")
app = af.App("crash", state_dir=state, checkpoint_interval=0.1 if state else None,
             parallelism=int(os.environ["P"]))
events = app.source(af.read_jsonl(os.environ["EVENTS"]), timestamps=lambda e: e["ts"],
                    watermarks=af.BoundedOutOfOrderness(100), parallelism=1)


class Count(af.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, e, ctx):
        self.n.update(self.n.value() + 1)
        ctx.timer_service.register_event_time_timer(ctx.timestamp - ctx.timestamp % 1000 + 999)

    def on_timer(self, ts, ctx):
        yield {"user": ctx.key, "ts": ts, "n": self.n.value()}


counts = events.key_by(lambda e: e["user"]).process(Count(), name="count")
windows = events.key_by(lambda e: e["user"]).window(af.TumblingEventTimeWindows(2000)).reduce(
    lambda a, b: {"user": a["user"], "ts": max(a["ts"], b["ts"]), "v": a["v"] + b["v"]}, name="sums")
counts.sink(af.FileSink(os.environ["OUT"] + "-counts.jsonl", exactly_once=bool(state)), name="counts-out")
windows.sink(af.FileSink(os.environ["OUT"] + "-sums.jsonl", exactly_once=bool(state)), name="sums-out")
'''


def _run(tmp: Path, env: dict[str, str], kill_at_checkpoint: int | None = None, delay: float = 0.0) -> int:
    """Run the job; with ``kill_at_checkpoint``, SIGKILL it ``delay`` seconds after that many
    checkpoints completed (a bounded wait on its log, not on wall-clock luck)."""
    log = tmp / "worker.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "aioflow", "run", str(tmp / "job.py") + ":app",
                                    "--log-format", "json"],
                                   env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr)
        if kill_at_checkpoint is not None:
            deadline = time.monotonic() + 60
            while process.poll() is None and log.read_bytes().count(b"checkpoint complete") < kill_at_checkpoint:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.005)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        code = process.wait(timeout=120)
    assert code in (0, -signal.SIGKILL), log.read_text()
    return code


def _outputs(folder: Path, stem: str) -> dict[str, dict[str, list[bytes]]]:
    """Each output file's lines, per key in file order: what must match exactly. (Results of
    different keys fired by the same watermark may come in another order after a restore.)"""
    outputs: dict[str, dict[str, list[bytes]]] = {}
    for path in sorted(folder.glob(f"{stem}*.jsonl")):
        per_key = outputs.setdefault(path.name.replace(stem, ""), {})
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n"), f"torn line in {path}: {line!r}"
            per_key.setdefault(orjson.loads(line)["user"], []).append(line)
    return outputs


@pytest.mark.parametrize("parallelism", [1, 2])
def test_sigkilled_worker_restarted_produces_exactly_the_undisturbed_output(tmp_path: Path, parallelism: int) -> None:
    rng = random.Random(parallelism)
    with (tmp_path / "events.jsonl").open("wb") as f:
        for i in range(200_000):
            f.write(orjson.dumps({"user": f"u{rng.randrange(300)}", "ts": i * 5, "v": rng.randrange(100)}) + b"\n")
    (tmp_path / "job.py").write_text(JOB)
    base = {"EVENTS": str(tmp_path / "events.jsonl"), "P": str(parallelism)}
    assert _run(tmp_path, {**base, "OUT": str(tmp_path / "ref")}) == 0
    expected = _outputs(tmp_path, "ref")
    assert expected and all(expected.values())

    crashing = {**base, "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state")}
    moments = random.Random()  # a new schedule of kills every run
    kills = 0
    for _ in range(4):
        code = _run(tmp_path, crashing, kill_at_checkpoint=moments.randint(1, 3), delay=moments.uniform(0, 0.1))
        if code == 0:
            break  # it finished before the kill
        assert code == -signal.SIGKILL
        kills += 1
    assert _run(tmp_path, crashing) == 0
    assert kills >= 1
    assert _outputs(tmp_path, "out") == expected
