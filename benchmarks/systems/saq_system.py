"""SAQ on PostgreSQL or Redis (whichever ``BENCH_URL`` names), in its own venv
(``benchmarks/requirements/saq.txt``).

Configured as its README recommends: an ``async def`` function taking ``ctx``, a
``Queue.from_url`` queue, one ``Worker(queue, functions=[noop])`` with its default
``concurrency=10``, jobs enqueued with ``queue.enqueue``. SAQ has no bulk-enqueue call
(``Queue.map`` enqueues one by one, then waits for the results), so its bulk column is n/a.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from _common import URL, Library, main, record
from saq import Queue, Worker

CONCURRENCY = 10


async def noop(ctx: dict[str, Any], *, n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    from importlib.metadata import version

    store = "PostgreSQL (psycopg 3, binary)" if URL.startswith("postgres") else "Redis"
    return {
        "system": "SAQ",
        "version": version("saq"),
        "backend": store,
        "task": "async def noop(ctx, *, n)",
        "worker": f"Worker(queue, functions=[noop], concurrency={CONCURRENCY}) (defaults)",
        "wake-ups": "LISTEN/NOTIFY" if URL.startswith("postgres") else "BLMOVE on a Redis list",
        "enqueue": "queue.enqueue('noop', n=...); no bulk API",
    }


#: The enqueuing side's queue, connected while a command runs.
_queue: list[Queue] = []


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[None]:
    queue = Queue.from_url(URL)
    await queue.connect()  # creates what it needs: setup has nothing left to do
    _queue.append(queue)
    try:
        yield
    finally:
        await queue.disconnect()


async def enqueue(n: int) -> None:
    await _queue[0].enqueue("noop", n=n)


def worker(concurrency: int | None) -> None:
    async def run() -> None:
        queue = Queue.from_url(URL)
        worker = Worker(queue, functions=[noop], concurrency=concurrency or CONCURRENCY)
        await queue.connect()  # as the `saq` command does before it starts a worker
        await worker.start()

    asyncio.run(run())


if __name__ == "__main__":
    main(
        Library(
            name="SAQ",
            config=config,
            worker=worker,
            enqueue=enqueue,
            fill_concurrently=True,
            fill_size=100,
            session=session,
        ),
        __doc__ or "",
    )
