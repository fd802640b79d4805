"""``af.AsyncFunction``: a client made in ``open`` (in the job's event loop) and closed in
``close`` when the subtask ends, on a normal end, a failure and before a restart. Real
aiohttp sessions against an aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

import aioflow as af
from aioflow.testing import run_collect

FAILED = af.OutputTag("failed")


class Service:
    """``GET /double/<i>``: ``{"double": 2 * i}``, from an aiohttp server on a loopback
    port, in a thread with an event loop of its own (so that it outlives each run's loop)."""

    def __init__(self) -> None:
        self.requests = 0
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _double(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"double": 2 * int(request.match_info["i"])})

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/double/{i}", self._double)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def __enter__(self) -> Service:
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with Service() as server:
        yield server


class Doubler(af.AsyncFunction):
    """Doubles a number through the service; ``events`` (shared by the subtasks' copies)
    records each open and close."""

    def __init__(self, url: str, events: list[tuple[str, int]] | None = None) -> None:
        self.url = url
        self.events: list[tuple[str, int]] = [] if events is None else events

    async def open(self, ctx: af.FunctionContext) -> None:
        self.subtask = ctx.subtask_index
        self.session = aiohttp.ClientSession(self.url, connector=aiohttp.TCPConnector(limit=ctx.concurrency))
        self.events.append(("open", self.subtask))

    async def __call__(self, i: int) -> int:
        async with self.session.get(f"/double/{i}", raise_for_status=True) as response:
            return int((await response.json())["double"])

    async def close(self) -> None:
        await self.session.close()
        self.events.append(("close", self.subtask))


class DoublerProcess(af.ProcessFunction):
    """The same as a process function: its ``open`` and ``close`` may be ``async def``."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, ctx: af.OperatorContext) -> None:
        self.session = aiohttp.ClientSession(self.url)

    async def process_element(self, i: int, ctx: af.OperatorContext) -> list[int]:
        async with self.session.get(f"/double/{i}", raise_for_status=True) as response:
            return [int((await response.json())["double"])]

    async def close(self) -> None:
        await self.session.close()


class UnclosedSessions:
    """What aiohttp says of a session nobody closed: a ``ResourceWarning`` and an
    error-level ``asyncio`` log line (``Unclosed client session``), once it is collected."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.warned: list[str] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as caught, self.caplog.at_level(logging.WARNING):
            warnings.simplefilter("always", ResourceWarning)
            yield
            gc.collect()  # an unclosed session says so when it is collected
        self.warned += [str(w.message) for w in caught if "Unclosed" in str(w.message)]

    def found(self) -> list[str]:
        logged = [r.getMessage() for r in self.caplog.records if "Unclosed" in r.getMessage()]
        return self.warned + logged


@pytest.fixture
def unclosed(caplog: pytest.LogCaptureFixture) -> UnclosedSessions:
    return UnclosedSessions(caplog)


def test_the_watch_sees_a_session_nobody_closed(service: Service, unclosed: UnclosedSessions) -> None:
    """What the tests below assert is missing is caught when it is there."""

    async def leak() -> None:
        aiohttp.ClientSession(service.url)

    with unclosed.watching():
        asyncio.run(leak())
    assert [found.split()[:3] for found in unclosed.found()] == [["Unclosed", "client", "session"]] * 2


@pytest.mark.parametrize("method", ["map_async", "map", "process"])
def test_two_runs_in_one_process_both_call_the_service_and_leave_no_session_open(
    service: Service, unclosed: UnclosedSessions, method: str
) -> None:
    app = af.App("two-runs")
    numbers = app.source(range(200), name="numbers")
    url = service.url
    if method == "map_async":
        doubled = numbers.map_async(Doubler(url), capacity=20, on_error=FAILED, name="double")
    elif method == "map":
        doubled = numbers.map(Doubler(url), max_concurrency=20, name="double")
    else:
        doubled = numbers.process(DoublerProcess(url), max_concurrency=20, name="double")
    before = service.requests
    with unclosed.watching():
        for _ in range(2):  # each run_collect has an event loop of its own
            if method == "map_async":
                out, failed = run_collect(doubled, doubled.get_side_output(FAILED), parallelism=2)
                assert failed == []
            else:
                out = run_collect(doubled, parallelism=2)
            assert out == [2 * i for i in range(200)]
    assert service.requests - before == 400
    assert unclosed.found() == []


