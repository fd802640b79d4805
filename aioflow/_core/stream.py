"""The stream API: :class:`Stream` and :class:`KeyedStream`.

Every transformation adds a named operator to the app's logical graph and returns a
new stream. Each one works in two forms::

    big = events.filter(lambda e: e["amount"] > 10)       # fluent

    @big.map                                               # decorator: the stream is named "tagged"
    def tagged(e):
        return (e["user"], e["amount"] * 1.1)

Partitioning methods (``key_by``, ``rebalance``, ``broadcast``, ``global_``, ``forward``)
add no operator: they decide how records reach the *next* operator's subtasks.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, overload

from aioflow._core.errors import PipelineError, check_number
from aioflow._core.functions import AsyncFunction, OutputTag, ProcessFunction
from aioflow._core.graph.logical import DEFAULT, Edge, Node
from aioflow._core.operators.async_io import AsyncMapOperator, BatchMapOperator, CallPolicy
from aioflow._core.operators.process import ProcessOperator
from aioflow._core.operators.sink import SinkOperator
from aioflow._core.operators.transform import FilterOperator, FlatMapOperator, MapOperator, RollingReduceOperator
from aioflow._core.retry import RetryPolicy
from aioflow._core.runtime.operator import Operator
from aioflow._core.runtime.partitioning import BROADCAST, FORWARD, GLOBAL, HASH, REBALANCE

if TYPE_CHECKING:
    from aioflow._core.app import App
    from aioflow._core.connected import BroadcastConnectedStreams, BroadcastStream, ConnectedStreams, IntervalJoin
    from aioflow._core.connectors.base import Sink
    from aioflow._core.state.serializers import Serializer
    from aioflow._core.time.watermarks import WatermarkStrategy
    from aioflow._core.windows.assigners import WindowAssigner
    from aioflow._core.windows.stream import WindowedStream

__all__ = ["KeyedStream", "ProcessFn", "RecordFn", "Stream"]

#: A function of one record (``def`` or ``async def``, or an :class:`AsyncFunction` class
#: or instance): what ``map``, ``filter`` and ``flat_map`` take.
RecordFn = Callable[[Any], Any] | type[AsyncFunction]
#: What ``process`` runs: a :class:`ProcessFunction` subclass or instance, or a function
#: ``(value, ctx)`` used as its ``process_element``.
ProcessFn = type[ProcessFunction] | ProcessFunction | Callable[..., Any]


def function_name(fn: Any) -> str | None:
    """The name an operator takes from its function or class (``None`` for lambdas)."""
    if inspect.isclass(fn):
        return fn.__name__
    name = getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__name__
    return None if name == "<lambda>" else name


def _call_policy(
    kind: str,
    timeout: float | None,
    retry: RetryPolicy | None,
    retry_if: Callable[[Exception], bool] | None,
    retry_if_result: Callable[[Any], bool] | None,
    on_error: Any,
) -> CallPolicy:
    """The checked options of a calling operator (``map_async``, ``map_batch``)."""
    if timeout is not None:
        check_number(timeout, f"{kind} timeout", above=True)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise PipelineError(f"{kind} retry= takes af.RetryPolicy(...), got {retry!r}")
    for what, predicate in (("retry_if", retry_if), ("retry_if_result", retry_if_result)):
        if predicate is not None:
            _check_callable(predicate, f"{kind} {what}=", sync_only=True)
    if not (on_error in ("fail", "skip") or isinstance(on_error, OutputTag)):
        raise PipelineError(f"{kind} on_error= takes 'fail', 'skip' or an OutputTag, got {on_error!r}")
    return CallPolicy(timeout, retry or RetryPolicy(max_attempts=1), retry_if, retry_if_result)


def _check_concurrency(max_concurrency: Any, kind: str, option: str = "max_concurrency") -> None:
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
    ):
        raise PipelineError(f"{kind}({option}=...) takes a positive int or None, got {max_concurrency!r}")


def _limited(
    operator: Operator, max_concurrency: int | None, key_selector: Callable[[Any], Any] | None = None
) -> Operator:
    """``operator``, running its async user function on at most ``max_concurrency`` records
    at once (and, with ``key_selector``, a key's records in order)."""
    operator.max_concurrency = max_concurrency
    if key_selector is not None:
        operator.key_selector = key_selector
    return operator


def _check_callable(fn: Any, what: str, *, sync_only: bool = False) -> None:
    if not callable(fn):
        raise PipelineError(f"{what} takes a function, got {fn!r} ({type(fn).__name__})")
    if sync_only and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
        raise PipelineError(f"{what} takes a plain function; {function_name(fn) or fn!r} is async")


def instantiate(
    fn: Any, base: type, *, method: str | None = "process_element", what: str = "process()"
) -> Callable[[], Any]:
    """A factory giving each subtask its own function object: a ``base`` subclass is
    instantiated, an instance deep-copied, and a plain function (when ``method`` is given)
    becomes that method of a ``base`` subclass."""
    if inspect.isclass(fn):
        if not issubclass(fn, base):
            raise PipelineError(f"{what}: {fn.__name__} must subclass aioflow.{base.__name__}")
        return _made_without_arguments(fn, what)
    if isinstance(fn, base):
        return lambda: copy.deepcopy(fn)
    if method is not None and callable(fn):
        wrapped = fn
        function_class = type(function_name(fn) or base.__name__, (base,), {method: staticmethod(wrapped)})
        return function_class
    raise PipelineError(f"{what} takes a {base.__name__} subclass or instance, got {fn!r}")


def per_subtask(fn: Any, what: str) -> Callable[[], Any]:
    """The function each subtask of each run calls: ``fn`` itself, or for an
    :class:`AsyncFunction` an object of its own (a class instantiated, an instance
    shallow-copied), which its operator opens and closes."""
    cls = fn if inspect.isclass(fn) else type(fn)
    if not issubclass(cls, AsyncFunction):
        return lambda: fn
    if cls.__call__ is AsyncFunction.__call__:
        raise PipelineError(f"{what}: {cls.__name__} must implement `async def __call__(self, value)`")
    if inspect.isclass(fn):
        return _made_without_arguments(fn, what)
    return lambda: copy.copy(fn)


def _made_without_arguments(cls: type, what: str) -> type:
    """``cls``, which each subtask instantiates without arguments: refused now, where the
    pipeline names it, if its ``__init__`` needs some (pass an instance instead)."""
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        raise PipelineError(
            f"{what}: the class {cls.__name__} is instantiated without arguments for each subtask, but {exc}: "
            f"pass an instance instead ({cls.__name__}(...)), which each subtask gets a copy of"
        ) from None
    except ValueError:  # no signature to read (a builtin): leave it to the first call
        pass
    return cls


class Stream:
    """A stream of records produced by one operator (or one of its side outputs)."""

    def __init__(
        self,
        app: App,
        node: Node,
        *,
        partitioning: str = DEFAULT,
        key_selector: Callable[[Any], Any] | None = None,
        side_tag: str | None = None,
    ) -> None:
        self.app = app
        self.node = node
        self._partitioning = partitioning
        self._key_selector = key_selector
        self._side_tag = side_tag

    @property
    def name(self) -> str:
        """The name of the operator producing this stream."""
        return self.node.name

    def __repr__(self) -> str:
        side = f", side output {self._side_tag!r}" if self._side_tag else ""
        return f"<{type(self).__name__} {self.name!r}{side}>"

    # -- graph building ---------------------------------------------------------------

    def _edge(self, input_number: int = 1) -> Edge:
        return Edge(self.node, self._partitioning, self._key_selector, self._side_tag, input_number)

    def _view(self, partitioning: str, key_selector: Callable[[Any], Any] | None = None) -> Stream:
        return Stream(
            self.app, self.node, partitioning=partitioning, key_selector=key_selector, side_tag=self._side_tag
        )

    def _add(
        self,
        kind: str,
        fn: Any,
        name: str | None,
        parallelism: int | None,
        make: Callable[[str], Operator],
        *,
        stateful: bool = False,
        inputs: list[Edge] | None = None,
    ) -> Node:
        return self.app.graph.add_node(
            kind,
            name,
            function_name(fn) if fn is not None else None,
            make,
            parallelism,
            inputs if inputs is not None else [self._edge()],
            stateful=stateful,
        )

    def _transform(
        self,
        kind: str,
        fn: RecordFn,
        name: str | None,
        parallelism: int | None,
        operator: Callable[[str, Callable[[Any], Any]], Operator],
        max_concurrency: int | None,
    ) -> Stream:
        _check_callable(fn, f"{kind}()")
        _check_concurrency(max_concurrency, kind)
        function = per_subtask(fn, f"{kind}()")
        key_selector = self._keyed_selector()  # an async fn runs a key's records in order
        node = self._add(
            kind, fn, name, parallelism, lambda n: _limited(operator(n, function()), max_concurrency, key_selector)
        )
        return Stream(self.app, node)

    # -- transformations ----------------------------------------------------------------

    @overload
    def map(
        self,
        fn: RecordFn,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream: ...
    @overload
    def map(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[RecordFn], Stream]: ...

    def map(
        self,
        fn: RecordFn | None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream | Callable[[RecordFn], Stream]:
        """One output per record: ``fn(value)``. ``fn`` may be ``async def``: then it runs
        on up to ``max_concurrency`` records at once (default: the app's), those of one
        key in order; outputs keep the input's order. An :class:`AsyncFunction` (class or
        instance) is opened and closed with each subtask (as for ``filter``, ``flat_map``,
        ``map_async`` and ``map_batch``)."""
        if fn is None:  # used as @stream.map(name=...) with arguments
            return lambda f: self.map(f, name=name, parallelism=parallelism, max_concurrency=max_concurrency)
        return self._transform("map", fn, name, parallelism, MapOperator, max_concurrency)

    def map_async(
        self,
        fn: Callable[[Any], Awaitable[Any]] | type[AsyncFunction],
        *,
        capacity: int | None = None,
        ordered: bool = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        retry_if: Callable[[Exception], bool] | None = None,
        retry_if_result: Callable[[Any], bool] | None = None,
        on_error: str | OutputTag = "fail",
        name: str | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """One output per record: ``await fn(value)``, a call to another system, up to
        ``capacity`` at once (default: the app's ``max_concurrency``), as Flink's async I/O.
        ``fn`` may be an :class:`AsyncFunction` (class or instance): its ``open`` makes the
        subtask's client in the job's event loop, its ``close`` closes it.

        ``ordered``: results in input order (default), or as calls complete (never across a
        watermark). ``timeout``: seconds per call. ``retry``: a :class:`RetryPolicy` (default:
        no retries); ``retry_if(exception)`` says which failures are tried again (default:
        all, timeouts included), ``retry_if_result(result)`` which results are (e.g.
        ``lambda r: r is None``; the last one is kept when the attempts run out). A call
        that fails for good: ``on_error="fail"`` (default) fails the job naming the record,
        ``"skip"`` drops it (logged, counted), an :class:`OutputTag` sends a
        :class:`FailedCall` there. See docs/async.md.
        """
        _check_callable(fn, "map_async()")
        _check_concurrency(capacity, "map_async", "capacity")
        function = per_subtask(fn, "map_async()")
        key_selector = self._keyed_selector()
        policy = _call_policy("map_async", timeout, retry, retry_if, retry_if_result, on_error)
        node = self._add(
            "map_async",
            fn,
            name,
            parallelism,
            lambda n: _limited(
                AsyncMapOperator(n, function(), policy, on_error, ordered=bool(ordered)),
                capacity,
                key_selector,
            ),
        )
        return Stream(self.app, node)

    def map_batch(
        self,
        fn: Callable[[Any], Any] | type[AsyncFunction],
        *,
        max_batch_size: int = 256,
        form: str | None = None,
        capacity: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        retry_if: Callable[[Exception], bool] | None = None,
        retry_if_result: Callable[[Any], bool] | None = None,
        on_error: str | OutputTag = "fail",
        name: str | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """One output per record, computed a list at a time: ``fn(records)`` (plain or
        ``async def``) gets up to ``max_batch_size`` records that arrived together and
        returns their results in order (a list, a NumPy array or a pandas Series): a
        model's ``predict``, a bulk lookup. ``form="pandas"`` or ``"numpy"`` hands the
        records over as a ``DataFrame`` or an array (pandas or NumPy must be installed).
        Calls of an ``async def`` ``fn`` run ``capacity`` at once (default: the app's
        ``max_concurrency``); ``timeout``, ``retry``, ``retry_if``, ``retry_if_result`` and
        ``on_error`` are :meth:`map_async`'s, per call (a failed call's records all fail).
        """
        _check_callable(fn, "map_batch()")
        _check_concurrency(capacity, "map_batch", "capacity")
        function = per_subtask(fn, "map_batch()")
        check_number(max_batch_size, "map_batch max_batch_size", integer=True, minimum=1)
        if form not in (None, "pandas", "numpy"):
            raise PipelineError(f"map_batch form= takes None, 'pandas' or 'numpy', got {form!r}")
        policy = _call_policy("map_batch", timeout, retry, retry_if, retry_if_result, on_error)
        node = self._add(
            "map_batch",
            fn,
            name,
            parallelism,
            lambda n: _limited(
                BatchMapOperator(n, function(), policy, on_error, max_batch_size=max_batch_size, form=form),
                capacity,
            ),
        )
        return Stream(self.app, node)

    @overload
    def filter(
        self,
        fn: RecordFn,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream: ...
    @overload
    def filter(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[RecordFn], Stream]: ...

    def filter(
        self,
        fn: RecordFn | None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream | Callable[[RecordFn], Stream]:
        """Keep records for which ``fn(value)`` is true. ``fn`` may be ``async def`` (as for :meth:`map`)."""
        if fn is None:  # used as @stream.filter(name=...) with arguments
            return lambda f: self.filter(f, name=name, parallelism=parallelism, max_concurrency=max_concurrency)
        return self._transform("filter", fn, name, parallelism, FilterOperator, max_concurrency)

    @overload
    def flat_map(
        self,
        fn: RecordFn,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream: ...
    @overload
    def flat_map(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[RecordFn], Stream]: ...

    def flat_map(
        self,
        fn: RecordFn | None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream | Callable[[RecordFn], Stream]:
        """Zero or more outputs per record: ``fn(value)`` returns an iterable (or is a
        generator). ``fn`` may be ``async def`` or an async generator (as for :meth:`map`)."""
        if fn is None:  # used as @stream.flat_map(name=...) with arguments
            return lambda f: self.flat_map(f, name=name, parallelism=parallelism, max_concurrency=max_concurrency)
        return self._transform("flat_map", fn, name, parallelism, FlatMapOperator, max_concurrency)

    @overload
    def process(
        self,
        fn: ProcessFn,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream: ...
    @overload
    def process(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[ProcessFn], Stream]: ...

    def process(
        self,
        fn: ProcessFn | None = None,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        max_concurrency: int | None = None,
    ) -> Stream | Callable[[ProcessFn], Stream]:
        """Run a :class:`ProcessFunction` (class, instance, or ``process_element``-like
        function). An ``async def`` ``process_element`` or ``on_timer`` runs on up to
        ``max_concurrency`` records or timers at once (default: the app's), those of one
        key in order, each seeing its own key and state across its awaits."""
        if fn is None:
            return lambda f: self.process(f, name=name, parallelism=parallelism, max_concurrency=max_concurrency)
        _check_concurrency(max_concurrency, "process")
        factory = instantiate(fn, ProcessFunction)
        key_selector = self._keyed_selector()
        node = self._add(
            "process",
            fn,
            name,
            parallelism,
            lambda n: _limited(ProcessOperator(n, factory(), key_selector), max_concurrency),
            stateful=key_selector is not None,
        )
        return Stream(self.app, node)

    def _keyed_selector(self) -> Callable[[Any], Any] | None:
        return None

    def union(self, *others: Stream, name: str | None = None) -> Stream:
        """All records of this stream and ``others`` (of the same app), interleaved."""
        for other in others:
            if not isinstance(other, Stream) or other.app is not self.app:
                raise PipelineError(f"union() takes streams of the same app, got {other!r}")
        if not others:
            raise PipelineError("union() needs at least one other stream")
        inputs = [self._edge()] + [other._edge() for other in others]
        node = self._add("union", None, name, None, Operator, inputs=inputs)
        return Stream(self.app, node)

    @overload
    def connect(self, other: BroadcastStream) -> BroadcastConnectedStreams: ...
    @overload
    def connect(self, other: Stream) -> ConnectedStreams: ...

    def connect(self, other: Stream | BroadcastStream) -> ConnectedStreams | BroadcastConnectedStreams:
        """Process this stream together with ``other`` (a stream, or a broadcast stream
        made with ``other.broadcast("state", ...)``)."""
        from aioflow._core.connected import BroadcastConnectedStreams, BroadcastStream, ConnectedStreams

        if isinstance(other, BroadcastStream):
            return BroadcastConnectedStreams(self, other)
        return ConnectedStreams(self, other)

    def assign_timestamps_and_watermarks(
        self,
        timestamps: Callable[[Any], int],
        watermarks: WatermarkStrategy | None = None,
        *,
        name: str | None = None,
    ) -> Stream:
        """Give records event timestamps (and generate watermarks) mid-stream. Prefer
        ``app.source(..., timestamps=, watermarks=)``: there watermarks are kept per split."""
        from aioflow._core.operators.timestamps import TimestampsAndWatermarksOperator
        from aioflow._core.time.watermarks import PERIODIC_WATERMARK_INTERVAL, WatermarkStrategy

        _check_callable(timestamps, "assign_timestamps_and_watermarks()", sync_only=True)
        if watermarks is not None and not isinstance(watermarks, WatermarkStrategy):
            raise PipelineError(f"watermarks= takes a WatermarkStrategy, got {watermarks!r}")
        app = self.app
        node = self._add(
            "timestamps",
            None,
            name,
            None,
            lambda n: TimestampsAndWatermarksOperator(
                n,
                timestamps,
                watermarks,
                PERIODIC_WATERMARK_INTERVAL if app.watermark_interval is None else app.watermark_interval,
            ),
        )
        return Stream(self.app, node)

    def get_side_output(self, tag: OutputTag) -> Stream:
        """The records this stream's operator sent to side output ``tag``."""
        if not isinstance(tag, OutputTag):
            raise PipelineError(f"get_side_output() takes an OutputTag, got {tag!r}")
        return Stream(self.app, self.node, side_tag=tag.name)

    def sink(self, sink: Sink, *, name: str | None = None, parallelism: int | None = None) -> None:
        """Write every record to ``sink`` (e.g. :class:`CollectSink`, :class:`PrintSink`, :class:`FileSink`)."""
        if not hasattr(sink, "create_writer"):
            raise PipelineError(f"sink() takes an aioflow Sink, got {sink!r} ({type(sink).__name__})")
        if inspect.isclass(sink):
            raise PipelineError(f"sink() takes a sink object, got the class {sink.__name__}: pass {sink.__name__}(...)")
        self.app.graph.add_node(
            "sink",
            name,
            getattr(sink, "default_name", None) or type(sink).__name__,
            lambda n: SinkOperator(n, sink),
            parallelism,
            [self._edge()],
        )

    # -- partitioning -------------------------------------------------------------------

    def key_by(self, key_selector: Callable[[Any], Any]) -> KeyedStream:
        """Partition by ``key_selector(value)``: records with equal keys go to the same
        subtask, in order, and keyed state and timers are per key."""
        _check_callable(key_selector, "key_by()", sync_only=True)
        return KeyedStream(self.app, self.node, partitioning=HASH, key_selector=key_selector, side_tag=self._side_tag)

    def rebalance(self) -> Stream:
        """Spread batches round-robin over the next operator's subtasks."""
        return self._view(REBALANCE)

    @overload
    def broadcast(self) -> Stream: ...
    @overload
    def broadcast(self, state_name: str, /, *state_names: str) -> BroadcastStream: ...

    def broadcast(self, *state_names: str) -> Stream | BroadcastStream:
        """Send every record to every subtask of the next operator. With state names, a
        :class:`BroadcastStream` for the broadcast state pattern (``keyed.connect(...)``)."""
        if state_names:
            from aioflow._core.connected import BroadcastStream

            return BroadcastStream(self, state_names)
        return self._view(BROADCAST)

    def global_(self) -> Stream:
        """Send every record to the first subtask of the next operator."""
        return self._view(GLOBAL)

    def forward(self) -> Stream:
        """Subtask ``i`` feeds subtask ``i`` of the next operator (needs equal parallelism)."""
        return self._view(FORWARD)


class KeyedStream(Stream):
    """A stream partitioned by key. Operators applied to it run per key: keyed state and
    timers in ``process``, windows, and per-key order kept end to end."""

    @property
    def key_selector(self) -> Callable[[Any], Any]:
        assert self._key_selector is not None
        return self._key_selector

    def _keyed_selector(self) -> Callable[[Any], Any] | None:
        return self._key_selector

    def window(self, assigner: WindowAssigner, *, serializer: str | Serializer | None = None) -> WindowedStream:
        """Cut each key's records into windows (tumbling, sliding, session, global).
        ``serializer`` (``"json"``, the default, ``"pickle"`` or a :class:`Serializer`) says
        how the windows' contents (accumulators, elements) and trigger state are stored
        in checkpoints, as for keyed state."""
        from aioflow._core.windows.stream import WindowedStream

        return WindowedStream(self, assigner, serializer)

    def count_window(
        self, size: int, slide: int | None = None, *, serializer: str | Serializer | None = None
    ) -> WindowedStream:
        """Windows of ``size`` records per key, every ``slide`` records if given (as in Flink:
        global windows with a count trigger, and a count evictor when sliding)."""
        from aioflow._core.windows.assigners import GlobalWindows
        from aioflow._core.windows.evictors import CountEvictor
        from aioflow._core.windows.stream import WindowedStream
        from aioflow._core.windows.triggers import CountTrigger, PurgingTrigger

        windowed = WindowedStream(self, GlobalWindows(), serializer)
        if slide is None:
            return windowed.trigger(PurgingTrigger(CountTrigger(size)))
        return windowed.evictor(CountEvictor(size)).trigger(CountTrigger(slide))

    def interval_join(self, other: KeyedStream) -> IntervalJoin:
        """Join with another keyed stream on key and time: call ``.between(lower, upper)``."""
        from aioflow._core.connected import IntervalJoin

        return IntervalJoin(self, other)

    @overload
    def reduce(
        self, fn: Callable[[Any, Any], Any], *, name: str | None = None, parallelism: int | None = None
    ) -> Stream: ...
    @overload
    def reduce(
        self, fn: None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Callable[[Callable[[Any, Any], Any]], Stream]: ...

    def reduce(
        self, fn: Callable[[Any, Any], Any] | None = None, *, name: str | None = None, parallelism: int | None = None
    ) -> Stream | Callable[[Callable[[Any, Any], Any]], Stream]:
        """Rolling reduce: for every record, emit ``fn(previous_result, value)`` of its key
        (the key's first record is emitted unchanged). State: one value per key."""
        if fn is None:
            return lambda f: self.reduce(f, name=name, parallelism=parallelism)
        _check_callable(fn, "reduce()", sync_only=True)
        key_selector = self.key_selector
        node = self._add(
            "reduce", fn, name, parallelism, lambda n: RollingReduceOperator(n, fn, key_selector), stateful=True
        )
        return Stream(self.app, node)
