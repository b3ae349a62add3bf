"""``taskforge demo``: TaskForge's main job, end to end, on a fresh SQLite file.

It defines a few tasks (async and plain, some that fail and retry, one that dead-letters, a
dependency chain, delayed jobs), enqueues them in batches, runs a worker with a live progress
line, and prints a summary. A small plugin counts outcomes and wait times through the same hooks
a metrics plugin uses.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import sys
import time
from collections import Counter
from typing import Any

import anyio

from taskforge_core.app import TaskForge
from taskforge_core.context import JobContext, current_job
from taskforge_core.hookspecs import hookimpl
from taskforge_core.middleware import CallNext
from taskforge_core.models import Job
from taskforge_core.retry import Retry
from taskforge_core.states import ExecutionStatus, JobStatus
from taskforge_core.task import Call

__all__ = ["run_demo"]


class DemoMetrics:
    """Counts outcomes and measures due-to-start waits, as a plugin."""

    def __init__(self) -> None:
        self.outcomes: Counter[ExecutionStatus] = Counter()
        self.waits: list[float] = []
        self.first_start: float | None = None
        self.last_finish: float | None = None

    @hookimpl
    def taskforge_execution_middleware(self, app: TaskForge) -> Any:
        async def measure(ctx: JobContext, call_next: CallNext) -> Any:
            now = time.monotonic()
            if self.first_start is None:
                self.first_start = now
            if not ctx.job.depends_on:
                due = ctx.job.scheduled_for
                self.waits.append((app.clock.now() - due).total_seconds())
            return await call_next()

        return measure

    @hookimpl
    def taskforge_job_finished(
        self, app: TaskForge, job: Job, outcome: ExecutionStatus, run_seconds: float
    ) -> None:
        self.outcomes[outcome] += 1
        self.last_finish = time.monotonic()


def _remove_database(db: pathlib.Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def build_demo_app(url: str, metrics: DemoMetrics) -> TaskForge:
    """The demo's application and tasks."""
    app = TaskForge(url, plugins=[metrics])

    @app.task(name="demo.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="demo.checksum", queue="cpu")
    def checksum(n: int) -> str:  # a plain function: runs in the worker's thread pool
        return hashlib.sha256(str(n).encode()).hexdigest()[:12]

    @app.task(name="demo.flaky", retry=Retry(max_attempts=4, base_delay=0.05, max_delay=0.2))
    async def flaky(n: int) -> int:
        ctx = current_job()
        if ctx.attempt <= n % 3:  # fails once or twice, then succeeds
            raise ConnectionError(f"upstream refused item {n} (attempt {ctx.attempt})")
        ctx.log.info("recovered", item=n, attempt=ctx.attempt)
        return n

    @app.task(name="demo.doomed", retry=Retry(max_attempts=2, base_delay=0.05))
    async def doomed(n: int) -> None:
        raise ValueError(f"record {n} is malformed")

    @app.task(name="demo.fetch")
    async def fetch(n: int) -> int:
        return n

    @app.task(name="demo.transform")
    async def transform(n: int) -> int:
        return n * 2

    @app.task(name="demo.store")
    async def store(n: int) -> None:
        return None

    @app.task(name="demo.remind")
    async def remind(n: int) -> None:
        return None

    return app


async def enqueue_demo_jobs(app: TaskForge, total: int) -> dict[str, int]:
    """Enqueue about ``total`` jobs in batches; returns how many of each kind."""
    plan = {
        "flaky": max(1, total // 25),
        "doomed": max(1, total // 500),
        "chains": max(1, total // 300),
        "delayed": max(1, total // 200),
        "checksum": max(1, total // 20),
    }
    plan["add"] = max(1, total - sum(plan.values()) - 2 * plan["chains"])
    batch = 1000
    for start in range(0, plan["add"], batch):
        count = min(batch, plan["add"] - start)
        await app.tasks["demo.add"].enqueue_many([(i, i) for i in range(start, start + count)])
    await app.tasks["demo.checksum"].enqueue_many([(i,) for i in range(plan["checksum"])])
    await app.tasks["demo.flaky"].enqueue_many([(i,) for i in range(plan["flaky"])])
    await app.tasks["demo.doomed"].enqueue_many([Call(args=(i,)) for i in range(plan["doomed"])])
    await (
        app.tasks["demo.remind"]
        .options(delay=1.0)
        .enqueue_many([(i,) for i in range(plan["delayed"])])
    )
    for i in range(plan["chains"]):
        first = await app.tasks["demo.fetch"].enqueue(i)
        second = await app.tasks["demo.transform"].options(depends_on=[first]).enqueue(i)
        await app.tasks["demo.store"].options(depends_on=[second]).enqueue(i)
    plan["jobs"] = (
        plan["add"]
        + plan["checksum"]
        + plan["flaky"]
        + plan["doomed"]
        + plan["delayed"]
        + 3 * plan["chains"]
    )
    return plan


async def _show_progress(metrics: DemoMetrics, total: int, started: float) -> None:
    interactive = sys.stdout.isatty()
    while True:
        await anyio.sleep(0.2 if interactive else 1.0)
        finished = sum(
            metrics.outcomes[o] for o in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)
        )
        elapsed = time.monotonic() - started
        width = 30
        filled = int(width * finished / total) if total else width
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {finished:,}/{total:,} done  "
            f"{finished / elapsed:,.0f} jobs/s  "
            f"retried {metrics.outcomes[ExecutionStatus.RETRYING]:,}  "
            f"dead-lettered {metrics.outcomes[ExecutionStatus.FAILED]:,}"
        )
        print(("\r" + line) if interactive else line, end="" if interactive else "\n", flush=True)


async def run_demo(
    *, jobs: int = 10_000, concurrency: int = 100, path: str = "taskforge-demo.db"
) -> None:
    """Run the demo on a fresh SQLite file at ``path``."""
    from taskforge_core.worker import Worker

    db = pathlib.Path(path)
    await anyio.to_thread.run_sync(_remove_database, db)
    metrics = DemoMetrics()
    app = build_demo_app(f"sqlite:///{db}", metrics)
    print(f"TaskForge demo: {db} (pid {os.getpid()})")

    enqueue_start = time.monotonic()
    plan = await enqueue_demo_jobs(app, jobs)
    enqueue_seconds = time.monotonic() - enqueue_start
    print(
        f"enqueued {plan['jobs']:,} jobs in {enqueue_seconds:.2f} s "
        f"({plan['jobs'] / enqueue_seconds:,.0f} jobs/s): {plan['add']:,} add, "
        f"{plan['checksum']:,} checksum (sync), {plan['flaky']:,} flaky, "
        f"{plan['doomed']:,} doomed, {plan['chains']:,} chains of 3, "
        f"{plan['delayed']:,} delayed by 1 s"
    )

    worker = Worker(app, {"default": 3, "cpu": 1}, concurrency=concurrency, poll_interval=0.05)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_show_progress, metrics, plan["jobs"], started)
        await worker.run(stop_when_idle=True)
        tg.cancel_scope.cancel()
    print()

    stats = {row.queue: row.counts for row in await app.queue_stats()}
    succeeded = sum(c.get(JobStatus.SUCCEEDED, 0) for c in stats.values())
    failed = sum(c.get(JobStatus.FAILED, 0) for c in stats.values())
    busy = (metrics.last_finish or started) - (metrics.first_start or started)
    done = metrics.outcomes[ExecutionStatus.SUCCEEDED] + metrics.outcomes[ExecutionStatus.FAILED]
    waits_ms = [w * 1000 for w in metrics.waits]
    await app.close()
    print(
        f"summary: {succeeded:,} succeeded, {metrics.outcomes[ExecutionStatus.RETRYING]:,} "
        f"retried, {failed:,} dead-lettered; {done / busy if busy else math.nan:,.0f} jobs/s; "
        f"wait p50 {_percentile(waits_ms, 0.5):.1f} ms, p99 {_percentile(waits_ms, 0.99):.1f} ms"
    )
    print(f"inspect it: taskforge --url sqlite:///{db} dlq list")
