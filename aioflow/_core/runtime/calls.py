"""Calling user code safely: errors that name the function, stray ``StopIteration`` and
``CancelledError`` turned into failures, keys checked to be hashable.

Everything that calls a user function (operators, writers, watermark generators,
connectors) uses these, so they sit at the bottom of the runtime, below the operators.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aioflow._core.errors import OperatorError, StrayCancellation, truncated_repr

__all__ = [
    "await_user",
    "cancelled_by_runtime",
    "check_hashable",
    "collect_async",
    "describe_error",
    "for_key",
    "is_async",
    "map_into",
    "qualified_name",
]

_STRAY_NEXT = "a StopIteration escaped the function (a stray next()?)"


def for_key(keys: list[Any] | None, i: int) -> str:
    """`` for key 'k'`` naming record ``i``'s key in an error, if there are keys."""
    return "" if keys is None else f" for key {truncated_repr(keys[i])}"


def map_into(out: list[Any], fn: Callable[[Any], Any], values: list[Any]) -> None:
    """Append ``fn(v)`` for each value to the empty list ``out``, at C speed.

    ``map()`` takes a ``StopIteration`` escaping ``fn`` (a stray ``next()``) for the end of
    its input and would end the batch early without a word; here it is raised again at
    that record, so the caller fails naming it (``out`` then holds the results before it).
    """
    out.extend(map(fn, values))
    if len(out) != len(values):
        raise StopIteration(_STRAY_NEXT)


def check_hashable(keys: list[Any], key_selector: Callable[[Any], Any], values: list[Any], operator: str) -> None:
    """Fail naming the key selector when a key it returned cannot be a dict key (a list, a
    dict), instead of letting the next operator fail on it."""
    try:
        set(keys)
    except TypeError:
        for key, value in zip(keys, values):
            try:
                hash(key)
            except TypeError as exc:
                raise OperatorError(
                    operator,
                    f"key selector {qualified_name(key_selector)} returned an unhashable key {truncated_repr(key)} "
                    f"({type(key).__name__}): {exc}; keys must be hashable (use a tuple, not a list)",
                    value,
                ) from exc
        raise


def cancelled_by_runtime() -> bool:
    """True when the current task is being cancelled by the runtime (a failure elsewhere,
    a stop). A ``CancelledError`` escaping user code otherwise (it awaited a task that was
    cancelled elsewhere) is a failure of that code, never a quiet end."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return True
    return task is None or task.cancelling() > 0


async def await_user(awaitable: Awaitable[Any]) -> Any:
    """Await user code. A ``CancelledError`` the runtime did not ask for becomes a
    :class:`StrayCancellation`, which callers report as a failure of the operator."""
    try:
        return await awaitable
    except asyncio.CancelledError as exc:
        if cancelled_by_runtime():
            raise
        raise StrayCancellation("a CancelledError escaped user code, but nothing cancelled the job") from exc


async def collect_async(items: AsyncIterator[Any]) -> list[Any]:
    """What an async generator yields, as a list."""
    return [item async for item in items]


def is_async(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions and callables whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def qualified_name(fn: Callable[..., Any]) -> str:
    """How errors name a user function: its qualified name, or its type's."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def describe_error(exc: BaseException, fn: Callable[..., Any]) -> str:
    if isinstance(exc, StrayCancellation):
        return (
            f"{qualified_name(fn)} raised CancelledError, but nothing cancelled the job (did it await a task "
            "that was cancelled elsewhere?)"
        )
    detail = str(exc) or (_STRAY_NEXT if isinstance(exc, StopIteration) else "")
    return f"{qualified_name(fn)} raised {type(exc).__name__}" + (f": {detail}" if detail else "")
