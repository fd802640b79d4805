"""Stopping ``aioflow run``: exit codes, the stop timeout, blocked code, stdin, closed pipes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

import aioflow as af

ENDLESS = """
import sys
import anyio
import aioflow as af

async def ticks():
    i = 0
    while True:
        yield i
        i += 1
        await anyio.sleep(0.001)

app = af.App("endless")
numbers = app.source(af.from_iterable(ticks()), name="ticks")
"""


def start(tmp_path: Path, body: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    (tmp_path / "job.py").write_text(body)
    return subprocess.Popen(
        [sys.executable, "-m", "aioflow", "run", "job.py:app", "--log-format", "json", *args],
        cwd=tmp_path,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_pending: dict[int, bytes] = {}  # bytes read past the last full line, per file descriptor


def wait_for_line(stream: IO[str] | None, text: str, seconds: float = 60) -> list[str]:
    """Read lines until one contains ``text``; fail after ``seconds``. Reads the raw file
    descriptor, so that select() is never fooled by lines sitting in a Python buffer."""
    assert stream is not None
    fd = stream.fileno()
    deadline = time.monotonic() + seconds
    lines: list[str] = []
    while True:
        buffered = _pending.get(fd, b"")
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            _pending[fd] = buffered
            lines.append(line.decode() + "\n")
            if text in lines[-1]:
                return lines
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {text!r} within {seconds} s: {lines}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stream ended before {text!r}: {lines}"
            _pending[fd] = buffered + chunk


def finish(process: subprocess.Popen[str], seconds: float = 60) -> tuple[str, str]:
    try:
        return process.communicate(timeout=seconds)
    finally:
        process.kill()


BLOCKED_SINK = (
    ENDLESS
    + """
class Blocked(af.SinkWriter):
    async def write(self, values):
        print("sink blocked", file=sys.stderr, flush=True)
        await anyio.sleep_forever()  # records were read and will never be written

class BlockedSink(af.Sink):
    def create_writer(self, subtask_index, parallelism):
        return Blocked()

numbers.sink(BlockedSink(), name="blocked")
"""
)


def test_a_second_signal_cancels_the_job_and_exits_128_plus_the_signal(tmp_path: Path) -> None:
    process = start(tmp_path, BLOCKED_SINK)
    wait_for_line(process.stderr, "sink blocked")
    process.send_signal(signal.SIGINT)
    wait_for_line(process.stderr, "stop requested: draining")
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 130, err  # the first signal names the code
    assert "second stop signal: cancelling the job" in err and "job cancelled before completion" in err
    assert '"job finished"' not in err


def test_a_stop_that_takes_longer_than_the_stop_timeout_cancels_the_job(tmp_path: Path) -> None:
    process = start(tmp_path, BLOCKED_SINK, "--stop-timeout", "0.2")
    wait_for_line(process.stderr, "sink blocked")
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 143, err
    assert "stop timed out: cancelling the job" in err and "job cancelled before completion" in err


def test_an_operator_stuck_in_sync_code_cannot_keep_the_worker_from_exiting(tmp_path: Path) -> None:
    process = start(
        tmp_path,
        ENDLESS
        + """
import time

def stuck(i):
    print("stuck", file=sys.stderr, flush=True)
    while True:  # a hung socket read, a sleep loop: the event loop cannot run
        time.sleep(0.01)

numbers.map(stuck).sink(af.PrintSink())
""",
        "--stop-timeout",
        "0.5",
    )
    wait_for_line(process.stderr, "stuck")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 143, err
    assert time.monotonic() - started < 30  # 0.5 s, then 3 s for the cancellation, give or take
    exit_line = next(line for line in err.splitlines() if "job did not stop: exiting now" in line)
    assert '"operator": "stuck"' in exit_line and "job.py:" in exit_line and "in stuck" in exit_line


def test_stdin_lines_go_out_as_they_come_and_a_signal_stops_a_quiet_stdin(tmp_path: Path) -> None:
    process = start(
        tmp_path,
        """
