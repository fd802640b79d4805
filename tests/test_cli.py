"""The aioflow command: loading apps, plan, errors, logging formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import aioflow as af
from aioflow._core.cli import load_app, main
from aioflow._core.errors import AppLoadError

ROOT = Path(__file__).resolve().parent.parent


def aioflow(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioflow", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples/wordcount.py:nope", "has no attribute 'nope'; it defines app"),
        ("examples/missing.py:app", "file 'examples/missing.py' does not exist"),
        ("no_such_module:app", "no module named 'no_such_module'"),
        ("examples/wordcount.py", "is not of the form"),
        ("examples/wordcount.py:TEXT", "'TEXT' is a PosixPath, not an aioflow.App"),
    ],
)
def test_wrong_target_is_a_clear_error(target: str, message: str) -> None:
    result = aioflow("run", target)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_load_app_by_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mypipeline.py").write_text("import aioflow as af\napp = af.App('m')\napp.source([1])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_app("mypipeline:app").name == "m"
    with pytest.raises(AppLoadError):
        load_app("mypipeline:other")


def test_plan_command_prints_tasks_and_json() -> None:
    text = aioflow("plan", "examples/orders.py:app")
    assert text.returncode == 0
    assert "task 1 [parallelism 1]: orders -> big -> tagged" in text.stdout
    as_json = json.loads(aioflow("plan", "examples/orders.py:app", "--json").stdout)
    assert as_json["tasks"][0]["operators"][:3] == ["orders", "big", "tagged"]
    rescaled = aioflow("plan", "examples/orders.py:app", "-p", "3")
    assert rescaled.returncode == 0 and "[parallelism 3]" in rescaled.stdout
    assert "task 1 [parallelism 1]: orders" in rescaled.stdout  # a one-file source stays at 1
    too_many = aioflow("plan", "examples/orders.py:app", "--parallelism", "1000")
    assert too_many.returncode == 2 and "more than max_parallelism 128" in too_many.stderr


def test_failing_job_exits_1_with_the_error_and_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import aioflow as af\n"
        "def risky(x):\n    return 1 / x\n"
        "app = af.App('bad')\napp.source([2, 1, 0, 3]).map(risky).sink(af.CollectSink())\n"
    )
    result = aioflow("run", "bad.py:app", "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 1
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"job failed"' in line]
    assert failed and "operator 'risky'" in failed[-1]["error"] and "record: 0" in failed[-1]["error"]
    started = [json.loads(line) for line in result.stderr.splitlines() if '"job started"' in line]
    assert failed[-1]["app"] == started[0]["app"] == "bad"  # one field names the app in both
    assert "ZeroDivisionError" in failed[-1]["exception"] and "return 1 / x" in failed[-1]["exception"]


BROKEN = """import aioflow as af


def settings():
    raise KeyError("KAFKA_BOOTSTRAP")


