"""Base classes for user functions, with Flink's method names.

Subclass them and pass the class (or an instance) to ``stream.process`` or a window's
``aggregate`` / ``process``. Every method that produces records is a generator: it
``yield``s outputs, and ``yield tag, value`` (with ``tag`` an :class:`OutputTag`) sends a
value to a side output. ``process_element`` and ``on_timer`` may be ``async def``.
An :class:`AsyncFunction` goes to ``map``, ``filter``, ``flat_map``, ``map_async`` and
``map_batch``: a callable with Flink's ``open`` / ``close`` around it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aioflow._core.errors import PipelineError

if TYPE_CHECKING:
    from aioflow._core.operators.context import FunctionContext, OperatorContext
    from aioflow._core.operators.coprocess import BroadcastContext

__all__ = [
    "AggregateFunction",
    "AsyncFunction",
    "BroadcastProcessFunction",
    "KeyedBroadcastProcessFunction",
    "ProcessJoinFunction",
    "CoProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "OutputTag",
    "ProcessFunction",
    "ProcessWindowFunction",
]

#: What a method that produces records returns: an iterable of outputs (a generator
#: that ``yield``s them), ``None`` for none; for an ``async def`` method, an async
#: generator, or a coroutine returning a list of outputs (or ``None``).
Outputs = Iterable[Any] | AsyncIterable[Any] | Awaitable[Iterable[Any] | None] | None

IN = TypeVar("IN")
ACC = TypeVar("ACC")
OUT = TypeVar("OUT")


class OutputTag:
    """Names a side output. ``yield tag, value`` in a process function sends ``value`` there;
    ``stream.get_side_output(tag)`` reads it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineError(f"OutputTag needs a non-empty string name, got {name!r}")
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutputTag) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("OutputTag", self.name))

    def __repr__(self) -> str:
        return f"OutputTag({self.name!r})"


class AsyncFunction:
    """An ``async def`` function with a lifecycle, as Flink's ``RichAsyncFunction``: for a
    function that calls another system through a client (an aiohttp session, a database
    pool) that must be made in the job's event loop and closed when the job is done with it.

    Pass the class or an instance to ``map``, ``filter``, ``flat_map``, ``map_async`` or
    ``map_batch``. Each subtask of each run gets its own object (a class is instantiated
    without arguments, an instance shallow-copied: what ``__init__`` set is shared
    configuration, what ``open`` sets on ``self`` belongs to the subtask), and:

    - ``await open(ctx)`` runs in the job's event loop before the subtask's first record:
      create the client here. ``ctx`` is a :class:`FunctionContext`.
    - ``await self(value)`` runs per record, as the ``async def`` function would.
    - ``await close()`` runs once when the subtask ends, if ``open`` returned: at the end
      of input, on a stop, when the job fails, and before a restart (which opens fresh
      objects). Close the client here.

    A client made at import time (a module-level session) belongs to no run: it is bound
    to the first event loop that uses it, so a second run in the same process fails
    (``Event loop is closed``), and nothing ever closes it (``Unclosed client session``).
    ``open``, ``__call__`` and ``close`` must be ``async def`` (checked when the class is
    defined).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("open", "__call__", "close"):
            method = cls.__dict__.get(name)
            if method is not None and not inspect.iscoroutinefunction(method):
                raise PipelineError(f"{cls.__name__}.{name} must be an `async def` method (it is awaited)")

    async def open(self, ctx: FunctionContext) -> None:
        """Called once per subtask, in the job's event loop, before its first record."""

    async def __call__(self, value: Any) -> Any:
        """The function: its result for one record (for ``map_batch``, a list of records)."""
        raise PipelineError(f"{type(self).__name__} must implement `async def __call__(self, value)`")

    async def close(self) -> None:
        """Called once per subtask when it ends (also on failure and before a restart), if
        :meth:`open` returned."""


class ProcessFunction:
    """Processes each record of a stream, with access to its timestamp and side outputs.

    On a non-keyed stream there is no keyed state and no timers (as in Flink);
    use :class:`KeyedProcessFunction` after ``key_by`` for those.
    """

    def open(self, ctx: OperatorContext) -> None:
        """Called once per subtask before the first record: create state handles here."""

    def close(self) -> None:
        """Called once per subtask after the last record, also when the job fails."""

    def process_element(self, value: Any, ctx: OperatorContext) -> Outputs:
        """Handle one record; ``yield`` outputs. ``ctx.timestamp`` is its event time."""
        raise PipelineError(f"{type(self).__name__} must implement process_element(value, ctx)")

    def on_timer(self, timestamp: int, ctx: OperatorContext) -> Outputs:
        """A timer registered with ``ctx.timer_service`` fired; ``yield`` outputs."""
        return None


