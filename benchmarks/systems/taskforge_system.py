"""TaskForge, on SQLite or PostgreSQL (whichever ``BENCH_URL`` names), in the project's venv.

Configured as the docs recommend for async no-op jobs: an ``async def`` task, one worker with
``concurrency`` jobs at once (the claim batch is the concurrency), wake-ups pushed by
LISTEN/NOTIFY on PostgreSQL and by an inotify watch on SQLite's WAL across processes,
every other setting at its default (SQLite ``synchronous=normal``, PostgreSQL
``synchronous_commit`` as the server has it, lease 30 s).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio
from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent

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


async def setup() -> None:
    await app.storage()  # migrates


async def enqueue_single(jobs: int) -> dict[str, Any]:
    started = time.perf_counter()
    for n in range(jobs):
        await noop.enqueue(n)
    return {"seconds": time.perf_counter() - started}


async def enqueue_bulk(jobs: int, batch: int, first: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(first, first + jobs, batch):
        await noop.enqueue_many([(n,) for n in range(start, min(first + jobs, start + batch))])
    return {"seconds": time.perf_counter() - started, "batch": batch}


async def worker(concurrency: int) -> None:
    await Worker(app, [QUEUE], concurrency=concurrency).run(handle_signals=True)


async def wakeup(jobs: int, interval: float) -> None:
    await noop.enqueue(WARMUP)
    await anyio.to_thread.run_sync(wait_for_warmup)
    await anyio.sleep(1.0)  # let the worker go idle
    sent: dict[int, float] = {}
    delay = pace(jobs, interval)
    for n in range(jobs):
        await anyio.sleep(delay(n))
        sent[n] = time.time()
        await noop.enqueue(n)
    _write_sent(sent)


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    try:
        if args.command == "config":
            emit(config())
        elif args.command == "setup":
            await setup()
        elif args.command == "enqueue-single":
            emit(await enqueue_single(args.jobs))
        elif args.command == "enqueue-bulk":
            emit(await enqueue_bulk(args.jobs, args.batch))
        elif args.command == "fill":
            await enqueue_bulk(args.jobs, 1000, args.first)
        elif args.command == "worker":
            await worker(args.concurrency or CONCURRENCY)
        elif args.command == "wakeup":
            await wakeup(args.jobs, args.interval)
    finally:
        await app.close()


if __name__ == "__main__":
    anyio.run(main, backend_options=LOOP)
    sys.exit(0)
