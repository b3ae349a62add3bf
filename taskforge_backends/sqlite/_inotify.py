"""Instant cross-process wake-ups on Linux: inotify on the database's write-ahead log.

Every commit in WAL mode, from any process, writes the ``-wal`` file. An inotify watch on that
file makes its descriptor readable at once, so an idle worker hears of another process's
enqueue without polling: no latency floor, and no CPU spent while idle. Where inotify is
missing (not Linux, a full instance table, a file system without it), :func:`open_wal_watch`
returns None and the storage polls ``PRAGMA data_version`` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys

import anyio

__all__ = ["WalWatch", "open_wal_watch"]

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_READ_SIZE = 4096


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class WalWatch:
    """One inotify descriptor watching one ``-wal`` file for writes; close it after use."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def wait(self) -> None:
        """Return once the file was written since this watch was opened (or since the last
        ``wait``). Events that arrive together are consumed together."""
        fd = self._fd
        if fd is None:
            raise RuntimeError("the WAL watch is closed")
        while True:
            with contextlib.suppress(BlockingIOError):
                if os.read(fd, _READ_SIZE):
                    with contextlib.suppress(BlockingIOError):
                        while os.read(fd, _READ_SIZE):
                            pass
                    return
            await anyio.wait_readable(fd)

    async def aclose(self) -> None:
        """Wake a task waiting on the watch (it gets :class:`anyio.ClosedResourceError`) and
        close the descriptor in a thread: closing an inotify descriptor waits for the kernel
        (an RCU grace period, milliseconds) and would stall the event loop."""
        fd, self._fd = self._fd, None
        if fd is not None:
            anyio.notify_closing(fd)
            await anyio.to_thread.run_sync(os.close, fd)


def open_wal_watch(database: str) -> WalWatch | None:
    """A watch on ``database + "-wal"``, or None where inotify cannot watch it."""
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:  # EMFILE (max_user_instances), ENOSYS...
        return None
    wal = os.fsencode(database + "-wal")
    if libc.inotify_add_watch(fd, wal, _IN_MODIFY) < 0:  # no -wal file yet, ENOSPC (watches)...
        os.close(fd)
        return None
    return WalWatch(fd)
