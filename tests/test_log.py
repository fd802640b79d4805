"""Log lines carry the app, the task and the operator they come from."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import aioflow as af
from aioflow._core.log import configure_logging

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """Every log line as an event dict, contextvars merged, as configure_logging does."""
    captured: list[dict[str, Any]] = []

    def keep(logger: Any, method: str, event: dict[str, Any]) -> str:
        captured.append(dict(event))
        return ""

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield captured
    finally:
        configure_logging("warning", "console")


def test_user_code_logs_with_its_app_task_and_operator(lines: list[dict[str, Any]]) -> None:
    log = structlog.get_logger("user")

    def parse(text: str) -> int:
        if text == "3":
            log.info("parsing three")
        return int(text)

    class Tally(af.KeyedProcessFunction):
        def process_element(self, value: int, ctx: Any) -> Any:
            ctx.timer_service.register_event_time_timer(ctx.timestamp + 1)
            yield value

        def on_timer(self, timestamp: int, ctx: Any) -> Any:
            if ctx.key == 1:
                log.info("timer fired")
            yield from ()

    app = af.App("logged", parallelism=2)
    numbers = app.source(["1", "2", "3"], name="numbers", timestamps=lambda _: 5, watermarks=af.MonotonousTimestamps())
    parsed = numbers.map(parse, name="parse", parallelism=1)  # chained to the source
    parsed.key_by(lambda n: n % 2).process(Tally(), name="tally").sink(af.CollectSink(), name="out")
    app.run()
    (parsing,) = [line for line in lines if line["event"] == "parsing three"]
    assert {key: parsing[key] for key in ("app", "task", "operator")} == {
        "app": "logged",
        "task": "task 1 (numbers)[0]",
        "operator": "parse",
    }
    (fired,) = [line for line in lines if line["event"] == "timer fired"]
    assert fired["app"] == "logged" and fired["operator"] == "tally" and fired["task"].startswith("task 2 (tally)[")
    (started,) = [line for line in lines if line["event"] == "job started"]
    assert started["app"] == "logged" and "task" not in started and "operator" not in started


def _run_json(folder: Path, job: str, *args: str, status: int = 0) -> list[dict[str, Any]]:
    """``aioflow run`` of the job source ``job`` with JSON logs: its exit status checked,
    every line of its log parsed (each must be JSON)."""
    (folder / "job.py").write_text(job)
    result = subprocess.run(
        [sys.executable, "-m", "aioflow", "run", "job.py:app", "--log-format", "json", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == status, result.stderr
    return [json.loads(text) for text in result.stderr.splitlines()]


def test_json_lines_of_a_worker_name_the_operator(tmp_path: Path) -> None:
    lines = _run_json(
        tmp_path,
        "import structlog\nimport aioflow as af\n"
        "def shout(x):\n    structlog.get_logger('user').warning('shouting', x=x)\n    return x.upper()\n"
        "app = af.App('loud')\napp.source(['a']).map(shout).sink(af.CollectSink())\n",
    )
    (line,) = [line for line in lines if line["event"] == "shouting"]
    assert (line["app"], line["operator"], line["task"], line["x"]) == (
        "loud",
        "shout",
        "task 1 (from_iterable)[0]",
        "a",
    )


def test_standard_library_logging_comes_out_in_the_same_json_lines(tmp_path: Path) -> None:
    """aiokafka logs through the standard library: its lines must not break a JSON log."""
    lines = _run_json(
        tmp_path,
        "import logging\nimport aioflow as af\n"
        "def note(x):\n    logging.getLogger('somelib').warning('library says %s', x)\n"
        "    logging.getLogger('somelib').debug('too chatty')\n    return x\n"
        "app = af.App('quoted')\napp.source(['a']).map(note).sink(af.CollectSink())\n",
        "--log-level",
        "debug",
    )
    (line,) = [line for line in lines if line.get("logger") == "somelib"]
    assert (line["event"], line["level"], line["app"], line["operator"]) == (
        "library says a",
        "warning",
        "quoted",
        "note",
    )


def test_a_job_failing_with_an_unexpected_error_logs_one_job_failed_line(tmp_path: Path) -> None:
    lines = _run_json(
        tmp_path,
        "import aioflow as af\n"
        "class Broken(af.Source):\n    def create_reader(self, subtask_index, parallelism):\n"
        "        raise KeyError('no reader')\n"
        "app = af.App('broken')\napp.source(Broken()).sink(af.CollectSink())\n",
        status=1,
    )
    (failed,) = [line for line in lines if line["event"] == "job failed"]
    assert "no reader" in failed["error"] and "KeyError" in failed["exception"]


QUIET_JOB = (
    "import logging\nimport aioflow as af\n"
    "def note(x):\n"
    "    logging.getLogger('aiokafka.consumer').info('chatter')\n"
    "    logging.getLogger('aiokafka.consumer').warning('trouble')\n"
    "    logging.getLogger('otherlib').info('other')\n"
    "    return x\n"
    "app = af.App('quiet')\napp.source(['a']).map(note).sink(af.CollectSink())\n"
)


def _library_events(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(line["logger"], line["event"]) for line in lines if "logger" in line]


def test_aiokafka_logs_warnings_only_unless_the_level_is_debug(tmp_path: Path) -> None:
    assert _library_events(_run_json(tmp_path, QUIET_JOB)) == [
        ("aiokafka.consumer", "trouble"),
        ("otherlib", "other"),
    ]
    assert _library_events(_run_json(tmp_path, QUIET_JOB, "--log-level", "debug")) == [
        ("aiokafka.consumer", "chatter"),
        ("aiokafka.consumer", "trouble"),
        ("otherlib", "other"),
    ]


def test_an_app_that_sets_aiokafkas_level_keeps_it(tmp_path: Path) -> None:
    job = "import logging\nlogging.getLogger('aiokafka').setLevel(logging.INFO)\n" + QUIET_JOB
    assert ("aiokafka.consumer", "chatter") in _library_events(_run_json(tmp_path, job))


def test_configure_logging_sets_library_levels_by_name() -> None:
    aiokafka = logging.getLogger("aiokafka")
    before = aiokafka.level
    try:
        configure_logging("info", "json")
        assert aiokafka.level == logging.WARNING
        configure_logging("info", "json", logger_levels={"aiokafka": "info", "otherlib.sub": "error"})
        assert (aiokafka.level, logging.getLogger("otherlib.sub").level) == (logging.INFO, logging.ERROR)
        configure_logging("warning", "json")  # a default does not undo what was asked for
        assert aiokafka.level == logging.INFO
        with pytest.raises(ValueError, match="unknown log level 'loud'"):
            configure_logging("info", "json", logger_levels={"aiokafka": "loud"})
    finally:
        aiokafka.setLevel(before)
        logging.getLogger("otherlib.sub").setLevel(logging.NOTSET)
        configure_logging("warning", "console")
