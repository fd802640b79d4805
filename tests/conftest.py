"""Shared fixtures, and what keeps the tests independent of each other.

The suite runs in parallel (``-n`` in pyproject.toml's addopts: pytest-xdist worker
processes, each running its share of the tests one after another). So a test uses its own
``tmp_path``, free ports (port 0), unique topic and group names, and never writes into
the repository; and what it changes in its process's global state is put back after it
(:func:`_isolated`), so that the next test in the same worker starts from the same state
whatever ran before it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import structlog

from aioflow._core.log import configure_logging

# No per-example deadline: under a parallel run on a loaded machine an example may take
# several times its usual time, which says nothing about the code under test. The number
# of examples stays each test's own (or Hypothesis's default).
hypothesis.settings.register_profile("aioflow", deadline=None)
hypothesis.settings.load_profile("aioflow")


def _configure_logs() -> None:
    """The tests' logging: warnings and errors, as console lines."""
    configure_logging("warning", "console")


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    _configure_logs()


#: Signals whose handlers a test may set (directly, or through an app run in the test's
#: process) and must not leave behind.
_SIGNALS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _handlers() -> dict[int, Callable[..., Any] | int | None]:
    found: dict[int, Callable[..., Any] | int | None] = {}
    for signum in _SIGNALS:
        try:
            found[signum] = signal.getsignal(signum)
        except (OSError, ValueError):  # signals Python cannot query
            continue
    return found


def _logging() -> tuple[Any, ...]:
    """structlog's configuration, and the root logger's level and handlers but for pytest's
    own (it swaps its capturing handlers between the phases of a test)."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if not type(h).__module__.startswith("_pytest")]
    return structlog.get_config(), root.level, handlers


def _environ() -> dict[str, str]:
    """The environment, but for what pytest itself changes between the phases of a test."""
    return {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    """Puts back, after each test, the environment variables, the working directory and
    the signal handlers if the test changed them, and the tests' logging if the test
    configured logging (monkeypatch is still the way to change them on purpose)."""
    environ, cwd, handlers, logs = _environ(), os.getcwd(), _handlers(), _logging()
    yield
    if _environ() != environ:
        for key in set(os.environ) - set(environ) - {"PYTEST_CURRENT_TEST"}:
            del os.environ[key]
        os.environ.update(environ)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    for signum, handler in _handlers().items():
        before = handlers.get(signum)
        if handler != before and before is not None:
            signal.signal(signum, before)
    if _logging() != logs:
        for handler in _logging()[2]:
            if handler not in logs[2]:
                logging.getLogger().removeHandler(handler)
        _configure_logs()
