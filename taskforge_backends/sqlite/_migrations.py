"""The numbered SQL migrations of the SQLite backend, and the runner that applies them.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied in name order.
Each applied one is recorded in ``schema_migrations`` (by name, without ``.sql``). All pending
migrations are applied in one ``BEGIN IMMEDIATE`` transaction, after reading what is already
applied inside that same transaction, so processes that start together on one file neither
apply a migration twice nor see half of one.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

__all__ = ["apply_migrations", "available_migrations", "split_statements"]

_NAME = re.compile(r"^(\d{4}_[a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT PRIMARY KEY,
    applied_at INTEGER NOT NULL
)
"""


def available_migrations() -> list[tuple[str, str]]:
    """``(name, sql)`` of every migration shipped with the package, in order."""
    folder = resources.files(__package__ or "taskforge_backends.sqlite").joinpath("migrations")
    found: list[tuple[str, str]] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((match.group(1), entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_statements(script: str) -> list[str]:
    """Cut a script into complete statements (semicolons inside strings, comments and
    triggers are respected, because completeness is decided by SQLite itself)."""
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1].strip())
            start = index + 1
    rest = script[start:]
    if sqlite3.complete_statement(rest + ";") and _has_code(rest):
        raise ValueError(f"the migration script ends with an unterminated statement: {rest!r}")
    return statements


def _has_code(text: str) -> bool:
    lines = (line.split("--", 1)[0].strip() for line in text.splitlines())
    return any(lines)


def apply_migrations(conn: sqlite3.Connection, now_us: int) -> list[str]:
    """Apply the pending migrations in one write transaction; return their names.

    The caller runs this on the connection's thread and translates ``sqlite3.Error``.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_BOOTSTRAP)
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        done: list[str] = []
        for name, script in available_migrations():
            if name in applied:
                continue
            for statement in split_statements(script):
                conn.execute(statement, {"now": now_us})
            conn.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now_us)
            )
            done.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done
