"""Shortcuts for the storage calls the backend tests make, on any storage backend.

(The conformance suite has its own, in ``taskforge_conformance._harness``.)
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from taskforge_core.ids import uuid7
from taskforge_core.models import (
    ClaimedJob,
    ClaimRequest,
    Completion,
    ErrorInfo,
    Failure,
    Job,
    JobFilter,
    NewJob,
    QueueShare,
    RetryRequest,
)
from taskforge_core.protocols import Storage
from taskforge_core.states import JobStatus

__all__ = [
    "BOOM",
    "LEASE",
    "WORKER",
    "all_jobs",
    "claim",
    "claim_request",
    "new",
    "one",
    "run_to_failure",
    "run_to_success",
    "status",
    "timed_wait",
    "wait_while",
]

WORKER = uuid.UUID("00000000-0000-7000-8000-00000000000a")
LEASE = dt.timedelta(seconds=30)
BOOM = ErrorInfo(type="ValueError", message="boom", traceback="Traceback ...")


def new(task: str = "work", **fields: Any) -> NewJob:
    return NewJob(id=uuid7(), task=task, **fields)


def claim_request(
    *queues: str,
    limit: int = 10,
    worker: uuid.UUID = WORKER,
    project: str = "default",
    lease: dt.timedelta = LEASE,
) -> ClaimRequest:
    names = queues or ("default",)
    return ClaimRequest(
        worker_id=worker,
        shares=tuple(QueueShare(name=name, limit=limit) for name in names),
        limit=limit,
        lease=lease,
        project=project,
    )


async def claim(storage: Storage, *queues: str, limit: int = 10) -> list[ClaimedJob]:
    return await storage.claim(claim_request(*queues, limit=limit))


async def one(storage: Storage, job_id: uuid.UUID, project: str = "default") -> Job:
    (job,) = await storage.get_jobs([job_id], project)
    return job


async def status(storage: Storage, job_id: uuid.UUID) -> JobStatus:
    return (await one(storage, job_id)).status


async def run_to_success(storage: Storage, job_id: uuid.UUID) -> None:
    """Claim everything runnable and complete ``job_id`` (giving the others back)."""
    claimed = await claim(storage, (await one(storage, job_id)).queue, limit=100)
    mine = [c for c in claimed if c.job.id == job_id]
    assert mine, f"{job_id} was not claimable"
    ack = await storage.complete([Completion(job_id=job_id, execution_id=mine[0].execution_id)])
    assert ack.accepted == (job_id,)
    others = [c for c in claimed if c.job.id != job_id]
    await storage.retry(
        [
            RetryRequest(
                job_id=c.job.id,
                execution_id=c.execution_id,
                run_at=c.job.scheduled_for,
                consume_attempt=False,
            )
            for c in others
        ]
    )


async def run_to_failure(storage: Storage, job_id: uuid.UUID) -> None:
    claimed = [c for c in await claim(storage, limit=100) if c.job.id == job_id]
    ack = await storage.fail(
        [Failure(job_id=job_id, execution_id=claimed[0].execution_id, error=BOOM)]
    )
    assert ack.accepted == (job_id,)


async def all_jobs(storage: Storage, project: str = "default") -> list[Job]:
    page = await storage.list_jobs(JobFilter(project=project), limit=1000, cursor=None)
    return list(page.items)


async def timed_wait(storage: Storage, queues: Sequence[str], timeout: float) -> float:
    """Seconds that ``wait_for_jobs(queues, timeout)`` took."""
    start = time.monotonic()
    await storage.wait_for_jobs(queues, timeout)
    return time.monotonic() - start


async def wait_while(
    storage: Storage, queues: Sequence[str], act: Callable[[], Awaitable[object]]
) -> float:
    """Start waiting (20 s at most), run ``act``, and return how long the wait took."""
    elapsed: list[float] = []
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            elapsed.append(await timed_wait(storage, queues, 20))

        tg.start_soon(waiter)
        await anyio.sleep(0.1)
        await act()
    return elapsed[0]
