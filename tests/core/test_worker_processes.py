"""Workers as real processes: killed with SIGKILL, or stopped with SIGTERM, nothing is lost."""

from __future__ import annotations

import json
import pathlib
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from taskforge_core import JobStatus, NewJob, TaskForge
from taskforge_core.ids import uuid7
from taskforge_core.models import WorkerStatus
from taskforge_core.states import ExecutionStatus

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SCRIPT = pathlib.Path(__file__).with_name("worker_process.py")


@pytest.fixture
async def app(tmp_path: pathlib.Path, anyio_backend: str) -> AsyncIterator[TaskForge]:
    async with TaskForge(f"sqlite:///{tmp_path}/jobs.db") as application:
        yield application


@asynccontextmanager
async def worker_process(
    app: TaskForge, backend: str, *, stop_when_idle: bool = False
) -> AsyncIterator[anyio.abc.Process]:
    """A worker subprocess on the app's database; killed on exit if still running."""
    command = [sys.executable, str(SCRIPT), app.url, backend]
    if stop_when_idle:
        command.append("--stop-when-idle")
    async with await anyio.open_process(command, stderr=None) as process:
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()


async def enqueue(app: TaskForge, task: str, seconds: float, count: int) -> list[Any]:
    jobs = [NewJob(id=uuid7(), task=task, args=(seconds,), max_attempts=5) for _ in range(count)]
    return [handle.id for handle in await app.enqueue_jobs(jobs)]


async def counts(app: TaskForge) -> dict[JobStatus, int]:
    total: dict[JobStatus, int] = {}
    for queue in await app.queue_stats():
        for status, n in queue.counts.items():
            total[JobStatus(status)] = total.get(JobStatus(status), 0) + n
    return total


async def wait_for(app: TaskForge, status: JobStatus, at_least: int, timeout: float = 20) -> None:
    with anyio.fail_after(timeout):
        while True:
            if (await counts(app)).get(status, 0) >= at_least:
                return
            await anyio.sleep(0.02)


async def stats_of(process: anyio.abc.Process, timeout: float = 40) -> dict[str, Any]:
    """Wait for the worker to exit cleanly and return the stats it printed."""
    assert process.stdout is not None
    output = b""
    with anyio.fail_after(timeout):
        async for chunk in process.stdout:
            output += chunk
        await process.wait()
    assert process.returncode == 0, output
    stats: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return stats


async def assert_each_job_succeeded_once(app: TaskForge, job_ids: list[Any]) -> None:
    storage = await app.storage()
    jobs = await storage.get_jobs(job_ids, app.project)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * len(job_ids)
    for job_id in job_ids:
        statuses = [e.status for e in await storage.list_executions(job_id)]
        assert statuses.count(ExecutionStatus.SUCCEEDED) == 1, statuses


async def test_jobs_of_a_killed_worker_are_rerun_by_another(
    app: TaskForge, anyio_backend: str
) -> None:
    job_ids = await enqueue(app, "sleepy", 0.4, 6) + await enqueue(app, "sleepy_sync", 0.4, 6)

    async with worker_process(app, anyio_backend) as doomed:
        await wait_for(app, JobStatus.SUCCEEDED, 1)
        await wait_for(app, JobStatus.PROCESSING, 1)
        doomed.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await doomed.wait()
    assert doomed.returncode == -signal.SIGKILL
    assert (await counts(app)).get(JobStatus.SUCCEEDED, 0) < len(job_ids)

    async with worker_process(app, anyio_backend, stop_when_idle=True) as rescuer:
        stats = await stats_of(rescuer)

    await assert_each_job_succeeded_once(app, job_ids)
    assert stats["succeeded"] >= 1
    storage = await app.storage()
    lost = [
        e
        for job_id in job_ids
        for e in await storage.list_executions(job_id)
        if e.status is ExecutionStatus.LOST
    ]
    assert lost  # the killed worker's jobs came back through lease expiry


async def test_sigterm_lets_running_jobs_finish_and_loses_nothing(
    app: TaskForge, anyio_backend: str
) -> None:
    job_ids = await enqueue(app, "sleepy", 0.8, 10)

    async with worker_process(app, anyio_backend) as worker:
        await wait_for(app, JobStatus.PROCESSING, 1)
        worker.send_signal(signal.SIGTERM)
        stats = await stats_of(worker)

    after = await counts(app)
    assert after.get(JobStatus.PROCESSING, 0) == 0
    assert stats["succeeded"] >= 1  # what was running when the signal came finished
    assert (stats["deferred"], stats["lost"], stats["failed"]) == (0, 0, 0)
    assert after.get(JobStatus.SUCCEEDED, 0) == stats["succeeded"]
    storage = await app.storage()
    workers = await storage.list_workers(app.project)
    assert [w.status for w in workers] == [WorkerStatus.STOPPED]

    async with worker_process(app, anyio_backend, stop_when_idle=True) as finisher:
        await stats_of(finisher)
    await assert_each_job_succeeded_once(app, job_ids)


async def test_second_sigterm_gives_running_jobs_back_at_once(
    app: TaskForge, anyio_backend: str
) -> None:
    (job_id,) = await enqueue(app, "sleepy", 60, 1)

    async with worker_process(app, anyio_backend) as worker:
        await wait_for(app, JobStatus.PROCESSING, 1)
        worker.send_signal(signal.SIGTERM)
        await anyio.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        stats = await stats_of(worker, timeout=15)

    assert stats["deferred"] == 1
    (job,) = await (await app.storage()).get_jobs([job_id], app.project)
    assert job.status in (JobStatus.PENDING, JobStatus.SCHEDULED)
    assert job.attempt == 0
