"""A pytest plugin that names the conformance profile in the session header.

``python -m taskforge_conformance`` loads it; in your own test run add
``-p taskforge_conformance.pytest_plugin`` (or list it in ``pytest_plugins`` of your root
``conftest.py``) to see which profile ran.
"""

from __future__ import annotations

import pytest

from taskforge_conformance.profiles import PROFILE_ENV, active_profile, suite_settings

__all__ = ["pytest_report_header"]


def pytest_report_header(config: pytest.Config) -> str:
    name = active_profile()
    try:
        chosen = suite_settings()
    except LookupError as exc:
        return f"taskforge-conformance: {exc}"
    return (
        f"taskforge-conformance: profile {name!r} ({PROFILE_ENV}; "
        f"max_examples={chosen.max_examples}, stateful_step_count={chosen.stateful_step_count})"
    )
