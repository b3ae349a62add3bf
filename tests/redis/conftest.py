"""Fixtures of the Redis plugin tests: a key prefix of their own, cleaned up afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from taskforge_backends.redis import RedisPlugin


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted after the test."""
    import redis

    prefix = f"tftest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_plugin(redis_url: str, redis_prefix: str) -> RedisPlugin:
    return RedisPlugin(redis_url, prefix=redis_prefix)
