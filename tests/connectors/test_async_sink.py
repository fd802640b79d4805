"""AsyncBatchSink: batching by count, bytes and time; in-flight and buffer bounds
(backpressure); retries and failures; flushes at checkpoints; the two-phase-commit hook."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import structlog

import aioflow as af

ROOT = Path(__file__).resolve().parent.parent.parent

QUICK = af.RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0)


class Recording(af.AsyncBatchSink):
    """Keeps every batch it is sent; ``delay`` seconds per send. Attributes set here are
    shared by the subtasks' copies; ``writers`` collects the writers, for their statistics."""

    def __init__(self, delay: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay
        self.batches: list[list[Any]] = []
        self.writers: list[Any] = []

    def create_writer(self, subtask_index: int, parallelism: int) -> af.SinkWriter:
        writer = super().create_writer(subtask_index, parallelism)
        self.writers.append(writer)
        return writer

    async def send_batch(self, records: list[Any]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.batches.append(list(records))


def flat(batches: list[list[Any]]) -> list[Any]:
    return [record for batch in batches for record in batch]


# -- batching ---------------------------------------------------------------------------


def test_full_batches_by_count_and_the_rest_at_the_end() -> None:
    sink = Recording(max_batch_size=100, max_linger=None, max_in_flight=1)
    app = af.App("count", batch_size=64)
    app.source(range(1050), name="numbers").sink(sink, name="out")
    app.run()
    assert sink.batches == [list(range(start, min(start + 100, 1050))) for start in range(0, 1050, 100)]
    assert sink.writers[0].statistics() == {
        "records_buffered": 0,
        "batches_in_flight": 0,
        "batches_ready": 0,
        "records_sent": 1050,
        "batches_sent": 11,
        "retries": 0,
    }


def test_batches_by_bytes_fill_greedily_and_a_big_record_goes_alone() -> None:
    lengths = [5, 20, 30, 3, 80, 10, 10, 10, 10, 10, 47, 1]
    records = ["x" * n for n in lengths]  # JSON size: n + 2 (the quotes)
    sink = Recording(max_batch_size=1000, max_batch_bytes=50, max_linger=None, max_in_flight=1)
    app = af.App("bytes", batch_size=5)
    app.source(records, name="strings").sink(sink, name="out")
    app.run()
    assert flat(sink.batches) == records
    sizes = [[len(record) + 2 for record in batch] for batch in sink.batches]
    assert sizes == [[7, 22], [32, 5], [82], [12, 12, 12, 12], [12], [49], [3]]


def test_size_of_can_be_overridden() -> None:
    class Weighed(Recording):
        def size_of(self, record: dict) -> int:
            return record["weight"]

    sink = Weighed(max_batch_size=3, max_batch_bytes=10, max_linger=None, max_in_flight=1)
    app = af.App("weighed")
    app.source([{"weight": w} for w in [4, 4, 4, 1, 1, 1, 1, 9]], name="items").sink(sink, name="out")
    app.run()
    assert [[r["weight"] for r in batch] for batch in sink.batches] == [[4, 4], [4, 1, 1], [1, 1], [9]]


def test_a_record_the_default_size_of_cannot_encode_is_named() -> None:
    app = af.App("unsized")
    app.source([1, b"raw bytes", 3], name="items").sink(Recording(max_batch_bytes=100), name="out")
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert info.value.record == b"raw bytes"
    assert isinstance(info.value.__cause__, TypeError)


async def test_a_size_of_leaking_stop_iteration_fails_naming_the_record_instead_of_dropping_the_rest() -> None:
    """``map`` would take the StopIteration for the end of the records: the rest would be
    dropped, and a flush would wait for them for ever."""

    class Leaky(Recording):
        def size_of(self, record: int) -> int:
            if record == 3:
                next(iter([]))  # a stray next()
            return 1

    app = af.App("leaky")
    app.source([1, 2, 3, 4, 5], name="items").sink(Leaky(max_batch_bytes=100), name="out")
    with anyio.fail_after(30), pytest.raises(af.OperatorError) as info:
        await app.run_async()
    assert info.value.record == 3
    assert "size_of raised StopIteration" in str(info.value)


def test_max_linger_zero_sends_each_write_at_once() -> None:
    sink = Recording(max_batch_size=100, max_linger=0, max_in_flight=1)
    app = af.App("eager", batch_size=10)
    app.source(range(35), name="numbers").sink(sink, name="out")
    app.run()
    assert [len(batch) for batch in sink.batches] == [10, 10, 10, 5]


async def test_linger_sends_a_partial_batch_while_the_input_pauses() -> None:
    """An unbounded source gives three records, then nothing: they go out ``max_linger``
    after the first one, long before the job stops (which would flush them)."""
    started: list[float] = []
    sent: list[tuple[float, list[int]]] = []
    arrived = asyncio.Event()

    async def three_then_nothing():
        started.append(time.monotonic())
        for i in range(3):
            yield i
        await anyio.sleep_forever()

    class Timed(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            sent.append((time.monotonic(), list(records)))
            if len(flat([batch for _, batch in sent])) == 3:
                arrived.set()

    app = af.App("linger")
    app.source(af.from_iterable(three_then_nothing()), name="numbers").sink(
        Timed(max_batch_size=100, max_linger=0.2), name="out"
    )
    async with anyio.create_task_group() as group:
        group.start_soon(app.run_async)
        with anyio.fail_after(10):
            await arrived.wait()
        app.stop()
    assert flat([batch for _, batch in sent]) == [0, 1, 2]
    assert sent[0][0] - started[0] >= 0.2 - 0.005  # not before the first record lingered max_linger


# -- concurrency and backpressure -------------------------------------------------------


def test_no_more_than_max_in_flight_batches_are_sent_at_once() -> None:
    active = [0]
    peak = [0]

    class Counting(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            await asyncio.sleep(0.005)
            active[0] -= 1

    app = af.App("in_flight", batch_size=50)
    app.source(range(400), name="numbers").sink(Counting(max_batch_size=10, max_in_flight=3), name="out")
    app.run()
    assert peak[0] == 3


@pytest.mark.parametrize("chained", [True, False])
def test_a_slow_store_backpressures_the_pipeline_and_the_buffer_stays_bounded(chained: bool) -> None:
    """The buffer never holds more than max_buffered records, and the source reads only
    as fast as the store acknowledges: what it read and the store has not acknowledged is
    bounded by the buffer plus what the runtime holds in flight (a batch in the chain,
    or the channel's credits when the sink runs in a task of its own)."""
    batch_size, capacity, max_buffered = 32, 2, 50
    read = [0]
    acknowledged = [0]
    gaps: list[int] = []
    buffered: list[int] = []

    def counted(n: int) -> int:
        read[0] += 1
        return n

    class Slow(Recording):
        async def send_batch(self, records: list[int]) -> None:
            await asyncio.sleep(0.002)
            acknowledged[0] += len(records)
            gaps.append(read[0] - acknowledged[0])
            buffered.append(self.writers[0].statistics()["records_buffered"])

    sink = Slow(max_batch_size=10, max_in_flight=2, max_buffered=max_buffered)
    app = af.App("backpressure", batch_size=batch_size, channel_capacity=capacity)
    numbers = app.source(range(2000), name="numbers").map(counted, name="counted")
    (numbers if chained else numbers.rebalance()).sink(sink, name="out")
    app.run()
    assert acknowledged[0] == 2000
    assert max(buffered) <= max_buffered
    assert max(buffered) >= max_buffered - 10  # it did fill up: the pipeline waited for the store
    held_by_runtime = batch_size if chained else batch_size * (capacity + 3)
    assert max(gaps) <= max_buffered + held_by_runtime


# -- retries and failures ---------------------------------------------------------------


def test_retryable_errors_are_retried_and_logged_once_per_interval() -> None:
    calls: dict[int, int] = {}
    delivered: list[int] = []

    class Flaky(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            calls[records[0]] = calls.get(records[0], 0) + 1
            if calls[records[0]] <= 2:  # every batch fails twice
                raise ConnectionResetError("connection reset by peer")
            delivered.extend(records)

    app = af.App("flaky")
    app.source(range(100), name="numbers").sink(Flaky(max_batch_size=10, retry=QUICK), name="out")
    with structlog.testing.capture_logs() as logs:
        app.run()
    assert sorted(delivered) == list(range(100))
    assert set(calls.values()) == {3}
    retries = [entry for entry in logs if entry["event"] == "sink send failed: retrying"]
    assert len(retries) == 1  # 20 retries, one line: the next may come 10 s later
    assert retries[0]["log_level"] == "warning"
    assert retries[0]["sink"] == "Flaky[0]" and retries[0]["attempt"] == 1 and retries[0]["max_attempts"] == 3
    assert retries[0]["error"] == "ConnectionResetError: connection reset by peer"


def test_records_returned_by_send_batch_are_sent_again() -> None:
    delivered: list[int] = []
    attempts: list[list[int]] = []

    class Bulk(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> list[int]:
            attempts.append(list(records))
            refused = [r for r in records if r % 2 and len(attempts) % 2]  # odd ones, every other call
            delivered.extend(r for r in records if r not in refused)
            return refused

    app = af.App("bulk")
    app.source(range(40), name="numbers").sink(Bulk(max_batch_size=10, max_in_flight=1, retry=QUICK), name="out")
    app.run()
    assert sorted(delivered) == list(range(40))
    assert attempts[:2] == [list(range(10)), [1, 3, 5, 7, 9]]


def test_records_refused_through_every_attempt_fail_the_job() -> None:
    class Refusing(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> list[int]:
            return records[:1]

    app = af.App("refusing")
    app.source(range(10), name="numbers").sink(Refusing(retry=QUICK), name="out")
    with pytest.raises(af.OperatorError) as info:
        app.run()
    error = info.value.__cause__
    assert isinstance(error, af.SinkDeliveryError)
    assert error.attempts == 3 and error.records == [0] and error.__cause__ is None
    assert "Refusing[0]: the store still refused 1 records of a batch after 3 attempts" in str(error)


def test_a_non_retryable_error_fails_the_job_at_once_naming_sink_attempt_and_cause() -> None:
    calls = [0]

    class Rejecting(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            calls[0] += 1
            raise ValueError("400 Bad Request: no field 'user'")

    app = af.App("rejecting")
    app.source(range(10), name="numbers").sink(Rejecting(retry=QUICK), name="out")
    with structlog.testing.capture_logs() as logs, pytest.raises(af.OperatorError) as info:
        app.run()
    assert calls == [1]
    message = str(info.value)
    assert "operator 'out'" in message and "SinkDeliveryError" in message
    error = info.value.__cause__
    assert isinstance(error, af.SinkDeliveryError)
    assert str(error) == (
        "Rejecting[0]: a batch of 10 records failed with a non-retryable error (attempt 1 of 3): "
        "ValueError: 400 Bad Request: no field 'user'"
    )
    assert error.sink == "Rejecting[0]" and error.attempts == 1 and error.records == list(range(10))
    assert isinstance(error.__cause__, ValueError)
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"][:1] == ["sink delivery failed"]


def test_retries_exhausted_fail_the_job_with_the_last_error() -> None:
    calls = [0]

    class Down(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            calls[0] += 1
            raise TimeoutError("store did not answer")

    app = af.App("down")
    app.source(range(5), name="numbers").sink(Down(retry=QUICK), name="out")
    with pytest.raises(af.OperatorError) as info:
        app.run()
    error = info.value.__cause__
    assert isinstance(error, af.SinkDeliveryError)
    assert calls == [3] and error.attempts == 3
    assert (
        str(error) == "Down[0]: a batch of 5 records still failed after 3 attempts: TimeoutError: store did not answer"
    )
    assert isinstance(error.__cause__, TimeoutError)


def test_is_retryable_decides_what_is_retried() -> None:
    class Status(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"answered {status}")
            self.status = status

    answers = [503, 429, 200, 400]

    class Http(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            status = answers.pop(0)
            if status != 200:
                raise Status(status)

        def is_retryable(self, error: Exception) -> bool:
            return isinstance(error, Status) and (error.status >= 500 or error.status == 429)

    app = af.App("http")
    app.source(range(20), name="numbers").sink(
        Http(max_batch_size=10, max_in_flight=1, retry=af.RetryPolicy(max_attempts=5, initial_delay=0.001)), name="out"
    )
    with pytest.raises(af.OperatorError, match=r"non-retryable error \(attempt 1 of 5\): Status: answered 400"):
        app.run()
    assert answers == []


def test_a_send_slower_than_send_timeout_is_retried() -> None:
    calls = [0]
    delivered: list[int] = []

    class Hanging(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            calls[0] += 1
            if calls[0] == 1:
                await anyio.sleep_forever()
            delivered.extend(records)

    app = af.App("hanging")
    app.source(range(10), name="numbers").sink(Hanging(send_timeout=0.05, retry=QUICK), name="out")
    app.run()
    assert calls == [2] and delivered == list(range(10))


def test_send_batch_must_return_none_or_a_list() -> None:
    class ReturnsResponse(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> Any:
            return {"status": 200}  # e.g. `return await client.post(...)`

    app = af.App("returns")
    app.source(range(3), name="numbers").sink(ReturnsResponse(), name="out")
    with pytest.raises(
        af.OperatorError, match="send_batch must return None or a list of the records to send again, got dict"
    ):
        app.run()


def test_a_failing_job_cancels_the_sends_and_closes_the_sink() -> None:
    events: list[str] = []

    class Stuck(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            events.append("send")
            try:
                await anyio.sleep_forever()
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        async def close(self) -> None:
            events.append("close")

    def fail_late(n: int) -> int:
        if n == 500:
            raise RuntimeError("boom")
        return n

    app = af.App("stuck", batch_size=10)
    app.source(range(1000), name="numbers").map(fail_late, name="fails").sink(
        Stuck(max_batch_size=10, max_in_flight=1), name="out"
    )
    with pytest.raises(af.OperatorError, match="boom"):
        app.run()
    assert events == ["send", "cancelled", "close"]


# -- per-subtask copies -----------------------------------------------------------------


def test_each_subtask_opens_and_closes_its_own_copy() -> None:
    seen: set[tuple[int, int, int]] = set()
    closed: list[int] = []

    class Sessions(af.AsyncBatchSink):
        async def open(self) -> None:
            assert not self.resuming
            self.session = object()  # per subtask: set on this subtask's copy

        async def send_batch(self, records: list[int]) -> None:
            seen.add((self.subtask_index, self.parallelism, id(self.session)))

        async def close(self) -> None:
            closed.append(self.subtask_index)

    sink = Sessions(max_batch_size=5)
    app = af.App("sessions", parallelism=2, batch_size=5)
    app.source(range(100), name="numbers").rebalance().sink(sink, name="out")
    app.run()
    assert {(index, parallelism) for index, parallelism, _ in seen} == {(0, 2), (1, 2)}
    assert len({session for _, _, session in seen}) == 2
    assert sorted(closed) == [0, 1]
    assert not hasattr(sink, "session")  # the sink itself is only the template


# -- checkpoints: at least once -----------------------------------------------------------


class Numbers(af.Source):
    """0, 1, 2, ... ``count - 1``, a batch per millisecond; tells ``on_complete`` the
    position (records read) of every checkpoint that completes."""

    def __init__(self, count: int, on_complete: Any = None) -> None:
        self.count = count
        self.on_complete = on_complete

    def create_reader(self, subtask_index: int, parallelism: int) -> af.SourceReader:
        return _NumbersReader(self)


class _NumbersReader(af.SourceReader):
    def __init__(self, source: Numbers) -> None:
        self.source = source
        self.next = 0

    async def read(self, max_records: int, timeout: float) -> af.SourceBatch | None:
        if self.next >= self.source.count:
            return None
        await anyio.sleep(0.001)
        end = min(self.next + max_records, self.source.count)
        records, self.next = list(range(self.next, end)), end
        return af.SourceBatch(records)

    def position(self) -> int:
        return self.next

    def restore(self, position: Any) -> None:
        self.next = position

    async def notify_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        if self.source.on_complete is not None:
            self.source.on_complete(checkpoint_id, position)


def test_a_completed_checkpoint_means_every_record_before_it_was_acknowledged(tmp_path: Path) -> None:
    acknowledged: set[int] = set()
    checkpoints: list[tuple[int, int, int]] = []  # id, records read, of those not acknowledged

    class Slow(af.AsyncBatchSink):
        async def send_batch(self, records: list[int]) -> None:
            await asyncio.sleep(0.002)
            acknowledged.update(records)

    def completed(checkpoint_id: int, position: int) -> None:
        checkpoints.append((checkpoint_id, position, len(set(range(position)) - acknowledged)))

    # max_linger=None: a partial batch waits for the flush of the checkpoint
    sink = Slow(max_batch_size=7, max_linger=None, max_in_flight=2, max_buffered=100)
    app = af.App(
        "checkpointed", state_dir=str(tmp_path / "state"), checkpoint_interval=0.02, batch_size=20, state_backend="lmdb"
    )
    app.source(Numbers(3000, completed), name="numbers").sink(sink, name="out")
    app.run()
    assert acknowledged == set(range(3000))
    assert [position for _, position, _ in checkpoints if 0 < position < 3000], "no checkpoint while running"
    assert [missing for _, _, missing in checkpoints] == [0] * len(checkpoints)


# -- two-phase commit -------------------------------------------------------------------


class Transactional(af.AsyncBatchSink):
    """Stages each transaction's records under its checkpoint id; commit moves them to
    ``committed``. ``log`` is shared by the subtask copies (parallelism 1 here)."""

    exactly_once = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.log: dict[str, Any] = {"events": [], "current": [], "staged": {}, "committed": [], "in_flight": 0}

    async def send_batch(self, records: list[int]) -> None:
        self.log["in_flight"] += 1
        await asyncio.sleep(0.001)
        self.log["current"].extend(records)
        self.log["in_flight"] -= 1

    async def pre_commit(self, checkpoint_id: int) -> dict[str, int]:
        log = self.log
        log["events"].append(("pre_commit", checkpoint_id, log["in_flight"]))
        log["staged"][checkpoint_id], log["current"] = log["current"], []
        return {"checkpoint": checkpoint_id}

    async def commit(self, handle: Any) -> None:
        self.log["events"].append(("commit", handle["checkpoint"]))
        self.log["committed"].extend(self.log["staged"].pop(handle["checkpoint"], []))


def test_two_phase_commit_flushes_then_pre_commits_then_commits_in_order(tmp_path: Path) -> None:
    sink = Transactional(max_batch_size=7, max_linger=None, max_in_flight=3)
    app = af.App("two_phase", state_dir=str(tmp_path / "state"), checkpoint_interval=0.02, batch_size=20)
    app.source(Numbers(2000), name="numbers").sink(sink, name="out")
    app.run()
    events = sink.log["events"]
    pre_commits = [event[1] for event in events if event[0] == "pre_commit"]
    commits = [event[1] for event in events if event[0] == "commit"]
    assert len(pre_commits) > 2
    assert all(event[2] == 0 for event in events if event[0] == "pre_commit")  # no send under way
    assert pre_commits == sorted(pre_commits) and pre_commits[-1] == 2**62  # the end of input's, last
    assert commits == sorted(commits) and commits[-1] == 2**62
    for checkpoint_id in commits:  # each commit after its pre-commit
        assert events.index(("commit", checkpoint_id)) > [e[:2] for e in events].index(("pre_commit", checkpoint_id))
    assert sorted(sink.log["committed"]) == list(range(2000))  # each once
    assert sink.log["staged"] == {} and sink.log["current"] == []


def test_two_phase_commit_without_checkpoints_commits_at_the_end() -> None:
    sink = Transactional(max_batch_size=7)
    app = af.App("two_phase_end")
    app.source(range(50), name="numbers").sink(sink, name="out")
    app.run()
    assert sink.log["events"] == [("pre_commit", 2**62, 0), ("commit", 2**62)]
    assert sorted(sink.log["committed"]) == list(range(50))


# -- validation -------------------------------------------------------------------------


class _Valid(af.AsyncBatchSink):
    async def send_batch(self, records: list[Any]) -> None:
        pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 0}, "_Valid max_batch_size must be an int >= 1, got 0"),
        ({"max_batch_bytes": 0}, "_Valid max_batch_bytes must be an int >= 1 or None, got 0"),
        ({"max_linger": -1}, "_Valid max_linger must be a number >= 0 or None, got -1"),
        ({"max_in_flight": 1.5}, "_Valid max_in_flight must be an int >= 1, got 1.5"),
        ({"max_batch_size": 100, "max_buffered": 50}, "max_buffered (50) must be at least max_batch_size (100)"),
        ({"send_timeout": 0}, "_Valid send_timeout must be a number > 0 or None, got 0"),
        ({"retry": 3}, "_Valid retry takes an af.RetryPolicy(...), got 3"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(af.PipelineError, match=re.escape(message)):
        _Valid(**options)


def test_bad_retry_policies_are_refused() -> None:
    with pytest.raises(af.PipelineError, match="RetryPolicy max_attempts must be an int >= 1, got 0"):
        af.RetryPolicy(max_attempts=0)
    with pytest.raises(af.PipelineError, match="RetryPolicy jitter must be between 0 and 1"):
        af.RetryPolicy(jitter=2)


def test_hooks_are_checked_when_the_class_is_defined() -> None:
    with pytest.raises(af.PipelineError, match=r"Sync.send_batch must be an `async def` method"):

        class Sync(af.AsyncBatchSink):
            def send_batch(self, records):
                pass

    with pytest.raises(af.PipelineError, match=r"Half has exactly_once = True and must implement commit\(\)"):

        class Half(af.AsyncBatchSink):
            exactly_once = True

            async def send_batch(self, records):
                pass

            async def pre_commit(self, checkpoint_id):
                return {}

    with pytest.raises(af.PipelineError, match=r"AsyncBatchSink must implement `async def send_batch"):
        af.AsyncBatchSink()


def test_retry_delays_grow_exponentially_up_to_max_delay() -> None:
    policy = af.RetryPolicy(initial_delay=0.1, multiplier=2, max_delay=1.0, jitter=0)
    assert [policy.delay(attempt) for attempt in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    jittered = af.RetryPolicy(initial_delay=1.0, jitter=0.25)
    assert all(0.75 <= jittered.delay(1) <= 1.0 for _ in range(100))


# -- the documentation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "index", range(len(re.findall(r"```python\n", (ROOT / "docs" / "async-sinks.md").read_text())))
)
def test_doc_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "async-sinks.md").read_text(), re.S)[index]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/async-sinks.md", "exec"), {"__name__": "__main__"})  # each asserts its own output


def test_json_sizes_match_orjson() -> None:
    assert _Valid().size_of({"a": 1}) == len(orjson.dumps({"a": 1}))
