"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

#: Where the service tests find their servers unless told otherwise.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test under asyncio and under trio."""
    return str(request.param)


def _require_server(name: str, url: str) -> str:
    """Return ``url`` if its server accepts TCP connections; otherwise skip the test, or fail
    it when running in CI (``CI=true``), where a missing server is a broken set-up."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=2):
            return url
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI needs it: start it before running the tests")
        pytest.skip(f"{message}; set TASKFORGE_TEST_{name.upper()}_URL or start it")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL server for tests (``TASKFORGE_TEST_POSTGRES_URL``)."""
    url = os.environ.get("TASKFORGE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return _require_server("postgres", url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis server for tests (``TASKFORGE_TEST_REDIS_URL``)."""
    url = os.environ.get("TASKFORGE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    return _require_server("redis", url)
