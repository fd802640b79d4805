"""``keyed.window(assigner)``: the windowed-stream builder.

Configure with ``trigger``, ``evictor``, ``allowed_lateness`` and
``side_output_late_data``, then finish with ``aggregate``, ``reduce`` or ``process``,
which add the window operator and return its output stream.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import PipelineError
from aioflow._core.functions import AggregateFunction, OutputTag, ProcessWindowFunction
from aioflow._core.operators.window import AGGREGATE, PROCESS, REDUCE, WindowOperator
from aioflow._core.state.serializers import Serializer, serializer_named
from aioflow._core.stream import instantiate
from aioflow._core.windows.assigners import WindowAssigner
from aioflow._core.windows.evictors import Evictor
from aioflow._core.windows.triggers import Trigger

if TYPE_CHECKING:
    from aioflow._core.stream import KeyedStream, Stream

__all__ = ["WindowedStream"]


class WindowedStream:
    """A keyed stream cut into windows; call :meth:`aggregate`, :meth:`reduce` or :meth:`process`."""

    def __init__(
        self, keyed: KeyedStream, assigner: WindowAssigner, serializer: str | Serializer | None = None
    ) -> None:
        if not isinstance(assigner, WindowAssigner):
            raise PipelineError(f"window() takes a WindowAssigner (e.g. TumblingEventTimeWindows), got {assigner!r}")
        self._keyed = keyed
        self._assigner = assigner
        self._serializer = None if serializer is None else serializer_named(serializer, "window()")
        self._trigger: Trigger | None = None
        self._evictor: Evictor | None = None
        self._lateness = 0
        self._late_tag: OutputTag | None = None

    def trigger(self, trigger: Trigger) -> WindowedStream:
        """Replace the assigner's default trigger."""
        if not isinstance(trigger, Trigger):
            raise PipelineError(f"trigger() takes a Trigger, got {trigger!r}")
        self._trigger = trigger
        return self

    def evictor(self, evictor: Evictor) -> WindowedStream:
        """Remove records before/after the window function runs (the window then keeps all records)."""
        if not isinstance(evictor, Evictor):
            raise PipelineError(f"evictor() takes an Evictor, got {evictor!r}")
        self._evictor = evictor
        return self

    def allowed_lateness(self, ms: int) -> WindowedStream:
        """Keep windows ``ms`` past their end: a late record fires the window again."""
        if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
            raise PipelineError(f"allowed_lateness() takes non-negative milliseconds, got {ms!r}")
        if ms and not self._assigner.is_event_time:
            raise PipelineError("allowed_lateness() only applies to event-time windows")
        self._lateness = ms
        return self

    def side_output_late_data(self, tag: OutputTag) -> WindowedStream:
        """Send records too late for any window to side output ``tag`` instead of dropping them."""
        if not isinstance(tag, OutputTag):
            raise PipelineError(f"side_output_late_data() takes an OutputTag, got {tag!r}")
        self._late_tag = tag
        return self

    def aggregate(
        self,
        aggregate: Any,
        window_function: Any = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """Incremental aggregation with an :class:`AggregateFunction`: the window keeps one
        accumulator. ``window_function`` (a :class:`ProcessWindowFunction`) receives the result."""
        make_agg = instantiate(aggregate, AggregateFunction, method=None, what="aggregate()")
        return self._build(AGGREGATE, make_agg, aggregate, window_function, name, parallelism)

    def reduce(
        self,
        fn: Callable[[Any, Any], Any],
        window_function: Any = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """Incremental reduce: the window keeps ``fn(fn(a, b), c)...`` only."""
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise PipelineError(f"reduce() takes a plain function of two values, got {fn!r}")
        return self._build(REDUCE, lambda: fn, fn, window_function, name, parallelism)

    def process(self, fn: Any, *, name: str | None = None, parallelism: int | None = None) -> Stream:
        """Run a :class:`ProcessWindowFunction` over all of a window's records when it fires."""
        return self._build(PROCESS, lambda: None, None, fn, name, parallelism)

    def _build(
        self,
        kind: str,
        make_function: Callable[[], Any],
        named_by: Any,
        window_function: Any,
        name: str | None,
        parallelism: int | None,
    ) -> Stream:
        from aioflow._core.stream import Stream, function_name

        make_window_fn = (
            instantiate(window_function, ProcessWindowFunction, method="process", what="window_function")
            if window_function is not None
            else lambda: None
        )
        keyed = self._keyed
        derived = function_name(named_by) if named_by is not None else None
        if derived is None and window_function is not None:
            derived = function_name(window_function)
        assigner, trigger, evictor = self._assigner, self._trigger, self._evictor
        lateness, late = self._lateness, self._late_tag
        key_selector = keyed.key_selector
        if assigner.is_merging and (trigger or assigner.default_trigger()).can_merge() is False:
            raise PipelineError(f"trigger {trigger!r} cannot be used with merging (session) windows")
        if assigner.is_merging and kind == AGGREGATE and type(make_function()).merge is AggregateFunction.merge:
            raise PipelineError(f"{function_name(named_by)} must implement merge(a, b) to be used with session windows")

        def make(operator_name: str) -> WindowOperator:
            return WindowOperator(
                operator_name,
                key_selector,
                assigner,
                _copy(trigger),
                evictor,
                lateness,
                late.name if late is not None else None,
                kind,
                make_function(),
                make_window_fn(),
                self._serializer,
            )

        node = keyed.app.graph.add_node(
            "window",
            name,
            derived,
            make,
            parallelism,
            [keyed._edge()],
            stateful=True,
        )
        return Stream(keyed.app, node)


def _copy(trigger: Trigger | None) -> Trigger | None:
    return copy.deepcopy(trigger)
