"""Evictors: remove records from a window before or after its function runs.

A window with an evictor keeps every record (with its timestamp), since the evictor
needs them; without one, ``aggregate`` and ``reduce`` keep only the running result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioflow._core.errors import PipelineError

__all__ = ["CountEvictor", "DeltaEvictor", "Evictor", "TimeEvictor"]

#: A window's records as the evictor sees them: ``[(value, timestamp), ...]`` in arrival order.
Elements = list[tuple[Any, Any]]


class Evictor:
    """Override ``evict_before`` and/or ``evict_after``; both return the records to keep."""

    def evict_before(self, elements: Elements, window: Any) -> Elements:
        return elements

    def evict_after(self, elements: Elements, window: Any) -> Elements:
        return elements


class _OneSided(Evictor):
    """Evicts either before the window function (default) or, with ``after=True``, after it."""

    after = False

    def _evict(self, elements: Elements) -> Elements:
        raise PipelineError(f"{type(self).__name__} must implement _evict(elements)")

    def evict_before(self, elements: Elements, window: Any) -> Elements:
        return elements if self.after else self._evict(elements)

    def evict_after(self, elements: Elements, window: Any) -> Elements:
        return self._evict(elements) if self.after else elements


class CountEvictor(_OneSided):
    """Keeps at most the last ``max_count`` records."""

    def __init__(self, max_count: int, *, after: bool = False) -> None:
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count <= 0:
            raise PipelineError(f"CountEvictor needs a positive count, got {max_count!r}")
        self.max_count = max_count
        self.after = after

    def _evict(self, elements: Elements) -> Elements:
        return elements[-self.max_count :] if len(elements) > self.max_count else elements


class TimeEvictor(_OneSided):
    """Keeps records whose timestamp is within ``window_size`` ms of the newest one."""

    def __init__(self, window_size: int, *, after: bool = False) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size <= 0:
            raise PipelineError(f"TimeEvictor needs a positive size in ms, got {window_size!r}")
        self.window_size = window_size
        self.after = after

    def _evict(self, elements: Elements) -> Elements:
        stamps = [ts for _, ts in elements if ts is not None]
        if not stamps:
            return elements
        cutoff = max(stamps) - self.window_size
        return [(v, ts) for v, ts in elements if ts is None or ts > cutoff]


class DeltaEvictor(_OneSided):
    """Keeps records whose ``delta(record, newest)`` is below ``threshold``."""

    def __init__(self, threshold: float, delta: Callable[[Any, Any], float], *, after: bool = False) -> None:
        self.threshold = threshold
        self.delta = delta
        self.after = after

    def _evict(self, elements: Elements) -> Elements:
        if not elements:
            return elements
        newest = elements[-1][0]
        return [(v, ts) for v, ts in elements if self.delta(v, newest) < self.threshold]
