"""Wake-ups for idle workers through PostgreSQL's LISTEN/NOTIFY.

Statements that make jobs runnable (enqueue, release of children, retry, reclaim, replay,
resuming a queue) call ``pg_notify('taskforge_jobs', queue)`` in their own transaction;
PostgreSQL delivers it to every listening session when, and only if, that transaction commits.
A :class:`Listener` keeps one dedicated connection (outside the pool, which would recycle it)
that LISTENs on the channel and wakes the waiters whose queues match.

When that connection drops (the server restarted, a network blip), waiting falls back to
polling: a waiter returns after the backend's ``poll_interval``, and each wait starts a
background attempt to connect and LISTEN again (at most one per ``poll_interval``). When one
succeeds every waiter is woken, because notifications sent while it was down are lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import anyio

__all__ = ["CHANNEL", "Listener", "Waiter"]

#: The channel every notification goes to; the payload is the queue name ('*': any queue).
CHANNEL = "taskforge_jobs"

logger = logging.getLogger("taskforge.postgres")


class Waiter:
    """One task waiting for jobs in some queues (none: any queue)."""

    __slots__ = ("event", "queues")

    def __init__(self, queues: Collection[str]) -> None:
        self.event = anyio.Event()
        self.queues = frozenset(queues)

    def wants(self, queue: str | None) -> bool:
        return queue is None or queue == "*" or not self.queues or queue in self.queues


class Listener:
    """The LISTEN connection of one storage and the tasks waiting on it."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], retry_interval: float) -> None:
        self._connect = connect
        self._retry_interval = retry_interval
        self._conn: Any = None
        self._waiters: set[Waiter] = set()
        self._last_attempt = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._conn is not None and not self._conn.is_closed()

    def add(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    def remove(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def wake(self, queues: Collection[str] | None = None) -> None:
        """Wake the waiters on any of ``queues`` (None: every waiter)."""
        for waiter in list(self._waiters):
            if queues is None or any(waiter.wants(queue) for queue in queues):
                waiter.event.set()

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake((payload,))

    def _on_termination(self, conn: Any) -> None:
        if self._closed or conn is not self._conn:
            return
        logger.warning("the LISTEN connection to PostgreSQL was lost; polling until it is back")
        self._conn = None
        self.wake()  # let waiters fall back to polling now rather than at their timeout

    def ensure(self) -> None:
        """Start connecting and LISTENing in the background unless listening already (or an
        attempt is under way, or the last one was less than ``retry_interval`` ago). Waiters
        are all woken when it succeeds, since notifications sent while down are lost."""
        if self.listening or self._closed or self._task is not None:
            return
        now = time.monotonic()
        if now - self._last_attempt < self._retry_interval:
            return
        self._last_attempt = now
        self._task = asyncio.get_running_loop().create_task(self._establish())

    async def _establish(self) -> None:
        conn = None
        try:
            conn = await self._connect()
            await conn.add_listener(CHANNEL, self._on_notification)
            conn.add_termination_listener(self._on_termination)
        except Exception as exc:  # any failure leaves us polling, never breaks a worker
            logger.warning("cannot LISTEN for new jobs (polling meanwhile): %s", exc)
            if conn is not None:
                conn.terminate()
            return
        except BaseException:  # cancelled: never leave a connection behind
            if conn is not None:
                conn.terminate()
            raise
        finally:
            self._task = None
        if self._closed:
            conn.terminate()
            return
        self._conn = conn
        self.wake()

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        task, self._task = self._task, None
        self.wake()
        if task is not None:
            # Let a connection attempt under way finish (it sees _closed and terminates what it
            # made): cancelling asyncpg.connect midway can leave its socket open.
            with anyio.move_on_after(5, shield=True):
                await asyncio.wait([task])
            if not task.done():
                task.cancel()
                with anyio.move_on_after(5, shield=True):
                    await asyncio.wait([task])
        if conn is not None and not conn.is_closed():
            with anyio.move_on_after(5, shield=True):
                try:
                    await conn.close()
                except Exception:  # closing a broken connection: nothing left to release
                    conn.terminate()
