"""The PostgreSQL backend passes the storage conformance suite.

One database serves the module. A ``tmp_path`` the factory has not seen gets it emptied (the
suite's tests and state-machine runs come one after another), and a file in that directory
names the database, so a later call with the same directory -- a reopen, or a claimer in
another process -- reaches the same store without emptying it.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from taskforge_conformance import StorageConformance

from taskforge_backends.postgres import PostgresStorage
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import FakeClock
from taskforge_core.protocols import Storage

#: Names the database of a store, in the store's directory.
MARKER = "postgres-database-url"
#: Empties every table but the migration record, keeping the default organization and project.
RESET = """
DELETE FROM taskforge.execution_logs;
DELETE FROM taskforge.job_executions;
DELETE FROM taskforge.job_dependencies;
DELETE FROM taskforge.queue_worker_assignments;
DELETE FROM taskforge.workers;
DELETE FROM taskforge.jobs;
DELETE FROM taskforge.job_queues;
DELETE FROM taskforge.projects WHERE slug <> 'default';
"""


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url(postgres_url: str) -> Iterator[str]:
    """A migrated database of this module's own, dropped at the end."""
    name = f"taskforge_test_{secrets.token_hex(4)}"
    parts = urlsplit(postgres_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    asyncio.run(_execute(postgres_url, f'CREATE DATABASE "{name}"'))

    async def migrate() -> None:
        async with PostgresStorage(url):
            pass

    try:
        asyncio.run(migrate())
        yield url
    finally:
        asyncio.run(_execute(postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)'))


class TestPostgres(StorageConformance):
    """The module's database, emptied for each new store."""

    url: str = ""

    @pytest.fixture(autouse=True)
    def _database(self, database_url: str) -> None:
        type(self).url = database_url

    async def make_storage(self, clock: FakeClock, tmp_path: pathlib.Path) -> Storage:
        return await self.make_storage_with_config(BackendConfig(clock=clock), tmp_path)

    async def make_storage_with_config(
        self, config: BackendConfig, tmp_path: pathlib.Path
    ) -> Storage:
        marker = tmp_path / MARKER
        if marker.exists():
            url = marker.read_text(encoding="utf-8")
        else:
            url = self.url or os.environ["TASKFORGE_TEST_POSTGRES_URL"]
            await _execute(url, RESET)
            marker.write_text(url, encoding="utf-8")
        return PostgresStorage(url, config)
