"""arq on Redis, in its own venv (``benchmarks/requirements/arq.txt``).

Configured as its docs show: an ``async def`` function taking ``ctx``, a ``WorkerSettings``
class run by ``run_worker`` (what the ``arq`` command does), its defaults (``max_jobs=10``,
``poll_delay=0.5`` s, results kept for an hour), jobs enqueued with
``ArqRedis.enqueue_job``. arq has no bulk-enqueue call, so its bulk column is n/a.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from _common import URL, Library, main, record
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import run_worker


async def noop(ctx: dict[str, Any], n: int) -> None:
    record(n)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL) if URL else RedisSettings()


def config() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "system": "arq",
        "version": version("arq"),
        "backend": "Redis",
        "task": "async def noop(ctx, n)",
        "worker": "run_worker(WorkerSettings) (max_jobs=10, poll_delay=0.5 s: the defaults)",
        "wake-ups": "polling every poll_delay (0.5 s)",
        "enqueue": "redis.enqueue_job('noop', n); no bulk API",
    }


#: The enqueuing side's connection pool, open while a command runs.
_redis: list[ArqRedis] = []


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[None]:
    redis = await create_pool(WorkerSettings.redis_settings)
    _redis.append(redis)
    try:
        yield
    finally:
        await redis.aclose()


async def enqueue(n: int) -> None:
    await _redis[0].enqueue_job("noop", n)


def worker(concurrency: int | None) -> None:
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(
        Library(
            name="arq",
            config=config,
            worker=worker,
            enqueue=enqueue,
            fill_concurrently=True,
            fill_size=100,
            session=session,
        ),
        __doc__ or "",
    )
