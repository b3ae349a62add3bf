"""The Redis limiter passes the rate limiter conformance suite, several processes included."""

from __future__ import annotations

import os

import pytest
from taskforge_conformance import RateLimiterConformance

from taskforge_backends.redis._settings import RedisSettings
from taskforge_backends.redis.ratelimit import RedisRateLimiter
from taskforge_core.ratelimit import RateLimiter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class TestRedisRateLimiter(RateLimiterConformance):
    shared_across_processes = True

    @pytest.fixture
    def namespace(self, redis_prefix: str) -> str:
        """The test's own key prefix, deleted afterwards (``redis_prefix``)."""
        return redis_prefix

    async def make_limiter(self, namespace: str) -> RateLimiter:
        # Also called in the child processes of the several-process test, which have no
        # fixtures: the URL comes from the environment, like the redis_url fixture's.
        url = os.environ.get("TASKFORGE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
        return RedisRateLimiter(RedisSettings(url=url, prefix=namespace))
