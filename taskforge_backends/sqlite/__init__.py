"""The SQLite storage backend: TaskForge's embedded default and its fast test backend.

Use it with a URL::

    TaskForge("sqlite:///taskforge.db")             # a file relative to the working directory
    TaskForge("sqlite:////var/lib/app/jobs.db")     # an absolute path
    TaskForge("sqlite:///:memory:")                  # one private connection, for quick tests

Query parameters: ``synchronous=off|normal|full|extra`` (default ``normal``: durable across a
process crash, while a power loss can lose the last commits; ``full`` survives that too),
``busy_timeout=SECONDS`` (default 30: how long a verb waits for another process's write lock)
and ``poll_interval=SECONDS`` (default 0.02: how often an idle worker checks for commits made by
other processes). The stdlib ``sqlite3`` driver is run in worker threads through anyio, so the
backend works under asyncio and trio; see :mod:`taskforge_backends.sqlite.backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskforge_backends.sqlite.backend import SQLiteStorage

__all__ = ["SQLiteStorage"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that loading the entry-point plugin (a submodule of this
    # package) does not import the backend and its dependencies.
    if name == "SQLiteStorage":
        from taskforge_backends.sqlite.backend import SQLiteStorage

        return SQLiteStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