import sys
import aioflow as af
app = af.App("stdin")
app.source(sys.stdin, name="lines").map(lambda line: line.strip().upper()).sink(af.PrintSink())
""",
        stdin=subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write("a\nb\n")
    process.stdin.flush()  # two lines, far from a batch of 1,024, and stdin stays open
    assert wait_for_line(process.stdout, "B") == ["A\n", "B\n"]
    process.send_signal(signal.SIGTERM)
    _, err = finish(process)
    assert process.returncode == 0, err
    assert '"job finished"' in err


def test_a_closed_stdout_is_a_normal_end(tmp_path: Path) -> None:
    process = start(tmp_path, ENDLESS + "numbers.sink(af.PrintSink())\n")
    assert wait_for_line(process.stdout, "2") == ["0\n", "1\n", "2\n"]
    assert process.stdout is not None
    process.stdout.close()  # as `| head -n 3` does
    err = process.stderr.read() if process.stderr is not None else ""
    process.wait(timeout=60)
    assert process.returncode == 0, err
    assert "sink output closed: stopping the job" in err and '"job finished"' in err
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_signals_after_the_drain_finished_keep_a_clean_exit(tmp_path: Path) -> None:
    process = start(
        tmp_path,
        """
import os
import signal
import aioflow as af

class SignalsAtClose(af.SinkWriter):
    async def write(self, values):
        print(*values, flush=True)

    async def close(self):  # everything is written: signals now must not turn 0 into 143
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

class Sink(af.Sink):
    def create_writer(self, subtask_index, parallelism):
        return SignalsAtClose()

app = af.App("bounded")
app.source([1, 2, 3]).sink(Sink())
""",
    )
    out, err = finish(process)
    assert out == "1 2 3\n"
    assert process.returncode == 0, err


@pytest.mark.parametrize("parallelism", [1, 3])
@pytest.mark.parametrize(("raised", "code"), [("SystemExit(0)", 1), ("KeyboardInterrupt()", 130)])
def test_system_exit_and_keyboard_interrupt_from_user_code_give_one_code_at_any_parallelism(
    tmp_path: Path, raised: str, code: int, parallelism: int
) -> None:
    process = start(
        tmp_path,
        f"""
import aioflow as af

def leaves(x):
    if x == 500:
        raise {raised}
    return x

app = af.App("leaves", parallelism={parallelism})
app.source(range(1000)).rebalance().map(leaves).sink(af.CollectSink())
""",
    )
    _, err = finish(process)
    assert process.returncode == code, err
    events = [json.loads(line)["event"] for line in err.splitlines()]  # logged, never a raw traceback
    assert events[-1] == ("job failed" if code == 1 else "job cancelled before completion")


@pytest.mark.parametrize("parallelism", [1, 3])
@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_app_run_raises_system_exit_and_keyboard_interrupt_unwrapped(raised: type, parallelism: int) -> None:
    def leaves(x):
        if x == 500:
            raise raised()
        return x

    app = af.App("leaves", parallelism=parallelism)
    app.source(range(1000)).rebalance().map(leaves).sink(af.CollectSink())
    with pytest.raises(raised):
        app.run()


def test_the_stop_log_line_names_the_app_not_the_operator_the_signal_interrupted(tmp_path: Path) -> None:
    """The signal handler runs in whatever the main thread was running: here, a map
    function, inside its task's structlog context (task, operator). The ``stop
    requested`` line is the worker's, not that operator's."""
    process = start(
        tmp_path,
        ENDLESS
        + """
import signal

def interrupted(i):
    if i == 3:
        signal.raise_signal(signal.SIGTERM)  # the handler runs here, in this task's context
    return i

numbers.map(interrupted, name="interrupted").sink(af.CollectSink())
""",
    )
    _, err = finish(process)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    stop = [line for line in lines if line["event"].startswith("stop requested")]
    assert len(stop) == 1, err
    assert stop[0]["app"] == "endless" and stop[0]["signal"] == "SIGTERM"
    assert "task" not in stop[0] and "operator" not in stop[0], stop[0]
