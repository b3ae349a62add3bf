"""The Redis scheduler passes the scheduler conformance suite, catch-up tests included.

Each fleet gets its own key prefix under the test's ``redis_prefix`` (deleted afterwards), and
a short lease so that a stopped leader is replaced quickly.
"""

from __future__ import annotations

import pytest
from taskforge_conformance import SchedulerConformance

from taskforge_backends.redis._settings import RedisSettings
from taskforge_backends.redis.scheduler import RedisScheduler, SchedulerConfig
from taskforge_core.scheduler import Scheduler


class TestRedisScheduler(SchedulerConformance):
    catches_up = True

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str, redis_prefix: str) -> None:
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix

    def make_scheduler(self, fleet: str) -> Scheduler:
        settings = RedisSettings(url=self.redis_url, prefix=f"{self.redis_prefix}:{fleet}")
        return RedisScheduler(settings, SchedulerConfig(lease=1.0))
