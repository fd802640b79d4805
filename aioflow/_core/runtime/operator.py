"""The operator interface the runtime runs, one batch at a time.

Operators of a task form a chain: each one's ``out`` is the next operator (or a fan-out,
or the network output at the end of the task). ``process(batch)`` transforms a whole
batch with a C-level loop (``map``, ``itertools.compress``) where it can, and calls the
user function once per record with a plain call, never an ``await``, unless the user
function itself is ``async def``.

Control events follow the same path: ``process_watermark`` (operators with timers fire
them first), ``process_watermark_status`` and ``end_input``.

The concrete operators (map, process, window, sink...) live in :mod:`aioflow._core.operators`,
above the runtime; tasks and jobs know them only through this interface.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping
from types import GeneratorType
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bind_contextvars

from aioflow._core.errors import OperatorError, UserFunctionTypeError, truncated_repr
from aioflow._core.functions import OutputTag
from aioflow._core.runtime.calls import await_user, check_hashable, describe_error, for_key, map_into, qualified_name
from aioflow._core.runtime.concurrent import run_concurrently
from aioflow._core.runtime.events import Batch

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["DISCARD", "TRIM_EVERY", "Collector", "CountingOutput", "FanOut", "Operator", "Output", "check_outputs"]

#: Operators firing timers bring the state cache back within its bound every
#: ``TRIM_EVERY + 1`` timers (a mask: 1023 means every 1024), as tasks do between batches.
TRIM_EVERY = 1023


class Output:
    """Where an operator sends its results. The next chained operator is one; so are
    :class:`FanOut` and the network output of a task."""

    async def process(self, batch: Batch) -> None:
        """Receive a batch of records."""

    async def process_watermark(self, timestamp: int) -> None:
        """Event time advanced."""

    async def process_watermark_status(self, idle: bool) -> None:
        """The input became idle or active."""

    async def end_input(self) -> None:
        """No more input will come."""


log = structlog.get_logger("aioflow.runtime")

DISCARD = Output()
_MISSING: Any = object()


class FanOut(Output):
    """Sends everything to several outputs, in order (the column lists are shared, not copied)."""

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = outputs

    async def process(self, batch: Batch) -> None:
        for output in self.outputs:
            await output.process(batch)

    async def process_watermark(self, timestamp: int) -> None:
        for output in self.outputs:
            await output.process_watermark(timestamp)

    async def process_watermark_status(self, idle: bool) -> None:
        for output in self.outputs:
            await output.process_watermark_status(idle)

    async def end_input(self) -> None:
        for output in self.outputs:
            await output.end_input()


def _structlog_var(key: str) -> contextvars.ContextVar[Any]:
    """The context variable :mod:`structlog.contextvars` keeps ``key`` in, found through
    its public API in a throwaway context. Setting it directly is what
    ``bind_contextvars(key=...)`` does, at a sixth of the cost: cheap enough per batch."""
    return contextvars.Context().run(lambda: bind_contextvars(**{key: None})[key].var)


_OPERATOR_VAR = _structlog_var("operator")


class CountingOutput(Output):
    """An operator's output as the task wires it: counts records per batch, never per record.

    ``sender`` (the operator whose output this is) has the records added to its
    ``records_out``; ``receiver`` (a chained operator this output feeds, which is then
    also ``target``) to its ``records_in``, and runs with ``operator=<its name>`` in the
    structlog context, so that what it and the user functions in it log says which
    operator it was. ``target`` is where everything goes on: the receiver, or a fan-out
    or network output.
    """

    __slots__ = ("receiver", "sender", "target")

    def __init__(self, target: Output, *, sender: Operator | None = None, receiver: Operator | None = None) -> None:
        self.target = target
        self.sender = sender
        self.receiver = receiver

    async def process(self, batch: Batch) -> None:
        n = len(batch.values)
        if self.sender is not None:
            self.sender.records_out += n
        receiver = self.receiver
        if receiver is None:
            await self.target.process(batch)
            return
        receiver.records_in += n
        token = _OPERATOR_VAR.set(receiver.name)
        try:
            await receiver.process(batch)
        finally:
            _OPERATOR_VAR.reset(token)

    async def process_watermark(self, timestamp: int) -> None:
        if self.receiver is None:
            await self.target.process_watermark(timestamp)
            return
        token = _OPERATOR_VAR.set(self.receiver.name)  # event-time timers fire here
        try:
            await self.receiver.process_watermark(timestamp)
        finally:
            _OPERATOR_VAR.reset(token)

    async def process_watermark_status(self, idle: bool) -> None:
        await self.target.process_watermark_status(idle)

    async def end_input(self) -> None:
        if self.receiver is None:
            await self.target.end_input()
            return
        token = _OPERATOR_VAR.set(self.receiver.name)
        try:
            await self.receiver.end_input()
        finally:
            _OPERATOR_VAR.reset(token)


class Collector:
    """Outputs of one batch or timer round: main values with timestamps, and side outputs
    (from ``yield tag, value``)."""

    __slots__ = ("side", "timestamps", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.timestamps: list[Any] = []
        self.side: dict[str, tuple[list[Any], list[Any]]] = {}

    def add_all(self, produced: Any, timestamp: Any) -> None:
        """Collect what one call of a user function produced: a generator's items (or a
        list's); see :func:`check_outputs`."""
        check_outputs(produced)
        values, timestamps = self.values, self.timestamps
        for item in produced:
            if item.__class__ is tuple and len(item) == 2 and item[0].__class__ is OutputTag:
                side = self.side.get(item[0].name)
                if side is None:
                    side = self.side[item[0].name] = ([], [])
                side[0].append(item[1])
                side[1].append(timestamp)
            else:
                values.append(item)
                timestamps.append(timestamp)

    def __len__(self) -> int:
        return len(self.values)


