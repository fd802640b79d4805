"""Triggers: when a window's contents are emitted (fired) and when they are dropped (purged).

The default trigger of event-time windows fires when the watermark reaches the window's
end; of processing-time windows, when the clock does. Triggers are called per record,
per timer and on merge, with a :class:`TriggerContext` for timers and per-window state.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import PipelineError

if TYPE_CHECKING:
    from aioflow._core.operators.window import TriggerContext

__all__ = [
    "ContinuousEventTimeTrigger",
    "ContinuousProcessingTimeTrigger",
    "CountTrigger",
    "EventTimeTrigger",
    "NeverTrigger",
    "ProcessingTimeTrigger",
    "PurgingTrigger",
    "Trigger",
    "TriggerResult",
]


class TriggerResult(Enum):
    CONTINUE = (False, False)
    FIRE = (True, False)
    PURGE = (False, True)
    FIRE_AND_PURGE = (True, True)

    def __init__(self, fire: bool, purge: bool) -> None:
        #: Emit the window's contents.
        self.fire = fire
        #: Clear the window's contents.
        self.purge = purge


CONTINUE, FIRE, PURGE, FIRE_AND_PURGE = (
    TriggerResult.CONTINUE,
    TriggerResult.FIRE,
    TriggerResult.PURGE,
    TriggerResult.FIRE_AND_PURGE,
)


class Trigger:
    """Decides when a window fires. Every method returns a :class:`TriggerResult`."""

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        return CONTINUE

    def on_event_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return CONTINUE

    def on_processing_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return CONTINUE

    def can_merge(self) -> bool:
        """Whether the trigger works with merging (session) windows."""
        return False

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        """Windows were merged into ``window`` (``ctx.merged_windows``)."""
        raise PipelineError(f"{type(self).__name__} does not support merging (session) windows")

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        """The window is gone: delete its timers and state."""


class EventTimeTrigger(Trigger):
    """Fires once the watermark passes the window's end (again for each late record
    within the allowed lateness)."""

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        if window.max_timestamp() <= ctx.current_watermark():
            return FIRE
        ctx.register_event_time_timer(window.max_timestamp())
        return CONTINUE

    def on_event_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return FIRE if time == window.max_timestamp() else CONTINUE

    def can_merge(self) -> bool:
        return True

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        if window.max_timestamp() > ctx.current_watermark():
            ctx.register_event_time_timer(window.max_timestamp())

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        ctx.delete_event_time_timer(window.max_timestamp())

    def __repr__(self) -> str:
        return "EventTimeTrigger()"


class ProcessingTimeTrigger(Trigger):
    """Fires when the wall clock passes the window's end."""

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        ctx.register_processing_time_timer(window.max_timestamp())
        return CONTINUE

    def on_processing_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return FIRE

    def can_merge(self) -> bool:
        return True

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        ctx.register_processing_time_timer(window.max_timestamp())

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        ctx.delete_processing_time_timer(window.max_timestamp())


class NeverTrigger(Trigger):
    """Never fires (the default of global windows)."""

    def can_merge(self) -> bool:
        return True

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        pass


