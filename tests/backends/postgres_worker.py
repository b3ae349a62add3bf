"""A worker process for the PostgreSQL fault tests (tests/backends/test_postgres_faults.py).

    python tests/backends/postgres_worker.py postgresql://host/db [--concurrency N]
    python tests/backends/postgres_worker.py postgresql://host/db --enqueue OUT --seconds S

The first form runs one :class:`Worker` with short leases and ``handle_signals=True`` and
prints its final stats as JSON on the last line of stdout. Its task ``fault.work`` sleeps the
given seconds and returns the worker's pid, so a test can tell which worker's result was kept.

The second form enqueues one job at a time for ``S`` seconds, appending the id of every
enqueue that returned to ``OUT`` (one per line, flushed at once); an enqueue that fails
because the database is unavailable is tried again with a new job (the failed one may or may
not have been stored: only enqueues that returned are promised).
"""

# ruff: noqa: E402 - the SIGTERM handler goes in before the imports, so a SIGTERM while this
# script still imports is noted rather than fatal.
from __future__ import annotations

import signal

#: A SIGTERM that arrives before the worker watches signals itself (while this script still
#: imports, or the storage opens) is noted here and turned into a drain once it runs.
_stopped_early: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: _stopped_early.append(signum))

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import anyio
import attrs

from taskforge_core import TaskForge
from taskforge_core.errors import StorageError
from taskforge_core.ids import uuid7
from taskforge_core.models import NewJob
from taskforge_core.worker import Worker

#: Short leases so a killed or frozen worker's jobs come back within seconds.
LEASE = 2.0


def make_app(url: str) -> TaskForge:
    app = TaskForge(url)

    @app.task(name="fault.work")
    async def work(seconds: float) -> int:
        await anyio.sleep(seconds)
        return os.getpid()

    return app


async def run_worker(url: str, concurrency: int) -> None:
    app = make_app(url)
    worker = Worker(
        app,
        concurrency=concurrency,
        lease=LEASE,
        heartbeat_interval=LEASE / 5,
        reclaim_interval=LEASE / 5,
        poll_interval=0.2,
        grace_period=10.0,
    )
    stats: list[Any] = []

    async def run(*, task_status: Any) -> None:
        stats.append(await worker.run(handle_signals=True, task_status=task_status))

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(run)  # registered, and watching signals itself
            if _stopped_early:
                worker.drain()
    finally:
        await app.close()
    print(json.dumps(attrs.asdict(stats[0])), flush=True)


async def run_enqueuer(url: str, out: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    app = make_app(url)
    while True:  # the server may be restarting while this process starts
        try:
            await app.open()
            break
        except StorageError:
            await anyio.sleep(0.1)
    try:
        with open(out, "a", encoding="utf-8") as sink:  # noqa: ASYNC230 - tiny appends
            while time.monotonic() < deadline:
                job = NewJob(id=uuid7(), task="fault.work", args=(0.001,), max_attempts=20)
                try:
                    await app.enqueue_jobs([job])
                except StorageError:
                    await anyio.sleep(0.05)
                    continue
                sink.write(f"{job.id}\n")
                sink.flush()
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--enqueue", metavar="OUT")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.enqueue:
        anyio.run(run_enqueuer, args.url, args.enqueue, args.seconds, backend="asyncio")
    else:
        anyio.run(run_worker, args.url, args.concurrency, backend="asyncio")


if __name__ == "__main__":
    main()