app = af.App("broken")
settings()
"""


@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_app_whose_module_raises_is_not_loaded_exit_2_with_the_traceback(tmp_path: Path, command: str) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    result = aioflow(command, "broken.py:app", "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # JSON lines only: no bare traceback
    [failed] = [line for line in lines if line["event"] == "cannot load app"]
    assert failed["level"] == "error" and failed["target"] == "broken.py:app"
    assert failed["error"] == "'broken.py:app': importing 'broken.py' raised KeyError: 'KAFKA_BOOTSTRAP'"
    trace = failed["exception"]
    assert 'broken.py", line 9, in <module>' in trace and 'raise KeyError("KAFKA_BOOTSTRAP")' in trace
    assert "_core/cli.py" not in trace and "importlib" not in trace  # the user's frames only
    assert not [line for line in lines if line["event"] == "job failed"]


@pytest.mark.parametrize("command", ["run", "plan"])
def test_on_the_console_a_module_that_raises_is_a_message_line_then_the_traceback(tmp_path: Path, command: str) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    result = aioflow(command, "broken.py:app", "--log-format", "console", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    first, *rest = result.stderr.splitlines()
    assert "cannot load app" in first and "importing 'broken.py' raised KeyError" in first, result.stderr
    assert 'raise KeyError("KAFKA_BOOTSTRAP")' in "\n".join(rest)


def test_a_module_path_whose_import_fails_is_not_loaded(tmp_path: Path) -> None:
    (tmp_path / "pipeline_needs.py").write_text(
        "import aioflow as af\nimport not_installed_anywhere\napp = af.App('n')\n"
    )
    (tmp_path / "pipeline_twice.py").write_text(
        "import aioflow as af\napp = af.App('t')\napp.source([1], name='a')\napp.source([2], name='a')\n"
    )
    missing = aioflow("run", "pipeline_needs:app", "--log-format", "json", cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert (
        "importing 'pipeline_needs' raised ModuleNotFoundError: No module named 'not_installed_anywhere'"
        in missing.stderr
    )
    twice = aioflow("plan", "pipeline_twice:app", "--log-format", "json", cwd=tmp_path)
    assert twice.returncode == 2 and "raised PipelineError" in twice.stderr and "'a'" in twice.stderr, twice.stderr


def test_help_for_each_command() -> None:
    for command in ([], ["run"], ["plan"]):
        result = aioflow(*command, "--help")
        assert result.returncode == 0 and "usage: aioflow" in result.stdout


def test_version() -> None:
    result = aioflow("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"aioflow {af.__version__}"


def test_bad_log_level_is_rejected() -> None:
    assert main(["plan", "examples/orders.py:app", "--log-level", "loud"]) == 2


def test_sigterm_stops_an_endless_job_which_drains_and_exits_cleanly(tmp_path: Path) -> None:
    import os
    import select
    import signal

    (tmp_path / "endless.py").write_text(
        "import anyio\nimport aioflow as af\n"
        "async def ticks():\n    i = 0\n    while True:\n        yield i\n        i += 1\n        await anyio.sleep(0.01)\n"
        "app = af.App('endless')\napp.source(af.from_iterable(ticks())).map(lambda i: i * 2).sink(af.PrintSink())\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "aioflow", "run", "endless.py:app", "--log-format", "json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)  # bounded wait for the first output
        assert ready, "the job printed nothing"
        assert process.stdout is not None and process.stdout.readline().strip() == "0"
        os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert '"stop requested: draining"' in err and '"job finished"' in err


def test_a_pipeline_file_named_like_a_standard_module_loads_privately(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text(
        "import aioflow as af\napp = af.App('shadow')\napp.source([1]).sink(af.PrintSink())\n"
    )
    command = str(Path(sys.executable).parent / "aioflow")  # not `python -m`, which puts the folder first itself

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    plan = run("plan", "json.py:app", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["app"] == "shadow"
    result = run("run", "json.py:app", "--log-format", "json")
    assert result.returncode == 0 and result.stdout == "1\n", result.stderr


def test_a_pipeline_split_over_sibling_modules_shares_one_app(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(
        "import aioflow as af\napp = af.App('split')\nnumbers = app.source([1, 2, 3], name='numbers')\n"
        "import outputs  # noqa: E402 - adds the rest of the pipeline\n"
    )
    (tmp_path / "outputs.py").write_text(
        "import aioflow as af\nfrom pipeline import numbers\n"
        "numbers.map(lambda x: x * 100, name='times').sink(af.PrintSink())\n"
    )
    result = aioflow("run", "pipeline.py:app", "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "100\n200\n300\n", result.stderr


def test_stop_timeout_must_not_be_negative() -> None:
    result = aioflow("run", "examples/wordcount.py:app", "--stop-timeout", "-1")
    assert result.returncode == 2 and "expected seconds >= 0" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--checkpoint-storage", "s3://bucket/prefix", "only directories are supported"),
        ("--checkpoint-storage", "", "checkpoint_storage is empty"),
        ("--checkpoint-interval", "-1", "expected seconds > 0"),
        ("--checkpoint-interval", "0", "expected seconds > 0"),
    ],
)
def test_a_wrong_checkpoint_option_is_a_wrong_command_line(option: str, value: str, said: str) -> None:
    result = aioflow("run", "examples/wordcount.py:app", option, value)
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
