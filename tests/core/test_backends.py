"""Choosing a storage backend by URL scheme through plugins."""

from __future__ import annotations

import pytest

from taskforge_core import (
    BackendConfig,
    BackendSpec,
    MissingExtraError,
    TaskForge,
    UnknownSchemeError,
    hookimpl,
)
from taskforge_core.backends import create_storage, known_backends
from taskforge_core.plugins import create_plugin_manager


class MissingDriverPlugin:
    @hookimpl
    def taskforge_backends(self) -> list[BackendSpec]:
        return [
            BackendSpec(
                schemes=("needsdriver",),
                factory="no_such_module:create",
                requires=("surely_not_installed_driver_xyz",),
                extra="xyz",
            )
        ]


def test_the_sqlite_backend_is_found_through_its_entry_point() -> None:
    pm = create_plugin_manager()
    assert known_backends(pm)["sqlite"].factory.startswith("taskforge_backends.sqlite")


def test_without_entry_points_no_backend_is_known() -> None:
    pm = create_plugin_manager(load_entry_points=False)
    with pytest.raises(UnknownSchemeError, match="installed: none"):
        create_storage(pm, "sqlite:///x.db", BackendConfig())


def test_an_unknown_scheme_names_the_installed_ones() -> None:
    with pytest.raises(UnknownSchemeError, match=r"mysql://.*sqlite://"):
        TaskForge("mysql://localhost/db")


def test_a_url_without_scheme_is_rejected() -> None:
    with pytest.raises(UnknownSchemeError, match="no scheme"):
        TaskForge("jobs.db")


def test_a_missing_driver_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'taskforge\[xyz\]'"):
        TaskForge("needsdriver://host", plugins=[MissingDriverPlugin()])
