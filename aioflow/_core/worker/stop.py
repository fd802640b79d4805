"""Stopping a worker on SIGINT or SIGTERM within a bounded time.

The first signal asks the job to stop: with checkpoints it stops with a savepoint;
otherwise sources stop reading and what is in flight drains. Either way the job
*finishes* (exit 0). A second signal cancels the job at once.
If the job has not ended ``stop_timeout`` seconds after the first signal, it is
cancelled too; if it has not ended :data:`CANCEL_TIMEOUT` seconds after a cancellation,
an operator is stuck in synchronous code (a sleep loop, a hung socket read) that keeps
the event loop from running at all. A watchdog thread then logs which operator did not
return, and where, and ends the process with ``os._exit``.

The handlers are installed with :func:`signal.signal`, not on the event loop: a Python
signal handler runs in the main thread between two bytecodes even while the loop is
blocked, which is what lets the watchdog learn of the signal at all. It runs in the
context of whatever it interrupted, an operator's task often: what it hands to the loop
runs in the worker's own context instead, so that its log lines do not name that task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import anyio
import structlog

from aioflow._core.app import App
from aioflow._core.runtime.operator import Operator

__all__ = ["CANCEL_TIMEOUT", "STOP_TIMEOUT", "StopSignals"]

log = structlog.get_logger("aioflow.worker")

#: Default seconds from the first stop signal to cancelling the job.
STOP_TIMEOUT = 30.0
#: Seconds a cancelled job gets to end before the process exits anyway.
CANCEL_TIMEOUT = 3.0

_PACKAGE = str(Path(__file__).resolve().parent.parent.parent)  # the aioflow package
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Turns SIGINT/SIGTERM into a stop, then a cancellation of ``job``, then a hard exit.

    Use it around the job, in the main thread, inside the running event loop::

        job = anyio.CancelScope()
        with StopSignals(app, job, stop_timeout=30.0) as signals, job:
            await app.run_async()

    ``signals.first`` is the first signal received (``None`` if none came).
    """

    def __init__(self, app: App, job: anyio.CancelScope, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        self._app = app
        self._job = job
        self._stop_timeout = stop_timeout
        self._received: list[int] = []
        self._wake = threading.Event()
        self._ended = threading.Event()
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None  # the worker's (structlog: app=...)

    @property
    def first(self) -> int | None:
        return self._received[0] if self._received else None

    def __enter__(self) -> StopSignals:
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        threading.Thread(target=self._watch, name="aioflow-stop-watchdog", daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ended.set()
        self._wake.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Main thread, between two bytecodes of whatever runs: only hand the signal on.
        self._received.append(signum)
        self._call_in_loop(self._in_loop, signum, len(self._received))
        self._wake.set()

    def _call_in_loop(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the loop, in the worker's context: not in the one of the
        task the signal interrupted (``call_soon`` would take the caller's)."""
        assert self._loop is not None and self._context is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the job has ended
            self._loop.call_soon_threadsafe(fn, *args, context=self._context.copy())

    def _in_loop(self, signum: int, count: int) -> None:
        if self._ended.is_set():
            return
        name = signal.Signals(signum).name
        if count == 1:
            how = "with a savepoint" if self._app.stops_with_savepoint else "draining"
            log.info(f"stop requested: {how}", signal=name, app=self._app.name, stop_timeout=self._stop_timeout)
            self._app.stop()
        else:
            log.warning("second stop signal: cancelling the job", signal=name, app=self._app.name)
            self._job.cancel()

    def _cancel_after_timeout(self) -> None:
        if not self._ended.is_set():
            log.warning("stop timed out: cancelling the job", app=self._app.name, stop_timeout=self._stop_timeout)
            self._job.cancel()

    def _watch(self) -> None:
        """The watchdog thread: sleeps until a signal, then bounds how long the stop takes."""
        self._wake.wait()
        if self._ended.is_set():
            return
        cancel_at = time.monotonic() + self._stop_timeout
        while len(self._received) < 2 and not self._ended.wait(max(0.0, min(0.1, cancel_at - time.monotonic()))):
            if time.monotonic() >= cancel_at:
                self._call_in_loop(self._cancel_after_timeout)
                break
        if self._ended.wait(CANCEL_TIMEOUT):
            return
        operator, where = stuck_code()
        log.error(
            "job did not stop: exiting now",
            app=self._app.name,
            operator=operator,
            code=where,
            seconds=round(time.monotonic() - cancel_at + self._stop_timeout, 1),
        )
        sys.stderr.flush()
        os._exit(128 + self._received[0])


def stuck_code() -> tuple[str | None, str | None]:
    """The operator the main thread is running, and the innermost line of code outside
    aioflow it is in (``file:line in function``), read from the main thread's stack."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    operator = where = None
    while frame is not None and operator is None:
        code = frame.f_code
        if where is None and not code.co_filename.startswith(_PACKAGE):
            where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        owner = frame.f_locals.get("self")
        if isinstance(owner, Operator):
            operator = owner.name
        frame = frame.f_back
    return operator, where
