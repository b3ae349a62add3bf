"""PgQueuer on PostgreSQL, in its own venv (``benchmarks/requirements/pgqueuer.txt``).

Configured as its README recommends: an ``async def`` entrypoint, the worker started with
``pgqueuer.run(factory)`` (what ``pgq run module:factory`` calls; under uvloop, as the CLI
does; batch size 10, its default; LISTEN/NOTIFY wake-ups), jobs enqueued with
``Queries.enqueue`` (lists of entrypoints and payloads for a batch), the schema from
``Queries.install``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pgqueuer
from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

ENTRYPOINT = "noop"


def config() -> dict[str, Any]:
    return {
        "system": "PgQueuer",
        "version": pgqueuer.__version__,
        "backend": "PostgreSQL (asyncpg)",
        "task": "@pgq.entrypoint('noop') async def noop(job)",
        "worker": "pgqueuer.run(factory), as `pgq run` does, under uvloop, logging at WARNING "
        "(batch size 10, the default; concurrency unlimited)",
        "wake-ups": "LISTEN/NOTIFY",
        "enqueue": "Queries.enqueue('noop', payload); bulk: Queries.enqueue([...], [...], [...])",
    }


@contextlib.asynccontextmanager
async def factory() -> AsyncIterator[PgQueuer]:
    """What ``pgq run`` calls in the worker process."""
    quiet_logging()
    connection = await asyncpg.connect(URL)
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        record(int(job.payload or b"0"))

    try:
        yield pgq
    finally:
        await connection.close()


async def queries() -> tuple[asyncpg.Connection, Queries]:
    connection = await asyncpg.connect(URL)
    return connection, Queries(AsyncpgDriver(connection))


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
        return
    if args.command == "worker":
        # ``pgqueuer.run`` is ``pgq run`` without the CLI (whose option parsing fails with the
        # typer release pinned here); the CLI runs it under uvloop, and so does main() below.
        await pgqueuer.run(factory)
        return
    connection, q = await queries()
    try:
        if args.command == "setup":
            await q.install()
        elif args.command == "enqueue-single":
            started = time.perf_counter()
            for n in range(args.jobs):
                await q.enqueue(ENTRYPOINT, str(n).encode())
            emit({"seconds": time.perf_counter() - started})
        elif args.command in ("enqueue-bulk", "fill"):
            batch = args.batch if args.command == "enqueue-bulk" else 1000
            first = getattr(args, "first", 0)
            started = time.perf_counter()
            for start in range(first, first + args.jobs, batch):
                numbers = range(start, min(first + args.jobs, start + batch))
                await q.enqueue(
                    [ENTRYPOINT] * len(numbers),
                    [str(n).encode() for n in numbers],
                    [0] * len(numbers),
                )
            emit({"seconds": time.perf_counter() - started, "batch": batch})
        elif args.command == "wakeup":
            await q.enqueue(ENTRYPOINT, str(WARMUP).encode())
            await asyncio.to_thread(wait_for_warmup)
            await asyncio.sleep(1.0)
            sent: dict[int, float] = {}
            delay = pace(args.jobs, args.interval)
            for n in range(args.jobs):
                await asyncio.sleep(delay(n))
                sent[n] = time.time()
                await q.enqueue(ENTRYPOINT, str(n).encode())
            _write_sent(sent)
    finally:
        await connection.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
