"""The stream API: transformations, both forms, async functions, naming, parallelism."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import pytest

import aioflow as af
from aioflow.testing import run_collect


def test_fluent_and_decorator_forms() -> None:
    app = af.App("forms")
    events = app.source(af.from_iterable([{"user": "a", "amount": 5}, {"user": "b", "amount": 50}]))
    big = events.filter(lambda e: e["amount"] > 10)

    @big.map
    def tagged(e: dict) -> tuple:
        return (e["user"], e["amount"] * 2)

    assert isinstance(tagged, af.Stream)
    assert tagged.name == "tagged"
    assert run_collect(tagged) == [("b", 100)]


def test_flat_map_and_union_keep_every_record() -> None:
    app = af.App("words")
    lines = app.source(["a b", "c", ""])
    words = lines.flat_map(str.split)
    more = app.source(["x y"]).flat_map(lambda line: (w.upper() for w in line.split()))
    assert sorted(run_collect(words.union(more))) == ["X", "Y", "a", "b", "c"]


async def test_async_user_functions() -> None:
    from aioflow.testing import run_collect_async

    app = af.App("async")

    async def double(x: int) -> int:
        return x * 2

    async def odd(x: int) -> bool:
        return x % 2 == 1

    async def twice(x: int):
        yield x
        yield x

    result = app.source(range(6)).filter(odd).map(double).flat_map(twice)
    assert await run_collect_async(result) == [2, 2, 6, 6, 10, 10]


def test_process_function_yields_outputs_and_side_outputs() -> None:
    app = af.App("split")
    small = af.OutputTag("small")

    class Split(af.ProcessFunction):
        def open(self, ctx: af.OperatorContext) -> None:
            self.seen = 0

        def process_element(self, value: int, ctx: af.OperatorContext):
            self.seen += 1
            if value < 3:
                yield small, value
            else:
                yield value * 10

    main = app.source(range(5)).process(Split)
    assert run_collect(main, main.get_side_output(small)) == ([30, 40], [0, 1, 2])


def test_process_accepts_a_plain_function_and_async_generator() -> None:
    app = af.App("fn")

    async def explode(value: int, ctx: af.OperatorContext):
        for _ in range(value):
            yield value

    assert run_collect(app.source([1, 2, 3]).process(explode)) == [1, 2, 2, 3, 3, 3]


def test_key_by_keeps_per_key_order_across_parallel_subtasks() -> None:
    app = af.App("order", parallelism=4)
    rows = [(i % 13, i) for i in range(5000)]
    keyed = app.source(rows).key_by(lambda r: r[0])

    class Tag(af.KeyedProcessFunction):
        def process_element(self, value, ctx):
            yield (ctx.key, ctx.subtask_index, value[1])

    out = run_collect(keyed.process(Tag))
    assert len(out) == 5000
    by_key: dict[int, list[int]] = {}
    subtask_of: dict[int, set[int]] = {}
    for key, subtask, i in out:
        by_key.setdefault(key, []).append(i)
        subtask_of.setdefault(key, set()).add(subtask)
    assert all(seq == sorted(seq) for seq in by_key.values())
    assert all(len(s) == 1 for s in subtask_of.values())
    assert len({next(iter(s)) for s in subtask_of.values()}) > 1  # keys really are spread


def test_keyed_state_is_per_key() -> None:
    app = af.App("count")

    class Count(af.KeyedProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count", default=0)

        def process_element(self, value, ctx):
            self.count.update(self.count.value() + 1)
            yield (ctx.key, self.count.value())

    out = run_collect(app.source(list("abab")).key_by(lambda c: c).process(Count))
    assert out == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_partitionings_deliver_every_record() -> None:
    app = af.App("parts", parallelism=3)
    source = app.source(range(300))

    class Where(af.ProcessFunction):
        def process_element(self, value, ctx):
            yield ctx.subtask_index

    rebalanced = run_collect(source.rebalance().process(Where, name="rebalanced"))
    assert len(rebalanced) == 300
    broadcast = run_collect(source.broadcast().process(Where, name="broadcast"))
    assert sorted(broadcast) == [0] * 300 + [1] * 300 + [2] * 300
    single = run_collect(source.global_().process(Where, name="global"))
    assert single == [0] * 300


def test_operator_names_are_unique_and_explicit_duplicates_fail() -> None:
    app = af.App("names")
    s = app.source([1])
    assert s.map(lambda x: x).name == "map"
    assert s.map(lambda x: x).name == "map_2"
    s.map(lambda x: x, name="mine")
    with pytest.raises(af.PipelineError, match="'mine' is already used"):
        s.map(lambda x: x, name="mine")


def test_stateful_operator_with_generated_name_warns() -> None:
    app = af.App("warn")
    keyed = app.source([1]).key_by(lambda x: x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keyed.process(lambda v, ctx: [v])
        keyed.process(lambda v, ctx: [v], name="named")
    assert len(caught) == 1
    assert "generated name" in str(caught[0].message)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.map(42), "map\\(\\) takes a function"),
        (lambda s: s.key_by("user"), "key_by\\(\\) takes a function"),
        (lambda s: s.sink(print), "takes an aioflow Sink"),
        (lambda s: s.map(lambda x: x, parallelism=0), "parallelism must be a positive int"),
        (lambda s: s.union(), "at least one other stream"),
    ],
)
def test_bad_pipeline_definitions_fail_early(call, message: str) -> None:
    app = af.App("bad")
    with pytest.raises(af.PipelineError, match=message):
        call(app.source([1]))


def test_run_inside_event_loop_points_to_run_async() -> None:
    import anyio

    app = af.App("loop")
    app.source([1]).sink(af.CollectSink())

    async def main() -> None:
        with pytest.raises(af.PipelineError, match="run_async"):
            app.run()

    anyio.run(main)


def test_empty_input_finishes() -> None:
    app = af.App("empty")
    assert run_collect(app.source([]).map(lambda x: x)) == []


def test_app_can_run_twice() -> None:
    app = af.App("twice")
    sink = af.CollectSink()
    app.source([1, 2]).sink(sink)
    app.run()
    app.run()
    assert sink.results == [1, 2, 1, 2]


def test_a_function_class_that_needs_arguments_is_refused_where_the_pipeline_names_it() -> None:
    """Each subtask instantiates a class without arguments: one whose __init__ needs some
    failed only when the job started, deep in the runtime, naming no operator."""

    class Lookup(af.AsyncFunction):
        def __init__(self, url: str) -> None:
            self.url = url

        async def __call__(self, value: Any) -> Any:
            return value

    class Threshold(af.KeyedProcessFunction):
        def __init__(self, limit: int) -> None:
            self.limit = limit

    app = af.App("classes")
    numbers = app.source([1, 2])
    with pytest.raises(af.PipelineError, match=r"map\(\): the class Lookup .* 'url': pass an instance"):
        numbers.map(Lookup)
    with pytest.raises(af.PipelineError, match=r"process\(\): the class Threshold .* 'limit': pass an instance"):
        numbers.key_by(lambda n: n).process(Threshold)
    results = af.CollectSink()
    numbers.map(Lookup("http://x")).sink(results)  # an instance is what it says to pass
    app.run()
    assert results.results == [1, 2]


def test_run_takes_the_options_of_run_async_by_name() -> None:
    run = inspect.signature(af.App.run).parameters
    run_async = inspect.signature(af.App.run_async).parameters
    assert list(run) == list(run_async) and len(run) > 5
    app = af.App("options")
    app.source([1]).sink(af.CollectSink())
    with pytest.raises(TypeError, match=r"App.run\(\) got an unexpected keyword argument 'paralelism'"):
        app.run(paralelism=2)  # type: ignore[call-arg]
    assert repr(app) == "<App 'options': 2 operators>"


def test_a_sink_class_instead_of_a_sink_is_refused_where_the_pipeline_names_it() -> None:
    """It was accepted, then failed when the job started with a bare TypeError from
    create_writer()."""
    app = af.App("sink-class")
    with pytest.raises(af.PipelineError, match=r"got the class CollectSink: pass CollectSink\(\.\.\.\)"):
        app.source([1]).sink(af.CollectSink)  # type: ignore[arg-type]
