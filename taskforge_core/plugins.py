"""The plugin manager: hookspecs, TaskForge's own default plugins, and entry-point discovery."""

from __future__ import annotations

import pluggy

from taskforge_core import hookspecs

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "create_plugin_manager"]

#: Plugins are installed packages that name an object in this entry-point group.
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: The core's own features, registered exactly like third-party plugins.
DEFAULT_PLUGINS = ("taskforge_core.scheduler", "taskforge_core.ratelimit")


def create_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every hookspec, the default plugins and, unless told otherwise,
    every plugin installed under the ``taskforge`` entry-point group."""
    import importlib

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm
