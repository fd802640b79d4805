"""The checks that keep the code in order run with the tests, each failing with the
tool's own report: ruff's lint and format over the code, ``mypy --strict aioflow``, and
mypy over code as a user writes it (the README's 60-second example, and
tests/data/typed_pipeline.py), so that the type hints users get stay right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What ruff checks and formats.
CODE = ("aioflow", "tests", "benchmarks", "examples")
TYPED_PIPELINE = ROOT / "tests" / "data" / "typed_pipeline.py"


def _run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m <command>`` (the tools of this environment), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(result.args[2:])} (exit status {result.returncode}):\n{result.stdout}{result.stderr}"


def _mypy_as_a_user(*files: Path, flags: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """mypy on ``files`` as in a user's project: aioflow is this tree's (``MYPYPATH``),
    read as an installed package is (its own errors are not the user's: silent), with
    a cache of its own next to the project's."""
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    cache = ROOT / ".mypy_cache" / "user-code"
    return _run("mypy", *flags, "--follow-imports=silent", "--cache-dir", str(cache), *map(str, files), env=env)


def _clean(result: subprocess.CompletedProcess[str], files: int) -> None:
    assert result.returncode == 0, _report(result)
    checked = re.search(r"Success: no issues found in (\d+) source files?", result.stdout)
    assert checked and int(checked.group(1)) >= files, _report(result)


def test_ruff_finds_nothing_to_fix() -> None:
    result = _run("ruff", "check", *CODE)
    assert result.returncode == 0, _report(result)
    assert "All checks passed" in result.stdout, _report(result)


def test_the_code_is_formatted_as_ruff_formats_it() -> None:
    result = _run("ruff", "format", "--check", *CODE)
    assert result.returncode == 0, _report(result)
    formatted = re.search(r"(\d+) files already formatted", result.stdout)
    assert formatted and int(formatted.group(1)) > 100, _report(result)


def test_aioflow_passes_mypy_strict() -> None:
    result = _run("mypy", "--strict", "aioflow")  # with [tool.mypy] of pyproject.toml
    _clean(result, files=len(list((ROOT / "aioflow").rglob("*.py"))))


def test_the_readme_example_type_checks(tmp_path: Path) -> None:
    """The 60-second example and its test, as files: --strict, but for annotating the
    functions (the example leaves them unannotated); their bodies are checked too."""
    files = []
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[:2]:
        name = re.match(r"# (\w+\.py)\n", block)
        assert name, block
        files.append(tmp_path / name.group(1))
        files[-1].write_text(block)
    assert [file.name for file in files] == ["clicks.py", "test_clicks.py"]
    _clean(_mypy_as_a_user(*files, flags=("--strict", "--allow-untyped-defs", "--check-untyped-defs")), files=2)


def test_a_typed_pipeline_passes_mypy_strict() -> None:
    """Every decorator form, typed as a user types it: the file's ``assert_type`` calls
    fail the check unless mypy sees each decorated function as the stream it becomes."""
    assert TYPED_PIPELINE.read_text().count("assert_type(") >= 5
    _clean(_mypy_as_a_user(TYPED_PIPELINE, flags=("--strict",)), files=1)


def test_the_typed_pipeline_runs_as_typed() -> None:
    """The same file run: what the types say holds at run time (its own asserts)."""
    result = subprocess.run(
        [sys.executable, str(TYPED_PIPELINE)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "job finished" in result.stderr