class KeyedProcessFunction(ProcessFunction):
    """A :class:`ProcessFunction` on a keyed stream: ``ctx.key``, keyed state and timers."""


class CoProcessFunction:
    """Processes two connected streams; ``process_element1`` / ``process_element2``."""

    def open(self, ctx: OperatorContext) -> None:
        """Called once per subtask before the first record."""

    def close(self) -> None:
        """Called once per subtask after the last record."""

    def process_element1(self, value: Any, ctx: OperatorContext) -> Outputs:
        raise PipelineError(f"{type(self).__name__} must implement process_element1(value, ctx)")

    def process_element2(self, value: Any, ctx: OperatorContext) -> Outputs:
        raise PipelineError(f"{type(self).__name__} must implement process_element2(value, ctx)")

    def on_timer(self, timestamp: int, ctx: OperatorContext) -> Outputs:
        return None


class KeyedCoProcessFunction(CoProcessFunction):
    """A :class:`CoProcessFunction` on two streams keyed the same way: shared keyed state and timers."""


class AggregateFunction(Generic[IN, ACC, OUT]):
    """Incremental aggregation: the window keeps one accumulator, never the elements."""

    def create_accumulator(self) -> ACC:
        raise PipelineError(f"{type(self).__name__} must implement create_accumulator()")

    def add(self, value: IN, accumulator: ACC) -> ACC:
        raise PipelineError(f"{type(self).__name__} must implement add(value, accumulator)")

    def get_result(self, accumulator: ACC) -> OUT:
        raise PipelineError(f"{type(self).__name__} must implement get_result(accumulator)")

    def merge(self, a: ACC, b: ACC) -> ACC:
        raise PipelineError(f"{type(self).__name__} must implement merge(a, b) to be used with session windows")


class ProcessWindowFunction:
    """Called when a window fires, with the window's key, a context and its elements.

    ``context.window`` is the window (``.start`` / ``.end`` for time windows);
    ``context.current_watermark()`` and ``context.current_processing_time()`` tell the
    time. After ``aggregate`` or ``reduce``, ``elements`` holds just the one result.
    Keyed state declared in ``open(ctx)`` is the state of the firing window's key.
    """

    def open(self, ctx: OperatorContext) -> None:
        """Called once per subtask before the first window fires."""

    def close(self) -> None:
        """Called once per subtask at the end."""

    def process(self, key: Any, context: Any, elements: list[Any]) -> Outputs:
        """``yield`` the outputs for one firing of one window."""
        raise PipelineError(f"{type(self).__name__} must implement process(key, context, elements)")

    def clear(self, context: Any) -> None:
        """The window is being discarded (after its allowed lateness)."""


class BroadcastProcessFunction:
    """Processes a stream connected to a broadcast stream (``a.connect(b.broadcast("rules"))``).

    ``process_broadcast_element`` runs on every subtask for every broadcast record and may
    change ``ctx.broadcast_state(name)``; ``process_element`` reads it (read-only), so every
    subtask decides with the same rules. Flink gives no order between the two inputs: a
    record may arrive before the rule that concerns it.
    """

    def open(self, ctx: BroadcastContext) -> None:
        """Called once per subtask before the first record."""

    def close(self) -> None:
        """Called once per subtask after the last record."""

    def process_element(self, value: Any, ctx: BroadcastContext) -> Outputs:
        raise PipelineError(f"{type(self).__name__} must implement process_element(value, ctx)")

    def process_broadcast_element(self, value: Any, ctx: BroadcastContext) -> Outputs:
        raise PipelineError(f"{type(self).__name__} must implement process_broadcast_element(value, ctx)")

    def on_timer(self, timestamp: int, ctx: BroadcastContext) -> Outputs:
        return None


class KeyedBroadcastProcessFunction(BroadcastProcessFunction):
    """A :class:`BroadcastProcessFunction` whose first input is keyed: keyed state and
    timers in ``process_element``; ``ctx.apply_to_keyed_state(handle, fn)`` in
    ``process_broadcast_element`` visits every key's state."""


class ProcessJoinFunction:
    """Called for each pair joined by an interval join; ``ctx.left_timestamp``,
    ``ctx.right_timestamp`` and ``ctx.timestamp`` (the larger of the two)."""

    def open(self, ctx: OperatorContext) -> None:
        """Called once per subtask before the first record."""

    def close(self) -> None:
        """Called once per subtask after the last record."""

    def process_element(self, left: Any, right: Any, ctx: Any) -> Outputs:
        raise PipelineError(f"{type(self).__name__} must implement process_element(left, right, ctx)")
