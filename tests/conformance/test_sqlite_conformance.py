"""The SQLite backend passes the storage conformance suite, on a file and in memory.

Each backend's conformance test is a few lines like these: a subclass of
:class:`~taskforge_conformance.StorageConformance` with a factory for a fresh store.
"""

from __future__ import annotations

import pathlib

from taskforge_conformance import StorageConformance

from taskforge_backends.sqlite import SQLiteStorage
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import FakeClock
from taskforge_core.protocols import Storage


class TestSQLiteFile(StorageConformance):
    """A database file per test: durable and shared by processes."""

    async def make_storage(self, clock: FakeClock, tmp_path: pathlib.Path) -> Storage:
        return await self.make_storage_with_config(BackendConfig(clock=clock), tmp_path)

    async def make_storage_with_config(
        self, config: BackendConfig, tmp_path: pathlib.Path
    ) -> Storage:
        return SQLiteStorage(f"sqlite:///{tmp_path}/jobs.db", config)
