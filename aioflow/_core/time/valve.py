"""Combining the watermarks of several inputs into one, as Flink's status watermark valve does.

The combined watermark is the minimum over inputs that are active (not idle), aligned
and not finished. An input that turns active again with a watermark behind the combined
one rejoins only once it has caught up, so the combined watermark never goes back.
When every input is idle, the output is idle too.
"""

from __future__ import annotations

from aioflow._core.runtime.events import MAX_WATERMARK, MIN_WATERMARK

__all__ = ["WatermarkValve"]


class WatermarkValve:
    """Tracks per-input watermarks and idleness; methods return what to forward (or ``None``)."""

    def __init__(self, inputs: int) -> None:
        self._watermarks = [MIN_WATERMARK] * inputs
        self._idle = [False] * inputs
        self._aligned = [True] * inputs
        self._finished = [False] * inputs
        self.output = MIN_WATERMARK
        self.output_idle = False

    def watermark(self, index: int, timestamp: int) -> int | None:
        """Input ``index`` reached ``timestamp``; the new combined watermark if it advanced.
        A watermark from an idle input is ignored, as in Flink."""
        if self._idle[index] or timestamp <= self._watermarks[index]:
            return None
        self._watermarks[index] = timestamp
        if not self._aligned[index] and timestamp >= self.output:
            self._aligned[index] = True
        return self._advance()

    def finish(self, index: int) -> tuple[bool | None, int | None]:
        """Input ``index`` ended: it no longer holds the watermark back (it counts as having
        reached +infinity). Returns (new output idleness or ``None``, advanced watermark)."""
        self._finished[index] = True
        self._idle[index] = False
        self._aligned[index] = True
        self._watermarks[index] = MAX_WATERMARK
        return self._idleness_change(), self._advance()

    def status(self, index: int, idle: bool) -> tuple[bool | None, int | None]:
        """Input ``index`` became idle or active. Returns (new output idleness or ``None``,
        new combined watermark or ``None``)."""
        if self._idle[index] == idle or self._finished[index]:
            return None, None
        self._idle[index] = idle
        if not idle:
            self._aligned[index] = self._watermarks[index] >= self.output
        advanced = self._advance()
        return self._idleness_change(), advanced

    def _idleness_change(self) -> bool | None:
        """The output is idle when every unfinished input is idle."""
        open_inputs = [idle for idle, finished in zip(self._idle, self._finished, strict=True) if not finished]
        all_idle = bool(open_inputs) and all(open_inputs)
        if all_idle == self.output_idle:
            return None
        self.output_idle = all_idle
        return all_idle

    def _advance(self) -> int | None:
        candidates = [
            wm
            for wm, idle, aligned in zip(self._watermarks, self._idle, self._aligned, strict=True)
            if not idle and aligned
        ]
        if not candidates:
            return None
        new = min(candidates)
        if new > self.output:
            self.output = new
            return new
        return None
