"""Running an ``async def`` user function over a batch, many records at once.

Records of one key run one after the other, in arrival order; records of different keys
(and records without a key) run concurrently, at most ``limit`` at a time, each in a
worker task of its own, so that a coroutine keeps its own context (its key) across
awaits. A batch is done when every record is: watermarks, timers and checkpoint
barriers, which come between batches, never find a record in flight. Results come back
in input order, as the synchronous function would give them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import anyio

__all__ = ["run_concurrently"]


async def run_concurrently(
    call: Callable[[int], Awaitable[Any]], count: int, keys: Sequence[Hashable] | None, limit: int
) -> list[Any]:
    """``[await call(i) for i in range(count)]``, with the records of each key (``keys[i]``;
    ``None``: no key, no order) run in order and at most ``limit`` calls at once. The first
    exception ``call`` raises cancels the others and is raised as it is."""
    results: list[Any] = [None] * count
    chains = _chains(count, keys)
    pending = iter(chains)  # shared: each worker takes the next key's records

    async def worker() -> None:
        for chain in pending:
            for i in chain:
                results[i] = await call(i)

    if min(limit, len(chains)) <= 1:  # no concurrency to gain: no task group either
        await worker()
        return results
    failure: Exception | None = None

    async def guarded(scope: anyio.CancelScope) -> None:
        nonlocal failure
        try:
            await worker()
        except Exception as exc:
            failure = failure or exc
            scope.cancel()

    async with anyio.create_task_group() as group:
        for _ in range(min(limit, len(chains))):
            group.start_soon(guarded, group.cancel_scope)
    if failure is not None:
        raise failure
    return results


def _chains(count: int, keys: Sequence[Hashable] | None) -> list[list[int]]:
    """The records' indexes, a list per key in arrival order (a list each without keys)."""
    if keys is None:
        return [[i] for i in range(count)]
    by_key: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        chain = by_key.get(key)
        if chain is None:
            by_key[key] = [i]
        else:
            chain.append(i)
    return list(by_key.values())
