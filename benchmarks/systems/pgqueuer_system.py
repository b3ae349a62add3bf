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
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pgqueuer
from _common import URL, Library, main, quiet_logging, record
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


#: The enqueuing side's queries, open while a command runs.
_queries: list[Queries] = []


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[None]:
    connection = await asyncpg.connect(URL)
    _queries.append(Queries(AsyncpgDriver(connection)))
    try:
        yield
    finally:
        await connection.close()


async def setup() -> None:
    await _queries[0].install()


async def enqueue(n: int) -> None:
    await _queries[0].enqueue(ENTRYPOINT, str(n).encode())


async def enqueue_batch(numbers: range) -> None:
    await _queries[0].enqueue(
        [ENTRYPOINT] * len(numbers), [str(n).encode() for n in numbers], [0] * len(numbers)
    )


def run(command: Any) -> None:
    """Under uvloop, as the ``pgq`` command runs."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(command())
    else:
        uvloop.run(command())


def worker(concurrency: int | None) -> None:
    # ``pgqueuer.run`` is ``pgq run`` without the CLI (whose option parsing fails with the
    # typer release pinned here).
    run(lambda: pgqueuer.run(factory))


if __name__ == "__main__":
    main(
        Library(
            name="PgQueuer",
            config=config,
            worker=worker,
            enqueue=enqueue,
            enqueue_batch=enqueue_batch,
            setup=setup,
            session=session,
            run=run,
        ),
        __doc__ or "",
    )
