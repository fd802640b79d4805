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


def test_state_pickled_by_0_1_0_names_aioflow_classes_where_they_lived_and_still_loads() -> None:
    """0.1.0 pickled ``af.TimeWindow`` as ``aioflow.windows.assigners.TimeWindow`` (and so
    on for every aioflow class a user kept in ``serializer="pickle"`` state); since the
    implementation moved under ``aioflow._core`` those paths must keep loading."""
    import pickle

    import aioflow as af
    from aioflow._core.state.serializers import serializer_named

    value = {"window": af.TimeWindow(0, 1000), "fire": af.TriggerResult.FIRE}
    written_by_0_1_0 = (
        pickle.dumps(value, protocol=2)
        .replace(b"caioflow\nTimeWindow\n", b"caioflow.windows.assigners\nTimeWindow\n")
        .replace(b"caioflow\nTriggerResult\n", b"caioflow.windows.triggers\nTriggerResult\n")
    )
    assert b"aioflow.windows.assigners" in written_by_0_1_0 and b"aioflow.windows.triggers" in written_by_0_1_0
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(written_by_0_1_0)  # plain pickle no longer finds them
    assert serializer_named("pickle", "test").loads(written_by_0_1_0) == value
