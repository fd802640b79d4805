"""State written by earlier aioflow versions keeps restoring (the state-compatibility test).

Each folder under ``tests/data/compat/`` holds a savepoint of :mod:`compat_job` written by
one aioflow version, and what that run emitted before it stopped. Restored by today's code,
the job must emit exactly the rest of an undisturbed run's output: every kind of state
(value, list, map, timers, tumbling, sliding, session and evicting windows, the source's
position) came back.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import orjson
import pytest
from checkpoint import compat_job

FIXTURES = sorted((Path(__file__).parent.parent / "data" / "compat").iterdir())
KINDS = {"tally", "tumbling", "sliding", "session", "evicting"}


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_a_savepoint_written_by_an_earlier_version_restores(tmp_path: Path, fixture: Path) -> None:
    app, results = compat_job.build(tmp_path / "reference")
    app.run()
    undisturbed = compat_job.canonical(results.results)

    before = orjson.loads(gzip.decompress((fixture / "before.json.gz").read_bytes()))
    savepoint = shutil.copytree(fixture / "savepoint", tmp_path / "savepoint")
    app, results = compat_job.build(tmp_path / "state")
    app.run(from_savepoint=savepoint)
    after = compat_job.canonical(results.results)

    # Both halves hold results of every operator: each one's state crossed the savepoint.
    assert {r[0] for r in before} == KINDS and {r[0] for r in after} == KINDS
    assert compat_job.canonical(before + after) == undisturbed