def test_open_runs_before_the_first_call_and_close_at_the_end_of_each_subtask(service: Service) -> None:
    events: list[tuple[str, int]] = []
    seen: list[tuple[str, int, int, int]] = []

    class Seen(Doubler):
        async def open(self, ctx: af.FunctionContext) -> None:
            seen.append((ctx.operator_name, ctx.subtask_index, ctx.parallelism, ctx.concurrency))
            await super().open(ctx)

        async def __call__(self, i: int) -> int:
            assert ("open", self.subtask) in self.events and ("close", self.subtask) not in self.events
            return await super().__call__(i)

    app = af.App("lifecycle")
    doubled = app.source(range(100), name="numbers").map_async(
        Seen(service.url, events),
        capacity=7,
        name="double",
    )
    assert sorted(run_collect(doubled, parallelism=3)) == [2 * i for i in range(100)]
    assert sorted(seen) == [("double", i, 3, 7) for i in range(3)]
    assert sorted(events) == [("close", i) for i in range(3)] + [("open", i) for i in range(3)]


def test_a_class_is_instantiated_per_subtask_and_may_be_used_with_filter_and_flat_map() -> None:
    made: list[int] = []

    class Even(af.AsyncFunction):
        async def open(self, ctx: af.FunctionContext) -> None:
            made.append(id(self))
            self.modulus = 2

        async def __call__(self, i: int) -> bool:
            return i % self.modulus == 0

    class Twice(af.AsyncFunction):
        async def __call__(self, i: int) -> list[int]:
            return [i, i]

    app = af.App("classes")
    out = app.source(range(10), name="numbers").filter(Even).flat_map(Twice)
    assert sorted(run_collect(out, parallelism=2)) == sorted([i for i in range(0, 10, 2) for _ in range(2)])
    assert len(set(made)) == len(made) == 2


def test_close_runs_when_the_job_fails_and_the_jobs_error_is_the_one_raised(
    service: Service, unclosed: UnclosedSessions
) -> None:
    events: list[tuple[str, int]] = []

    def fail_at_300(i: int) -> int:
        if i == 300:
            raise ValueError("bad record")
        return i

    app = af.App("fails")
    doubled = app.source(range(500), name="numbers").map_async(
        Doubler(service.url, events),
        name="double",
    )
    with unclosed.watching(), pytest.raises(af.OperatorError, match="operator 'check'.*bad record"):
        run_collect(doubled.rebalance().map(fail_at_300, name="check"), parallelism=2)
    assert sorted(events) == [("close", 0), ("close", 1), ("open", 0), ("open", 1)]
    assert unclosed.found() == []


