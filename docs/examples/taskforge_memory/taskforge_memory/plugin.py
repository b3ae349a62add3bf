"""The entry-point plugin that declares the ``memory://`` backend.

TaskForge imports this module in every process that loads plugins, so it stays light: it names
the factory as a string, and :mod:`taskforge_memory.backend` is imported only when a
``memory://`` URL is used.
"""

from __future__ import annotations

from taskforge_core.backends import BackendSpec
from taskforge_core.hookspecs import hookimpl

__all__ = ["taskforge_backends"]


@hookimpl
def taskforge_backends() -> list[BackendSpec]:
    """The ``memory://`` scheme. It needs no driver, so ``requires`` and ``extra`` stay empty;
    a backend with a driver would say e.g. ``requires=("asyncpg",), extra="postgres"``."""
    return [BackendSpec(schemes=("memory",), factory="taskforge_memory.backend:create")]
