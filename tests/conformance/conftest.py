"""Show the conformance profile in the header when these tests are run directly."""

from __future__ import annotations

from taskforge_conformance.pytest_plugin import pytest_report_header

__all__ = ["pytest_report_header"]
