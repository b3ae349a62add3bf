"""The PostgreSQL backend passes the storage conformance suite.

One database serves the module. A ``tmp_path`` the factory has not seen gets it emptied (the
suite's tests and state-machine runs come one after another), and a file in that directory
names the database, so a later call with the same directory -- a reopen, or a claimer in
another process -- reaches the same store without emptying it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
from pg_databases import RESET, execute, new_database
from taskforge_conformance import StorageConformance

from taskforge_backends.postgres import PostgresStorage
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import FakeClock
from taskforge_core.protocols import Storage

#: Names the database of a store, in the store's directory.
MARKER = "postgres-database-url"


@pytest.fixture(scope="module")
def database_url(postgres_url: str) -> Iterator[str]:
    """A migrated database of this module's own, dropped at the end."""
    with new_database(postgres_url) as url:
        yield url


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
            await execute(url, RESET)
            marker.write_text(url, encoding="utf-8")
        return PostgresStorage(url, config)