def test_a_restart_closes_the_failed_attempts_functions_and_opens_new_ones(service: Service, tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    failed: list[int] = []

    def fail_once(i: int) -> int:
        if i == 1000 and not failed:
            failed.append(i)
            raise ConnectionError("the feature store went away")
        return i

    app = af.App(
        "restarts",
        state_dir=str(tmp_path / "state"),
        checkpoint_interval=0.05,
        restart_strategy=af.FixedDelayRestart(attempts=1, delay=0),
    )
    sink = af.CollectSink()
    app.source(range(2000), name="numbers").map_async(
        Doubler(service.url, events),
        name="double",
    ).map(fail_once, name="flaky").sink(sink)
    app.run()
    assert failed == [1000]
    assert events == [("open", 0), ("close", 0), ("open", 0), ("close", 0)]
    assert set(sink.results) == {2 * i for i in range(2000)}


@pytest.mark.parametrize("savepoint", [False, True], ids=["drain", "savepoint"])
def test_a_stop_closes_the_functions(
    service: Service, unclosed: UnclosedSessions, tmp_path: Path, savepoint: bool
) -> None:
    """Stopped, the job drains (no checkpoints) or stops at a savepoint's barrier (the
    source task is cancelled once it completed): either way each subtask closes."""
    events: list[tuple[str, int]] = []
    settings: dict[str, Any] = {"state_dir": str(tmp_path / "state"), "checkpoint_interval": 0.05} if savepoint else {}
    app = af.App("stops", **settings)

    def stop_at_100(i: int) -> int:
        if i == 100:
            app.stop()
        return i

    sink = af.CollectSink()
    app.source(af.from_iterable(itertools.count()), name="numbers").map_async(
        Doubler(service.url, events),
        name="double",
    ).map(stop_at_100, name="stopper").sink(sink)
    with unclosed.watching():
        app.run()
    assert bool(list(tmp_path.rglob("savepoint-*"))) == savepoint  # the path this case is about
    assert 200 in sink.results
    assert events == [("open", 0), ("close", 0)]
    assert unclosed.found() == []


def test_an_error_in_open_names_the_operator_and_close_is_not_called() -> None:
    closed: list[bool] = []

    class Unreachable(af.AsyncFunction):
        async def open(self, ctx: af.FunctionContext) -> None:
            raise ConnectionError("service down")

        async def __call__(self, i: int) -> int:
            return i

        async def close(self) -> None:
            closed.append(True)

    app = af.App("open-fails")
    stream = app.source(range(5), name="numbers").map_async(Unreachable(), name="lookup")
    with pytest.raises(
        af.OperatorError, match=r"operator 'lookup': .*Unreachable.open raised ConnectionError: service down"
    ) as info:
        run_collect(stream)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert closed == []


class BadClose(af.AsyncFunction):
    async def __call__(self, i: int) -> int:
        if i == 3:
            raise ValueError("bad record")
        return i

    async def close(self) -> None:
        raise RuntimeError("close failed")


def test_an_error_in_close_after_a_clean_run_fails_the_job_naming_the_operator() -> None:
    app = af.App("close-fails")
    stream = app.source([1, 2], name="numbers").map(BadClose, name="lookup")
    with pytest.raises(
        af.OperatorError, match=r"operator 'lookup': .*BadClose.close raised RuntimeError: close failed"
    ):
        run_collect(stream)


def test_an_error_in_close_after_a_failure_does_not_hide_the_failure() -> None:
    app = af.App("close-fails-too")
    stream = app.source([1, 2, 3], name="numbers").map(BadClose, name="lookup")
    with (
        capture_logs() as logs,
        pytest.raises(af.OperatorError, match=r"operator 'lookup': BadClose raised ValueError: bad record"),
    ):
        run_collect(stream)
    [logged] = [entry for entry in logs if entry["event"] == "operator close failed"]
    assert logged["operator"] == "lookup" and logged["log_level"] == "error"


def test_a_function_class_must_implement_call_and_make_its_methods_async() -> None:
    class NoCall(af.AsyncFunction):
        async def open(self, ctx: af.FunctionContext) -> None:
            pass

    app = af.App("checks")
    with pytest.raises(af.PipelineError, match=r"map_async\(\): NoCall must implement `async def __call__"):
        app.source([1]).map_async(NoCall)
    with pytest.raises(af.PipelineError, match=r"Sync.open must be an `async def` method"):

        class Sync(af.AsyncFunction):
            def open(self, ctx: Any) -> None:  # type: ignore[override]
                pass


def test_a_close_that_never_returns_fails_the_operator_instead_of_hanging_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task closes operators shielded from cancellation: a close awaiting forever kept
    the job, and run_collect's own timeout, waiting for good."""
    from aioflow._core.operators import function

    monkeypatch.setattr(function, "CLOSE_TIMEOUT", 0.2)
    closing = []

    class HangsInClose(af.AsyncFunction):
        async def __call__(self, value: int) -> int:
            return value

        async def close(self) -> None:
            closing.append(True)
            await asyncio.Event().wait()  # never set

    app = af.App("hangs")
    stream = app.source([1, 2, 3]).map(HangsInClose, name="hangs")
    with pytest.raises(af.OperatorError, match=r"operator 'hangs'.*HangsInClose.close\(\) did not return within 0.2 s"):
        run_collect(stream, timeout=30)
    assert closing == [True]
