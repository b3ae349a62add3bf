"""The PostgreSQL server's cost of the drain's two statements, without a worker around them,
and (``--enqueue``) the split of an enqueue's cost between the client and the server.

    .venv/bin/python benchmarks/pg_verbs.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

Fills a fresh database with ``--jobs`` jobs, then claims them ``--batch`` at a time and
completes each batch, one statement after the other on one connection (prepared, as the
backend runs them), and prints the wall time per call and the server process's CPU time per
job (read from ``/proc``, so Linux only, with the server on this machine). The drain's own
rate also depends on the worker; this isolates what a change to the SQL or the schema saves.
``--held N`` first claims N more jobs for another worker and leaves them processing, as the
other workers of a fleet do (a statement that scans processing jobs pays for them).

``--enqueue`` instead enqueues ``--jobs`` jobs through the API, ``--batch`` per
``enqueue_many`` call (1: ``enqueue``), and prints the rate with the CPU time per job of this
process (the client) and of the database's server processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import pathlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg
from harness import with_database

from taskforge_backends.postgres._sql import queries
from taskforge_core import Task, TaskForge

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _app(url: str) -> tuple[TaskForge, Task[[int], Coroutine[Any, Any, None]]]:
    app = TaskForge(url)

    @app.task(name="bench.noop", queue="bench")
    async def noop(n: int) -> None:
        return None

    return app, noop


async def _fill(url: str, jobs: int) -> None:
    app, noop = _app(url)
    async with app:
        for start in range(0, jobs, 1000):
            await noop.enqueue_many([(n,) for n in range(start, min(jobs, start + 1000))])


@contextlib.asynccontextmanager
async def _scratch_database(
    admin_url: str,
) -> AsyncIterator[tuple[str, str, asyncpg.Connection]]:
    """A new database for one measurement, dropped after it: its name, its URL, and a
    connection to the admin database (which never counts as one of its sessions)."""
    name = f"tfverbs_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name, with_database(admin_url, name), admin
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def measure_enqueue(admin_url: str, jobs: int, batch: int) -> dict[str, float]:
    async with _scratch_database(admin_url) as (name, url, admin):
        app, noop = _app(url)
        async with app:
            await noop.enqueue_many([(n,) for n in range(batch)])  # migrated, queue cached
            pids = [
                row[0]
                for row in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", name
                )
            ]
            server, client = sum(map(_cpu_seconds, pids)), time.process_time()
            started = time.perf_counter()
            for start in range(0, jobs, batch):
                if batch == 1:
                    await noop.enqueue(start)
                else:
                    end = min(jobs, start + batch)
                    await noop.enqueue_many([(n,) for n in range(start, end)])
            wall = time.perf_counter() - started
            client = time.process_time() - client
            server = sum(map(_cpu_seconds, pids)) - server
    return {
        "jobs_per_second": jobs / wall,
        "wall_us_per_job": wall / jobs * 1e6,
        "client_cpu_us_per_job": client / jobs * 1e6,
        "server_cpu_us_per_job": server / jobs * 1e6,
    }


async def measure(admin_url: str, jobs: int, batch: int, held: int = 0) -> dict[str, float]:
    async with _scratch_database(admin_url) as (_, url, _admin):
        await _fill(url, jobs + held)
        conn = await asyncpg.connect(url, server_settings={"jit": "off"})
        try:
            await conn.execute("VACUUM ANALYZE taskforge.jobs")
            claim = await conn.prepare(queries()["claim_one_queue"])
            complete = await conn.prepare(queries()["complete"])
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            worker, lease = uuid.uuid4(), dt.timedelta(seconds=30)
            if held:
                await claim.fetch(None, "default", uuid.uuid4(), lease, held, "bench")
            claiming = completing = 0.0
            calls = 0
            cpu = _cpu_seconds(pid)
            while True:
                started = time.perf_counter()
                rows = await claim.fetch(None, "default", worker, lease, batch, "bench")
                claiming += time.perf_counter() - started
                if not rows:
                    break
                started = time.perf_counter()
                await complete.fetch(
                    None,
                    [r["id"] for r in rows],
                    [r["execution_id"] for r in rows],
                    ["null"] * len(rows),
                )
                completing += time.perf_counter() - started
                calls += 1
            cpu = _cpu_seconds(pid) - cpu
        finally:
            await conn.close()
    return {
        "claim_ms_per_call": claiming / calls * 1000,
        "complete_ms_per_call": completing / calls * 1000,
        "server_cpu_us_per_job": cpu / jobs * 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--held", type=int, default=0, help="jobs left processing meanwhile")
    p.add_argument("--enqueue", action="store_true", help="measure enqueue instead")
    args = p.parse_args()
    if args.enqueue:
        cost = asyncio.run(measure_enqueue(args.postgres, args.jobs, args.batch))
        print(
            f"enqueue, batch {args.batch}: {cost['jobs_per_second']:,.0f} jobs/s; per job: "
            f"wall {cost['wall_us_per_job']:.1f} µs, client CPU "
            f"{cost['client_cpu_us_per_job']:.1f} µs, server CPU "
            f"{cost['server_cpu_us_per_job']:.1f} µs"
        )
        return
    result = asyncio.run(measure(args.postgres, args.jobs, args.batch, args.held))
    print(
        f"batch {args.batch}, {args.held} held: claim {result['claim_ms_per_call']:.2f} ms, "
        f"complete {result['complete_ms_per_call']:.2f} ms per call; "
        f"server CPU {result['server_cpu_us_per_job']:.1f} µs per job"
    )


if __name__ == "__main__":
    main()
