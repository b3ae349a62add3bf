"""The backend's pool of asyncpg connections.

asyncpg's own pool costs about 40 µs per acquire and release (a shielded task, a timeout
wrapper and a reset per release), a tenth of a single-row enqueue. This pool hands out an idle
connection without awaiting anything, and puts it back the same way; it only waits when every
connection is busy. A connection that fails, is closed, or is left inside a transaction or a
cancelled query is thrown away instead of reused, and a new one is opened on demand.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (asyncpg ships no type information)

__all__ = ["ConnectionPool", "PoolClosedError"]


class PoolClosedError(asyncpg.InterfaceError):  # type: ignore[misc]
    """The pool is closed (an interface error, as asyncpg's own pool raises)."""


_CONNECTION_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def _reusable(exc: BaseException) -> bool:
    """Whether a connection whose call raised ``exc`` may serve the next call: not after a
    cancellation (the query may still be running) or a connection-level failure."""
    return isinstance(exc, Exception) and not isinstance(exc, _CONNECTION_FAILURES)


class ConnectionPool:
    """Up to ``max_size`` connections made by ``connect``; ``min_size`` are opened at once."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        *,
        min_size: int,
        max_size: int,
        acquire_timeout: float,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size >= 1, got {min_size}, {max_size}")
        self._connect = connect
        self._min_size = min_size
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        #: Connections not in use, the most recently used last (LIFO keeps few of them warm).
        self._idle: list[Connection] = []
        #: Connections open or being opened, idle or in use.
        self._size = 0
        self._waiters: collections.deque[asyncio.Future[Connection]] = collections.deque()
        self._closed = False
        self._all_returned = asyncio.Event()
        #: Tasks opening a connection for a waiter (kept: the loop only holds weak references).
        self._opening: set[asyncio.Task[None]] = set()

    @property
    def min_size(self) -> int:
        return self._min_size

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def idle(self) -> int:
        """Connections open and not in use."""
        return len(self._idle)

    async def open(self) -> None:
        """Open ``min_size`` connections; raises (and closes what it opened) if one fails."""
        try:
            for _ in range(self._min_size):
                self._size += 1
                try:
                    conn = await self._connect()
                except BaseException:
                    self._size -= 1
                    raise
                self._idle.append(conn)
        except BaseException:
            self.terminate()
            raise

    async def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``await fn(conn)`` on a connection of the pool."""
        conn = self._idle.pop() if self._idle else await self._acquire_slow()
        try:
            result = await fn(conn)
        except BaseException as exc:
            self._release(conn, reusable=_reusable(exc))
            raise
        self._release(conn, reusable=True)
        return result

    async def _acquire_slow(self) -> Connection:
        if self._closed:
            raise PoolClosedError("the connection pool is closed")
        if self._size < self._max_size:
            self._size += 1
            try:
                return await self._connect()
            except BaseException:
                self._size -= 1
                self._wake_one()
                raise
        waiter: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with anyio.fail_after(self._acquire_timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result(), reusable=True)  # handed over as we gave up
            else:
                waiter.cancel()
            raise

    def _release(self, conn: Connection, *, reusable: bool) -> None:
        if reusable and not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self._idle.append(conn)
            return
        # Broken, cancelled mid-query, or the pool is closing: never hand it out again.
        conn.terminate()
        self._size -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot freed up: let one waiter open a connection of its own."""
        if self._closed:
            if self._size <= 0:
                self._all_returned.set()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                task = asyncio.ensure_future(self._open_for(waiter))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
                return

    async def _open_for(self, waiter: asyncio.Future[Connection]) -> None:
        """Open a connection for ``waiter`` (its slot was counted by :meth:`_wake_one`)."""
        try:
            conn = await self._connect()
        except BaseException as exc:
            self._size -= 1
            if not waiter.done():
                waiter.set_exception(
                    exc if isinstance(exc, Exception) else PoolClosedError("pool closed")
                )
            return
        if waiter.done():  # it gave up meanwhile
            self._release(conn, reusable=True)
        else:
            waiter.set_result(conn)

    async def close(self) -> None:
        """Stop handing out connections, close the idle ones, and wait for those in use."""
        for conn in self._shut():
            try:
                await conn.close(timeout=5)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                conn.terminate()
        if self._size > 0:
            self._all_returned.clear()
            await self._all_returned.wait()

    def terminate(self) -> None:
        """Close every idle connection at once; connections in use close when returned."""
        for conn in self._shut():
            conn.terminate()

    def _shut(self) -> list[Connection]:
        """Mark the pool closed, fail everyone waiting for a connection, and hand over the
        idle connections (no longer counted) for the caller to close."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the connection pool is closed"))
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        return idle
