"""Procrastinate on PostgreSQL, in its own venv (``benchmarks/requirements/procrastinate.txt``).

Configured as its docs recommend for async jobs: an ``async def`` task, the psycopg 3
connector, one worker running 10 jobs at once (``concurrency=10``; the default of 1 is meant
for sync tasks), LISTEN/NOTIFY on (the default), jobs deferred with ``defer_async`` and, for
a batch, ``batch_defer_async``; the schema applied with ``apply_schema_async``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import procrastinate
from _common import URL, Library, main, record

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


async def enqueue(n: int) -> None:
    await noop.defer_async(n=n)


async def enqueue_batch(numbers: range) -> None:
    await noop.batch_defer_async(*({"n": n} for n in numbers))


def worker(concurrency: int | None) -> None:
    async def run() -> None:
        async with app.open_async():
            await app.run_worker_async(queues=["bench"], concurrency=concurrency or CONCURRENCY)

    asyncio.run(run())


if __name__ == "__main__":
    main(
        Library(
            name="Procrastinate",
            config=config,
            worker=worker,
            enqueue=enqueue,
            enqueue_batch=enqueue_batch,
            setup=app.schema_manager.apply_schema_async,
            session=app.open_async,
        ),
        __doc__ or "",
    )