def check_outputs(produced: Any) -> None:
    """A process function emits by yielding. A plain function that *returns* a tuple, a
    string or a dict (or any non-iterable) would have its parts emitted one by one, or
    fail obscurely: refuse it with a message that says what to write instead."""
    cls = produced.__class__
    if cls is GeneratorType or cls is list:  # the usual cases, at the cost of two compares
        return
    if isinstance(produced, (tuple, str, bytes, dict)) or not hasattr(produced, "__iter__"):
        raise TypeError(
            f"returned {truncated_repr(produced)} ({type(produced).__name__}) instead of yielding its outputs: "
            "write `yield value` for each output (a list of outputs may also be returned)"
        )


class Operator(Output):
    """Base of runtime operators: forwards everything unchanged.

    ``name`` is the operator's stable identity (state and error messages use it).
    ``out`` and ``side_outputs`` are wired by the task before ``open``.
    ``records_in`` and ``records_out`` count what it received and emitted (side outputs
    included) in this run; the task's wiring counts them, one addition per batch.
    """

    #: Records this operator received (from its input, or read, for a source).
    records_in = 0
    #: Records this operator emitted, to its main output and its side outputs.
    records_out = 0
    #: Most records an ``async def`` user function runs on at once (``None``: the app's
    #: ``max_concurrency``); see :mod:`aioflow._core.runtime.concurrent`.
    max_concurrency: int | None = None
    #: The key of a record, on a keyed stream (``None``: unkeyed).
    key_selector: Callable[[Any], Any] | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.out: Output = DISCARD
        self.side_outputs: dict[str, Output] = {}
        self.env: SubtaskEnvironment | None = None

    async def open(self, env: SubtaskEnvironment) -> None:
        self.env = env

    async def process(self, batch: Batch) -> None:
        # Keys travel only from a hash partitioner to the operator it feeds; past that
        # operator they would be stale (the next key_by may key differently).
        await self.out.process(batch if batch.keys is None else Batch(batch.values, batch.timestamps))

    async def process_watermark(self, timestamp: int) -> None:
        await self.forward_watermark(timestamp)

    async def process_watermark_status(self, idle: bool) -> None:
        await self.out.process_watermark_status(idle)
        for side in self.side_outputs.values():
            await side.process_watermark_status(idle)

    async def end_input(self) -> None:
        await self.forward_end_input()

    async def forward_watermark(self, timestamp: int) -> None:
        """Send a watermark on: to the main output and every side output, as in Flink."""
        await self.out.process_watermark(timestamp)
        for side in self.side_outputs.values():
            await side.process_watermark(timestamp)

    async def forward_end_input(self) -> None:
        await self.out.end_input()
        for side in self.side_outputs.values():
            await side.end_input()

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        """At a checkpoint barrier: this subtask's operator state that is not keyed state
        (a watermark, pending sink transactions), as JSON data; ``None`` if there is none.
        Keyed state is in the state backend and is snapshotted by the task."""
        return None

    async def restore_state(self, states: list[Any]) -> None:
        """After ``open``: the states :meth:`snapshot_state` returned in the checkpoint, one
        per subtask of the run that wrote it (more or fewer than now after a rescale)."""

    def check_restore(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Before the job starts: raise :class:`~aioflow._core.errors.IncompatibleStateError` if
        this operator cannot take the state a checkpoint holds (``tables``: its table
        registry, ``"operator\\x1fstate" -> {"kind", "serializer", ...}``). Keyed state
        declared otherwise is refused when it is declared; this is for operators that know
        better what a change means (windows)."""

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is durable: commit what was pre-committed for it."""

    async def await_final_commit(self) -> None:
        """The task reported its final state: return once what the end of input
        pre-committed was committed by the checkpoint holding that state (sinks)."""

    async def close(self) -> None:
        """Release resources; called once, also when the job fails."""

    def emitted_none(self) -> str | None:
        """How an error downstream names this operator as the one that emitted a ``None``
        record (``"map 'parse', whose function parse returned None ..."``); ``None`` when it
        passes its input records on unchanged (a source's reader, a union, a filter), so the
        ``None`` came from further up. Asked only after a failure, never per record."""
        if type(self).process is Operator.process:
            return None
        return f"operator {self.name!r}"

    def error(self, message: str, record: Any, *, has_record: bool = True) -> OperatorError:
        return OperatorError(self.name, message, record, has_record=has_record)

    async def emit_side(self, tag: str, values: list[Any], timestamps: list[Any] | None) -> None:
        output = self.side_outputs.get(tag)
        if output is not None and values:
            await output.process(Batch(values, timestamps))

    async def emit_collected(self, collector: Collector, with_timestamps: bool = True) -> None:
        """Send a collector's main outputs downstream and its side outputs to their tags."""
        if collector.values:
            await self.out.process(Batch(collector.values, collector.timestamps if with_timestamps else None))
        for tag, (values, timestamps) in collector.side.items():
            await self.emit_side(tag, values, timestamps if with_timestamps else None)

    @property
    def concurrency(self) -> int:
        """Most records an ``async def`` user function of this operator runs on at once."""
        assert self.env is not None, "concurrency before open()"
        return self.max_concurrency or self.env.max_concurrency

    async def call_each(
        self,
        fn: Callable[[Any], Any],
        values: list[Any],
        *,
        is_async: bool = False,
        what: str = "",
        keys: list[Any] | None = None,
        named: Callable[..., Any] | None = None,
    ) -> list[Any]:
        """``[fn(v) for v in values]``, at C speed for sync functions; an ``async def``
        ``fn`` runs on up to :attr:`concurrency` records at once, those of one key
        (``keys``) in order. If ``fn`` raises, an :class:`OperatorError` names this
        operator, the record and its key (and ``named``, the user's function ``fn`` wraps)."""
        shown = named or fn
        if is_async:

            async def call(i: int) -> Any:
                try:
                    return await await_user(fn(values[i]))
                except Exception as exc:
                    raise self.error(what + describe_error(exc, shown) + for_key(keys, i), values[i]) from exc

            return await run_concurrently(call, len(values), keys, self.concurrency)
        out: list[Any] = []
        try:
            map_into(out, fn, values)  # on failure, ``out`` holds the results before the bad record
        except Exception as exc:
            raise self.error(what + describe_error(exc, shown), values[len(out)]) from exc
        if out and inspect.iscoroutine(out[0]):  # one check a batch: a lambda calling an async function
            for coroutine in out:
                if inspect.iscoroutine(coroutine):
                    coroutine.close()  # never awaited: no warning for each
            raise UserFunctionTypeError(
                self.name,
                f"{what}{qualified_name(shown)} is not async def but returned a coroutine; make it "
                "async def, or use functools.partial(fn, ...) instead of a lambda that calls it",
                values[0],
            )
        return out

    async def keys_in_order(self, batch: Batch) -> list[Any] | None:
        """The keys an async function's records run in order by: on a keyed stream the
        batch's keys; ``None`` on an unkeyed one (records in any order)."""
        if batch.keys is not None:
            return batch.keys
        if self.key_selector is None:
            return None
        return await self.keys_of(batch, self.key_selector)

    async def keys_of(self, batch: Batch, key_selector: Callable[[Any], Any]) -> list[Any]:
        """The batch's keys: carried from the partitioner, or extracted here when chained."""
        if batch.keys is not None:
            return batch.keys
        keys = await self.call_each(key_selector, batch.values, what="key selector ")
        check_hashable(keys, key_selector, batch.values, self.name)
        return keys
