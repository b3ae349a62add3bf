"""The numbered SQL migrations of the PostgreSQL backend, and the runner that applies them.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied in name order;
each applied one is recorded in ``taskforge.schema_migrations``. The runner holds a session
advisory lock while it works, so processes that start together (a fleet of workers after a
deploy) apply each migration once, and the others wait and then find nothing to do.

Each migration runs in its own transaction, all or nothing, unless its first line is
``-- taskforge: no-transaction`` (needed by ``CREATE INDEX CONCURRENTLY``); such a migration
must be written so that running it again after a failure is safe (``IF NOT EXISTS``).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

__all__ = ["LOCK_KEY", "apply_migrations", "available_migrations"]

_NAME = re.compile(r"^(\d{4}_[a-z0-9_]+)\.sql$")
_NO_TRANSACTION = "-- taskforge: no-transaction"

#: The advisory lock key that serialises migrations (any fixed 64-bit number would do).
LOCK_KEY = 0x7461736B666F7267  # "taskforg"

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS taskforge;
CREATE TABLE IF NOT EXISTS taskforge.schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def available_migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of every migration shipped with the package, in order."""
    folder = resources.files(__package__ or "taskforge_backends.postgres").joinpath("migrations")
    found: list[tuple[str, str]] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((match.group(1), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def apply_migrations(conn: Any, *, timeout: float | None = None) -> list[str]:
    """Apply the pending migrations on ``conn`` (an asyncpg connection); return their names.

    The caller translates driver errors.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY, timeout=timeout)
    try:
        await conn.execute(_BOOTSTRAP, timeout=timeout)
        rows = await conn.fetch("SELECT name FROM taskforge.schema_migrations", timeout=timeout)
        applied = {row["name"] for row in rows}
        done: list[str] = []
        for name, script in available_migrations():
            if name in applied:
                continue
            record = "INSERT INTO taskforge.schema_migrations (name) VALUES ($1)"
            if script.startswith(_NO_TRANSACTION):
                await conn.execute(script, timeout=timeout)
                await conn.execute(record, name, timeout=timeout)
            else:
                async with conn.transaction():
                    await conn.execute(script, timeout=timeout)
                    await conn.execute(record, name, timeout=timeout)
            done.append(name)
        return done
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
