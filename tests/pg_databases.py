"""PostgreSQL databases of the tests' own: created empty, migrated, dropped at the end.

Test modules that need PostgreSQL wrap :func:`new_database` in a fixture of the scope they need
(``tests/`` is on ``sys.path``, as the directory of the root ``conftest.py``)::

    @pytest.fixture(scope="module")
    def database_url(postgres_url: str) -> Iterator[str]:
        with new_database(postgres_url) as url:
            yield url
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskforge_backends.postgres import PostgresStorage

__all__ = ["RESET", "execute", "new_database", "with_database"]

#: Empties every table but the migration record, keeping the default organization and
#: project (DELETE: much faster than TRUNCATE on tables this small).
RESET = """
DELETE FROM taskforge.execution_logs;
DELETE FROM taskforge.job_executions;
DELETE FROM taskforge.job_dependencies;
DELETE FROM taskforge.queue_worker_assignments;
DELETE FROM taskforge.workers;
DELETE FROM taskforge.jobs;
DELETE FROM taskforge.job_queues;
DELETE FROM taskforge.api_keys;
DELETE FROM taskforge.users;
DELETE FROM taskforge.subscriptions;
DELETE FROM taskforge.projects WHERE slug <> 'default';
DELETE FROM taskforge.organizations WHERE slug <> 'default';
"""


def with_database(url: str, name: str) -> str:
    """``url`` pointing at the database ``name`` of the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def execute(url: str, *statements: str) -> None:
    """Run ``statements`` one after another on a connection of their own."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    async with PostgresStorage(url):
        pass


@contextmanager
def new_database(server_url: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database on the server of ``server_url`` (migrated unless told not to), dropped
    on exit. Call it outside an event loop: it runs its own."""
    name = f"taskforge_test_{secrets.token_hex(4)}"
    asyncio.run(execute(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    try:
        if migrate:
            asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(execute(server_url, f'DROP DATABASE "{name}" WITH (FORCE)'))
