"""Middleware: async layers around the execution of each job (timing, tracing, logging).

A middleware is ``async def middleware(ctx, call_next) -> Any`` and must return what
``await call_next()`` returns (or raise). Plugins supply them through the
``taskforge_execution_middleware`` hook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskforge_core.context import JobContext

__all__ = ["CallNext", "ExecutionMiddleware", "run_with_middleware"]

CallNext = Callable[[], Awaitable[Any]]
ExecutionMiddleware = Callable[["JobContext", CallNext], Awaitable[Any]]


async def run_with_middleware(
    middlewares: Sequence[ExecutionMiddleware], ctx: JobContext, handler: CallNext
) -> Any:
    """Run ``handler`` inside every middleware, the first of the list outermost."""

    async def layer(index: int) -> Any:
        if index == len(middlewares):
            return await handler()
        return await middlewares[index](ctx, lambda: layer(index + 1))

    return await layer(0)
