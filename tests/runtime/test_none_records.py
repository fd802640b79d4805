"""``None`` is a record like any other (a Kafka tombstone), but a map whose function ends
without ``return`` makes one by mistake, and the operator that fails on it is the next
one: the error then names the operator that emitted the ``None``."""

from __future__ import annotations

import pytest

import aioflow as af
from aioflow.testing import run_collect


def parse(record: dict[str, int]) -> None:
    record["doubled"] = record["n"] * 2  # forgot `return record`


def _failure(stream: af.Stream, **settings: int) -> af.OperatorError:
    with pytest.raises(af.OperatorError) as info:
        run_collect(stream, **settings)
    return info.value


def test_the_map_that_returned_none_is_named_not_only_the_operator_that_failed_on_it() -> None:
    app = af.App("forgot-return")
    parsed = app.source(af.from_iterable([{"n": 1}, {"n": 2}]), name="nums").map(parse, name="parse")
    error = _failure(parsed.map(lambda r: r["doubled"], name="double"))
    assert error.operator == "double" and error.record is None
    assert "'NoneType' object is not subscriptable" in str(error)
    assert error.record_origin is not None
    assert "map 'parse', whose function parse returned None (does it end without `return`?)" in str(error)
    assert str(error).endswith("record: None, emitted by " + error.record_origin)


@pytest.mark.parametrize("parallelism", [1, 3])
def test_the_none_is_traced_across_tasks_and_past_filters(parallelism: int) -> None:
    app = af.App("forgot-return-network")
    parsed = app.source(af.from_iterable([{"n": 1}, {"n": 2}]), name="nums").map(parse, name="parse")
    passed = parsed.filter(lambda r: True, name="everything").rebalance()
    error = _failure(passed.map(lambda r: r["doubled"], name="double"), parallelism=parallelism)
    assert error.operator == "double"
    assert error.record_origin is not None and error.record_origin.startswith("map 'parse', whose function parse")


def test_a_key_selector_failing_on_none_names_the_map_before_it() -> None:
    app = af.App("forgot-return-key")
    parsed = app.source(af.from_iterable([{"n": 1}]), name="nums").map(parse, name="parse")
    error = _failure(parsed.key_by(lambda r: r["n"]).map(lambda r: r, name="after"), parallelism=2)
    assert "key selector" in str(error)
    assert error.record_origin is not None and error.record_origin.startswith("map 'parse'")


def test_a_none_read_by_a_source_names_the_source() -> None:
    app = af.App("none-read")
    error = _failure(app.source(af.from_iterable([1, None]), name="nums").map(lambda r: r + 1, name="inc"))
    assert error.record_origin == "source 'nums', which read it"


def test_every_operator_the_none_may_have_come_from_is_named() -> None:
    app = af.App("none-union")
    a = app.source(af.from_iterable([{"n": 1}]), name="a").map(parse, name="parse")
    b = app.source(af.from_iterable([{"n": 1}]), name="b").flat_map(lambda r: [None], name="spread")
    error = _failure(a.union(b).map(lambda r: r["n"], name="use"))
    assert error.record_origin is not None
    assert "map 'parse'" in error.record_origin and " or flat_map 'spread'" in error.record_origin


def test_an_error_on_a_record_that_is_not_none_is_left_as_it_was() -> None:
    app = af.App("not-none")
    stream = app.source(af.from_iterable([{"n": 1}]), name="nums").map(lambda r: r, name="same")
    error = _failure(stream.map(lambda r: r["missing"], name="use"))
    assert error.record_origin is None and "emitted by" not in str(error)


def test_a_map_may_return_none_on_purpose() -> None:
    """Unlike Flink's, a map may emit ``None``: sinks take it (a Kafka tombstone), and the
    records after it see it."""
    app = af.App("none-on-purpose")
    stream = app.source(af.from_iterable([1, 2, 3]), name="nums").map(lambda n: None if n == 2 else n, name="drop")
    assert run_collect(stream) == [1, None, 3]
    assert run_collect(stream.filter(lambda n: n is not None, name="present")) == [1, 3]
