"""A failing user function fails the job with an error naming operator and record; every
error aioflow raises on purpose sits in the tree drawn in ``aioflow._core.errors``."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow as af
import aioflow._core
from aioflow._core import errors
from aioflow._core.errors import OperatorError
from aioflow.testing import run_collect

ROOT = Path(__file__).resolve().parent.parent


def _boom(x: int) -> int:
    if x == 42:
        raise ValueError("bad value")
    return x


@pytest.mark.parametrize("parallelism", [1, 3])
def test_user_exception_names_operator_and_record(parallelism: int) -> None:
    app = af.App("fails", parallelism=parallelism)
    app.source(range(100)).rebalance().map(_boom, name="risky").sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    error = info.value
    assert error.operator == "risky"
    assert error.record == 42
    assert "operator 'risky'" in str(error) and "record: 42" in str(error)
    assert isinstance(error.__cause__, ValueError)
    rendered = "".join(traceback.format_exception(error))
    assert "_boom" in rendered and 'raise ValueError("bad value")' in rendered


def test_long_records_are_truncated_in_the_message() -> None:
    app = af.App("long")
    app.source([{"blob": "x" * 10_000}]).map(lambda r: r["missing"]).sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as info:
        app.run()
    assert len(str(info.value)) < 400
    assert "KeyError" in str(info.value)


def test_failure_cancels_other_tasks_and_closes_operators() -> None:
    closed: list[str] = []

    class Tracks(af.ProcessFunction):
        def process_element(self, value, ctx):
            yield value

        def close(self) -> None:
            closed.append("tracks")

    async def endless():
        i = 0
        while True:
            yield i
            i += 1

    app = af.App("cancel")
    app.source(af.from_iterable(endless())).process(Tracks).sink(af.CollectSink())
    app.source([1, 2, 42]).rebalance().map(_boom, name="fails").sink(af.CollectSink())

    async def main() -> None:
        with anyio.fail_after(30):
            await app.run_async()

    with pytest.raises(af.OperatorError, match="fails"):
        anyio.run(main)
    assert closed == ["tracks"]


def test_error_in_open_names_the_operator() -> None:
    class BadOpen(af.ProcessFunction):
        def open(self, ctx):
            raise RuntimeError("cannot connect")

    app = af.App("open")
    app.source([1]).process(BadOpen).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="operator 'BadOpen'.*cannot connect"):
        app.run()


def test_keyed_state_on_unkeyed_stream_is_a_clear_error() -> None:
    class Stateful(af.ProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count")

        def process_element(self, value, ctx):
            yield value

    app = af.App("unkeyed")
    app.source([1]).process(Stateful).sink(af.CollectSink())
    with pytest.raises(af.OperatorError, match="needs a keyed stream"):
        app.run()


def _boom_at_50(x):
    if x == 50:
        raise ValueError("bad")
    return x


def test_downstream_failure_under_backpressure_fails_job():
    app = af.App("err", batch_size=1, channel_capacity=1, watermark_interval=0)
    out = app.source(range(10_000)).map(_boom_at_50, name="boom", parallelism=2)
    with pytest.raises(OperatorError):
        run_collect(out, timeout=5)


def test_failure_in_async_source_fails_job():
    async def gen():
        yield 1
        raise RuntimeError("source broke")

    app = af.App("err2", batch_size=1, watermark_interval=0)
    out = app.source(af.from_iterable(gen())).map(lambda x: x, name="m", parallelism=2)
    with pytest.raises(RuntimeError, match="source broke"):
        run_collect(out, timeout=5)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_an_unhashable_key_names_the_key_selector(parallelism: int) -> None:
    def tags_of(e):
        return e["tags"]

    app = af.App("unhashable", parallelism=parallelism)
    stream = app.source([{"tags": ["a", "b"]}]).key_by(tags_of).reduce(lambda a, b: b, name="keep_last")
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream)
    message = str(info.value)
    assert "key selector" in message and "tags_of" in message and "unhashable" in message
    assert "keep_last raised" not in message
    assert info.value.record == {"tags": ["a", "b"]}


@pytest.mark.parametrize("returned", [("a", 1), "ab", {"a": 1}, 5])
def test_a_process_function_that_returns_instead_of_yielding_fails(returned) -> None:
    class Returns(af.ProcessFunction):
        def process_element(self, value, ctx):
            return returned

    app = af.App("returns")
    stream = app.source([1]).process(Returns)
    with pytest.raises(af.OperatorError, match="yield") as info:
        run_collect(stream)
    assert info.value.operator == "Returns"


def test_an_on_timer_that_returns_a_tuple_fails() -> None:
    class Timer(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timer_service.register_event_time_timer(10)
            yield from ()

        def on_timer(self, timestamp, ctx):
            return (ctx.key, timestamp)

    app = af.App("timer_returns")
    stream = (
        app.source([1], timestamps=lambda e: 1, watermarks=af.MonotonousTimestamps()).key_by(lambda e: e).process(Timer)
    )
    with pytest.raises(af.OperatorError, match="yield"):
        run_collect(stream)


def test_returning_a_list_of_outputs_still_works() -> None:
    class Lists(af.ProcessFunction):
        def process_element(self, value, ctx):
            return [value, value]

    app = af.App("lists")
    assert run_collect(app.source([1, 2]).process(Lists)) == [1, 1, 2, 2]


def test_a_window_function_that_returns_a_tuple_fails() -> None:
    class Window(af.ProcessWindowFunction):
        def process(self, key, context, elements):
            return (key, len(elements))

    app = af.App("window_returns")
    stream = (
        app.source([1, 2], timestamps=lambda e: e, watermarks=af.MonotonousTimestamps())
        .key_by(lambda e: 0)
        .window(af.TumblingEventTimeWindows(10))
        .process(Window)
    )
    with pytest.raises(af.OperatorError, match="yield"):
        run_collect(stream)


# -- the exception tree ------------------------------------------------------------------------------------------

#: Exceptions that never leave aioflow (each says so where it is defined): not in the tree.
INTERNAL = {"GaveUp", "PredicateFailed", "NotAwaitable", "Damaged", "EnvironmentOptionError", "_NotYet"}


def _exceptions_defined_in_core() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(aioflow._core.__path__, "aioflow._core."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ in (info.name, "aioflow")
            ):
                found[name] = value
    return found


def test_every_exception_aioflow_defines_is_in_the_tree_or_never_escapes() -> None:
    defined = _exceptions_defined_in_core()
    assert {"SinkClosed", "StrayCancellation", "PipelineError", "GaveUp"} <= set(defined)  # the walk saw them
    outside = sorted(name for name, cls in defined.items() if not issubclass(cls, af.AioflowError))
    assert outside == sorted(INTERNAL)
    public = {
        name
        for name in af.__all__
        if isinstance(getattr(af, name), type) and issubclass(getattr(af, name), BaseException)
    }
    assert public == {name for name, cls in defined.items() if issubclass(cls, af.AioflowError)} - {
        "StoredValueDamaged"
    }


def _drawn_tree(text: str) -> dict[str, str | None]:
    """``{error: parent}`` as a tree drawn with ``├──`` and ``└──`` shows it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "AioflowError")
    base = lines[start].index("AioflowError")
    tree: dict[str, str | None] = {"AioflowError": None}
    parents = ["AioflowError"]
    for line in lines[start + 1 :]:
        match = re.match(r"^([ │]*)[├└]── (\w+)", line)
        if match is None:
            if not line.strip() or not re.match(r"^[ │]+\S", line):
                break  # the tree ended
            continue  # a description continued
        depth = (len(match.group(1)) - base) // 4 + 1
        del parents[depth:]
        tree[match.group(2)] = parents[depth - 1]
        parents.append(match.group(2))
    return tree


