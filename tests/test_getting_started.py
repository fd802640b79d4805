"""docs/getting-started.md's pipeline and its tests work as written, in a fresh project:
the page's input, pipeline, test file and pytest configuration, and nothing else, run
by pytest with every warning an error (a newcomer's first run must not warn)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "getting-started.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)


def _named(language: str, name: str) -> str:
    """The page's block of ``language`` that starts with ``# name``."""
    (block,) = [block for block in _blocks(language) if block.startswith(f"# {name}\n")]
    return block


def test_the_documented_tests_pass_with_warnings_as_errors(tmp_path: Path) -> None:
    (clicks,) = [block for block in _blocks("json") if '"user": "ada"' in block]
    (tmp_path / "clicks.jsonl").write_text(clicks)
    (tmp_path / "pageviews.py").write_text(_named("python", "pageviews.py"))
    (tmp_path / "test_pageviews.py").write_text(_named("python", "test_pageviews.py"))
    config = _named("toml", "pyproject.toml")
    assert 'asyncio_default_fixture_loop_scope = "function"' in config
    (tmp_path / "pyproject.toml").write_text(config)

    # -W error at both levels: pytest's covers the tests, Python's what plugins warn while
    # pytest configures itself (pytest-asyncio's PytestDeprecationWarning comes then).
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", "test_pageviews.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        # as from a fresh shell: not the PYTEST_* variables of this run's xdist worker, which
        # make pytest-benchmark (if installed) warn that xdist is active
        env={name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"rootdir: {tmp_path}" in output and "configfile: pyproject.toml" in output  # the project's config only
    assert re.search(r"\b3 passed in ", output), output  # the async test ran too
    assert "warning" not in output.lower(), output
