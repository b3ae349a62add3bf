"""WAL checkpoints in a thread of their own, off the path of claims, reports and enqueues.

SQLite's automatic checkpoint runs inside the commit that takes the write-ahead log past its
threshold (1,000 pages by default), so one claim, report or enqueue in a few hundred pays for
copying the whole log into the database file. A storage has one connection, which serialises
its calls, so every call queued behind that one waits as well: it lengthened the p99 of the
cross-process wake-up benchmark (11.8-19.6 ms, against 8.8-11.1 ms with this thread). A
:class:`Checkpointer` instead runs a passive checkpoint on a connection of its own every
:data:`INTERVAL` seconds while anything was committed since its last complete one. A passive
checkpoint never waits for a lock and never blocks readers or writers, so it can run beside
them; the storage's connection keeps an automatic checkpoint at a much higher threshold
(:data:`FALLBACK_PAGES`) in case this thread ever falls behind.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading

__all__ = ["FALLBACK_PAGES", "INTERVAL", "Checkpointer"]

#: Seconds between passive checkpoints.
INTERVAL = 0.2
#: The automatic checkpoint threshold of the storage's own connection (pages of the WAL).
FALLBACK_PAGES = 20_000


class Checkpointer:
    """A daemon thread that checkpoints the WAL of the database at ``path`` until stopped."""

    def __init__(self, path: str, interval: float = INTERVAL) -> None:
        #: Checkpoints run so far. An idle database is not checkpointed again: the thread
        #: skips its turn while ``PRAGMA data_version`` shows no commit since the last
        #: checkpoint that copied the whole log.
        self.checkpoints = 0
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"taskforge-sqlite-checkpoint {path}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (at most until its checkpoint in progress,
        if any, is done)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        except sqlite3.Error:
            return  # the storage's own automatic checkpoint still runs
        caught_up: int | None = None  # the data version the last complete checkpoint saw
        try:
            while not self._stop.wait(self._interval):
                # Busy (another process is checkpointing) or any other error: try next time.
                with contextlib.suppress(sqlite3.Error):
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version == caught_up:  # nothing committed since: nothing to copy
                        continue
                    self.checkpoints += 1
                    busy, wal, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    caught_up = version if not busy and wal == copied else None
        finally:
            conn.close()