@pytest.mark.parametrize("where", ["aioflow/_core/errors.py", "docs/api.md"])
def test_the_drawn_tree_is_the_real_one(where: str) -> None:
    text = (ROOT / where).read_text()
    if where.endswith(".md"):
        text = text[text.index("## Errors") :]
    tree = _drawn_tree(text)
    public = {
        name: getattr(af, name)
        for name in af.__all__
        if isinstance(getattr(af, name), type) and issubclass(getattr(af, name), af.AioflowError)
    }
    assert set(tree) == set(public)
    for name, parent in tree.items():
        if parent is not None:
            assert getattr(af, parent) in public[name].__bases__, f"{name} is drawn under {parent}"


def test_sink_closed_and_stray_cancellation_are_aioflow_errors() -> None:
    assert issubclass(af.SinkClosed, af.AioflowError) and issubclass(af.StrayCancellation, af.AioflowError)
    assert errors.SinkClosed is af.SinkClosed


@pytest.mark.parametrize(
    ("misuse", "said"),
    [
        (lambda: af.OutputTag(""), "OutputTag needs a non-empty string name"),
        (lambda: af.from_iterable(42), "from_iterable() takes an iterable"),
        (lambda: af.CountTrigger(0), "CountTrigger needs a positive count"),
        (lambda: af.ContinuousEventTimeTrigger(0), "trigger interval is a positive number"),
        (lambda: af.CountEvictor(0), "CountEvictor needs a positive count"),
        (lambda: af.TimeEvictor(-1), "TimeEvictor needs a positive size"),
        (lambda: af.TumblingEventTimeWindows(0), "size is a positive number of milliseconds"),
        (lambda: af.TumblingEventTimeWindows(10, offset=10), "offset must be smaller"),
        (lambda: af.EventTimeSessionWindows(10, gap_of=lambda e: 1), "either a fixed gap or gap_of"),
        (lambda: af.BoundedOutOfOrderness(-1), "max_out_of_orderness"),
        (lambda: af.read_jsonl([]), "no files given"),
        (lambda: af.FileSink("out.jsonl", exactly_once="yes"), "exactly_once must be True or False"),
        (lambda: af.configure_logging("loud"), "unknown log level 'loud'"),
        (lambda: af.WatermarkOutput().emit_watermark(1.5), "watermarks are int milliseconds"),
        (lambda: af.AggregateFunction().add(1, 2), "AggregateFunction must implement add"),
        (lambda: af.kafka.KafkaSource("t", bootstrap_servers="", group_id="g"), "needs bootstrap_servers"),
    ],
)
def test_misusing_the_api_is_a_pipeline_error(misuse: Callable[[], Any], said: str) -> None:
    with pytest.raises(af.PipelineError) as caught:
        misuse()
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("keyword", "said"),
    [
        (
            "checkpoint_intervall",
            "App() got an unexpected keyword argument 'checkpoint_intervall'; did you mean 'checkpoint_interval'?",
        ),
        ("paralelism", "did you mean 'parallelism'?"),
        ("statedir", "did you mean 'state_dir'?"),
        ("zzzzzz", "App() got an unexpected keyword argument 'zzzzzz'"),
    ],
)
def test_a_misspelt_app_keyword_names_the_likely_intended_one(keyword: str, said: str) -> None:
    with pytest.raises(af.PipelineError) as caught:
        af.App("typo", **{keyword: 2})
    assert said in str(caught.value) and str(caught.value).startswith("App() got an unexpected keyword")
    if keyword == "zzzzzz":
        assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize(
    ("misspelt", "said"),
    [
        (
            lambda: af.read_jsonl("in.jsonl", on_eror="skip"),
            "read_jsonl() got an unexpected keyword argument 'on_eror'; did you mean 'on_error'?",
        ),
        (
            lambda: af.read_text("in.txt", on_eror="skip"),
            "read_text() got an unexpected keyword argument 'on_eror'; did you mean 'on_error'?",
        ),
        (
            lambda: af.FileSink("out.jsonl", exactly_one=True),
            "FileSink() got an unexpected keyword argument 'exactly_one'; did you mean 'exactly_once'?",
        ),
        (lambda: af.kafka.KafkaSource("t", boostrap_servers="x"), "did you mean 'bootstrap_servers'?"),
        (lambda: af.kafka.KafkaSink("t", bootstrap_servers="x", delivry="exactly_once"), "did you mean 'delivery'?"),
        (lambda: af.BoundedOutOfOrderness(10, idle_timout=5), "did you mean 'idle_timeout'?"),
    ],
    ids=["read_jsonl", "read_text", "FileSink", "KafkaSource", "KafkaSink", "BoundedOutOfOrderness"],
)
def test_a_misspelt_connector_or_watermark_keyword_names_the_likely_intended_one(
    misspelt: Callable[[], Any], said: str
) -> None:
    """A fresh-clone trial found only App() helped; the connectors gave a plain TypeError."""
    with pytest.raises(af.PipelineError) as caught:
        misspelt()
    assert said in str(caught.value)


