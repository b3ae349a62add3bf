"""The conformance suite against the backend a URL selects (what ``python -m`` runs).

``python -m taskforge_conformance URL`` puts the URL in ``TASKFORGE_CONFORMANCE_URL`` and runs
pytest on this module. The backend is found like an application finds it: through the
``taskforge`` entry points and :func:`taskforge_core.backends.create_storage`, with a
:class:`~taskforge_core.clock.FakeClock` in the :class:`~taskforge_core.backends.BackendConfig`.
See :mod:`taskforge_conformance.url` for the ``{tmp}`` and ``{id}`` placeholders.
"""

from __future__ import annotations

import pathlib

import pytest

from taskforge_conformance.suite import StorageConformance
from taskforge_conformance.url import URL_ENV, storage_from_url, url_from_environment
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import FakeClock
from taskforge_core.protocols import Storage

__all__ = ["TestStorageFromURL"]

if url_from_environment() is None:
    pytest.skip(
        f"no backend URL: run `python -m taskforge_conformance URL` or set {URL_ENV}",
        allow_module_level=True,
    )


class TestStorageFromURL(StorageConformance):
    """Every conformance test, on the backend serving ``TASKFORGE_CONFORMANCE_URL``."""

    async def make_storage(self, clock: FakeClock, tmp_path: pathlib.Path) -> Storage:
        return await self.make_storage_with_config(BackendConfig(clock=clock), tmp_path)

    async def make_storage_with_config(
        self, config: BackendConfig, tmp_path: pathlib.Path
    ) -> Storage:
        url = url_from_environment()
        assert url is not None
        return storage_from_url(url, config, tmp_path)
