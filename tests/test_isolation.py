"""Tests that share a process do not share its global state: what one test changes (the
environment, the working directory, a signal handler, the logging configuration) is put
back before the next one runs (tests/conftest.py). The two tests below run, in this
order, in a pytest of their own with this suite's conftest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

LEAKY = """
import logging
import os
import signal

import structlog

START = os.getcwd()


def test_changes_the_process(tmp_path):
    os.environ["AIOFLOW_TEST_LEAK"] = "1"
    os.chdir(tmp_path)
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    structlog.configure(processors=[])
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.DEBUG)


def test_finds_the_process_as_it_was():
    assert "AIOFLOW_TEST_LEAK" not in os.environ
    assert os.getcwd() == START
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert structlog.get_config()["processors"]
    root = logging.getLogger()
    assert not [h for h in root.handlers if type(h) is logging.NullHandler]
    assert root.level == logging.WARNING
"""


def test_what_a_test_changes_in_its_process_is_put_back_after_it(tmp_path: Path) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_leaky.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