def test_a_sync_send_batch_is_a_pipeline_error_when_the_class_is_defined() -> None:
    with pytest.raises(af.PipelineError, match=r"Sync.send_batch must be an `async def` method"):

        class Sync(af.AsyncBatchSink):
            def send_batch(self, records: list[Any]) -> None:
                pass


def test_app_run_inside_an_event_loop_is_a_pipeline_error() -> None:
    app = af.App("inside")
    app.source([1]).sink(af.CollectSink())

    async def main() -> None:
        with pytest.raises(af.PipelineError, match="use `await app.run_async\\(\\)`"):
            app.run()

    anyio.run(main)


@pytest.mark.parametrize(
    ("function", "said"),
    [
        ("declares_state", "needs a keyed stream; use key_by(...) first"),
        ("registers_a_timer", "timers need a keyed stream"),
    ],
)
def test_state_and_timers_on_an_unkeyed_stream_fail_with_a_pipeline_error_as_cause(function: str, said: str) -> None:
    class Misuses(af.ProcessFunction):
        def open(self, ctx: Any) -> None:
            if function == "declares_state":
                ctx.value_state("count")

        def process_element(self, value: Any, ctx: Any) -> Any:
            if function == "registers_a_timer":
                ctx.timer_service.register_event_time_timer(10)
            yield value

    app = af.App("unkeyed")
    app.source([1]).process(Misuses).sink(af.CollectSink())
    with pytest.raises(af.OperatorError) as caught:
        app.run()
    assert isinstance(caught.value.__cause__, af.PipelineError) and said in str(caught.value.__cause__)


