"""The Redis plugin object, and the entry-point hook that enables it from the environment.

Kept light: loading plugins imports this module in every TaskForge process, so ``redis`` is
imported only by the components, when a worker first uses them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from taskforge_backends.redis._settings import DEFAULT_PREFIX, RedisSettings
from taskforge_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from taskforge_backends.redis.events import RedisHealth
    from taskforge_backends.redis.ratelimit import RedisRateLimiter
    from taskforge_backends.redis.scheduler import SchedulerConfig, Schedules
    from taskforge_core.app import TaskForge
    from taskforge_core.events import EventBus
    from taskforge_core.scheduler import Scheduler

__all__ = ["ENV_PREFIX", "ENV_URL", "RedisPlugin", "taskforge_app_created"]

#: Setting this enables the Redis plugins for every app that has not registered one by hand.
ENV_URL = "TASKFORGE_REDIS_URL"
#: Optional key prefix for the plugins enabled through :data:`ENV_URL`.
ENV_PREFIX = "TASKFORGE_REDIS_PREFIX"

logger = logging.getLogger("taskforge.redis")


class RedisPlugin:
    """Fleet-wide scheduling, rate limiting and events through one Redis.

    ``TaskForge(url, plugins=[RedisPlugin("redis://127.0.0.1:6379/0")])``. Its hooks answer
    before the core's in-process fallbacks.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        scheduler: SchedulerConfig | None = None,
    ) -> None:
        self.settings = RedisSettings(url=url, prefix=prefix)
        #: Settings of the cron scheduler (lease, missed-tick policy); None for the defaults.
        self.scheduler_config = scheduler
        self._warned_no_asyncio = False
        self._event_health: RedisHealth | None = None

    def __repr__(self) -> str:
        return f"<RedisPlugin {self.settings.url} prefix={self.settings.prefix!r}>"

    # -- rate limiter ------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def taskforge_rate_limiter(self, app: TaskForge) -> RedisRateLimiter:
        """A :class:`~taskforge_backends.redis.ratelimit.RedisRateLimiter`: the limits of
        every worker using this Redis and prefix are counted together. A new one per worker
        (its connections belong to the worker's event loop; the worker closes it)."""
        from taskforge_backends.redis.ratelimit import RedisRateLimiter

        return RedisRateLimiter(self.settings)

    # -- cron scheduler ----------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def taskforge_scheduler(self, app: TaskForge) -> Scheduler:
        """A :class:`~taskforge_backends.redis.scheduler.RedisScheduler`: one leader among the
        instances fires each tick once, in place of the core's in-process scheduler."""
        from taskforge_backends.redis.scheduler import RedisScheduler

        return RedisScheduler(self.settings, self.scheduler_config)

    @property
    def schedules(self) -> Schedules:
        """Add, remove and list cron entries at run time: ``await plugin.schedules.add(entry)``."""
        from taskforge_backends.redis.scheduler import Schedules

        return Schedules(self.settings)

    @hookimpl
    def taskforge_event_bus(self, app: TaskForge) -> EventBus | None:
        """A new :class:`~taskforge_backends.redis.events.RedisEventBus` for ``app``'s project.

        None outside asyncio (redis.asyncio cannot run under trio): events are only a faster
        path, so TaskForge then works from storage alone (heartbeats, polling), with one
        warning per plugin rather than an error.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if not self._warned_no_asyncio:
                self._warned_no_asyncio = True
                logger.warning(
                    "Redis events need asyncio (redis.asyncio): this event loop gets none; "
                    "cancels and drains take effect at the next heartbeat"
                )
            return None
        from taskforge_backends.redis.events import RedisEventBus, RedisHealth

        if self._event_health is None:
            self._event_health = RedisHealth()
        return RedisEventBus(self.settings, app.project, self._event_health)


@hookimpl
def taskforge_app_created(app: TaskForge) -> None:
    """Register a :class:`RedisPlugin` when ``TASKFORGE_REDIS_URL`` is set and the app has none."""
    url = os.environ.get(ENV_URL)
    if not url:
        return
    if any(isinstance(p, RedisPlugin) for p in app.plugins.get_plugins()):
        return
    app.plugins.register(RedisPlugin(url, prefix=os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX))
