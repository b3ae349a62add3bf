"""Building the backend under test from a URL, through the ``taskforge`` entry points.

Every test needs a fresh, empty store. A URL may therefore carry placeholders that the suite
fills in for each store it makes:

``{tmp}``
    an absolute path to a new, empty directory (``sqlite:///{tmp}/jobs.db``);
``{id}``
    a short token unique to that store, made of ``[a-z0-9_]`` (a database schema, a key prefix:
    ``postgresql://localhost/test?schema=tf_{id}``).

Both are derived from the directory pytest gives the test, so asking again for the same
directory (another process of the multi-process test) yields the same store. A URL without
placeholders must give a new empty store each time it is opened (``memory://``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from taskforge_conformance._names import URL_ENV, url_suite_path
from taskforge_core.backends import BackendConfig, create_storage
from taskforge_core.plugins import create_plugin_manager
from taskforge_core.protocols import Storage

__all__ = ["URL_ENV", "expand_url", "storage_from_url", "url_from_environment", "url_suite_path"]


def expand_url(url: str, tmp_path: pathlib.Path) -> str:
    """``url`` with ``{tmp}`` and ``{id}`` filled in for the store living in ``tmp_path``."""
    directory = str(tmp_path.resolve())
    token = "tf_" + hashlib.blake2b(directory.encode(), digest_size=8).hexdigest()
    return url.replace("{tmp}", directory).replace("{id}", token)


def storage_from_url(url: str, config: BackendConfig, tmp_path: pathlib.Path) -> Storage:
    """Build (not open) the backend whose plugin claims the URL's scheme."""
    return create_storage(create_plugin_manager(), expand_url(url, tmp_path), config)


def url_from_environment() -> str | None:
    """The URL given to ``python -m taskforge_conformance``, if any."""
    return os.environ.get(URL_ENV) or None
