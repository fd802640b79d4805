"""The window operator: Flink's WindowOperator semantics, batch at a time.

Per record: assign windows; for each window that is not late, add the record to the
window's contents (an accumulator for ``aggregate``/``reduce``, the elements for
``process`` or when an evictor is set), ask the trigger, fire and/or purge, and register
the cleanup timer at ``max_timestamp + allowed_lateness``. A record whose windows are
all late goes to the late side output (or is dropped and counted).

One layout for every assigner, all of it in the state backend: the contents table keyed
by (window, key), trigger state per (window, key), the timers of each (key, window) in
the backend's timer queues, and for merging (session) windows each key's windows. A
window is stored as ``(start, end)`` (a global window as ``"global"``), the same bytes in
every process. Timers are de-duplicated per (key, window) and timestamp, so the
trigger's timer at the window end and the cleanup timer coincide when the lateness is 0.
Session windows merge with the overlapping windows of the same key; their contents,
trigger state and timers move to the merged window.

Tumbling and sliding event-time windows with the default trigger and no evictor take a
fast path that inlines exactly that logic (no trigger calls, a key's timers registered
when its window gets its first record), over the same tables and timers: a checkpoint of
either path restores into the other. How the contents are kept (accumulators, reduce
results, elements, elements with timestamps for an evictor), event or processing time,
and merging or not are part of the stored layout: a restore into a job that changed one
of them is refused naming the operator and the change; any other change of the window
definition resumes every window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson
import structlog

from aioflow._core.errors import (
    DESCRIBED_ERRORS,
    IncompatibleStateError,
    OperatorError,
    PipelineError,
    UserFunctionTypeError,
)
from aioflow._core.functions import OutputTag, ProcessWindowFunction
from aioflow._core.operators.context import OperatorContext
from aioflow._core.operators.process import UserCall, call_user_close, call_user_open
from aioflow._core.runtime.calls import describe_error
from aioflow._core.runtime.events import MAX_WATERMARK, MIN_WATERMARK, Batch
from aioflow._core.runtime.operator import TRIM_EVERY, Collector, Operator, check_outputs
from aioflow._core.state.backend import MISSING, NamespaceView, StateTable
from aioflow._core.state.handles import ValueState
from aioflow._core.state.serializers import Serializer
from aioflow._core.time.timers import now_ms
from aioflow._core.windows.assigners import (
    WINDOW_KEYS,
    SlidingEventTimeWindows,
    TimeWindow,
    TumblingEventTimeWindows,
    WindowAssigner,
    merge_windows,
)
from aioflow._core.windows.evictors import Evictor
from aioflow._core.windows.triggers import EventTimeTrigger, Trigger, TriggerResult

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["TriggerContext", "WindowContext", "WindowOperator"]

log = structlog.get_logger("aioflow.windows")

#: Seconds between two ``late records dropped`` log lines of one window operator.
LATE_LOG_INTERVAL = 10.0


class _WindowCollector(Collector):
    """Outputs of window firings, plus firings whose ``async def`` function is still to run."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Any, Any, list[Any]]] = []


AGGREGATE, REDUCE, PROCESS = "aggregate", "reduce", "process"


def _no_get(*args: Any) -> Any:
    return MISSING


class _FastPane:
    """A window the fast path touched in this batch: its contents' view, and the keys that
    entered it (whose timers are registered when the batch ends)."""

    __slots__ = ("get", "load", "mark", "new", "put", "window")

    def __init__(self, window: TimeWindow, view: NamespaceView) -> None:
        self.window = window
        self.get, self.put, self.mark = view.get, view.put, view.mark
        self.load = None if view.complete else view.load  # None: a miss is final (memory state)
        self.new: list[Any] = []


#: How each kind of window keeps its contents, as the stored layout names it.
_CONTENTS = {AGGREGATE: "aggregate accumulators", REDUCE: "reduce results", PROCESS: "process elements"}


