"""Redis plugins: a leader-elected cron scheduler, a fleet-wide rate limiter, events between
instances.

Enable them with ``TaskForge(url, plugins=[RedisPlugin("redis://host:6379/0")])`` or by
setting ``TASKFORGE_REDIS_URL``. Without either, the core's in-process scheduler and limiter
are used unchanged. Importing this package does not import ``redis``; the components do, when
first used.
"""

from __future__ import annotations

from taskforge_backends.redis.plugin import RedisPlugin

__all__ = ["RedisPlugin"]
