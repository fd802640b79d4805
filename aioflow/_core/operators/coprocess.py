"""Two-input operators: CoProcessFunction, KeyedCoProcessFunction and broadcast state.

Records of the first input go to ``process_element1`` (or ``process_element``), of the
second to ``process_element2`` (or ``process_broadcast_element``). Keyed variants share
keyed state and timers between both inputs; the watermark is the minimum of both.

Broadcast state is operator state, as in Flink: it is part of the operator's snapshot
(as JSON, in the checkpoint metadata), every subtask holds the same contents, and on
restore each subtask takes a copy of one old subtask's, so it survives a change of
parallelism.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import structlog

from aioflow._core.errors import PipelineError, StateError, truncated_repr
from aioflow._core.operators.context import OperatorContext
from aioflow._core.operators.process import ProcessOperator, UserCall
from aioflow._core.runtime.events import Batch
from aioflow._core.state.serializers import decode_key

__all__ = ["BroadcastContext", "BroadcastProcessOperator", "BroadcastState", "CoProcessOperator"]

log = structlog.get_logger("aioflow.runtime")


class CoProcessOperator(ProcessOperator):
    """Runs a (Keyed)CoProcessFunction over two inputs."""

    def __init__(
        self,
        name: str,
        function: Any,
        key_selector: Callable[[Any], Any] | None = None,
        key_selector2: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(name, function, key_selector)
        self.key_selector2 = key_selector2

    user_methods = ("process_element1", "process_element2", "on_timer")

    def bind_methods(self) -> None:
        self._element = UserCall(self.function.process_element1)
        self._element2 = UserCall(self.function.process_element2)

    async def process2(self, batch: Batch) -> None:
        await self.run_function(batch, self._element2, self.key_selector2)


class BroadcastState:
    """A dict replicated to every subtask: writable in ``process_broadcast_element``,
    read-only in ``process_element`` (so all subtasks keep the same contents).

    Checkpoints keep it as JSON: keys must come back equal (``str``, ``int``, tuples of
    them...), values come back as JSON gives them (tuples as lists); anything else fails
    the checkpoint with a :class:`~aioflow._core.errors.StateError` naming the entry."""

    __slots__ = ("_context", "_entries", "name")

    def __init__(self, name: str, entries: dict[Any, Any], context: BroadcastContext) -> None:
        self.name = name
        self._entries = entries
        self._context = context

    def _check_writable(self) -> None:
        if not self._context.broadcast_writable:
            raise PipelineError(
                f"broadcast state {self.name!r} is read-only in process_element; "
                "change it in process_broadcast_element, which every subtask runs alike"
            )

    def get(self, key: Any, default: Any = None) -> Any:
        return self._entries.get(key, default)

    def contains(self, key: Any) -> bool:
        return key in self._entries

    def keys(self) -> Iterator[Any]:
        return iter(list(self._entries))

    def values(self) -> Iterator[Any]:
        return iter(list(self._entries.values()))

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self._entries.items()))

    def is_empty(self) -> bool:
        return not self._entries

    def put(self, key: Any, value: Any) -> None:
        self._check_writable()
        self._entries[key] = value

    def put_all(self, entries: dict[Any, Any]) -> None:
        self._check_writable()
        self._entries.update(entries)

    def remove(self, key: Any) -> None:
        self._check_writable()
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._check_writable()
        self._entries.clear()


class BroadcastContext(OperatorContext):
    """The context of broadcast process functions: adds ``broadcast_state(name)`` and, in
    ``process_broadcast_element`` of a keyed function, ``apply_to_keyed_state``."""

    __slots__ = ("_broadcast", "broadcast_names", "broadcast_writable")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._broadcast: dict[str, BroadcastState] = {}
        self.broadcast_names: tuple[str, ...] = ()
        self.broadcast_writable = False

    def broadcast_state(self, name: str) -> BroadcastState:
        """The broadcast state ``name`` (declared in ``stream.broadcast(name, ...)``)."""
        state = self._broadcast.get(name)
        if state is None:
            if name not in self.broadcast_names:
                raise PipelineError(
                    f"operator {self.operator_name!r}: no broadcast state {name!r}; "
                    f"declared: {list(self.broadcast_names)}"
                )
            state = self._broadcast[name] = BroadcastState(name, {}, self)
        return state

    def apply_to_keyed_state(self, state: Any, function: Callable[[Any, Any], None]) -> None:
        """Call ``function(key, state)`` for every key that has a value in ``state`` (a
        handle declared in ``open``), with the handle pointing at that key; e.g. to update
        every key when a rule changes. Only in ``process_broadcast_element`` of a keyed function."""
        if not self.broadcast_writable or not self.keyed:
            raise PipelineError(
                f"operator {self.operator_name!r}: apply_to_keyed_state is only available in "
                "process_broadcast_element of a KeyedBroadcastProcessFunction"
            )
        if getattr(state, "_current", None) is not self:
            raise PipelineError(
                f"operator {self.operator_name!r}: apply_to_keyed_state takes a state handle "
                f"declared with this context, got {state!r}"
            )
        saved = self.key
        try:
            for key in state._table.keys_in():
                self.key = key
                function(key, state)
        finally:
            self.key = saved


class _NoKey:
    """The current key in ``process_broadcast_element``: there is none, so keyed state and
    timers fail with a message instead of silently using a ``None`` key."""

    __slots__ = ()

    def __hash__(self) -> int:
        raise PipelineError(
            "keyed state and timers are not available in process_broadcast_element (it runs for "
            "no key); use ctx.apply_to_keyed_state(handle, fn) to visit every key's state"
        )

    def __repr__(self) -> str:
        return "<no key>"


_NO_KEY = _NoKey()


class BroadcastProcessOperator(CoProcessOperator):
    """Runs a (Keyed)BroadcastProcessFunction: input 1 is the (keyed) stream, input 2 the
    broadcast stream."""

    context_class = BroadcastContext
    user_methods = ("process_element", "process_broadcast_element", "on_timer")

    def __init__(
        self, name: str, function: Any, key_selector: Callable[[Any], Any] | None, state_names: tuple[str, ...]
    ) -> None:
        super().__init__(name, function, key_selector, None)
        self.state_names = state_names
        #: Restored broadcast states this job no longer declares: kept, as Flink does, so
        #: they are in later checkpoints too (a job that declares them again gets them back).
        self._undeclared: dict[str, list[Any]] = {}

    def bind_methods(self) -> None:
        assert isinstance(self.ctx, BroadcastContext)
        self.ctx.broadcast_names = self.state_names
        self._element = UserCall(self.function.process_element)
        self._element2 = UserCall(self.function.process_broadcast_element)

    async def process(self, batch: Batch) -> None:
        await self.run_function(batch, self._element, self.key_selector)

    async def process2(self, batch: Batch) -> None:
        ctx = self.ctx
        assert isinstance(ctx, BroadcastContext)
        ctx.broadcast_writable = True
        saved_key, ctx.key = ctx.key, _NO_KEY
        try:
            await self.run_function(batch, self._element2, None)
        finally:
            ctx.broadcast_writable = False
            ctx.key = saved_key

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        """The watermark and a copy of every broadcast state, as ``[key, value]`` pairs of
        JSON data (JSON objects only have str keys)."""
        state = await super().snapshot_state(checkpoint_id)
        ctx = self.ctx
        assert isinstance(ctx, BroadcastContext)
        broadcast = dict(self._undeclared)
        for name, handle in ctx._broadcast.items():
            broadcast[name] = [self._pair(name, key, value) for key, value in handle._entries.items()]
        state["broadcast"] = broadcast
        return state

    def _pair(self, name: str, key: Any, value: Any) -> list[Any]:
        """A copy of one entry as JSON data (a copy: the state may change before the
        checkpoint completes). A key must come back equal (tuples do, as for keyed state);
        a value as JSON gives it back (tuples as lists). Anything else is refused, named."""
        try:
            key_data = orjson.dumps(key)
            if decode_key(key_data) != key:
                raise TypeError(f"it would be restored as {truncated_repr(decode_key(key_data))}")
        except Exception as exc:
            raise self._unserialisable(name, "key", key, "", exc) from exc
        try:
            value_data = orjson.dumps(value)
        except Exception as exc:
            raise self._unserialisable(name, "value", value, f" under key {truncated_repr(key)}", exc) from exc
        return [orjson.loads(key_data), orjson.loads(value_data)]

    def _unserialisable(self, name: str, what: str, item: Any, where: str, exc: Exception) -> StateError:
        return StateError(
            f"operator {self.name!r}: broadcast state {name!r} cannot serialise a {what} of type "
            f"{type(item).__name__}{where}: {exc}; checkpoints keep broadcast state as JSON: keep None, bool, "
            "int, float, str, and lists and str-keyed dicts of them in it"
        )

    async def restore_state(self, states: list[Any]) -> None:
        """Every old subtask held the same broadcast state: take old subtask
        ``index % len(states)``'s, whatever the parallelism was then."""
        await super().restore_state(states)
        ctx = self.ctx
        assert isinstance(ctx, BroadcastContext) and self.env is not None
        chosen = states[self.env.subtask_index % len(states)].get("broadcast") or {}
        for name, pairs in chosen.items():
            if name not in self.state_names:
                self._undeclared[name] = pairs
                if self.env.subtask_index == 0:
                    log.warning(
                        "broadcast state not declared any more; kept, unused",
                        operator=self.name,
                        state=name,
                        declared=list(self.state_names),
                    )
                continue
            entries = ctx.broadcast_state(name)._entries  # in place: open() may hold the handle
            entries.clear()
            entries.update((decode_key(orjson.dumps(key)), value) for key, value in pairs)
