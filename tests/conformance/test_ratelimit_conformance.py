"""The core's in-process limiter passes the rate limiter conformance suite.

It is not shared across processes, so the several-process test skips; the Redis limiter runs
the same suite in ``tests/redis/test_redis_ratelimit_conformance.py``.
"""

from __future__ import annotations

from taskforge_conformance import RateLimiterConformance

from taskforge_core.clock import SystemClock
from taskforge_core.ratelimit import InProcessRateLimiter, RateLimiter


class TestInProcessRateLimiter(RateLimiterConformance):
    async def make_limiter(self, namespace: str) -> RateLimiter:
        return InProcessRateLimiter(SystemClock())
