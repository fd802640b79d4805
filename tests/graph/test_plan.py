"""Planning chains forward edges of equal parallelism and prints readably."""

from __future__ import annotations

import pytest

import aioflow as af


def test_forward_operators_chain_into_one_task() -> None:
    app = af.App("chain")
    events = app.source([1], name="events")
    events.filter(lambda x: x, name="big").map(lambda x: x, name="tagged").sink(af.CollectSink())
    plan = app.plan()
    assert [[n.name for n in t.nodes] for t in plan.tasks] == [["events", "big", "tagged", "collect"]]
    assert "task 1 [parallelism 1]: events -> big -> tagged -> collect" in str(plan)


def test_key_by_between_single_subtasks_is_chained_but_not_between_parallel_ones() -> None:
    app = af.App("keyed")
    app.source([1], name="src").key_by(lambda x: x).process(lambda v, c: [v], name="p").sink(af.CollectSink())
    assert len(app.plan().tasks) == 1

    app = af.App("keyed2", parallelism=2)
    src = app.source([1], name="src")
    src.key_by(lambda x: x).process(lambda v, c: [v], name="p").sink(af.CollectSink())
    plan = app.plan()
    assert [t.chain_description() for t in plan.tasks] == ["src", "p -> collect"]
    assert plan.tasks[0].outputs[0].partitioning == "hash"
    assert plan.to_dict()["tasks"][0]["outputs"][0] == {
        "to_task": 2,
        "partitioning": "hash",
        "side_output": None,
        "input": 1,
    }


def test_fan_out_is_chained_anddescribe_errord() -> None:
    app = af.App("fan")
    src = app.source([1], name="src")
    src.map(lambda x: x, name="a").sink(af.CollectSink(), name="out_a")
    src.map(lambda x: x, name="b").sink(af.CollectSink(), name="out_b")
    (task,) = app.plan().tasks
    assert task.chain_description() == "src -> a -> out_a; src -> b -> out_b"


def test_parallelism_change_rebalances_by_default_and_forward_rejects_it() -> None:
    app = af.App("par", parallelism=2)
    src = app.source([1], name="src")  # from_iterable runs with parallelism 1
    src.map(lambda x: x, name="m").sink(af.CollectSink())
    plan = app.plan()
    assert plan.tasks[0].parallelism == 1
    assert plan.tasks[0].outputs[0].partitioning == "rebalance"
    src.forward().map(lambda x: x, name="f")
    with pytest.raises(af.PipelineError, match="forward edge needs equal parallelism"):
        app.plan()


def test_source_parallelism_above_its_limit_fails() -> None:
    app = af.App("limit")
    app.source([1], parallelism=2)
    with pytest.raises(af.PipelineError, match="more than this source supports"):
        app.plan()


def test_empty_app_cannot_be_planned() -> None:
    with pytest.raises(af.PipelineError, match="no operators"):
        af.App("empty").plan()
