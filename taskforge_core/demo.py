"""``taskforge demo``: TaskForge's main job, end to end, on a fresh SQLite file.

It defines a few tasks (async and plain, some that fail and retry, one that dead-letters, a
dependency chain, delayed jobs), enqueues them in batches, runs a worker with a live progress
line, and prints a summary. A small plugin counts outcomes and wait times through the same hooks
a metrics plugin uses.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pathlib
import sys
import time
from collections import Counter
from collections.abc import Coroutine
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
from taskforge_core.worker import Worker

__all__ = ["run_demo"]


class DemoMetrics:
    """Counts outcomes and measures due-to-start waits, as a plugin."""

    def __init__(self, expected: int) -> None:
        #: Jobs whose final outcome (succeeded or dead-lettered) ends the demo.
        self.expected = expected
        self.all_finished = anyio.Event()
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
        if _finished(self) >= self.expected:
            self.all_finished.set()


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


def demo_plan(total: int) -> dict[str, int]:
    """How many jobs of each kind make up about ``total`` jobs ("jobs" is the exact sum)."""
    plan = {
        "flaky": max(1, total // 25),
        "doomed": max(1, total // 500),
        "chains": max(1, total // 300),
        "delayed": max(1, total // 200),
        "checksum": max(1, total // 20),
    }
    plan["add"] = max(1, total - sum(plan.values()) - 2 * plan["chains"])
    plan["jobs"] = (
        plan["add"]
        + plan["checksum"]
        + plan["flaky"]
        + plan["doomed"]
        + plan["delayed"]
        + 3 * plan["chains"]
    )
    return plan


async def enqueue_demo_jobs(app: TaskForge, plan: dict[str, int], batch: int = 500) -> None:
    """Enqueue the planned jobs in batches of ``batch`` (each batch one round trip)."""
    tasks = app.tasks
    await (
        tasks["demo.remind"].options(delay=1.0).enqueue_many([(i,) for i in range(plan["delayed"])])
    )
    await tasks["demo.flaky"].enqueue_many([(i,) for i in range(plan["flaky"])])
    await tasks["demo.doomed"].enqueue_many([Call(args=(i,)) for i in range(plan["doomed"])])
    for i in range(plan["chains"]):
        first = await tasks["demo.fetch"].enqueue(i)
        second = await tasks["demo.transform"].options(depends_on=[first]).enqueue(i)
        await tasks["demo.store"].options(depends_on=[second]).enqueue(i)
    await tasks["demo.checksum"].enqueue_many([(i,) for i in range(plan["checksum"])])
    for start in range(0, plan["add"], batch):
        count = min(batch, plan["add"] - start)
        await tasks["demo.add"].enqueue_many([(i, i) for i in range(start, start + count)])


def _finished(metrics: DemoMetrics) -> int:
    return metrics.outcomes[ExecutionStatus.SUCCEEDED] + metrics.outcomes[ExecutionStatus.FAILED]


async def _show_progress(metrics: DemoMetrics, total: int, started: float) -> None:
    interactive = sys.stdout.isatty()
    while True:
        await anyio.sleep(0.2 if interactive else 1.0)
        finished = _finished(metrics)
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
) -> str:
    """Run the demo on a fresh SQLite file at ``path``; returns the summary line.

    The worker starts first and the jobs are enqueued while it runs, so the wait figures are
    those of a queue under load: the time from when a job was due to when it started.
    """
    db = pathlib.Path(path)
    await anyio.to_thread.run_sync(_remove_database, db)
    plan = demo_plan(jobs)
    metrics = DemoMetrics(expected=plan["jobs"])
    app = build_demo_app(f"sqlite:///{db}", metrics)
    print(
        f"TaskForge demo on {db}: {plan['jobs']:,} jobs: {plan['add']:,} add, "
        f"{plan['checksum']:,} checksum (sync, thread pool), {plan['flaky']:,} flaky (retried), "
        f"{plan['doomed']:,} doomed (dead-lettered), {plan['chains']:,} chains of 3, "
        f"{plan['delayed']:,} delayed by 1 s"
    )
    # Failures are the point of some demo tasks: keep their per-job warnings off the screen.
    logging.getLogger("taskforge").setLevel(logging.ERROR)

    worker = Worker(app, {"default": 3, "cpu": 1}, concurrency=concurrency, poll_interval=0.05)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        enqueue_start = time.monotonic()
        await enqueue_demo_jobs(app, plan)
        enqueue_seconds = time.monotonic() - enqueue_start
        progress = anyio.CancelScope()
        tg.start_soon(_run_in_scope, progress, _show_progress(metrics, plan["jobs"], started))
        with anyio.fail_after(600):
            await metrics.all_finished.wait()
        progress.cancel()
        worker.drain()
    print()

    stats = {row.queue: row.counts for row in await app.queue_stats()}
    await app.close()
    succeeded = sum(c.get(JobStatus.SUCCEEDED, 0) for c in stats.values())
    failed = sum(c.get(JobStatus.FAILED, 0) for c in stats.values())
    busy = (metrics.last_finish or started) - (metrics.first_start or started)
    waits_ms = [w * 1000 for w in metrics.waits]
    summary = (
        f"summary: {succeeded:,} succeeded, {metrics.outcomes[ExecutionStatus.RETRYING]:,} "
        f"retried, {failed:,} dead-lettered; {_finished(metrics) / busy:,.0f} jobs/s; "
        f"wait p50 {_percentile(waits_ms, 0.5):.1f} ms, p99 {_percentile(waits_ms, 0.99):.1f} ms"
    )
    print(f"enqueued {plan['jobs']:,} jobs in {enqueue_seconds:.2f} s while the worker ran")
    print(summary)
    print(f"inspect it: taskforge --url sqlite:///{db} dlq list")
    return summary


async def _run_in_scope(scope: anyio.CancelScope, coro: Coroutine[Any, Any, None]) -> None:
    with scope:
        await coro