def _layout_change(was: str, now: str) -> str:
    """What changed between two :func:`contents_layout` s, in the user's words."""
    changes = []
    if ("evictor" in was) != ("evictor" in now):
        changes.append("an evictor was " + ("added" if "evictor" in now else "removed"))
    else:
        for function in _CONTENTS:
            if function in was and function not in now:
                changes.append(f"the {function} function was replaced ({was} -> {now})")
    if ("processing time" in was) != ("processing time" in now):
        changes.append("the assigner changed between event time and processing time")
    if ("merging" in was) != ("merging" in now):
        changes.append("the assigner changed between session (merging) windows and others")
    detail = "; ".join(changes) or f"{was} -> {now}"
    return f"{detail} (the checkpoint keeps them as {was}, the job as {now})"


def contents_layout(assigner: WindowAssigner, evictor: Evictor | None, kind: str) -> str:
    """The stored layout of a window operator's contents: what a restore must find again."""
    time = "event time" if assigner.is_event_time else "processing time"
    merging = ", merging" if assigner.is_merging else ""
    contents = "elements with timestamps for an evictor" if evictor is not None else _CONTENTS[kind]
    return f"window contents ({time}{merging}: {contents})"


class _WindowListSerializer:
    """A key's session windows, as ``[[start, end], ...]``."""

    name = "windows"

    def dumps(self, windows: list[TimeWindow]) -> bytes:
        return orjson.dumps([[w.start, w.end] for w in windows])

    def loads(self, data: bytes) -> list[TimeWindow]:
        return [TimeWindow(start, end) for start, end in orjson.loads(data)]


class WindowContext:
    """``context`` of :meth:`ProcessWindowFunction.process`."""

    __slots__ = ("_operator", "key", "window")

    def __init__(self, operator: WindowOperator) -> None:
        self._operator = operator
        self.window: Any = None
        self.key: Any = None

    def current_watermark(self) -> int:
        return self._operator.watermark

    def current_processing_time(self) -> int:
        return now_ms()


class TriggerContext:
    """What a :class:`Trigger` can do for the current key and window."""

    def __init__(self, operator: WindowOperator) -> None:
        self._operator = operator
        self.key: Any = None
        self.window: Any = None
        #: During ``on_merge``: the windows merged into ``window``.
        self.merged_windows: list[Any] = []

    def _at(self, key: Any, window: Any) -> TriggerContext:
        self.key = key
        self.window = window
        return self

    def current_watermark(self) -> int:
        return self._operator.watermark

    def current_processing_time(self) -> int:
        return now_ms()

    def register_event_time_timer(self, time: int) -> None:
        self._operator.event_timers.add(time, self.key, self.window)

    def delete_event_time_timer(self, time: int) -> None:
        self._operator.event_timers.remove(time, self.key, self.window)

    def register_processing_time_timer(self, time: int) -> None:
        self._operator.register_processing_timer(time, self.key, self.window)

    def delete_processing_time_timer(self, time: int) -> None:
        self._operator.processing_timers.remove(time, self.key, self.window)

    def window_state(self, name: str, default: Any = None) -> ValueState:
        """A value kept per key and window (cleared with the window)."""
        return ValueState(self._operator.trigger_table(name), self, default, namespace=self.window)

    def merge_window_state(self, name: str, combine: Callable[[Any, Any], Any]) -> None:
        """In ``on_merge``: combine the merged windows' values of ``name`` into this window's."""
        table = self._operator.trigger_table(name)
        merged = MISSING
        for window in self.merged_windows:
            value = table.get(self.key, window, MISSING)
            if value is not MISSING:
                table.delete(self.key, window)
                merged = value if merged is MISSING else combine(merged, value)
        if merged is not MISSING:
            table.put(self.key, merged, self.window)


