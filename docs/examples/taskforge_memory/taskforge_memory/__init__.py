"""An in-memory storage backend for TaskForge: the worked example of writing a backend.

Installed, it serves ``memory://`` URLs through the ``taskforge`` entry point::

    app = TaskForge("memory://")

See ``docs/writing-a-backend.md`` in the TaskForge repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskforge_memory.backend import MemoryStorage, create

__all__ = ["MemoryStorage", "create"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that loading the plugin does not import the backend.
    if name in __all__:
        from taskforge_memory import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
