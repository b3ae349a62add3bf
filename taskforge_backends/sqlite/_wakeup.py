"""In-process wake-ups for idle workers, shared by every storage on one database file.

A :class:`WakeupHub` is the meeting point of the storages of one process that open the same
database file. After a commit that may have made jobs runnable, the storage calls
:meth:`WakeupHub.notify`; every waiter whose queues match is woken at once, whatever event loop
(asyncio or trio, any thread) it waits in. Commits by other processes are not seen here: the
storage notices those by polling ``PRAGMA data_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Collection, Iterable

import anyio

__all__ = ["Waiter", "WakeupHub", "hub_for"]

_Schedule = Callable[[Callable[[], object]], object]


def _threadsafe_scheduler() -> _Schedule | None:
    """How to run a callback in the current event loop from another thread, or None if unknown."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return loop.call_soon_threadsafe
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return None
        schedule: _Schedule = token.run_sync_soon
        return schedule
    return None


class Waiter:
    """One task waiting for jobs in some queues; created and awaited in that task's event loop."""

    def __init__(self, queues: Collection[str]) -> None:
        self.event = anyio.Event()
        #: Empty means every queue.
        self.queues = frozenset(queues)
        self._thread = threading.get_ident()
        self._schedule = _threadsafe_scheduler()

    def wants(self, queues: frozenset[str] | None) -> bool:
        return queues is None or not self.queues or not self.queues.isdisjoint(queues)

    def wake(self) -> None:
        """Set the event, from the waiter's own thread or from any other one."""
        if threading.get_ident() == self._thread:
            self.event.set()
        elif self._schedule is not None:
            # RuntimeError: the waiter's loop has finished, so nobody waits any more.
            with contextlib.suppress(RuntimeError):
                self._schedule(self.event.set)
        # Otherwise the waiter's periodic poll of the database notices the change.


class WakeupHub:
    """The waiters of one database in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[Waiter] = set()

    def add(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.add(waiter)

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def notify(self, queues: Iterable[str] | None = None) -> None:
        """Wake the waiters on any of ``queues`` (None: every waiter)."""
        names = None if queues is None else frozenset(queues)
        with self._lock:
            targets = [w for w in self._waiters if w.wants(names)]
        for waiter in targets:
            waiter.wake()


_hubs: dict[str, WakeupHub] = {}
_hubs_lock = threading.Lock()


def hub_for(path: str | None) -> WakeupHub:
    """The hub shared by every storage of this process on database file ``path``; a private
    one for None (an in-memory database, which no other storage can see)."""
    if path is None:
        return WakeupHub()
    key = os.path.realpath(path)
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _hubs[key] = WakeupHub()
        return hub
