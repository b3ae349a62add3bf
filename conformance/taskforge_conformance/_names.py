"""Names shared by the runner and the suite, in a module that imports nothing.

``python -m taskforge_conformance`` must not import anyio (or TaskForge) before pytest starts,
or pytest could no longer rewrite the asserts of plugins it loads.
"""

from __future__ import annotations

import pathlib

__all__ = ["PROFILE_ENV", "URL_ENV", "url_suite_path"]

#: The environment variable that picks the hypothesis profile.
PROFILE_ENV = "TASKFORGE_CONFORMANCE_PROFILE"
#: The environment variable ``python -m taskforge_conformance`` passes the URL in.
URL_ENV = "TASKFORGE_CONFORMANCE_URL"


def url_suite_path() -> pathlib.Path:
    """The bundled test module that runs the suite on the URL's backend."""
    return pathlib.Path(__file__).with_name("url_suite.py")
