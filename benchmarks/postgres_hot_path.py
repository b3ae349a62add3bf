"""The hot path of the PostgreSQL backend, measured on a scratch database.

::

    .venv/bin/python benchmarks/postgres_hot_path.py \\
        --url postgresql://postgres@127.0.0.1/postgres --jobs 10000 --batch 500 --json out.json

``--url`` names a server (and a database to connect to while creating the scratch one,
``taskforge_bench_<random>``, which is dropped at the end). Four phases:

1. **enqueue, single** — ``--singles`` calls of ``task.enqueue``, one job each: the web-handler
   case, one round trip and one commit per job;
2. **enqueue, bulk** — ``--jobs`` jobs through ``task.enqueue_many``, ``--batch`` per call;
3. **drain** — every job enqueued above run end to end by one
   ``Worker(app, concurrency=--concurrency).run(stop_when_idle=True)``;
4. **wake-up latency** — a worker idles with a 10 s poll interval while another process
   enqueues ``--wakeups`` jobs one at a time, 20 ms apart; each job records how long after its
   enqueue call began it started running (LISTEN/NOTIFY, not polling, is what wakes it).
   Reported as p50 / p99 / max.

Numbers depend on the server's ``synchronous_commit`` and disk: every commit of phases 1 and 4
waits for a WAL flush unless the URL says ``synchronous_commit=off``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import platform
import resource
import secrets
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from taskforge_core.app import TaskForge
from taskforge_core.worker import Worker

QUEUE = "bench"
LATENCY_QUEUE = "bench-latency"

#: Run in another process: enqueue jobs one at a time, each carrying the wall-clock time at
#: which its enqueue call began.
ENQUEUER = """
import asyncio, sys, time
from taskforge_backends.postgres import PostgresStorage
from taskforge_core.ids import uuid7
from taskforge_core.models import NewJob

async def main(url, count):
    async with PostgresStorage(url) as storage:
        await asyncio.sleep(0.5)
        for _ in range(count):
            began = time.time()
            await storage.enqueue(
                [NewJob(id=uuid7(), task="bench.latency", queue="bench-latency", args=(began,))]
            )
            await asyncio.sleep(0.02)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def _bench(url: str, args: argparse.Namespace) -> dict[str, Any]:
    app = TaskForge(url)
    latencies: list[float] = []
    all_woken = anyio.Event()

    @app.task(name="bench.noop", queue=QUEUE)
    async def noop(n: int) -> None:
        return None

    @app.task(name="bench.latency", queue=LATENCY_QUEUE)
    async def latency(began: float) -> None:
        latencies.append(time.time() - began)
        if len(latencies) >= args.wakeups:
            all_woken.set()

    results: dict[str, Any] = {}
    async with app:
        # 1. single enqueues.
        started = time.perf_counter()
        for i in range(args.singles):
            await noop.enqueue(i)
        seconds = time.perf_counter() - started
        results["enqueue_single"] = {"jobs": args.singles, "jobs_per_s": args.singles / seconds}

        # 2. bulk enqueues.
        started = time.perf_counter()
        for start in range(0, args.jobs, args.batch):
            await noop.enqueue_many(
                [(i,) for i in range(start, min(args.jobs, start + args.batch))]
            )
        seconds = time.perf_counter() - started
        results["enqueue_bulk"] = {
            "jobs": args.jobs,
            "batch": args.batch,
            "jobs_per_s": args.jobs / seconds,
        }

        # 3. drain everything with one worker.
        total = args.jobs + args.singles
        worker = Worker(app, [QUEUE], concurrency=args.concurrency, poll_interval=0.05)
        started = time.perf_counter()
        stats = await worker.run(stop_when_idle=True)
        seconds = time.perf_counter() - started
        if stats.succeeded != total:
            raise RuntimeError(f"the worker ran {stats.succeeded} jobs, expected {total}")
        results["drain"] = {
            "jobs": total,
            "concurrency": args.concurrency,
            "jobs_per_s": total / seconds,
        }

        # 4. wake-up latency from an enqueue in another process to the job's start.
        idle = Worker(app, [LATENCY_QUEUE], concurrency=4, poll_interval=10.0)
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: idle.run(task_status=task_status))
            await anyio.run_process(
                [sys.executable, "-c", ENQUEUER, url, str(args.wakeups)],
                stdout=None,
                stderr=None,
            )
            with anyio.fail_after(30):
                await all_woken.wait()
            idle.drain()
        ms = [value * 1000 for value in latencies]
        results["wakeup_ms"] = {
            "samples": len(ms),
            "p50": _percentile(ms, 0.50),
            "p99": _percentile(ms, 0.99),
            "max": max(ms),
            "mean": statistics.fmean(ms),
        }
    results["peak_rss_mib"] = _peak_rss_mib()
    return results


def _table(results: dict[str, Any]) -> str:
    wake = results["wakeup_ms"]
    return "\n".join(
        [
            f"{'enqueue, single':<22}{results['enqueue_single']['jobs_per_s']:>10,.0f} jobs/s",
            f"{'enqueue_many':<22}{results['enqueue_bulk']['jobs_per_s']:>10,.0f} jobs/s",
            f"{'worker drain':<22}{results['drain']['jobs_per_s']:>10,.0f} jobs/s",
            f"{'wake-up p50/p99/max':<22}{wake['p50']:>7.1f} / {wake['p99']:.1f} / "
            f"{wake['max']:.1f} ms",
            f"peak RSS {results['peak_rss_mib']:.0f} MiB",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server to benchmark on (a scratch database is created there)",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs enqueued in bulk (10000)")
    parser.add_argument("--batch", type=int, default=500, help="jobs per enqueue_many (500)")
    parser.add_argument("--singles", type=int, default=1_000, help="single enqueues (1000)")
    parser.add_argument("--concurrency", type=int, default=100, help="worker concurrency (100)")
    parser.add_argument("--wakeups", type=int, default=200, help="wake-up samples (200)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.batch, args.singles, args.concurrency, args.wakeups) < 1:
        parser.error("every count must be >= 1")
    logging.getLogger("taskforge").setLevel(logging.ERROR)

    name = f"taskforge_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(args.url, f'CREATE DATABASE "{name}"'))
    try:
        results = anyio.run(_bench, _with_database(args.url, name), args, backend="asyncio")
    finally:
        asyncio.run(_admin(args.url, f'DROP DATABASE "{name}" WITH (FORCE)'))

    async def server_version() -> str:
        conn = await asyncpg.connect(args.url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    version = asyncio.run(server_version())
    results["config"] = {
        "jobs": args.jobs,
        "batch": args.batch,
        "singles": args.singles,
        "concurrency": args.concurrency,
        "python": platform.python_version(),
        "postgres": version,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(f"PostgreSQL {version}: {args.jobs:,} bulk + {args.singles:,} single jobs")
    print(_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
