"""The entry-point plugin that declares the SQLite backend.

Kept light on purpose: loading plugins imports this module in every TaskForge process, while
the backend itself (:mod:`taskforge_backends.sqlite.backend`) is imported only when a
``sqlite://`` URL is used.
"""

from __future__ import annotations

from taskforge_core.backends import BackendSpec
from taskforge_core.hookspecs import hookimpl

__all__ = ["taskforge_backends"]


@hookimpl
def taskforge_backends() -> list[BackendSpec]:
    """The ``sqlite://`` backend; it needs only the standard library's ``sqlite3``."""
    return [BackendSpec(schemes=("sqlite",), factory="taskforge_backends.sqlite.backend:create")]
