"""``python -m taskforge_conformance URL [pytest options]``: the suite against a backend by URL.

A thin wrapper over :func:`pytest.main` on the bundled :mod:`taskforge_conformance.url_suite`.
Options after the URL go to pytest (``-x``, ``-k claim``, ``-q``); ``--profile NAME`` sets
``TASKFORGE_CONFORMANCE_PROFILE``. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import pytest

# Only the import-free names: pytest must start before anyio or TaskForge is imported.
from taskforge_conformance._names import PROFILE_ENV, URL_ENV, url_suite_path

__all__ = ["main"]

_EPILOG = """\
placeholders (each test gets a fresh, empty store):
  {tmp}  a new empty directory, e.g. sqlite:///{tmp}/jobs.db
  {id}   a short unique token, e.g. a schema or key prefix: redis://localhost/0?prefix={id}
A URL without placeholders must open a new empty store every time (memory://).
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taskforge_conformance",
        description="Run the TaskForge storage conformance suite against the backend a URL "
        "selects through the `taskforge` entry points.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="the backend URL, e.g. 'sqlite:///{tmp}/jobs.db'")
    parser.add_argument(
        "--profile",
        help=f"hypothesis profile: quick (default) or thorough; sets {PROFILE_ENV}",
    )
    args, pytest_args = parser.parse_known_args(argv)
    os.environ[URL_ENV] = args.url
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    return int(
        pytest.main(
            [
                str(url_suite_path()),
                "-p",
                "taskforge_conformance.pytest_plugin",
                "-p",
                "no:cacheprovider",
                *pytest_args,
            ]
        )
    )


if __name__ == "__main__":
    sys.exit(main())
