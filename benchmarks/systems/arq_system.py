"""arq on Redis, in its own venv (``benchmarks/requirements/arq.txt``).

Configured as its docs show: an ``async def`` function taking ``ctx``, a ``WorkerSettings``
class run by ``run_worker`` (what the ``arq`` command does), its defaults (``max_jobs=10``,
``poll_delay=0.5`` s, results kept for an hour), jobs enqueued with
``ArqRedis.enqueue_job``. arq has no bulk-enqueue call, so its bulk column is n/a.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent
from arq import create_pool
from arq.connections import RedisSettings
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


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
        return
    redis = await create_pool(WorkerSettings.redis_settings)
    try:
        if args.command == "setup":
            pass
        elif args.command == "enqueue-single":
            started = time.perf_counter()
            for n in range(args.jobs):
                await redis.enqueue_job("noop", n)
            emit({"seconds": time.perf_counter() - started})
        elif args.command == "fill":
            for start in range(args.first, args.first + args.jobs, 100):
                numbers = range(start, min(args.first + args.jobs, start + 100))
                await asyncio.gather(*(redis.enqueue_job("noop", n) for n in numbers))
        elif args.command == "wakeup":
            await redis.enqueue_job("noop", WARMUP)
            await asyncio.to_thread(wait_for_warmup)
            await asyncio.sleep(1.0)
            sent: dict[int, float] = {}
            delay = pace(args.jobs, args.interval)
            for n in range(args.jobs):
                await asyncio.sleep(delay(n))
                sent[n] = time.time()
                await redis.enqueue_job("noop", n)
            _write_sent(sent)
        else:
            raise SystemExit(f"{args.command}: not supported by arq")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    args = parser(__doc__ or "").parse_args()
    if args.command == "worker":
        quiet_logging()
        run_worker(WorkerSettings)  # type: ignore[arg-type]
    else:
        asyncio.run(main())
