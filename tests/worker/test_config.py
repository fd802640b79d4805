"""Configuration by flags and ``AIOFLOW_*`` environment variables."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioflow as af
from aioflow._core.cli import main, parse_args
from aioflow._core.log import configure_logging
from aioflow._core.runtime.restart import DEFAULT_RESTART_STRATEGY, NoRestart
from aioflow._core.worker.config import EnvironmentOptionError

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = "examples/wordcount.py:app"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """``main()`` configures logging onto the stderr of the moment, which capsys closes."""
    yield
    configure_logging("warning", "console")


def test_a_variable_sets_an_option_and_a_flag_wins_over_it() -> None:
    env = {
        "AIOFLOW_PARALLELISM": "3",
        "AIOFLOW_HTTP_PORT": "9100",
        "AIOFLOW_DRAIN": "yes",
        "AIOFLOW_STOP_TIMEOUT": "2.5",
        "AIOFLOW_LOG_FORMAT": "json",
        "AIOFLOW_LOG_LEVEL": "WARNING",
        "AIOFLOW_STATE_DIR": "/tmp/state",
        "AIOFLOW_CHECKPOINT_INTERVAL": "5",
    }
    args = parse_args(["run", TARGET], env)
    assert (args.parallelism, args.http_port, args.drain, args.stop_timeout) == (3, 9100, True, 2.5)
    assert (args.log_format, args.log_level, args.state_dir, args.checkpoint_interval) == (
        "json",
        "warning",
        "/tmp/state",
        5.0,
    )
    flags = parse_args(["run", TARGET, "-p", "2", "--http-port", "0", "--drain", "--log-format", "console"], env)
    assert (flags.parallelism, flags.http_port, flags.drain, flags.log_format) == (2, 0, True, "console")
    assert parse_args(["plan", TARGET], env).parallelism == 3  # plan shows what run would run


def test_without_flag_or_variable_an_option_takes_its_default() -> None:
    args = parse_args(["run", TARGET], {"AIOFLOW_HTTP_PORT": "", "AIOFLOW_DRAIN": "0"})  # empty: unset
    assert args.http_port is None and args.http_host == "127.0.0.1" and args.drain is False
    assert (args.parallelism, args.stop_timeout, args.log_level, args.log_format) == (None, 30.0, "info", "auto")
    assert (args.allow_non_restored_state, args.health_max_checkpoint_failures) == (False, 3)
    assert args.health_max_watermark_lag is None and args.health_max_source_lag is None


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("AIOFLOW_PARALLELISM", "many", "AIOFLOW_PARALLELISM='many': expected a positive int, got 'many'"),
        ("AIOFLOW_PARALLELISM", "0", "AIOFLOW_PARALLELISM='0': expected a positive int"),
        ("AIOFLOW_HTTP_PORT", "70000", "AIOFLOW_HTTP_PORT='70000': expected a port number from 0 to 65535"),
        ("AIOFLOW_DRAIN", "maybe", "AIOFLOW_DRAIN='maybe': expected one of 1, true, yes, on, 0, false, no, off"),
        ("AIOFLOW_LOG_FORMAT", "xml", "AIOFLOW_LOG_FORMAT='xml': expected one of auto, console, json"),
        ("AIOFLOW_LOG_LEVEL", "loud", "AIOFLOW_LOG_LEVEL='loud': expected one of debug, info, warning, error"),
        ("AIOFLOW_STOP_TIMEOUT", "-1", "AIOFLOW_STOP_TIMEOUT='-1': expected seconds >= 0"),
        ("AIOFLOW_CHECKPOINT_INTERVAL", "0", "AIOFLOW_CHECKPOINT_INTERVAL='0': expected seconds > 0"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(variable: str, text: str, message: str) -> None:
    with pytest.raises(EnvironmentOptionError) as caught:
        parse_args(["run", TARGET], {variable: text})
    assert str(caught.value).startswith(message)


def test_a_bad_variable_exits_2_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIOFLOW_PARALLELISM", "lots")
    assert main(["run", TARGET]) == 2
    assert capsys.readouterr().err == (
        "aioflow: environment variable AIOFLOW_PARALLELISM='lots': expected a positive int, got 'lots'\n"
    )


def test_a_variable_for_run_only_does_not_break_plan(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIOFLOW_HTTP_PORT", "not a port")
    monkeypatch.chdir(ROOT)
    assert main(["plan", TARGET]) == 0
    assert "task 1" in capsys.readouterr().out


def test_a_bad_variable_exits_2_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioflow", "run", TARGET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environ(), "AIOFLOW_PARALLELISM": "x"},
    )
    assert result.returncode == 2
    assert "AIOFLOW_PARALLELISM='x'" in result.stderr and "Traceback" not in result.stderr


def test_help_names_each_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aioflow", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_environ(),
    )
    text = " ".join(result.stdout.split())  # as wrapped to any terminal width
    for variable in (
        "AIOFLOW_PARALLELISM",
        "AIOFLOW_LOG_LEVEL",
        "AIOFLOW_LOG_FORMAT",
        "AIOFLOW_HTTP_PORT",
        "AIOFLOW_HTTP_HOST",
        "AIOFLOW_STOP_TIMEOUT",
        "AIOFLOW_DRAIN",
        "AIOFLOW_FROM_SAVEPOINT",
        "AIOFLOW_ALLOW_NON_RESTORED_STATE",
        "AIOFLOW_STATE_DIR",
        "AIOFLOW_CHECKPOINT_INTERVAL",
        "AIOFLOW_HEALTH_MAX_CHECKPOINT_FAILURES",
        "AIOFLOW_HEALTH_MAX_WATERMARK_LAG",
        "AIOFLOW_HEALTH_MAX_SOURCE_LAG",
    ):
        assert f"[env {variable}]" in text, variable


def _names_every_way_to_give_a_state_dir(message: str) -> bool:
    return all(way in message for way in ("state_dir=", "--state-dir", "AIOFLOW_STATE_DIR"))


def test_a_checkpoint_interval_without_a_state_directory_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["run", TARGET, "--checkpoint-interval", "1"]) == 2
    error = capsys.readouterr().err
    assert "checkpoint_interval needs a state_dir" in error and _names_every_way_to_give_a_state_dir(error)


CHECKPOINTED = (
    "import aioflow as af\n"
    "app = af.App('checkpointed', checkpoint_interval=2.0)\n"
    "app.source([1, 2, 3], name='numbers').map(lambda x: x * 10, name='times').sink(af.PrintSink())\n"
)


def test_an_apps_checkpoint_interval_takes_its_state_dir_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(CHECKPOINTED)
    state = tmp_path / "state"

    def aioflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioflow", *args, "--log-format", "json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**_environ(), **env},
        )

    plan = aioflow("plan", "job.py:app", AIOFLOW_STATE_DIR=str(state))
    assert plan.returncode == 0 and "numbers -> times" in plan.stdout, plan.stderr
    run = aioflow("run", "job.py:app", AIOFLOW_STATE_DIR=str(state))
    assert run.returncode == 0 and run.stdout == "10\n20\n30\n", run.stderr
    assert any(state.iterdir())  # the job kept its state where the variable said
    flag = aioflow("run", "job.py:app", "--state-dir", str(tmp_path / "flag"))
    assert flag.returncode == 0 and flag.stdout == "10\n20\n30\n", flag.stderr
    assert aioflow("plan", "job.py:app").returncode == 0  # a plan needs no state directory
    missing = aioflow("run", "job.py:app")
    assert missing.returncode == 2, missing.stderr
    assert "checkpoint_interval needs a state_dir" in missing.stderr, missing.stderr
    assert _names_every_way_to_give_a_state_dir(missing.stderr) and "Traceback" not in missing.stderr


def test_an_app_with_a_checkpoint_interval_checks_its_state_dir_when_it_runs(tmp_path: Path) -> None:
    app = af.App("later", checkpoint_interval=2.0)
    config = app._config(state_dir=str(tmp_path))
    assert (config.state_dir, config.state_backend, config.checkpoint_interval) == (str(tmp_path), "lmdb", 2.0)
    assert config.restart_strategy == DEFAULT_RESTART_STRATEGY
    with pytest.raises(af.PipelineError, match="checkpoint_interval needs a state_dir") as caught:
        app._config()
    assert _names_every_way_to_give_a_state_dir(str(caught.value))
    app.source([1]).sink(af.CollectSink())
    with pytest.raises(af.PipelineError, match="checkpoint_interval needs a state_dir"):
        app.run()
    with pytest.raises(af.PipelineError, match="checkpoint_interval needs the 'lmdb' state_backend"):
        af.App("memory", checkpoint_interval=2.0, state_backend="memory")  # no state_dir can change that


def test_state_dir_and_checkpoint_interval_override_the_apps(tmp_path: Path) -> None:
    app = af.App("plain")
    config = app._config(state_dir=str(tmp_path), checkpoint_interval=2.0)
    assert (config.state_dir, config.state_backend, config.checkpoint_interval) == (str(tmp_path), "lmdb", 2.0)
    assert config.restart_strategy == DEFAULT_RESTART_STRATEGY  # derived again, as App(...) derives it
    assert app._config().state_backend == "memory" and app._config().checkpoint_interval is None
    chosen = af.App("chosen", restart_strategy=af.NoRestart(), state_dir=str(tmp_path), checkpoint_interval=1.0)
    assert chosen._config(checkpoint_interval=5.0).restart_strategy == NoRestart()
    with pytest.raises(af.PipelineError, match="checkpoint_interval needs a state_dir"):
        app._config(checkpoint_interval=1.0)
    with pytest.raises(af.PipelineError, match="checkpoint_interval needs the 'lmdb' state_backend"):
        af.App("memory", state_backend="memory")._config(state_dir=str(tmp_path), checkpoint_interval=1.0)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "--http-prot", "9100", TARGET], "(did you mean --http-port for --http-prot?)"),
        (["run", TARGET, "--stat-dir", "/tmp/s"], "(did you mean --state-dir for --stat-dir?)"),
        (
            ["run", TARGET, "--checkpoint-intervall=5"],
            "(did you mean --checkpoint-interval for --checkpoint-intervall?)",
        ),
        (["plan", TARGET, "--jsn"], "(did you mean --json for --jsn?)"),
        (
            ["run", TARGET, "--drian", "--http-prot=1"],
            "(did you mean --drain for --drian, --http-port for --http-prot?)",
        ),
    ],
)
def test_a_misspelt_option_is_refused_with_the_likely_intended_one(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, {})
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"usage: aioflow {argv[0]}" in error and "unrecognized arguments" in error and said in error, error


def test_an_unknown_option_without_a_likely_one_is_refused_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["run", TARGET, "--zzzzzz"], {})
    error = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in error and "did you mean" not in error


def test_an_unknown_variable_is_a_warning_naming_the_likely_intended_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("AIOFLOW_HTTP_PROT", "9100")
    monkeypatch.setenv("AIOFLOW_NOTHING_LIKE_IT", "1")
    monkeypatch.setenv("AIOFLOW_HTTP_PORT", "9200")  # known: run's, not a warning for plan either
    assert main(["plan", TARGET, "--log-format", "json"]) == 0
    captured = capsys.readouterr()
    assert "task 1" in captured.out
    warnings = [json.loads(line) for line in captured.err.splitlines() if "unknown environment variable" in line]
    assert {line["variable"]: line.get("did_you_mean") for line in warnings} == {
        "AIOFLOW_HTTP_PROT": "AIOFLOW_HTTP_PORT",
        "AIOFLOW_NOTHING_LIKE_IT": None,
    }
    assert all(line["level"] == "warning" for line in warnings)


def _environ() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("AIOFLOW_")}


RESTARTING = (
    "import aioflow as af\n"
    "app = af.App('restarting', restart_strategy=af.FixedDelayRestart(attempts=2, delay=0.1))\n"
    "app.source([1, 2, 3], name='numbers').map(lambda x: x * 10, name='times').sink(af.PrintSink())\n"
)


def test_an_apps_restart_strategy_takes_its_checkpoint_interval_from_the_worker(tmp_path: Path) -> None:
    """The friction: App(restart_strategy=...) failed at import unless the app itself set a
    checkpoint interval, even when the worker was given one."""
    (tmp_path / "job.py").write_text(RESTARTING)

    def aioflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioflow", *args, "--log-format", "json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**_environ(), **env},
        )

    flag = aioflow("run", "job.py:app", "--checkpoint-interval", "1", AIOFLOW_STATE_DIR=str(tmp_path / "s1"))
    assert flag.returncode == 0 and flag.stdout == "10\n20\n30\n", flag.stderr
    variable = aioflow("run", "job.py:app", AIOFLOW_CHECKPOINT_INTERVAL="1", AIOFLOW_STATE_DIR=str(tmp_path / "s2"))
    assert variable.returncode == 0 and variable.stdout == "10\n20\n30\n", variable.stderr
    missing = aioflow("run", "job.py:app", AIOFLOW_STATE_DIR=str(tmp_path / "s3"))
    assert missing.returncode == 2 and "restart_strategy needs checkpoint_interval" in missing.stderr, missing.stderr
    assert "--checkpoint-interval" in missing.stderr and "Traceback" not in missing.stderr


def test_restoring_a_savepoint_without_a_state_dir_or_checkpoints_is_a_configuration_to_fix(tmp_path: Path) -> None:
    """Exit 2 (fix the command), naming every way to give what is missing; it was exit 3,
    refused, as if the state were at fault."""
    (tmp_path / "job.py").write_text(
        "import aioflow as af\napp = af.App('plain')\napp.source([1], name='numbers').sink(af.PrintSink())\n"
    )

    def aioflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioflow", "run", "job.py:app", "--from-savepoint", str(tmp_path / "sp"), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=_environ(),
        )

    no_state = aioflow()
    assert no_state.returncode == 2, no_state.stderr
    assert "needs a state_dir to restore into" in no_state.stderr and _names_every_way_to_give_a_state_dir(
        no_state.stderr
    )
    no_checkpoints = aioflow("--state-dir", str(tmp_path / "state"))
    assert no_checkpoints.returncode == 2, no_checkpoints.stderr
    assert "needs checkpoints" in no_checkpoints.stderr
    assert "--checkpoint-interval" in no_checkpoints.stderr and "AIOFLOW_CHECKPOINT_INTERVAL" in no_checkpoints.stderr
    assert not (tmp_path / "state").exists()  # nothing was touched
