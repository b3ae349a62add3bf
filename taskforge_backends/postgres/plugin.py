"""The entry-point plugin that declares the PostgreSQL backend.

Kept light on purpose: loading plugins imports this module in every TaskForge process, while
the backend itself (:mod:`taskforge_backends.postgres.backend`) and asyncpg are imported only
when a ``postgresql://`` URL is used.
"""

from __future__ import annotations

from taskforge_core.backends import BackendSpec
from taskforge_core.hookspecs import hookimpl

__all__ = ["taskforge_backends"]


@hookimpl
def taskforge_backends() -> list[BackendSpec]:
    """The ``postgresql://`` (and ``postgres://``) backend; it needs asyncpg."""
    return [
        BackendSpec(
            schemes=("postgresql", "postgres"),
            factory="taskforge_backends.postgres.backend:create",
            requires=("asyncpg",),
            extra="postgres",
        )
    ]