class WindowOperator(Operator):
    """Windows over a keyed stream; see the module docstring for the semantics."""

    def __init__(
        self,
        name: str,
        key_selector: Callable[[Any], Any],
        assigner: WindowAssigner,
        trigger: Trigger | None,
        evictor: Evictor | None,
        allowed_lateness: int,
        late_tag: str | None,
        kind: str,
        function: Any,
        window_function: Any,
        serializer: Serializer | None = None,
    ) -> None:
        super().__init__(name)
        self.key_selector: Callable[[Any], Any] = key_selector  # keyed: never None
        self.assigner = assigner
        self.trigger = trigger if trigger is not None else assigner.default_trigger()
        self.evictor = evictor
        self.lateness = allowed_lateness
        self.late_tag = late_tag
        self.kind = kind
        self.function = function
        self.window_function = window_function
        self.serializer = serializer
        self.watermark = MIN_WATERMARK
        self.late_records_dropped = 0
        self._late_logged = 0  # of late_records_dropped, how many a log line reported
        self._late_logged_at = 0.0
        if assigner.is_merging and not self.trigger.can_merge():
            raise PipelineError(f"window {name!r}: trigger {self.trigger!r} cannot be used with merging windows")
        self._fast = (
            type(assigner) in (TumblingEventTimeWindows, SlidingEventTimeWindows)
            and type(self.trigger) is EventTimeTrigger
            and evictor is None
        )

    # -- setup ---------------------------------------------------------------------------

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        backend = env.state_backend
        self.contents = backend.table(
            self.name, "window-contents", self._layout(), serializer=self.serializer, namespaces=WINDOW_KEYS
        )
        if self.assigner.is_merging:
            self.sessions = backend.table(self.name, "window-sessions", "sessions", serializer=_WindowListSerializer())
        self._trigger_tables: dict[str, StateTable] = {}
        self.event_timers = backend.namespaced_timers(self.name, "window-event-timers", namespaces=WINDOW_KEYS)
        self.processing_timers = backend.namespaced_timers(
            self.name, "window-processing-timers", namespaces=WINDOW_KEYS
        )
        self.ctx = OperatorContext(
            self.name,
            env.subtask_index,
            env.parallelism,
            keyed=True,
            backend=env.state_backend,
            schedule_processing_time=lambda at: env.schedule(at, self.on_processing_time),
        )
        self.trigger_ctx = TriggerContext(self)
        self.window_ctx = WindowContext(self)
        self._window_call = UserCall(self.window_function.process) if self.window_function is not None else None
        if self.window_function is not None:
            await call_user_open(self, self.window_function, self.ctx)
        agg = self.function
        if self.kind == AGGREGATE:
            self._create, self._add_one, self._merge = agg.create_accumulator, agg.add, agg.merge
        elif self.kind == REDUCE:
            self._merge = agg

    def _layout(self) -> str:
        return contents_layout(self.assigner, self.evictor, self.kind)

    def check_restore(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse a checkpoint whose windows this operator would keep another way (an
        evictor added or removed, another kind of function, of time, of merging), or with
        another serializer, naming what changed; any other change resumes every window."""
        stored = tables.get(f"{self.name}\x1fwindow-contents")
        if stored is None:
            return
        layout = self._layout()
        serializer = self.serializer.name if self.serializer is not None else "json"
        if stored["kind"] != layout:
            change = _layout_change(str(stored["kind"]), layout)
        elif stored["serializer"] != serializer:
            change = (
                f"the window contents were stored with the {stored['serializer']!r} serializer, and the job "
                f"now declares {serializer!r} (window(..., serializer=...))"
            )
        else:
            return
        raise IncompatibleStateError(
            f"window operator {self.name!r}: the windows in the checkpoint cannot be resumed: {change}. Resume with "
            "the old window definition, or give the changed operator a new name and restore with "
            "--allow-non-restored-state to drop its windows",
            was=str(stored["kind"]),
        )

    def trigger_table(self, name: str) -> StateTable:
        table = self._trigger_tables.get(name)
        if table is None:
            assert self.env is not None
            table = self._trigger_tables[name] = self.env.state_backend.table(
                self.name, f"trigger-{name}", "trigger", serializer=self.serializer, namespaces=WINDOW_KEYS
            )
        return table

    def register_processing_timer(self, time: int, key: Any, window: Any) -> None:
        self.processing_timers.add(time, key, window)
        assert self.env is not None
        self.env.schedule(time, self.on_processing_time)

    # -- contents ------------------------------------------------------------------------

    def _add(self, contents: Any, value: Any, timestamp: Any) -> Any:
        """The window's new contents after adding one record."""
        if self.evictor is not None:
            if contents is MISSING:
                return [(value, timestamp)]
            contents.append((value, timestamp))
            return contents
        kind = self.kind
        if kind == AGGREGATE:
            return self._add_one(value, self._create() if contents is MISSING else contents)
        if kind == REDUCE:
            return value if contents is MISSING else self._merge(contents, value)
        if contents is MISSING:
            return [value]
        contents.append(value)
        return contents

    def _combine(self, a: Any, b: Any) -> Any:
        """Contents of two merged (session) windows as one."""
        if a is MISSING:
            return b
        if b is MISSING:
            return a
        if self.evictor is not None or self.kind == PROCESS:
            return a + b
        return self._merge(a, b)

    def _emit(self, key: Any, window: Any, contents: Any, collector: _WindowCollector) -> None:
        """Fire: run the window function on ``contents`` and collect its outputs with the
        window's timestamp. An ``async def`` window function is awaited later, in
        :meth:`_flush`, with the inputs taken now."""
        inputs, remaining = self._inputs(window, contents)
        if remaining is not MISSING:
            self.contents.put(key, remaining, window)
        call = self._window_call
        if call is None:
            collector.add_all(inputs, window.max_timestamp())
        elif call.kind != "sync":
            collector.pending.append((key, window, inputs))
        else:
            context = self.window_ctx
            context.window, context.key = window, key
            self.ctx.key = key  # keyed state declared in open() belongs to this key
            produced = call.fn(key, context, inputs)
            if produced is not None:
                collector.add_all(produced, window.max_timestamp())

    def _inputs(self, window: Any, contents: Any) -> tuple[list[Any], Any]:
        """The window function's input, and the contents to keep after an evictor (or MISSING)."""
        evictor = self.evictor
        if evictor is None:
            if self.kind == PROCESS:
                return list(contents), MISSING
            if self.kind == AGGREGATE:
                return [self.function.get_result(contents)], MISSING
            return [contents], MISSING
        elements = evictor.evict_before(list(contents), window)
        values = [value for value, _ in elements]
        if self.kind == AGGREGATE:
            acc = self._create()
            for value in values:
                acc = self._add_one(value, acc)
            inputs = [self.function.get_result(acc)] if values else []
        elif self.kind == REDUCE:
            inputs = []
            for value in values:
                inputs = [value] if not inputs else [self._merge(inputs[0], value)]
        else:
            inputs = values
        return inputs, evictor.evict_after(elements, window)

    # -- lateness and cleanup ------------------------------------------------------------

    def _cleanup_time(self, window: Any) -> int:
        end: int = window.max_timestamp()
        if not self.assigner.is_event_time:
            return end
        return min(end + self.lateness, MAX_WATERMARK)

    def _is_window_late(self, window: Any) -> bool:
        return self.assigner.is_event_time and self._cleanup_time(window) <= self.watermark

    def _register_cleanup(self, key: Any, window: Any) -> None:
        time = self._cleanup_time(window)
        if time == MAX_WATERMARK:
            return
        if self.assigner.is_event_time:
            self.event_timers.add(time, key, window)
        else:
            self.register_processing_timer(time, key, window)

    def _delete_cleanup(self, key: Any, window: Any) -> None:
        time = self._cleanup_time(window)
        queue = self.event_timers if self.assigner.is_event_time else self.processing_timers
        queue.remove(time, key, window)

    def _clear_all(self, key: Any, window: Any) -> None:
        self.contents.delete(key, window)
        self.trigger.clear(window, self.trigger_ctx._at(key, window))
        for table in self._trigger_tables.values():
            table.delete(key, window)
        if self.window_function is not None:
            context = self.window_ctx
            context.window, context.key = window, key
            self.ctx.key = key
            self.window_function.clear(context)
        if self.assigner.is_merging:
            self._remove_session(key, window)

    # -- records -------------------------------------------------------------------------

    async def process(self, batch: Batch) -> None:
        values = batch.values
        stamps = batch.timestamps
        if self.assigner.is_event_time and (stamps is None or None in stamps):
            raise UserFunctionTypeError(
                self.name,
                f"{self.assigner!r} needs event timestamps, but records have none; pass "
                "timestamps= (and watermarks=) to app.source(...) or use assign_timestamps_and_watermarks",
                values[stamps.index(None)] if stamps is not None else values[0],
            )
        keys = await self.keys_of(batch, self.key_selector)
        collector = _WindowCollector()
        late: list[Any] = []
        late_ts: list[Any] = []
        if self._fast:
            # the fast path is event time: records without a timestamp were refused above
            self._process_fast(values, cast("Sequence[int]", stamps), keys, collector, late, late_ts)
        else:
            self._process_generic(values, stamps, keys, collector, late, late_ts)
        await self._flush(collector)
        if late:
            if self.late_tag is not None:
                await self.emit_side(self.late_tag, late, late_ts)
            else:
                self.late_records_dropped += len(late)
                self._log_late(final=False)

    def _process_fast(
        self,
        values: list[Any],
        stamps: Sequence[int],
        keys: list[Any],
        collector: _WindowCollector,
        late: list[Any],
        late_ts: list[Any],
    ) -> None:
        """Tumbling and sliding event-time windows, default trigger, no evictor: the generic
        logic inlined. A (key, window) gets its timers (the window end, and the cleanup
        time if later) when the window gets its first record of that key, which is when
        the default trigger's de-duplicated registrations would first take effect; they
        are registered per window at the end of the batch (no watermark comes in between)."""
        assigner = cast("TumblingEventTimeWindows | SlidingEventTimeWindows", self.assigner)  # see self._fast
        size = assigner.size
        slide = getattr(assigner, "slide", size)
        offset = assigner.offset
        lateness = self.lateness
        watermark = self.watermark
        table = self.contents
        panes: dict[int, _FastPane] = {}  # window start -> the window's pane, this batch
        kind = self.kind
        aggregate = kind == AGGREGATE
        reduce = kind == REDUCE
        if aggregate:
            create, add = self._create, self._add_one
        merge = self._merge if reduce else _no_get
        value = None
        last_start = None
        window: Any = None
        get = put = mark = new = _no_get
        load: Callable[[Any], Any] | None = None
        end_ts = 0
        sliding = slide != size
        gone = watermark + 1 - size - lateness  # a window starting at or before this is gone
        try:
            for value, key, timestamp in zip(values, keys, stamps):
                start = timestamp - (timestamp - offset) % slide  # the latest window's start
                if start <= gone:  # the record's latest window is gone: the record is late
                    late.append(value)
                    late_ts.append(timestamp)
                    continue
                while True:
                    if start != last_start:  # tumbling windows: once per run of one window's records
                        pane = panes.get(start)
                        if pane is None:
                            window = TimeWindow(start, start + size)
                            pane = panes[start] = _FastPane(window, table.view(window))
                        window, get, load, put, mark, new = (
                            pane.window,
                            pane.get,
                            pane.load,
                            pane.put,
                            pane.mark,
                            pane.new.append,
                        )
                        end_ts, last_start = start + size - 1, start
                    current = get(key, MISSING)
                    if current is MISSING and (load is None or (current := load(key)) is MISSING):
                        current = add(value, create()) if aggregate else value if reduce else [value]
                        put(key, current)
                        new(key)
                    elif aggregate:
                        current = add(value, current)
                        put(key, current)
                    elif reduce:
                        current = merge(current, value)
                        put(key, current)
                    else:
                        current.append(value)
                        mark(key)
                    if end_ts <= watermark:  # within the allowed lateness: fire (again) at once
                        self._emit(key, window, current, collector)
                    if not sliding:
                        break
                    start -= slide
                    if start <= timestamp - size or start <= gone:  # not the record's, or gone
                        break
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(describe_error(exc, self.function), value) from exc
        finally:
            self._register_fast_timers(panes)

    def _register_fast_timers(self, panes: dict[int, _FastPane]) -> None:
        """The timers of the (key, window)s a batch created: the window end (unless the
        watermark passed it already) and, with allowed lateness, the cleanup time."""
        watermark, lateness, timers = self.watermark, self.lateness, self.event_timers
        for pane in panes.values():
            if pane.new:
                window = pane.window
                end_ts = window.end - 1
                if end_ts > watermark:
                    timers.add_all(end_ts, window, pane.new)
                if lateness:
                    timers.add_all(min(end_ts + lateness, MAX_WATERMARK), window, pane.new)

    def _process_generic(
        self,
        values: list[Any],
        stamps: Sequence[int | None] | None,
        keys: list[Any],
        collector: _WindowCollector,
        late: list[Any],
        late_ts: list[Any],
    ) -> None:
        value = None
        try:
            now = now_ms()
            for i, value in enumerate(values):
                timestamp = stamps[i] if stamps is not None else None
                self._element(value, timestamp, keys[i], now, collector, late, late_ts)
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(f"{type(exc).__name__}: {exc}", value) from exc

    def _element(
        self,
        value: Any,
        timestamp: Any,
        key: Any,
        now: int,
        collector: _WindowCollector,
        late: list[Any],
        late_ts: list[Any],
    ) -> None:
        assigner = self.assigner
        windows = assigner.assign_windows(value, timestamp, now)
        skipped = True
        trigger, ctx, contents = self.trigger, self.trigger_ctx, self.contents
        for window in windows:
            if assigner.is_merging:
                window = self._merge_into_sessions(key, window)
                if self._is_window_late(window):
                    self._retire(key, window)
                    continue
            elif self._is_window_late(window):
                continue
            skipped = False
            contents.put(key, self._add(contents.get(key, window, MISSING), value, timestamp), window)
            result = trigger.on_element(value, timestamp, window, ctx._at(key, window))
            self._act(result, key, window, collector)
            self._register_cleanup(key, window)
        if skipped and assigner.is_event_time and timestamp + self.lateness <= self.watermark:
            late.append(value)
            late_ts.append(timestamp)

    def _act(self, result: TriggerResult, key: Any, window: Any, collector: _WindowCollector) -> None:
        if not isinstance(result, TriggerResult):
            raise UserFunctionTypeError(
                self.name,
                f"trigger {self.trigger!r} returned {result!r}, not a TriggerResult",
                None,
                has_record=False,
            )
        if result.fire:
            contents = self.contents.get(key, window, MISSING)
            if contents is not MISSING:
                self._emit(key, window, contents, collector)
        if result.purge:
            self.contents.delete(key, window)

    # -- session windows -----------------------------------------------------------------

    def _merge_into_sessions(self, key: Any, window: TimeWindow) -> TimeWindow:
        """Add ``window`` to the key's sessions, merging overlapping ones (Flink's MergingWindowSet)."""
        active = self.sessions.get(key, default=None)
        if active is None:
            active = []
        if window in active:
            return window
        result = window
        for cover, members in merge_windows([*active, window]):
            if window not in members:
                continue
            existing = [m for m in members if m != window]
            result = cover
            if not existing or (len(existing) == 1 and existing[0] == cover):
                break
            if self.assigner.is_event_time and self._cleanup_time(cover) <= self.watermark:
                raise OperatorError(
                    self.name,
                    f"merging windows {existing} into {cover} would create a window that is already past the watermark",
                    None,
                    has_record=False,
                )
            ctx = self.trigger_ctx._at(key, cover)
            ctx.merged_windows = existing
            self.trigger.on_merge(cover, ctx)
            ctx.merged_windows = []
            merged = MISSING
            for member in existing:
                if member != cover:
                    self.trigger.clear(member, ctx._at(key, member))
                    self._delete_cleanup(key, member)
                merged = self._combine(merged, self.contents.get(key, member, MISSING))
                self.contents.delete(key, member)
                active.remove(member)
            if merged is not MISSING:
                self.contents.put(key, merged, cover)
            break
        if result not in active:
            active.append(result)
        self.sessions.put(key, active)
        return result

    def _retire(self, key: Any, window: Any) -> None:
        self.contents.delete(key, window)
        self._remove_session(key, window)

    def _remove_session(self, key: Any, window: Any) -> None:
        active = self.sessions.get(key)
        if active is not None and window in active:
            active.remove(window)
            if active:
                self.sessions.put(key, active)
            else:
                self.sessions.delete(key)

    # -- timers --------------------------------------------------------------------------

    def _on_timer(self, time: int, key: Any, window: Any, event_time: bool, collector: _WindowCollector) -> None:
        if self.assigner.is_merging and window not in self.sessions.get(key, default=()):
            return  # the window was merged into another one
        ctx = self.trigger_ctx._at(key, window)
        if event_time:  # asked even when the window is empty (a trigger may re-arm), as in Flink
            result = self.trigger.on_event_time(time, window, ctx)
        else:
            result = self.trigger.on_processing_time(time, window, ctx)
        self._act(result, key, window, collector)
        if event_time == self.assigner.is_event_time and time == self._cleanup_time(window):
            self._clear_all(key, window)

    async def _fire(self, groups: Iterable[tuple[int, Any, Iterable[Any]]], event_time: bool) -> None:
        """Handle due timers, a window's at a time (see
        :meth:`~aioflow._core.state.backend.NamespacedTimerQueue.pop_due_groups`), emitting a
        batch whenever ``batch_size`` outputs are ready."""
        assert self.env is not None
        batch_size = self.env.batch_size
        collector = _WindowCollector()
        trim, fired = self.env.state_backend.trim, 0
        try:
            for time, window, keys in groups:
                for key in keys:
                    fired += 1
                    if not fired & TRIM_EVERY:  # a watermark may fire millions: keep the state cache bounded
                        trim()
                    self._on_timer(time, key, window, event_time, collector)
                    if len(collector) >= batch_size or len(collector.pending) >= batch_size:
                        await self._flush(collector)
                        collector = _WindowCollector()
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(f"firing a window: {type(exc).__name__}: {exc}", None, has_record=False) from exc
        await self._flush(collector)

    async def _fire_fast(self, watermark: int) -> None:
        """The fast path's timers: each (key, window) fires when the watermark reaches the
        window's end and is cleared at its cleanup time (the same timer when there is no
        lateness); a window whose cleanup time came is dropped from the contents whole."""
        assert self.env is not None
        batch_size = self.env.batch_size
        lateness = self.lateness
        function = self.window_function
        clear = (
            function.clear if function is not None and type(function).clear is not ProcessWindowFunction.clear else None
        )  # the default does nothing: skip the call
        call = self._window_call
        sync_fn = call.fn if call is not None and call.kind == "sync" and self.kind != PROCESS else None
        get_result = self.function.get_result if self.kind == AGGREGATE else None
        context, ctx, table = self.window_ctx, self.ctx, self.contents
        collector = _WindowCollector()
        values, stamps = collector.values, collector.timestamps
        cleared: list[Any] = []  # windows whose cleanup time came: dropped once their timers are done
        trim, fired = self.env.state_backend.trim, 0
        try:
            for time, window, keys in self.event_timers.pop_due_groups(watermark):
                # What this window's timers at this time do is worked out once for all its keys.
                view = table.view(window)
                get, load = view.get, None if view.complete else view.load
                context.window = shown = window if window.__class__ is TimeWindow else TimeWindow(*window)
                end_ts = window[1] - 1
                fires = time == end_ts
                cleans = time == min(end_ts + lateness, MAX_WATERMARK)
                if cleans and (not cleared or cleared[-1] != window):
                    cleared.append(window)
                for key in keys:
                    fired += 1
                    if not fired & TRIM_EVERY:  # keep the state cache bounded; a window's view lasts until a trim
                        trim()
                        view = table.view(window)
                        get, load = view.get, None if view.complete else view.load
                    if fires:
                        contents = get(key, MISSING)
                        if contents is MISSING and load is not None:
                            contents = load(key)
                        if contents is not MISSING:
                            if sync_fn is None:
                                self._emit(key, shown, contents, collector)
                                if clear is not None and not lateness:  # as in Flink: process, then clear
                                    await self._flush(collector)  # an async window function runs first
                                    collector = _WindowCollector()
                                    values, stamps = collector.values, collector.timestamps
                                elif len(values) >= batch_size or len(collector.pending) >= batch_size:
                                    await self._flush(collector)
                                    collector = _WindowCollector()
                                    values, stamps = collector.values, collector.timestamps
                            else:  # _emit inlined for a sync window function
                                context.key = ctx.key = key
                                produced = sync_fn(key, context, [get_result(contents)] if get_result else [contents])
                                if produced is not None:
                                    check_outputs(produced)
                                    for item in produced:
                                        if (
                                            item.__class__ is tuple
                                            and len(item) == 2
                                            and item[0].__class__ is OutputTag
                                        ):
                                            collector.add_all([item], end_ts)
                                        else:
                                            values.append(item)
                                            stamps.append(end_ts)
                                    if len(values) >= batch_size:
                                        await self._flush(collector)
                                        collector = _WindowCollector()
                                        values, stamps = collector.values, collector.timestamps
                    if cleans and clear is not None:
                        context.window, context.key = shown, key
                        ctx.key = key
                        clear(context)
            for window in cleared:
                table.drop(window)
        except DESCRIBED_ERRORS:
            raise
        except Exception as exc:
            raise self.error(f"firing a window: {type(exc).__name__}: {exc}", None, has_record=False) from exc
        await self._flush(collector)

    async def _flush(self, collector: _WindowCollector) -> None:
        """Emit collected outputs, first awaiting deferred ``async def`` window functions."""
        if collector.pending:
            call = self._window_call
            assert call is not None
            context = self.window_ctx
            for key, window, inputs in collector.pending:
                context.window, context.key = window, key
                self.ctx.key = key
                try:
                    produced = await call.call_async(key, context, inputs)
                except Exception as exc:
                    raise self.error(describe_error(exc, call.fn), None, has_record=False) from exc
                if produced is not None:
                    collector.add_all(produced, window.max_timestamp())
        await self.emit_collected(collector)

    async def process_watermark(self, timestamp: int) -> None:
        if timestamp <= self.watermark:
            return  # not after a restore's watermark: those windows fired already
        self.watermark = timestamp
        if self._fast:
            await self._fire_fast(timestamp)
        else:
            await self._fire(self.event_timers.pop_due_groups(timestamp), True)
        await self.forward_watermark(timestamp)

    async def on_processing_time(self, now: int) -> None:
        await self._fire(self.processing_timers.pop_due_groups(now), False)
        following = self.processing_timers.next_time()
        if following is not None:
            assert self.env is not None
            self.env.schedule(following, self.on_processing_time)

    async def end_input(self) -> None:
        """Bounded input ended: processing-time windows fire with what they hold (instead of
        being dropped), so a finished job never loses a window."""
        pending = [
            (time, window, list(keys)) for time, window, keys in self.processing_timers.pop_due_groups(MAX_WATERMARK)
        ]
        await self._fire(iter(pending), False)
        self.processing_timers.clear()  # what firing registered would never come
        self._log_late(final=True)
        await self.forward_end_input()

    def _log_late(self, *, final: bool) -> None:
        """``late records dropped`` with the total: at the first drop, then at most every
        :data:`LATE_LOG_INTERVAL` seconds while more come, and at the end of input, so an
        unbounded job's drops show up while it runs."""
        unlogged = self.late_records_dropped - self._late_logged
        now = time.monotonic()
        if not unlogged or (not final and self._late_logged and now - self._late_logged_at < LATE_LOG_INTERVAL):
            return
        log.warning(
            "late records dropped",
            operator=self.name,
            count=self.late_records_dropped,
            new=unlogged,
            hint="use side_output_late_data(tag) to keep them, or allowed_lateness(ms)",
        )
        self._late_logged, self._late_logged_at = self.late_records_dropped, now

    async def snapshot_state(self, checkpoint_id: int) -> Any:
        return {"watermark": self.watermark}

    async def restore_state(self, states: list[Any]) -> None:
        self.watermark = min(state["watermark"] for state in states)
        following = self.processing_timers.next_time()
        if following is not None:
            assert self.env is not None
            self.env.schedule(following, self.on_processing_time)

    async def close(self) -> None:
        if self.window_function is not None:
            await call_user_close(self.window_function)
