"""Where keyed state lives: the backend interface and the in-memory backend.

A backend holds one table per declared state (operator name + state name), each a dict
from key to value. Handles (:mod:`aioflow.state.handles`) read and write those dicts
directly, which keeps state access on the per-record path to one dict operation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MemoryStateBackend"]


class MemoryStateBackend:
    """Keyed state in Python dicts, for tests, bounded jobs and small state."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], dict[Any, Any]] = {}
        self._kinds: dict[tuple[str, str], str] = {}

    def table(self, operator: str, state: str, kind: str) -> dict[Any, Any]:
        """The table of ``operator``'s state ``state``; declaring it again with another kind fails."""
        ident = (operator, state)
        known = self._kinds.get(ident)
        if known is None:
            self._kinds[ident] = kind
            self._tables[ident] = {}
        elif known != kind:
            raise TypeError(
                f"operator {operator!r}: state {state!r} was declared as {known} state, "
                f"cannot declare it again as {kind} state"
            )
        return self._tables[ident]

    def tables(self) -> dict[tuple[str, str], dict[Any, Any]]:
        return self._tables
