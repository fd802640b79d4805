"""The base of operators that call one user function per record or list of records (map,
filter, flat_map, map_async, map_batch): an :class:`~aioflow.AsyncFunction` given to one of
them is opened with the subtask and closed with it.

The lifecycle runs at task boundaries only (the task opens and closes its operators);
the per-record path calls ``fn`` as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from aioflow._core.functions import AsyncFunction
from aioflow._core.operators.context import FunctionContext
from aioflow._core.operators.process import call_user_open
from aioflow._core.runtime.calls import describe_error
from aioflow._core.runtime.operator import Operator

if TYPE_CHECKING:
    from aioflow._core.runtime.task import SubtaskEnvironment

__all__ = ["CLOSE_TIMEOUT", "FunctionOperator"]

#: Seconds an :class:`~aioflow.AsyncFunction`'s ``close()`` may take: the task closes its
#: operators shielded from cancellation, so a ``close`` that never returned would keep the
#: job (and a stop) waiting for good.
CLOSE_TIMEOUT = 30.0


class FunctionOperator(Operator):
    """An operator running the user function ``fn``. If ``fn`` is an
    :class:`~aioflow.AsyncFunction`, its ``open(ctx)`` runs when the operator opens (a
    failure names the operator) and its ``close()`` when the operator closes; the task
    closes only what opened, so ``close`` runs if ``open`` returned."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    async def open(self, env: SubtaskEnvironment) -> None:
        await super().open(env)
        if isinstance(self.fn, AsyncFunction):
            ctx = FunctionContext(self.name, env.subtask_index, env.parallelism, self.concurrency)
            await call_user_open(self, self.fn, ctx)

    async def close(self) -> None:
        """Close an :class:`~aioflow.AsyncFunction`; a failure is an error of this operator.
        After a clean run it fails the job; after a failure the task only logs it, so the
        job's own error stays the one reported."""
        if isinstance(self.fn, AsyncFunction):
            try:
                with anyio.fail_after(CLOSE_TIMEOUT):
                    await self.fn.close()
            except TimeoutError:
                name = f"{type(self.fn).__name__}.close"
                raise self.error(
                    f"{name}() did not return within {CLOSE_TIMEOUT:g} s", None, has_record=False
                ) from None
            except Exception as exc:
                raise self.error(describe_error(exc, self.fn.close), None, has_record=False) from exc
