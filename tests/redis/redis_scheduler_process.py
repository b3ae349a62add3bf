"""A worker process with the Redis scheduler, for tests/redis/test_redis_scheduler_processes.py.

    python tests/redis/redis_scheduler_process.py sqlite:///jobs.db redis://127.0.0.1:6379/0 PREFIX

It declares one periodic entry, ``every_second`` (``* * * * * *``), and runs a :class:`Worker`
(which runs the scheduler) with the default scheduler settings: a 3 s lease and catch-up of
missed ticks. It logs to stderr and stops on SIGTERM.
"""

from __future__ import annotations

import logging
import sys

import anyio

from taskforge_backends.redis import RedisPlugin
from taskforge_core import TaskForge
from taskforge_core.worker import Worker


def make_app(url: str, redis_url: str, prefix: str) -> TaskForge:
    app = TaskForge(url, plugins=[RedisPlugin(redis_url, prefix=prefix)])

    @app.periodic("* * * * * *", name="every_second")
    async def every_second() -> None:
        pass

    return app


async def main(url: str, redis_url: str, prefix: str) -> None:
    async with make_app(url, redis_url, prefix) as app:
        worker = Worker(app, concurrency=2, poll_interval=0.2, grace_period=2.0)
        await worker.run(handle_signals=True)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(process)d %(message)s"
    )
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], backend="asyncio")