class CountTrigger(Trigger):
    """Fires every ``count`` records of a window."""

    def __init__(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise PipelineError(f"CountTrigger needs a positive count, got {count!r}")
        self.count = count

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        state = ctx.window_state("count", 0)
        seen = state.value() + 1
        if seen >= self.count:
            state.clear()
            return FIRE
        state.update(seen)
        return CONTINUE

    def can_merge(self) -> bool:
        return True

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        ctx.merge_window_state("count", lambda a, b: a + b)

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        ctx.window_state("count", 0).clear()

    def __repr__(self) -> str:
        return f"CountTrigger({self.count})"


class PurgingTrigger(Trigger):
    """Wraps a trigger and purges the window's contents whenever it fires."""

    def __init__(self, nested: Trigger) -> None:
        self.nested = nested

    @staticmethod
    def _purging(result: TriggerResult) -> TriggerResult:
        return FIRE_AND_PURGE if result.fire else result

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        return self._purging(self.nested.on_element(element, timestamp, window, ctx))

    def on_event_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return self._purging(self.nested.on_event_time(time, window, ctx))

    def on_processing_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return self._purging(self.nested.on_processing_time(time, window, ctx))

    def can_merge(self) -> bool:
        return self.nested.can_merge()

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        self.nested.on_merge(window, ctx)

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        self.nested.clear(window, ctx)

    def __repr__(self) -> str:
        return f"PurgingTrigger({self.nested!r})"


def _round_toward_zero(time: int, interval: int) -> int:
    """``time - time % interval`` with Java's ``%``, as Flink computes it: negative times
    round up toward zero, where Python's ``%`` would round them down."""
    remainder = abs(time) % interval
    return time - remainder if time >= 0 else time + remainder


class _Continuous(Trigger):
    """Fires every ``interval`` ms while the window is open, and at its end.

    As in Flink: the first firing is ``interval`` after the time of the window's first
    record rounded toward zero to a multiple of ``interval``; each next one is ``interval``
    after the previous firing, and none is past the window's end. A merged (session)
    window continues from the earliest next firing of the windows it merged.
    """

    def __init__(self, interval: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise PipelineError(f"trigger interval is a positive number of milliseconds, got {interval!r}")
        self.interval = interval

    def _schedule_first(self, time: int, window: Any, ctx: TriggerContext, register: Callable[[int], None]) -> None:
        if ctx.window_state("next_fire").value() is None:
            self._schedule(_round_toward_zero(time, self.interval), window, ctx, register)

    def _schedule(self, last: int, window: Any, ctx: TriggerContext, register: Callable[[int], None]) -> None:
        next_fire = min(last + self.interval, window.max_timestamp())
        register(next_fire)
        ctx.window_state("next_fire").update(next_fire)

    def _on_time(self, time: int, window: Any, ctx: TriggerContext, register: Callable[[int], None]) -> TriggerResult:
        state = ctx.window_state("next_fire")
        if state.value() == time:
            state.clear()
            # At the end Flink registers the end again, and the window's cleanup deletes it.
            if time < window.max_timestamp():
                self._schedule(time, window, ctx, register)
            return FIRE
        return CONTINUE

    def can_merge(self) -> bool:
        return True

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        ctx.merge_window_state("next_fire", min)


class ContinuousEventTimeTrigger(_Continuous):
    """Fires every ``interval`` ms of event time, plus when the watermark passes the window's end."""

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        if window.max_timestamp() <= ctx.current_watermark():
            return FIRE
        ctx.register_event_time_timer(window.max_timestamp())
        self._schedule_first(timestamp, window, ctx, ctx.register_event_time_timer)  # type: ignore[arg-type]
        return CONTINUE

    def on_event_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        if time == window.max_timestamp():
            return FIRE
        return self._on_time(time, window, ctx, ctx.register_event_time_timer)

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        super().on_merge(window, ctx)
        next_fire = ctx.window_state("next_fire").value()
        if next_fire is not None:
            ctx.register_event_time_timer(next_fire)

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        state = ctx.window_state("next_fire")
        if state.value() is not None:
            ctx.delete_event_time_timer(state.value())
            state.clear()
        ctx.delete_event_time_timer(window.max_timestamp())

    def __repr__(self) -> str:
        return f"ContinuousEventTimeTrigger({self.interval})"


class ContinuousProcessingTimeTrigger(_Continuous):
    """Fires every ``interval`` ms of wall-clock time while the window is open."""

    def on_element(self, element: Any, timestamp: int | None, window: Any, ctx: TriggerContext) -> TriggerResult:
        self._schedule_first(ctx.current_processing_time(), window, ctx, ctx.register_processing_time_timer)
        return CONTINUE

    def on_processing_time(self, time: int, window: Any, ctx: TriggerContext) -> TriggerResult:
        return self._on_time(time, window, ctx, ctx.register_processing_time_timer)

    def on_merge(self, window: Any, ctx: TriggerContext) -> None:
        super().on_merge(window, ctx)
        next_fire = ctx.window_state("next_fire").value()
        if next_fire is not None:
            ctx.register_processing_time_timer(next_fire)

    def clear(self, window: Any, ctx: TriggerContext) -> None:
        state = ctx.window_state("next_fire")
        if state.value() is not None:
            ctx.delete_processing_time_timer(state.value())
            state.clear()

    def __repr__(self) -> str:
        return f"ContinuousProcessingTimeTrigger({self.interval})"
