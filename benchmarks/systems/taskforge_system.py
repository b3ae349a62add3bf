"""TaskForge, on SQLite or PostgreSQL (whichever ``BENCH_URL`` names), in the project's venv.

Configured as the docs recommend for async no-op jobs: an ``async def`` task, one worker with
``concurrency`` jobs at once (the claim batch is the concurrency), wake-ups pushed by
LISTEN/NOTIFY on PostgreSQL and by an inotify watch on SQLite's WAL across processes,
every other setting at its default (SQLite ``synchronous=normal``, PostgreSQL
``synchronous_commit`` as the server has it, lease 30 s).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from _common import URL, Library, main, record

from taskforge_core import TaskForge, Worker
from taskforge_core.cli import loop_options

#: The event loop, chosen as ``taskforge worker`` chooses it: uvloop when installed (the
#: project's venv has it, through ``taskforge[all]``).
LOOP = loop_options(os.environ.get("TASKFORGE_LOOP", "auto"))

QUEUE = "bench"
#: Jobs one worker runs at once; its claims take as many.
CONCURRENCY = 100

app = TaskForge(URL)


@app.task(name="bench.noop", queue=QUEUE)
async def noop(n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    backend = (
        "PostgreSQL (asyncpg)" if URL.startswith("postgres") else "SQLite (sqlite3 in a thread)"
    )
    return {
        "system": "TaskForge",
        "version": "0.1.0 (this checkout)",
        "backend": backend,
        "task": "async def noop(n)",
        "worker": f"Worker(app, ['bench'], concurrency={CONCURRENCY}), batch = concurrency",
        "wake-ups": "LISTEN/NOTIFY"
        if URL.startswith("postgres")
        else "inotify on the WAL (Linux), else a data_version poll every 20 ms",
        "durability": "server default synchronous_commit=on"
        if URL.startswith("postgres")
        else "WAL, synchronous=normal",
        "enqueue": "task.enqueue(n); bulk: task.enqueue_many([...])",
        "event loop": "uvloop (anyio), as `taskforge worker` runs when uvloop is installed"
        if LOOP["use_uvloop"]
        else "asyncio (anyio)",
    }


async def enqueue_batch(numbers: range) -> None:
    await noop.enqueue_many([(n,) for n in numbers])


async def setup() -> None:
    await app.storage()  # migrates


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[None]:
    try:
        yield
    finally:
        await app.close()


def worker(concurrency: int | None) -> None:
    async def run() -> None:
        async with app:
            await Worker(app, [QUEUE], concurrency=concurrency or CONCURRENCY).run(
                handle_signals=True
            )

    anyio.run(run, backend_options=LOOP)


if __name__ == "__main__":
    main(
        Library(
            name="TaskForge",
            config=config,
            worker=worker,
            enqueue=noop.enqueue,
            enqueue_batch=enqueue_batch,
            setup=setup,
            session=session,
            run=lambda command: anyio.run(command, backend_options=LOOP),
        ),
        __doc__ or "",
    )
    sys.exit(0)
