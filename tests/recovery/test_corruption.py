"""Damaged, missing and foreign state is refused, never run on: real ``aioflow run`` workers
restarted on a state directory damaged the ways the issue reported (and a few more).

Refused means: exit status 3, one ``"refused"`` log line whose error names the state
directory (and, for a damaged value, the operator, state and key) and says what to do, no
restart (no ``"job failed: restarting"``), and the committed output exactly as it was.
Damage found before the job starts also leaves checkpoint storage as it was and starts no
job; damage found while running (a value that fails its checksum when read) stops the job
before it commits anything more.

One job (value-state counts with event-time timers, and tumbling-window sums, both into
exactly-once file sinks) is run once for the whole module: its source pauses halfway until
three checkpoints completed, and a SIGTERM then stops it with a savepoint. Every case
copies that state directory and its output, damages the copy, and restarts on it: the
first batch the restarted job reads updates counts of users that the stored state holds,
and its watermark fires windows the stored state holds, so a damaged value is read at
once. The copy is made at the very path the job ran at, since checkpoints name their
sinks' files by absolute path.

Each case checks that its damage was really applied (the stored bytes read back differ),
so that it cannot pass on an undamaged copy.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
from recovery import gated
from recovery.jobs import Worker, explain, write_events

from aioflow._core.state.integrity import open_document
from aioflow._core.state.lmdb import _free_pages

JOB = """
import os

import orjson
import structlog
from gated import GatedSource, at_least_checkpoints

import aioflow as af
from aioflow._core.state.lmdb import _free_pages

state = os.environ["STATE"]
interval = os.environ.get("INTERVAL", "0.1")  # "": no checkpoints
app = af.App(os.environ.get("APP", "corrupt"), state_dir=state, checkpoint_interval=float(interval) if interval else None,
             parallelism=1)
with open(os.environ["EVENTS"], "rb") as f:
    records = [orjson.loads(line) for line in f]


def paused():
    structlog.get_logger("tests").info("source paused")


# With PAUSE_AT, it reads nothing from there on once three checkpoints completed: a stop
# with a savepoint (SIGTERM) comes at exactly that position.
pause_at = int(os.environ.get("PAUSE_AT", "0")) or None
events = app.source(GatedSource(records, batch=100, pause_at=pause_at, hold=True, then=paused,
                                until=at_least_checkpoints(state, 3)),
                    name="events", timestamps=lambda e: e["ts"], watermarks=af.BoundedOutOfOrderness(100))


class Count(af.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", 0)

    def process_element(self, e, ctx):
        self.n.update(self.n.value() + 1)
        ctx.timer_service.register_event_time_timer(ctx.timestamp - ctx.timestamp % 1000 + 999)

    def on_timer(self, ts, ctx):
        yield {"user": ctx.key, "ts": ts, "n": self.n.value()}


keyed = events.key_by(lambda e: e["user"])
counts = keyed.process(Count(), name="count")
sums = keyed.window(af.TumblingEventTimeWindows(2000)).reduce(
    lambda a, b: {"user": a["user"], "ts": max(a["ts"], b["ts"]), "v": a["v"] + b["v"]}, name="sums")
counts.sink(af.FileSink(os.environ["OUT"] + "-counts.jsonl", exactly_once=True), name="counts-out")
sums.sink(af.FileSink(os.environ["OUT"] + "-sums.jsonl", exactly_once=True), name="sums-out")
"""

EVENTS = 4000  # an event every 5 ms of event time, of one of 300 users
PAUSE_AT = 2000  # ts 10000: windows [8000, 10000) are open at the savepoint, and fire in the first batch after it
OUTPUTS = ("out-counts.jsonl", "out-sums.jsonl")
WINDOW = b"[8000,10000]"  # the namespace (encoded) of the windows open at the savepoint
REFUSED = 3


# -- the prepared job -------------------------------------------------------------------------


@dataclass
class Prepared:
    """Job A stopped with a savepoint at ``PAUSE_AT`` (and job B, another run of the same
    app, stopped at another position: another job id). ``checkout`` gives a fresh copy of
    a job's folder at the path it ran at."""

    root: Path
    records: list[dict[str, Any]]
    #: A's complete output after an undisturbed resume.
    expected: dict[str, bytes] = field(default_factory=dict)

    def checkout(self, job: str = "a") -> Path:
        folder = self.root / job
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.root / f"{job}.pristine", folder, symlinks=True)
        return folder


def _env(folder: Path, **more: str) -> dict[str, str]:
    """The job's environment. A fixed hash seed makes the order in which the job writes
    its state (and so LMDB's page layout) the same in every run."""
    return {
        "EVENTS": str(folder / "events.jsonl"),
        "STATE": str(folder / "state"),
        "OUT": str(folder / "out"),
        "PYTHONHASHSEED": "0",
        **more,
    }


def _stop_with_savepoint(folder: Path, pause_at: int) -> None:
    """Run the job until it paused at ``pause_at``, and stop it with a savepoint. The first
    checkpoint comes after it read everything up to there: its state is written in one
    transaction, always the same."""
    worker = Worker(folder, _env(folder, PAUSE_AT=str(pause_at), INTERVAL="0.25"), log=folder / "prepare.log")
    with worker:
        assert worker.wait_for("source paused"), explain(worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, explain(worker)
    assert '"job stopped with a savepoint"' in worker.text()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = tmp_path_factory.mktemp("corruption")
    for job, pause_at in (("a", PAUSE_AT), ("b", PAUSE_AT // 2)):
        folder = root / job
        folder.mkdir()
        write_events(folder, EVENTS, seed=1)
        (folder / "job.py").write_text(JOB)
        shutil.copy(gated.__file__, folder / "gated.py")
        _stop_with_savepoint(folder, pause_at)
        shutil.copytree(folder, root / f"{job}.pristine", symlinks=True)
    records = [orjson.loads(line) for line in (root / "a" / "events.jsonl").read_bytes().splitlines()]
    ready = Prepared(root, records)
    folder = ready.checkout()
    resumed = Worker(folder, _env(folder))
    assert resumed.wait() == 0, explain(resumed)
    ready.expected = {name: (folder / name).read_bytes() for name in OUTPUTS}
    stopped = {name: (root / "a.pristine" / name).read_bytes() for name in OUTPUTS}
    for name in OUTPUTS:  # the stop committed a part; the resume completed it
        assert (
            stopped[name] and ready.expected[name].startswith(stopped[name]) and ready.expected[name] != stopped[name]
        )
    return ready


# -- reading and damaging the stored state ----------------------------------------------------


def _databases(state: Path) -> dict[str, dict[bytes, bytes]]:
    """The working copy's databases (``live``, ``undo``, ``meta``) as they are on disk, read
    without writing anything (no lock file)."""
    env = lmdb.open(str(state), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        with env.begin() as txn:
            return {
                name: dict(txn.cursor(db=env.open_db(name.encode(), txn=txn, create=False)))
                for name in ("live", "undo", "meta")
            }
    finally:
        env.close()


def _table_id(state: Path, name: str) -> bytes:
    """The 4 bytes that stand for ``operator\\x1fstate`` in stored keys."""
    tables = open_document(_databases(state)["meta"][b"tables"])
    return struct.pack(">I", tables[name]["id"])


def _entry(state: Path, table: str, suffix: bytes) -> tuple[bytes, bytes]:
    """The one live entry of ``table`` whose stored key ends with ``suffix``: ``(key, value
    as stored)``."""
    table_id = _table_id(state, table)
    found = [
        (key, value)
        for key, value in _databases(state)["live"].items()
        if key[2:6] == table_id and key.endswith(suffix)
    ]
    assert len(found) == 1, (table, suffix, found)
    return found[0]


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _count_entry(state: Path, user: str) -> tuple[bytes, bytes]:
    return _entry(state, "count\x1fn", b"\x00\x00" + _json(user))  # no namespace


def _other(char: int) -> int:
    """Another character a digit (or hex digit) could have been: the damage still parses."""
    for alphabet in (b"0123456789", b"abcdef"):
        if char in alphabet:
            return alphabet[(alphabet.index(char) + 1) % len(alphabet)]
    return char ^ 0x01


def _changed(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([_other(data[at])]) + data[at + 1 :]


def _rewrite(path: Path, replacements: dict[bytes, bytes]) -> None:
    """Replace each byte string in the file with another of the same length (every copy of
    it: LMDB may keep stale copies of a page)."""
    data = path.read_bytes()
    for old, new in replacements.items():
        assert len(old) == len(new) and old != new
        assert old in data, f"{old!r} is not in {path}"
        data = data.replace(old, new)
    path.write_bytes(data)


def _damage_entries(state: Path, entries: dict[bytes, bytes], damaged: dict[bytes, bytes]) -> None:
    """Give each live entry ``key -> value`` (as stored) the value ``damaged[key]`` in
    data.mdb (an LMDB leaf node holds a key and its value side by side), and check that the
    working copy now reads so."""
    _rewrite(state / "data.mdb", {key + entries[key]: key + damaged[key] for key in entries})
    live = _databases(state)["live"]
    for key in entries:
        assert live[key] == damaged[key] != entries[key], key


def _damage_key(state: Path, key: bytes, value: bytes, at: int) -> bytes:
    """Change byte ``at`` of a live entry's stored key in data.mdb; returns the key now stored."""
    damaged = _changed(key, at)
    _rewrite(state / "data.mdb", {key + value: damaged + value})
    live = _databases(state)["live"]
    assert key not in live and live[damaged] == value
    return damaged


def _damage_meta(state: Path, name: bytes, needle: bytes) -> None:
    """Change the last byte of ``needle`` in the working copy's sealed ``name`` document
    (found by itself: it holds its own SHA-256, and a large one, the manifest, is stored in
    overflow pages away from its key)."""
    document = _databases(state)["meta"][name]
    damaged = _changed(document, document.index(needle) + len(needle) - 1)
    _rewrite(state / "data.mdb", {document: damaged})
    assert _databases(state)["meta"][name] == damaged


def _damage_file(path: Path, at: int | None = None) -> None:
    """Change one byte of ``path`` (by default in its middle)."""
    data = path.read_bytes()
    damaged = _changed(data, len(data) // 2 if at is None else at)
    path.write_bytes(damaged)
    assert path.read_bytes() != data


def _first_users(prepared: Prepared, state: Path, count: int) -> list[str]:
    """The first ``count`` users the resumed job reads whose count the stored state holds,
    in the order it reads them."""
    users: list[str] = []
    table = _table_id(state, "count\x1fn")
    stored = {key[8:] for key in _databases(state)["live"] if key[2:6] == table}  # after the empty namespace
    for record in prepared.records[PAUSE_AT:]:
        user = record["user"]
        if user not in users and _json(user) in stored:
            users.append(user)
            if len(users) == count:
                return users
    raise AssertionError("too few stored users")


def _job_id(state: Path) -> str:
    return open_document(_databases(state)["meta"][b"identity"])["job_id"]


def _checkpoint(state: Path, checkpoint_id: int) -> Path:
    return state / "checkpoints" / _job_id(state) / f"chk-{checkpoint_id}"


def _last_user_before_the_pause(prepared: Prepared) -> str:
    """A user whose window ``[8000, 10000)`` and timers are stored at the savepoint."""
    return prepared.records[PAUSE_AT - 1]["user"]


# -- what a refusal leaves ------------------------------------------------------------------


@dataclass
class Before:
    """What a refused run must not change."""

    outputs: dict[str, bytes]
    storage: dict[str, str]
    data: bytes | None


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _before(folder: Path) -> Before:
    state = folder / "state"
    storage = {
        **_digests(state / "checkpoints"),
        **{f"savepoints/{k}": v for k, v in _digests(state / "savepoints").items()},
    }
    data = (state / "data.mdb").read_bytes() if (state / "data.mdb").exists() else None
    return Before({name: (folder / name).read_bytes() for name in OUTPUTS}, storage, data)


def _log(worker: Worker) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The worker's JSON log lines, and any others (a bare traceback, a C library's message)."""
    lines, stray = [], []
    for raw in worker.log.read_bytes().splitlines():
        try:
            lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            stray.append(raw)
    return lines, stray


#: What an error may advise when no one folder is the way out.
RESTORE_OR_START_AFRESH = ("--from-savepoint", "start from an empty state directory")


def _refusal_problems(
    worker: Worker,
    folder: Path,
    before: Before,
    *names: str | tuple[str, ...],
    advice: str | tuple[str, ...],
    at_start: bool = True,
    expected: dict[str, bytes] | None = None,
) -> list[str]:
    """What keeps the worker's run from being a proper refusal: exit status 3, nothing
    committed, no restart, and, ``at_start``, no job started and checkpoint storage
    untouched; one ``"refused"`` line naming ``names`` (always the state directory) and
    saying what to do (``advice``, or one of several). ``expected``: the complete output,
    to say how much of it a run that was not refused got wrong."""
    problems = []
    code = worker.wait()
    lines, stray = _log(worker)
    if code != REFUSED:
        killed = f" (killed by {signal.Signals(-code).name})" if code < 0 else ""
        problems.append(f"exit status {code}{killed}, not {REFUSED} (refused); the log says:\n{explain(worker)}")
    if stray:
        problems.append(f"the log has lines that are not JSON: {[line[:200] for line in stray[:3]]}")
    for name in OUTPUTS:
        now = (folder / name).read_bytes()
        if now != before.outputs[name]:
            added = now[len(before.outputs[name]) :].splitlines() if now.startswith(before.outputs[name]) else None
            wrong = (
                ""
                if expected is None or added is None
                else (
                    f", {sum(line not in expected[name].splitlines() for line in added)} of them not in the "
                    "undisturbed output"
                )
            )
            problems.append(
                f"{name} changed: "
                + ("rewritten" if added is None else f"{len(added)} lines committed after the damage{wrong}")
            )
    failed = [line for line in lines if line["event"].startswith("job failed")]
    if failed:
        problems.append(f"the refusal was not the only failure (a restart?): {failed[:2]}")
    if at_start:
        started = [line["event"] for line in lines if line["event"] in ("job started", "checkpoint complete")]
        if started:
            problems.append(f"refused only after {started}")
        if _before(folder).storage != before.storage:
            problems.append("checkpoint storage changed")
    refused = [line for line in lines if line["event"] == "refused"]
    if len(refused) != 1:
        problems.append(f"{len(refused)} 'refused' lines")
    for line in refused[:1]:
        error = line["error"]
        missing = [
            name
            for name in (str(folder / "state"), *names)
            if (name not in error if isinstance(name, str) else not any(n in error for n in name))
        ]
        if missing:
            problems.append(f"the error does not name {missing}: {error}")
        if not any(what in error for what in ((advice,) if isinstance(advice, str) else advice)):
            problems.append(f"the error does not say what to do ({advice!r}): {error}")
    return problems


def _assert_refused(
    worker: Worker,
    folder: Path,
    before: Before,
    *names: str | tuple[str, ...],
    advice: str | tuple[str, ...],
    at_start: bool = True,
    expected: dict[str, bytes] | None = None,
) -> str:
    """See :func:`_refusal_problems`; returns the error."""
    problems = _refusal_problems(worker, folder, before, *names, advice=advice, at_start=at_start, expected=expected)
    assert not problems, "\n".join(problems)
    return next(line["error"] for line in _log(worker)[0] if line["event"] == "refused")


def _assert_resumes(folder: Path, prepared: Prepared, *args: str) -> Worker:
    """The job resumes on ``folder`` and completes A's output exactly."""
    worker = Worker(folder, _env(folder), *args, log=folder / "resume.log")
    assert worker.wait() == 0, explain(worker)
    for name in OUTPUTS:
        assert (folder / name).read_bytes() == prepared.expected[name], name
    return worker


# -- the working copy: missing, empty, truncated, damaged metadata -----------------------------


def _emptied(state: Path) -> None:
    (state / "data.mdb").write_bytes(b"")
    assert (state / "data.mdb").stat().st_size == 0


def _deleted(*names: str) -> Callable[[Path], None]:
    def delete(state: Path) -> None:
        for name in names:
            (state / name).unlink()
            assert not (state / name).exists()

    return delete


def _truncated(size: Callable[[int], int]) -> Callable[[Path], None]:
    def truncate(state: Path) -> None:
        data = state / "data.mdb"
        old = data.stat().st_size
        new = size(old)
        assert 0 < new < old
        with data.open("r+b") as f:
            f.truncate(new)
        assert data.stat().st_size == new

    return truncate


def _pages(state: Path) -> tuple[int, set[int]]:
    """The pages ``data.mdb`` has, and those LMDB's free list holds."""
    data = state / "data.mdb"
    pages = data.stat().st_size // 4096
    return pages, _free_pages(data, 4096, pages)


def _before_the_last_page_in_use(size: int, state: Path) -> int:
    """A size that cuts off the last page LMDB uses (and the free ones after it)."""
    pages, free = _pages(state)
    return max(page for page in range(pages) if page not in free) * 4096


def _truncated_at(size: Callable[[int, Path], int]) -> Callable[[Path], None]:
    def truncate(state: Path) -> None:
        _truncated(lambda old: size(old, state))(state)

    return truncate


def _meta(name: bytes, needle: bytes) -> Callable[[Path], None]:
    return lambda state: _damage_meta(state, name, needle)


def _job_id_needle(state: Path) -> bytes:
    return _json(_job_id(state))[:-1]  # up to the id's last character


WORKING_COPY = {
    "data.mdb-emptied": (_emptied, "data.mdb"),
    "data.mdb-deleted": (_deleted("data.mdb"), "data.mdb"),
    "data.mdb-and-lock.mdb-deleted": (_deleted("data.mdb", "lock.mdb"), "data.mdb"),
    "data.mdb-truncated-to-half": (_truncated(lambda size: size // 2), "data.mdb"),
    "data.mdb-truncated-to-3-pages": (_truncated(lambda size: 3 * 4096), "data.mdb"),
    "data.mdb-truncated-to-1-page": (_truncated(lambda size: 4096), "LMDB"),  # not even its meta pages
    "data.mdb-truncated-by-the-last-page-in-use": (_truncated_at(_before_the_last_page_in_use), "data.mdb"),
    "meta-format-marker": (_meta(b"format", b'"aioflow-state/2'), "format marker"),
    "meta-job-identity": (lambda state: _damage_meta(state, b"identity", _job_id_needle(state)), "identity"),
    "meta-table-registry": (_meta(b"tables", b'"id": 8'), "table registry"),
    "meta-manifest": (_meta(b"manifest", b'"checkpoint_id": 4'), "manifest"),
}


@pytest.mark.parametrize("case", list(WORKING_COPY))
def test_a_missing_or_damaged_working_copy_is_refused_before_the_job_starts(prepared: Prepared, case: str) -> None:
    """Next to intact checkpoint storage. Where the error names a folder to restore from,
    that restores (and completes the output exactly)."""
    damage, named = WORKING_COPY[case]
    folder = prepared.checkout()
    before = _before(folder)
    damage(folder / "state")
    worker = Worker(folder, _env(folder))
    error = _assert_refused(worker, folder, before, named, advice=RESTORE_OR_START_AFRESH)
    advised = re.search(r"--from-savepoint (\S+)", error)
    if advised and Path(advised[1]).is_dir():
        _assert_resumes(folder, prepared, "--from-savepoint", advised[1])


def test_pages_lmdb_freed_before_writing_them_may_be_missing(prepared: Prepared) -> None:
    """LMDB counts pages it allocated and freed in one transaction without ever writing
    them: a file that ends before those is whole, and resumes exactly."""
    folder = prepared.checkout()
    state = folder / "state"
    pages, free = _pages(state)
    last = max(page for page in range(pages) if page not in free)
    free_tail = pages - 1 - last
    if free_tail == 0:  # none at the end: make one, as LMDB does, by cutting off free pages only
        pytest.skip("the prepared working copy ends with a page in use")
    _truncated(lambda size: (last + 1) * 4096)(state)
    _assert_resumes(folder, prepared)


def test_a_deleted_lock_mdb_is_no_damage(prepared: Prepared) -> None:
    """LMDB's lock file holds no data (it is made again): the job resumes."""
    folder = prepared.checkout()
    _deleted("lock.mdb")(folder / "state")
    _assert_resumes(folder, prepared)


# -- checkpoint storage ---------------------------------------------------------------------


def _every_manifest(state: Path) -> None:
    for checkpoint_id in (2, 3, 4):
        manifest = _checkpoint(state, checkpoint_id) / "_manifest"
        _damage_file(manifest, manifest.read_bytes().index(b'"checkpoint_id": ') + 17)


def _job_file(state: Path) -> None:
    job = state / "checkpoints" / "JOB"
    _damage_file(job, job.read_bytes().index(_job_id_needle(state)) + len(_job_id_needle(state)) - 1)


STORAGE = {
    "JOB": (_job_file, "JOB"),
    "every-retained-manifest": (_every_manifest, "chk-4"),
}


@pytest.mark.parametrize("case", list(STORAGE))
def test_damaged_checkpoint_storage_is_refused_before_the_job_starts(prepared: Prepared, case: str) -> None:
    """Next to an intact working copy (and an intact savepoint folder)."""
    damage, named = STORAGE[case]
    folder = prepared.checkout()
    before = _before(folder)
    damage(folder / "state")
    before.storage = _before(folder).storage  # as damaged
    worker = Worker(folder, _env(folder))
    _assert_refused(worker, folder, before, named, advice=RESTORE_OR_START_AFRESH)


def test_a_damaged_newest_manifest_names_the_intact_older_checkpoint_which_resumes(prepared: Prepared) -> None:
    """Never a silent fall back to the older checkpoint: refused, naming it."""
    folder = prepared.checkout()
    state = folder / "state"
    before = _before(folder)
    newest, older = _checkpoint(state, 4), _checkpoint(state, 3)
    manifest = newest / "_manifest"
    _damage_file(manifest, manifest.read_bytes().index(b'"checkpoint_id": ') + 17)
    before.storage = _before(folder).storage
    worker = Worker(folder, _env(folder))
    _assert_refused(worker, folder, before, str(newest), advice=f"--from-savepoint {older}")

    # As it says: the older checkpoint resumes (as a new job), and the output is completed exactly
    # (nothing was committed after checkpoint 3: the source was paused).
    resumed = _assert_resumes(folder, prepared, "--from-savepoint", str(older))
    assert '"restored from savepoint"' in resumed.text()


# -- --from-savepoint of a damaged folder ------------------------------------------------------


def _savepoint_data_file(state: Path) -> tuple[Path, Path]:
    folder = state / "savepoints" / "savepoint-4"
    [data] = folder.glob("*.full")
    return folder, data


def _checkpoint_delta_file(state: Path) -> tuple[Path, Path]:
    folder = _checkpoint(state, 4)
    [data] = (folder.parent / "shared").glob("*.delta")
    return folder, data


@pytest.mark.parametrize(
    "which", [_savepoint_data_file, _checkpoint_delta_file], ids=["savepoint-data-file", "checkpoint-delta-file"]
)
def test_from_savepoint_with_a_damaged_data_file_is_refused_before_the_working_copy_changes(
    prepared: Prepared,
    which: Callable[[Path], tuple[Path, Path]],
) -> None:
    """A savepoint's own data file, or a section file a retained checkpoint's manifest
    names (a normal restart does not read those: the working copy holds the state)."""
    folder = prepared.checkout()
    state = folder / "state"
    savepoint, data = which(state)
    before = _before(folder)
    _damage_file(data)
    before.storage = _before(folder).storage
    worker = Worker(folder, _env(folder), "--from-savepoint", str(savepoint))
    problems = _refusal_problems(worker, folder, before, str(savepoint), data.name, advice=RESTORE_OR_START_AFRESH)
    if (state / "data.mdb").read_bytes() != before.data:
        problems.append("the refused restore changed the working copy")
    else:
        _assert_resumes(folder, prepared)  # the working copy still resumes as it was
    assert not problems, "\n".join(problems)


# -- another job's state ----------------------------------------------------------------------


def test_the_working_copy_of_another_job_is_refused(prepared: Prepared) -> None:
    """B is another run of the same app: another job id."""
    folder = prepared.checkout()
    other = prepared.root / "b.pristine" / "state"
    before = _before(folder)
    shutil.copyfile(other / "data.mdb", folder / "state" / "data.mdb")
    assert _job_id(folder / "state") == _job_id(other) != _job_id(prepared.root / "a.pristine" / "state")
    worker = Worker(folder, _env(folder))
    _assert_refused(worker, folder, before, _job_id(other), advice="checkpoint_storage")


def test_the_checkpoint_storage_of_another_job_is_refused(prepared: Prepared) -> None:
    """A's working copy with B's checkpoint storage (``--checkpoint-storage``), which the
    refused run leaves as it was."""
    folder = prepared.checkout()
    storage = folder / "b-checkpoints"
    shutil.copytree(prepared.root / "b.pristine" / "state" / "checkpoints", storage)
    before = _before(folder)
    digests = _digests(storage)
    worker = Worker(folder, _env(folder), "--checkpoint-storage", str(storage))
    _assert_refused(
        worker,
        folder,
        before,
        str(storage),
        _job_id(prepared.root / "b.pristine" / "state"),
        advice="checkpoint_storage",
    )
    assert _digests(storage) == digests, "the refused run changed the other job's checkpoint storage"


def test_the_state_directory_of_another_app_is_refused(prepared: Prepared) -> None:
    """A's whole state directory, run by an app of another name."""
    folder = prepared.checkout()
    before = _before(folder)
    worker = Worker(folder, _env(folder, APP="renamed"))
    _assert_refused(worker, folder, before, "'corrupt'", advice="--from-savepoint")


def test_a_working_copy_older_than_checkpoint_storage_is_refused(prepared: Prepared) -> None:
    """A's working copy as it was at the savepoint, put back after a resume took more
    checkpoints (a state directory restored from a backup, its checkpoint storage kept
    elsewhere): it never took those checkpoints, and must not pass for the newest."""
    folder = prepared.checkout()
    state = folder / "state"
    old = (state / "data.mdb").read_bytes()
    held = open_document(_databases(state)["meta"][b"manifest"])
    _assert_resumes(folder, prepared)
    newest = max(int(path.name.split("-")[1]) for path in (state / "checkpoints" / _job_id(state)).glob("chk-*"))
    assert newest > held["checkpoint_id"], "the resume took no checkpoint after the savepoint"
    (state / "data.mdb").write_bytes(old)
    before = _before(folder)
    worker = Worker(folder, _env(folder))
    error = _assert_refused(
        worker,
        folder,
        before,
        f"checkpoint {held['checkpoint_id']}",
        f"checkpoint {newest}",
        advice=f"--from-savepoint {_checkpoint(state, newest)}",
    )
    assert "older copy" in error


def test_a_savepoint_a_killed_worker_left_incomplete_is_removed_at_the_next_start(prepared: Prepared) -> None:
    """A worker killed while writing a savepoint leaves its folder without a manifest:
    nothing can restore it, and the next start removes it (and nothing else)."""
    folder = prepared.checkout()
    savepoints = folder / "state" / "savepoints"
    complete = sorted(savepoints.iterdir())
    assert complete and all((path / "_manifest").exists() for path in complete)
    incomplete = savepoints / "savepoint-99"
    incomplete.mkdir()
    (incomplete / "0123.full").write_bytes(b"half a section")
    worker = _assert_resumes(folder, prepared)
    assert not incomplete.exists()
    assert all((path / "_manifest").exists() for path in complete)
    assert '"removed an incomplete savepoint"' in worker.text()


def test_a_run_without_checkpoints_on_the_state_of_a_checkpointed_job_is_refused(prepared: Prepared) -> None:
    """Without checkpoint_interval the working copy is written with nothing to roll back to:
    on A's state it would leave the next checkpointed run a copy that no longer matches its
    checkpoint. Refused; A then resumes with its output exact."""
    folder = prepared.checkout()
    before = _before(folder)
    worker = Worker(folder, _env(folder, INTERVAL=""))
    error = _assert_refused(worker, folder, before, _job_id(folder / "state"), advice="--checkpoint-interval")
    assert "no checkpoint_interval" in error
    _assert_resumes(folder, prepared)


# -- damaged values: found when read, the job stops at once -------------------------------------


def _count_digits(users: int) -> Callable[[Prepared, Path], list[str]]:
    """One digit changed in the stored counts of the first ``users`` users the resumed job
    reads (a count of 5 becoming 6: still JSON, still a count)."""

    def damage(prepared: Prepared, state: Path) -> list[str]:
        chosen = _first_users(prepared, state, users)
        entries = dict(_count_entry(state, user) for user in chosen)
        _damage_entries(state, entries, {key: _changed(value, len(value) - 1) for key, value in entries.items()})
        return ["'count'", "'n'", tuple(repr(user) for user in chosen)]  # whichever is read first

    return damage


def _window_value_byte(prepared: Prepared, state: Path) -> list[str]:
    """One character changed in the user name inside a stored window sum (``"u58"``
    becoming ``"u59"``: still JSON, still a user)."""
    user = _last_user_before_the_pause(prepared)
    key, value = _entry(state, "sums\x1fwindow-contents", WINDOW + _json(user))
    at = value.index(_json(user)) + len(_json(user)) - 2
    _damage_entries(state, {key: value}, {key: _changed(value, at)})
    return ["'sums'", repr(user)]


VALUES = {
    "count-one-digit": _count_digits(1),
    "five-counts-one-digit-each": _count_digits(5),
    "window-sum-one-byte": _window_value_byte,
}


@pytest.mark.parametrize("case", list(VALUES))
def test_a_damaged_value_stops_the_job_when_read_and_nothing_more_is_committed(prepared: Prepared, case: str) -> None:
    """The issue's case: before checksums, one digit changed in 5 stored counts gave
    1,194 wrong output lines and exit status 0."""
    folder = prepared.checkout()
    before = _before(folder)
    named = VALUES[case](prepared, folder / "state")
    worker = Worker(folder, _env(folder))
    _assert_refused(
        worker, folder, before, *named, advice="--from-savepoint", at_start=False, expected=prepared.expected
    )


# -- damaged keys: found when their key group or namespace is read in order ---------------------


def _closing_quote(key: bytes, user: str) -> int:
    """Where the user name's closing quote is in a stored key: changing it keeps the key's
    place among its neighbours (no other user's name starts with this one followed by a
    quote), so only this entry is affected."""
    return key.rindex(_json(user)) + len(_json(user)) - 1


def _timer_key(table: str, name: Callable[[str], bytes]) -> Callable[[Prepared, Path], list[str]]:
    def damage(prepared: Prepared, state: Path) -> list[str]:
        user = _last_user_before_the_pause(prepared)
        key, value = _entry(state, table, name(user))
        _damage_key(state, key, value, _closing_quote(key, user))
        return [f"'{table.replace(chr(0x1F), '/')}'"]  # 'operator/timers'

    return damage


def _value_key(
    table: str, name: Callable[[str], bytes], user_of: Callable[[Prepared, Path], str]
) -> Callable[[Prepared, Path], list[str]]:
    def damage(prepared: Prepared, state: Path) -> list[str]:
        user = user_of(prepared, state)
        key, value = _entry(state, table, name(user))
        _damage_key(state, key, value, _closing_quote(key, user))
        return [f"'{part}'" for part in table.split("\x1f")]  # operator and state

    return damage


KEYS = {
    # Timers are read in time order per key group: the count's timer at 9999 fires in the first batch.
    "count-timer-key": _timer_key("count\x1fevent-timers", lambda user: _json(user)),
    "window-timer-key": _timer_key("sums\x1fwindow-event-timers", lambda user: _json([user, [8000, 10000]])),
    # Read by key only: a lookup of the right key finds nothing.
    "count-value-key": _value_key(
        "count\x1fn",
        lambda user: b"\x00\x00" + _json(user),
        lambda prepared, state: _first_users(prepared, state, 1)[0],
    ),
    "window-contents-key": _value_key(
        "sums\x1fwindow-contents",
        lambda user: WINDOW + _json(user),
        lambda prepared, state: _last_user_before_the_pause(prepared),
    ),
}


@pytest.mark.parametrize("case", list(KEYS))
def test_a_damaged_key_is_refused_when_read_never_silently_lost(prepared: Prepared, case: str) -> None:
    """A value's checksum covers its key too, so a damaged key is found when its entry is
    read in key order: timers fire in order, a window's namespace is dropped at cleanup. A
    lookup by the right key finds nothing instead: that must not become a silently
    restarted count or a silently missing window."""
    folder = prepared.checkout()
    before = _before(folder)
    named = KEYS[case](prepared, folder / "state")
    worker = Worker(folder, _env(folder))
    _assert_refused(
        worker, folder, before, *named, advice="--from-savepoint", at_start=False, expected=prepared.expected
    )


def test_a_damaged_key_read_by_no_record_is_found_in_the_background(prepared: Prepared) -> None:
    """No record reads the damaged entry (the source pauses at once); the background
    verification, which reads the working copy in key order, finds it (or, at the latest,
    the savepoint of the stop, which copies every key group whole)."""
    folder = prepared.checkout()
    state = folder / "state"
    before = _before(folder)
    user = _first_users(prepared, state, 1)[0]
    key, value = _count_entry(state, user)
    _damage_key(state, key, value, _closing_quote(key, user))
    worker = Worker(folder, _env(folder, PAUSE_AT=str(PAUSE_AT)))
    with worker:
        if worker.wait_for("source paused"):  # still running: the stop's savepoint reads everything
            worker.signal(signal.SIGTERM)
        _assert_refused(worker, folder, before, "'count'", "'n'", advice="--from-savepoint", at_start=False)


# -- damaged LMDB structure: page and node headers carry no checksum of their own ----------------


PAGE = 4096


def _leaf_pages(state: Path) -> dict[int, list[tuple[int, bytes]]]:
    """The leaf pages of the working copy's ``live`` database: page number -> ``(offset of
    the node in data.mdb, stored key)`` of each entry, read from data.mdb as LMDB lays it
    out (mdb.c: a 16-byte ``MDB_page`` header ``pgno, pad, flags, lower, upper``, then the
    nodes' offsets; a node is ``lo, hi, flags, ksize``, its key, its data; a branch node's
    child page number is ``lo | hi << 16 | flags << 32``; the main database's root is in
    the newer of the two meta pages, and a named database's root in its ``MDB_db`` record)."""
    data = (state / "data.mdb").read_bytes()

    def nodes(page: int) -> list[tuple[int, int, int, int, int, bytes]]:
        base = page * PAGE
        _, _, flags, lower, _ = struct.unpack_from("<QHHHH", data, base)
        found = []
        for i in range((lower - 16) // 2):
            at = base + struct.unpack_from("<H", data, base + 16 + 2 * i)[0]
            lo, hi, node_flags, size = struct.unpack_from("<HHHH", data, at)
            found.append((flags, at, lo, hi, node_flags, data[at + 8 : at + 8 + size]))
        return found

    txn_ids = [struct.unpack_from("<Q", data, page * PAGE + 16 + 24 + 96 + 8)[0] for page in (0, 1)]
    newer = txn_ids.index(max(txn_ids))
    main_root = struct.unpack_from("<Q", data, newer * PAGE + 16 + 24 + 48 + 40)[0]
    [at] = [at for _, at, _, _, _, key in nodes(main_root) if key == b"live"]
    todo, leaves = [struct.unpack_from("<Q", data, at + 8 + len(b"live") + 40)[0]], {}
    while todo:
        page = todo.pop()
        for flags, at, lo, hi, node_flags, key in nodes(page):
            if flags & 0x01:  # P_BRANCH
                todo.append(lo | hi << 16 | node_flags << 32)
            else:
                leaves.setdefault(page, []).append((at, key))
    assert sorted(key for entries in leaves.values() for _, key in entries) == sorted(_databases(state)["live"])
    return leaves


def _count_page(prepared: Prepared, state: Path) -> tuple[int, int]:
    """The leaf page holding the stored count of the first user the resumed job reads (a
    lookup by key), and the offset of that entry's node."""
    key, _ = _count_entry(state, _first_users(prepared, state, 1)[0])
    [found] = [(page, at) for page, entries in _leaf_pages(state).items() for at, stored in entries if stored == key]
    return found


def _page_reached_by_a_cursor_step(prepared: Prepared, state: Path) -> tuple[int, int]:
    """A leaf page that the restore reaches by stepping from the leaf before it: every
    timer queue looks for its first stored timer in each key group (``first_key``: a
    cursor ``set_range``), and the processing-time queues are empty, so a search for
    ``key group | table`` lands on the next entry; where that entry opens a leaf, LMDB
    steps to it from the previous leaf (the layout is the same in every run)."""
    tables = open_document(_databases(state)["meta"][b"tables"])
    empty = [struct.pack(">I", table["id"]) for name, table in tables.items() if name.endswith("processing-timers")]
    leaves = sorted(
        (min(key for _, key in entries), max(key for _, key in entries), page)
        for page, entries in _leaf_pages(state).items()
    )
    for (_, last, _), (first, _, page) in zip(leaves, leaves[1:], strict=False):
        probes = [group + table + bytes(8) for group in {last[:2], first[:2]} for table in empty]
        if any(last < probe <= first for probe in probes):
            return page, 0
    raise AssertionError("no leaf page of this layout is reached by a cursor step at restore: change EVENTS")


def _patch(path: Path, at: int, new: bytes) -> None:
    data = path.read_bytes()
    assert data[at : at + len(new)] != new
    path.write_bytes(data[:at] + new + data[at + len(new) :])
    assert path.read_bytes()[at : at + len(new)] == new


def _zeroed(page: int, node: int, data: Path) -> None:
    _patch(data, page * PAGE, bytes(PAGE))


def _flags(page: int, node: int, data: Path) -> None:
    _patch(data, page * PAGE + 10, b"\x01")  # P_LEAF (2) read as P_BRANCH (1)


def _page_number(page: int, node: int, data: Path) -> None:
    _patch(data, page * PAGE, bytes([data.read_bytes()[page * PAGE] ^ 0x08]))  # the header's own page number


def _key_size(page: int, node: int, data: Path) -> None:
    _patch(data, node + 6, bytes([data.read_bytes()[node + 6] + 1]))  # the node's key one byte longer


STRUCTURE = {
    "count-leaf-page-zeroed": (_count_page, _zeroed),
    "count-leaf-page-flags-byte": (_count_page, _flags),
    "count-leaf-page-number-byte": (_count_page, _page_number),
    "count-node-key-size-byte": (_count_page, _key_size),
    "leaf-page-reached-by-a-cursor-step-zeroed": (_page_reached_by_a_cursor_step, _zeroed),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_a_damaged_lmdb_page_is_refused_never_run_on(prepared: Prepared, case: str) -> None:
    """One byte of LMDB's own structure (or a whole page zeroed: a lost write, a bad
    block), outside any value's checksum: in the leaf page holding the first count the
    resumed job reads, or in one the restore reaches by stepping from page to page.

    LMDB checks its page structure with assertions, and an assertion that fails aborts
    the process (SIGABRT): no Python code can turn that into a refusal. What must hold
    either way: the worker never runs on the damage (refused, or aborted by LMDB naming
    its assertion, with the Python stack of the read that hit it), and nothing is
    committed after it."""
    where, damage = STRUCTURE[case]
    folder = prepared.checkout()
    state = folder / "state"
    before = _before(folder)
    page, node = where(prepared, state)
    damage(page, node, state / "data.mdb")
    worker = Worker(folder, _env(folder))
    problems = _refusal_problems(
        worker, folder, before, advice=RESTORE_OR_START_AFRESH, at_start=False, expected=prepared.expected
    )
    if worker.process.returncode == -signal.SIGABRT:
        log = worker.log.read_bytes()
        assert b"Assertion '" in log and b"mdb.c" in log, "aborted, but not by an LMDB assertion"
        assert b"Fatal Python error: Aborted" in log and b"aioflow/state/" in log, "no Python stack of the read"
        problems = [p for p in problems if "SIGABRT" not in p and "not JSON" not in p and "'refused'" not in p]
    assert not problems, "\n".join(problems)
