"""The PostgreSQL storage backend: TaskForge in production, on asyncpg.

Use it with a URL::

    TaskForge("postgresql://app:secret@db.internal:5432/app")
    TaskForge("postgresql://app@db/app?max_size=20&synchronous_commit=on")

Every table lives in the ``taskforge`` schema, so the queue can share a database with the
application (and jobs can be enqueued inside the application's own transactions). The
backend runs on asyncio only, because asyncpg does. See ``docs/postgres.md`` for set-up, URL
options, migrations, durability, wake-ups and history retention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskforge_backends.postgres.backend import PostgresStorage

__all__ = ["PostgresStorage"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that loading the entry-point plugin (a submodule of this
    # package) imports neither the backend nor asyncpg.
    if name in __all__:
        from taskforge_backends.postgres import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