#: The ``raise TypeError/ValueError/...`` left in aioflow._core, by module and function: none
#: is a check of how the API is used (those raise PipelineError). Internal invariants, checks of
#: restored state that callers turn into a StateError, a wrong type returned by user code (the
#: cause of the OperatorError that names the operator), and orjson's ``default`` protocol.
BUILTIN_RAISES = {
    ("connectors/files.py", "_check_handle"),  # a restored handle: the sink's own protocol
    ("connectors/files.py", "_ExactlyOnceFileWriter.pre_commit"),  # checkpoint ids come from the runtime
    ("connectors/kafka.py", "_partition"),  # a restored position: StateError in StreamTask.restore
    ("connectors/kafka.py", "KafkaReader.restore"),  # the same
    ("operators/coprocess.py", "BroadcastProcessOperator._pair"),  # caught where it is raised
    ("runtime/channel.py", "Channel.__init__"),  # App checked channel_capacity already
    ("runtime/operator.py", "check_outputs"),  # user code returned instead of yielding
    ("runtime/task.py", "_Task._loop"),  # an abstract method of the runtime's own classes
    ("runtime/task.py", "StreamTask._loop"),  # a message no channel sends
    ("state/lmdb.py", "_PageFile.page"),  # the structure check, caught as CorruptStateError
    ("state/lmdb.py", "_PageFile.roots"),
    ("state/lmdb.py", "_PageFile.value"),
    ("state/lmdb.py", "_PageFile.check_overflows"),
    ("state/lmdb.py", "_check_structure.check"),
    ("state/serializers.py", "_state_key"),  # orjson's default= must raise TypeError
    ("state/ttl.py", "TtlCleanup.run"),  # the runtime's budget
    ("worker/http.py", "HttpServer.serve"),  # the CLI opens before serving
    ("worker/metrics.py", "MetricsRegistry.register"),  # the CLI registers each collector once
}
_BUILTINS = {"TypeError", "ValueError", "KeyError", "RuntimeError", "LookupError", "IndexError", "NotImplementedError"}


def _builtin_raises() -> set[tuple[str, str]]:
    core = ROOT / "aioflow" / "_core"
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST, scope: list[str], where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name], where)
                continue
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
                called = child.exc.func
                if isinstance(called, ast.Name) and called.id in _BUILTINS:
                    found.add((where, ".".join(scope)))
            visit(child, scope, where)

    for path in core.rglob("*.py"):
        visit(ast.parse(path.read_text()), [], str(path.relative_to(core)))
    return found


def test_no_check_of_how_the_api_is_used_raises_a_bare_builtin_error() -> None:
    """A new ``raise ValueError(...)`` that checks a user's call should be a PipelineError
    (or another error of the tree); one that cannot reach users goes in BUILTIN_RAISES."""
    found = _builtin_raises()
    assert ("runtime/channel.py", "Channel.__init__") in found  # the scan sees them
    assert found == BUILTIN_RAISES
