"""Two-input streams: ``connect``, the broadcast state pattern and ``interval_join``.

- ``a.connect(b).process(CoProcessFunction)``; with both sides keyed (``a.key_by(f)
  .connect(b.key_by(g))`` or ``a.connect(b).key_by(f, g)``), a KeyedCoProcessFunction
  shares keyed state and timers between the inputs.
- ``keyed.connect(rules.broadcast("rules")).process(KeyedBroadcastProcessFunction)``:
  every subtask gets every rule.
- ``a.key_by(f).interval_join(b.key_by(g)).between(lower, upper).process(fn)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from aioflow._core.errors import PipelineError
from aioflow._core.functions import (
    BroadcastProcessFunction,
    CoProcessFunction,
    KeyedBroadcastProcessFunction,
    OutputTag,
    ProcessJoinFunction,
)
from aioflow._core.operators.coprocess import BroadcastProcessOperator, CoProcessOperator
from aioflow._core.operators.join import IntervalJoinOperator
from aioflow._core.runtime.partitioning import BROADCAST

if TYPE_CHECKING:
    from aioflow._core.stream import KeyedStream, Stream

__all__ = ["BroadcastConnectedStreams", "BroadcastStream", "ConnectedStreams", "IntervalJoin", "IntervalJoined"]

#: What ``connect(...).process`` runs: a (Keyed)CoProcessFunction subclass or instance.
CoProcessFn = type[CoProcessFunction] | CoProcessFunction
#: What a broadcast-connected ``process`` runs: a (Keyed)BroadcastProcessFunction subclass or instance.
BroadcastProcessFn = type[BroadcastProcessFunction] | BroadcastProcessFunction
#: What an interval join's ``process`` runs: a ProcessJoinFunction subclass or instance, or a
#: function ``(left, right, ctx)`` used as its ``process_element``.
JoinFn = type[ProcessJoinFunction] | ProcessJoinFunction | Callable[..., Any]


def _add_two_input(
    first: Stream,
    second: Stream,
    kind: str,
    fn: Any,
    name: str | None,
    parallelism: int | None,
    make: Callable[[str], Any],
    stateful: bool,
) -> Stream:
    from aioflow._core.stream import Stream, function_name

    if second.app is not first.app:
        raise PipelineError("connect() and interval_join() take streams of the same app")
    node = first.app.graph.add_node(
        kind, name, function_name(fn), make, parallelism, [first._edge(1), second._edge(2)], stateful=stateful
    )
    return Stream(first.app, node)


class ConnectedStreams:
    """Two streams processed together by one :class:`CoProcessFunction`."""

    def __init__(self, first: Stream, second: Stream) -> None:
        from aioflow._core.stream import Stream

        if not isinstance(second, Stream):
            raise PipelineError(f"connect() takes a Stream, got {second!r}")
        self.first = first
        self.second = second

    def key_by(self, key1: Callable[[Any], Any], key2: Callable[[Any], Any]) -> ConnectedStreams:
        """Key both inputs (records with equal keys meet in the same subtask and state)."""
        return ConnectedStreams(self.first.key_by(key1), self.second.key_by(key2))

    @overload
    def process(self, fn: CoProcessFn, *, name: str | None = None, parallelism: int | None = None) -> Stream: ...
    @overload
    def process(
        self, fn: None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Callable[[CoProcessFn], Stream]: ...

    def process(
        self, fn: CoProcessFn | None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Stream | Callable[[CoProcessFn], Stream]:
        """Run a CoProcessFunction (KeyedCoProcessFunction when both inputs are keyed)."""
        from aioflow._core.stream import KeyedStream, instantiate

        if fn is None:
            return lambda f: self.process(f, name=name, parallelism=parallelism)
        first, second = self.first, self.second
        first_keyed = isinstance(first, KeyedStream)
        if first_keyed != isinstance(second, KeyedStream):
            raise PipelineError("connect(): key both streams (or neither); one keyed input is ambiguous")
        factory = instantiate(fn, CoProcessFunction, method=None)
        key1 = first.key_selector if isinstance(first, KeyedStream) else None
        key2 = second.key_selector if isinstance(second, KeyedStream) else None
        return _add_two_input(
            self.first,
            self.second,
            "co_process",
            fn,
            name,
            parallelism,
            lambda n: CoProcessOperator(n, factory(), key1, key2),
            stateful=first_keyed,
        )


class BroadcastStream:
    """A stream sent to every subtask of the operator it is connected to, carrying the
    broadcast states ``state_names``."""

    def __init__(self, stream: Stream, state_names: tuple[str, ...]) -> None:
        for state_name in state_names:
            if not isinstance(state_name, str) or not state_name:
                raise PipelineError(f"broadcast state names are non-empty strings, got {state_name!r}")
        self.stream = stream._view(BROADCAST)
        self.state_names = state_names


class BroadcastConnectedStreams:
    """A (keyed) stream connected to a :class:`BroadcastStream`."""

    def __init__(self, stream: Stream, broadcast: BroadcastStream) -> None:
        self.stream = stream
        self.broadcast = broadcast

    @overload
    def process(self, fn: BroadcastProcessFn, *, name: str | None = None, parallelism: int | None = None) -> Stream: ...
    @overload
    def process(
        self, fn: None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Callable[[BroadcastProcessFn], Stream]: ...

    def process(
        self, fn: BroadcastProcessFn | None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Stream | Callable[[BroadcastProcessFn], Stream]:
        """Run a KeyedBroadcastProcessFunction (keyed input) or BroadcastProcessFunction."""
        from aioflow._core.stream import KeyedStream, instantiate

        if fn is None:
            return lambda f: self.process(f, name=name, parallelism=parallelism)
        stream = self.stream
        keyed = isinstance(stream, KeyedStream)
        factory = instantiate(fn, KeyedBroadcastProcessFunction if keyed else BroadcastProcessFunction, method=None)
        key = stream.key_selector if isinstance(stream, KeyedStream) else None
        names = self.broadcast.state_names
        return _add_two_input(
            self.stream,
            self.broadcast.stream,
            "broadcast_process",
            fn,
            name,
            parallelism,
            lambda n: BroadcastProcessOperator(n, factory(), key, names),
            stateful=keyed,
        )


class IntervalJoin:
    """``left.interval_join(right)``: call :meth:`between` next."""

    def __init__(self, left: KeyedStream, right: KeyedStream) -> None:
        from aioflow._core.stream import KeyedStream

        if not isinstance(left, KeyedStream) or not isinstance(right, KeyedStream):
            raise PipelineError("interval_join() joins two keyed streams: use key_by(...) on both")
        self.left = left
        self.right = right

    def between(self, lower: int, upper: int) -> IntervalJoined:
        """Join ``l`` with ``r`` when ``l.ts + lower <= r.ts <= l.ts + upper`` (ms)."""
        for bound in (lower, upper):
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise PipelineError(f"interval bounds are int milliseconds, got {bound!r}")
        if lower > upper:
            raise PipelineError(f"interval lower bound {lower} is above the upper bound {upper}")
        return IntervalJoined(self.left, self.right, lower, upper)


class IntervalJoined:
    def __init__(self, left: KeyedStream, right: KeyedStream, lower: int, upper: int) -> None:
        self.left, self.right = left, right
        self.lower, self.upper = lower, upper
        self.lower_inclusive = self.upper_inclusive = True
        self._late: dict[str, str | None] = {"left": None, "right": None}

    def lower_bound_exclusive(self) -> IntervalJoined:
        """Join only when ``l.ts + lower < r.ts``; a flag, as in Flink, so calling it twice is calling it once."""
        self.lower_inclusive = False
        return self

    def upper_bound_exclusive(self) -> IntervalJoined:
        """Join only when ``r.ts < l.ts + upper``; a flag, as in Flink, so calling it twice is calling it once."""
        self.upper_inclusive = False
        return self

    def side_output_left_late_data(self, tag: OutputTag) -> IntervalJoined:
        self._late["left"] = tag.name
        return self

    def side_output_right_late_data(self, tag: OutputTag) -> IntervalJoined:
        self._late["right"] = tag.name
        return self

    @overload
    def process(self, fn: JoinFn, *, name: str | None = None, parallelism: int | None = None) -> Stream: ...
    @overload
    def process(
        self, fn: None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Callable[[JoinFn], Stream]: ...

    def process(
        self, fn: JoinFn | None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Stream | Callable[[JoinFn], Stream]:
        """Run a :class:`ProcessJoinFunction` (or a function ``(left, right, ctx)``) per pair."""
        from aioflow._core.stream import instantiate

        if fn is None:
            return lambda f: self.process(f, name=name, parallelism=parallelism)
        factory = instantiate(fn, ProcessJoinFunction)
        left_key, right_key = self.left.key_selector, self.right.key_selector
        # As Flink's IntervalJoinOperator: an exclusive bound moves 1 ms inwards, after
        # between() checked lower <= upper, so (0, 0) with one exclusive bound joins nothing.
        lower = self.lower if self.lower_inclusive else self.lower + 1
        upper = self.upper if self.upper_inclusive else self.upper - 1
        late = dict(self._late)
        return _add_two_input(
            self.left,
            self.right,
            "interval_join",
            fn,
            name,
            parallelism,
            lambda n: IntervalJoinOperator(
                n, factory(), left_key, right_key, lower, upper, late["left"], late["right"]
            ),
            stateful=True,
        )
