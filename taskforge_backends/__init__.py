"""Storage backends and infrastructure plugins shipped with TaskForge.

Each backend is a plugin found through the ``taskforge`` entry-point group, exactly like a
third party's. Backends import ``taskforge_core`` and their driver, never ``taskforge_contrib``.
"""
