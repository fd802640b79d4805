"""FileSink(exactly_once=True): two-phase commit through the TwoPhaseCommitSinkWriter API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

import aioflow as af
from aioflow._core.connectors import files
from aioflow._core.connectors.base import Sink, TwoPhaseCommitSinkWriter
from aioflow._core.errors import StateError


def _records(path: Path) -> list[Any]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


async def _writer(path: Path, subtask: int = 0, parallelism: int = 1) -> TwoPhaseCommitSinkWriter:
    writer = af.FileSink(path, exactly_once=True).create_writer(subtask, parallelism)
    assert isinstance(writer, TwoPhaseCommitSinkWriter)
    await writer.open()
    return writer


def _round_trip(handle: Any) -> Any:
    """What the checkpoint stores and a restore hands back."""
    return orjson.loads(orjson.dumps(handle))


def test_only_exactly_once_sinks_say_so(tmp_path: Path) -> None:
    assert Sink.exactly_once is False and af.CollectSink().exactly_once is False
    assert af.FileSink(tmp_path / "o.jsonl").exactly_once is False
    assert not isinstance(af.FileSink(tmp_path / "o.jsonl").create_writer(0, 1), TwoPhaseCommitSinkWriter)
    assert af.FileSink(tmp_path / "o.jsonl", exactly_once=True).exactly_once is True
    with pytest.raises(ValueError, match="exactly_once must be True or False, got 'yes'"):
        af.FileSink(tmp_path / "o.jsonl", exactly_once="yes")  # type: ignore[arg-type]


async def test_records_not_pre_committed_never_reach_the_target(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([{"a": 1}, {"a": 2}])
    await writer.flush()
    assert path.read_bytes() == b""  # flush stages, it does not publish
    await writer.close()  # a crash before the barrier: the transaction is dropped
    assert path.read_bytes() == b"" and _hidden(tmp_path) == []

    again = await _writer(path)
    await again.write([{"a": 3}])
    handle = await again.pre_commit(1)
    assert path.read_bytes() == b""  # pre-committed is durable, not visible
    await again.commit(handle)
    assert _records(path) == [{"a": 3}]
    await again.close()


async def test_a_stale_in_progress_file_is_removed_at_open_and_never_committed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    (tmp_path / ".o.jsonl.inprogress").write_bytes(b'{"stale":1}\n')  # a crash mid-transaction
    writer = await _writer(path)
    assert _hidden(tmp_path) == []
    await writer.write([1])
    await writer.commit(await writer.pre_commit(1))
    await writer.finish()
    assert _records(path) == [1]


async def test_pre_commit_then_commit_publishes_each_record_once(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([{"a": 1}, ("b", 2.5)])
    handle = await writer.pre_commit(1)
    assert handle == _round_trip(handle)  # JSON data: the checkpoint can store it as is
    staged = Path(handle["staged"])
    assert staged.read_bytes() == b'{"a":1}\n["b",2.5]\n' and handle["size"] == len(staged.read_bytes())
    await writer.write(["c"])  # the next transaction: not part of checkpoint 1
    await writer.commit(_round_trip(handle))
    assert _records(path) == [{"a": 1}, ["b", 2.5]]
    assert not staged.exists()
    await writer.commit(await writer.pre_commit(2))
    assert _records(path) == [{"a": 1}, ["b", 2.5], "c"]
    await writer.close()
    assert _hidden(tmp_path) == []


async def test_commit_again_after_a_restart_does_not_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1, 2])
    first = _round_trip(await writer.pre_commit(1))
    await writer.commit(first)
    await writer.write([3])
    await writer.commit(await writer.pre_commit(2))
    await writer.commit(first)  # twice on the same writer
    await writer.close()
    assert _records(path) == [1, 2, 3]

    restarted = await _writer(path)  # recovery commits the restored handle again
    await restarted.commit(first)
    assert _records(path) == [1, 2, 3]  # neither duplicated nor truncated to checkpoint 1
    await restarted.close()


async def test_a_handle_restored_before_its_commit_ran_is_committed_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1, 2])
    handle = _round_trip(await writer.pre_commit(7))
    await writer.write([99])  # after the barrier: replayed by the source after recovery
    await writer.close()  # crash before the checkpoint-complete notification

    restarted = await _writer(path)
    assert path.read_bytes() == b""
    await restarted.commit(handle)
    assert _records(path) == [1, 2]
    await restarted.write([99])
    await restarted.finish()
    assert _records(path) == [1, 2, 99]


def _tear_after(nbytes: int):
    def torn_copy(source: IO[bytes], target: IO[bytes]) -> None:
        target.write(source.read(nbytes))
        target.flush()
        raise OSError("simulated crash mid-append")

    return torn_copy


async def test_a_torn_commit_is_repaired_by_committing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([{"i": 0}])
    await writer.commit(await writer.pre_commit(1))
    start = path.stat().st_size
    await writer.write([{"i": i} for i in range(1, 100)])
    handle = _round_trip(await writer.pre_commit(2))
    monkeypatch.setattr(files, "_copy_into", _tear_after(100))
    with pytest.raises(OSError, match="simulated crash"):
        await writer.commit(handle)
    assert start < path.stat().st_size < start + handle["size"]  # a torn line at the end
    assert Path(handle["staged"]).exists()
    monkeypatch.undo()

    await writer.commit(handle)  # the retry truncates the torn part and appends it all
    assert _records(path) == [{"i": i} for i in range(100)]
    await writer.commit(handle)
    assert _records(path) == [{"i": i} for i in range(100)]
    await writer.close()
    assert _hidden(tmp_path) == []


async def test_a_torn_commit_is_repaired_before_anything_else_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write(list(range(50)))
    handle = _round_trip(await writer.pre_commit(1))
    monkeypatch.setattr(files, "_copy_into", _tear_after(7))
    with pytest.raises(OSError):
        await writer.commit(handle)
    monkeypatch.undo()
    await writer.close()  # the process dies

    restarted = await _writer(path)  # open completes the commit its checkpoint promised
    assert _records(path) == list(range(50))
    await restarted.commit(handle)  # the restore's commit finds it done
    await restarted.write([50])
    await restarted.commit(await restarted.pre_commit(2))
    assert _records(path) == list(range(51))
    await restarted.close()


async def test_an_interrupted_end_of_input_commit_of_an_earlier_run_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1])
    await writer.commit(await writer.pre_commit(1))
    await writer.write(list(range(2, 40)))
    monkeypatch.setattr(files, "_copy_into", _tear_after(5))
    with pytest.raises(OSError):
        await writer.finish()  # no checkpoint holds these records: the source replays them
    monkeypatch.undo()
    await writer.close()
    assert path.read_bytes() != b"1\n"

    restarted = await _writer(path)
    assert path.read_bytes() == b"1\n"
    assert _hidden(tmp_path) == []
    await restarted.close()


async def test_finish_commits_pre_committed_and_current_transactions_in_order(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1])
    await writer.pre_commit(1)
    await writer.write([2])
    await writer.pre_commit(2)  # neither checkpoint completed yet
    await writer.write([3])
    assert path.read_bytes() == b""
    await writer.finish()
    assert _records(path) == [1, 2, 3]
    await writer.close()
    assert _hidden(tmp_path) == []


async def test_committing_a_checkpoint_commits_the_earlier_ones_that_failed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1])
    await writer.pre_commit(1)  # checkpoint 1 fails: its transaction waits for the next
    await writer.write([2])
    second = await writer.pre_commit(2)
    await writer.commit(second)
    assert _records(path) == [1, 2]
    await writer.finish()
    assert _records(path) == [1, 2]
    await writer.close()


async def test_a_fresh_writer_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"old":1}\n')
    writer = await _writer(path)
    assert path.read_bytes() == b'{"old":1}\n'
    await writer.write([{"new": 2}])
    await writer.commit(await writer.pre_commit(3))
    await writer.close()
    again = await _writer(path)
    await again.write([{"new": 3}])
    await again.close()
    assert _records(path) == [{"old": 1}, {"new": 2}]


async def test_abort_discards_a_pre_committed_transaction(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1])
    handle = await writer.pre_commit(1)
    await writer.abort(handle)
    assert not Path(handle["staged"]).exists()
    await writer.abort(handle)  # nothing left: nothing to do
    await writer.commit(handle)  # gone: committing it does nothing either
    await writer.finish()
    assert path.read_bytes() == b""
    await writer.close()


async def test_abort_refuses_a_transaction_whose_commit_began(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write(list(range(10)))
    handle = await writer.pre_commit(1)
    monkeypatch.setattr(files, "_copy_into", _tear_after(3))
    with pytest.raises(OSError):
        await writer.commit(handle)
    monkeypatch.undo()
    with pytest.raises(StateError, match="cannot abort .*its commit began"):
        await writer.abort(handle)
    await writer.commit(handle)
    assert _records(path) == list(range(10))
    await writer.close()


async def test_staged_files_no_checkpoint_holds_are_removed_never_committed(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    crashed = await _writer(path)
    await crashed.write([1])
    restored = _round_trip(await crashed.pre_commit(1))  # in the checkpoint the job restores
    await crashed.write([2])
    stale = await crashed.pre_commit(2)  # checkpoint 2 never completed
    await crashed.close()

    writer = await _writer(path)
    assert Path(stale["staged"]).exists()  # kept until the restore had its say
    await writer.commit(restored)
    await writer.write([2])  # replayed after checkpoint 1
    await writer.commit(await writer.pre_commit(2))
    assert _records(path) == [1, 2]
    assert not Path(stale["staged"]).exists()
    await writer.finish()
    await writer.close()
    assert _records(path) == [1, 2] and _hidden(tmp_path) == []


async def test_parallel_subtasks_commit_separate_files(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    first, second = [await _writer(path, i, 2) for i in range(2)]
    await first.write(["a1"])
    await second.write(["b1"])
    handles = [await first.pre_commit(1), await second.pre_commit(1)]
    await first.commit(handles[0])
    assert _records(tmp_path / "o-0.jsonl") == ["a1"]
    assert (tmp_path / "o-1.jsonl").read_bytes() == b""  # subtask 1's checkpoint is not committed yet
    await second.commit(handles[1])
    await first.write(["a2"])
    await first.finish()
    await second.finish()
    for writer in (first, second):
        await writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o-0.jsonl", "o-1.jsonl"]
    assert _records(tmp_path / "o-0.jsonl") == ["a1", "a2"]
    assert _records(tmp_path / "o-1.jsonl") == ["b1"]


async def test_a_handle_can_be_committed_at_another_parallelism(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    old = await _writer(path, 1, 2)
    await old.write(["x"])
    handle = _round_trip(await old.pre_commit(4))
    await old.close()
    rescaled = await _writer(path)  # parallelism 1 now: writes o.jsonl
    await rescaled.commit(handle)
    assert _records(tmp_path / "o-1.jsonl") == ["x"]
    assert path.read_bytes() == b""
    await rescaled.close()


async def test_an_empty_transaction_has_a_handle_that_commits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    handle = await writer.pre_commit(1)
    assert handle["staged"] == "" and handle["size"] == 0
    await writer.commit(handle)
    assert path.read_bytes() == b""
    await writer.close()


async def test_misuse_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.pre_commit(5)
    with pytest.raises(ValueError, match=r"pre_commit\(5\) after pre_commit\(5\): checkpoint ids must increase"):
        await writer.pre_commit(5)
    with pytest.raises(ValueError, match="not a handle returned by pre_commit"):
        await writer.commit({"staged": "x"})
    victim = tmp_path / "precious.txt"
    victim.write_text("keep")
    bogus = {"target": str(path), "staged": str(victim), "size": 4, "checkpoint_id": 1}
    with pytest.raises(ValueError, match="not a staged transaction of"):
        await writer.abort(bogus)
    assert victim.read_text() == "keep"
    await writer.close()


async def test_a_staged_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    writer = await _writer(path)
    await writer.write([1, 2, 3])
    handle = await writer.pre_commit(1)
    with open(handle["staged"], "ab") as staged:
        staged.write(b"4\n")
    with pytest.raises(StateError, match="has 8 bytes, its checkpoint recorded 6"):
        await writer.commit(handle)
    assert path.read_bytes() == b""
    await writer.close()


async def test_files_are_created_with_mode_0o644(tmp_path: Path) -> None:
    path = tmp_path / "d" / "o.jsonl"
    umask = os.umask(0)
    try:
        writer = await _writer(path)
        await writer.write([1])
        handle = await writer.pre_commit(1)
        staged_mode = os.stat(handle["staged"]).st_mode & 0o777
        await writer.commit(handle)
        await writer.close()
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777, staged_mode, (tmp_path / "d").stat().st_mode & 0o777) == (0o644,) * 2 + (
        0o755,
    )
