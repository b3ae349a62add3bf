"""Procrastinate on PostgreSQL, in its own venv (``benchmarks/requirements/procrastinate.txt``).

Configured as its docs recommend for async jobs: an ``async def`` task, the psycopg 3
connector, one worker running 10 jobs at once (``concurrency=10``; the default of 1 is meant
for sync tasks), LISTEN/NOTIFY on (the default), jobs deferred with ``defer_async`` and, for
a batch, ``batch_defer_async``; the schema applied with ``apply_schema_async``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import procrastinate
from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent

CONCURRENCY = 10

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))


@app.task(name="noop", queue="bench")
async def noop(n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "system": "Procrastinate",
        "version": version("procrastinate"),
        "backend": "PostgreSQL (psycopg 3, binary)",
        "task": "@app.task async def noop(n)",
        "worker": f"app.run_worker_async(queues=['bench'], concurrency={CONCURRENCY}), "
        "listen_notify=True, jobs kept (delete_jobs='never', the default)",
        "wake-ups": "LISTEN/NOTIFY",
        "enqueue": "task.defer_async(n=...); bulk: task.batch_defer_async(*[{'n': ...}])",
    }


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
        return
    async with app.open_async():
        if args.command == "setup":
            await app.schema_manager.apply_schema_async()
        elif args.command == "worker":
            await app.run_worker_async(
                queues=["bench"], concurrency=args.concurrency or CONCURRENCY
            )
        elif args.command == "enqueue-single":
            started = time.perf_counter()
            for n in range(args.jobs):
                await noop.defer_async(n=n)
            emit({"seconds": time.perf_counter() - started})
        elif args.command in ("enqueue-bulk", "fill"):
            batch = args.batch if args.command == "enqueue-bulk" else 1000
            first = getattr(args, "first", 0)
            started = time.perf_counter()
            for start in range(first, first + args.jobs, batch):
                numbers = range(start, min(first + args.jobs, start + batch))
                await noop.batch_defer_async(*({"n": n} for n in numbers))
            emit({"seconds": time.perf_counter() - started, "batch": batch})
        elif args.command == "wakeup":
            await noop.defer_async(n=WARMUP)
            await asyncio.to_thread(wait_for_warmup)
            await asyncio.sleep(1.0)
            sent: dict[int, float] = {}
            delay = pace(args.jobs, args.interval)
            for n in range(args.jobs):
                await asyncio.sleep(delay(n))
                sent[n] = time.time()
                await noop.defer_async(n=n)
            _write_sent(sent)


if __name__ == "__main__":
    asyncio.run(main())
