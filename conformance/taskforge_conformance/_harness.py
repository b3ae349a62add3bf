"""What a scenario test gets: an opened storage, its fake clock, and shortcuts for common calls."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from taskforge_core.clock import FakeClock
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    DEFAULT_PROJECT,
    ClaimedJob,
    ClaimRequest,
    Completion,
    ErrorInfo,
    Job,
    JobFilter,
    NewJob,
    QueueShare,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.states import JobStatus

__all__ = ["BOOM", "LEASE", "Env", "new_job"]

#: The lease of scenario claims: long enough never to run out unless a test moves the clock.
LEASE = dt.timedelta(minutes=10)
BOOM = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback (most recent call)")


def new_job(task: str = "work", **fields: Any) -> NewJob:
    """A request for one job with a fresh time-ordered id (later calls are younger)."""
    return NewJob(id=uuid7(), task=task, **fields)


@attrs.define(kw_only=True)
class Env:
    """The backend under test, opened, with the clock it was given."""

    storage: Storage
    clock: FakeClock
    tmp_path: pathlib.Path
    worker: uuid.UUID = attrs.field(factory=uuid7)

    @property
    def timed(self) -> bool:
        """True when the backend takes its time from the injected clock."""
        return Capability.INJECTABLE_CLOCK in self.storage.capabilities

    def past(self, seconds: float) -> dt.datetime:
        """A time ``seconds`` before now, by the fake clock and by the wall clock alike."""
        wall = dt.datetime.now(dt.UTC)
        return min(self.clock.now(), wall) - dt.timedelta(seconds=seconds)

    def future(self, seconds: float) -> dt.datetime:
        """A time ``seconds`` after now, by the fake clock and by the wall clock alike."""
        wall = dt.datetime.now(dt.UTC)
        return max(self.clock.now(), wall) + dt.timedelta(seconds=seconds)

    async def enqueue(self, *jobs: NewJob) -> list[Job]:
        return await self.storage.enqueue(list(jobs))

    def request(
        self,
        *queues: str,
        limit: int = 100,
        worker: uuid.UUID | None = None,
        project: str = DEFAULT_PROJECT,
        lease: dt.timedelta = LEASE,
    ) -> ClaimRequest:
        return ClaimRequest(
            worker_id=worker or self.worker,
            shares=tuple(QueueShare(name=name, limit=limit) for name in queues or ("default",)),
            limit=limit,
            lease=lease,
            project=project,
        )

    async def claim(
        self,
        *queues: str,
        limit: int = 100,
        worker: uuid.UUID | None = None,
        project: str = DEFAULT_PROJECT,
        lease: dt.timedelta = LEASE,
    ) -> list[ClaimedJob]:
        request = self.request(*queues, limit=limit, worker=worker, project=project, lease=lease)
        return await self.storage.claim(request)

    async def claim_ids(
        self, *queues: str, limit: int = 100, project: str = DEFAULT_PROJECT
    ) -> list[uuid.UUID]:
        return [c.job.id for c in await self.claim(*queues, limit=limit, project=project)]

    async def job(self, job_id: uuid.UUID, project: str = DEFAULT_PROJECT) -> Job:
        found = await self.storage.get_jobs([job_id], project)
        assert len(found) == 1, f"get_jobs([{job_id}], {project!r}) returned {found}"
        return found[0]

    async def status(self, job_id: uuid.UUID, project: str = DEFAULT_PROJECT) -> JobStatus:
        return (await self.job(job_id, project)).status

    async def statuses(
        self, job_ids: Sequence[uuid.UUID], project: str = DEFAULT_PROJECT
    ) -> list[JobStatus]:
        return [await self.status(job_id, project) for job_id in job_ids]

    async def complete(self, claimed: ClaimedJob, result: Any = None) -> None:
        ack = await self.storage.complete(
            [Completion(job_id=claimed.job.id, execution_id=claimed.execution_id, result=result)]
        )
        assert ack.accepted == (claimed.job.id,), f"completing a held claim was answered {ack}"

    async def run_to_success(self, job_id: uuid.UUID, queue: str = "default") -> None:
        """Claim the runnable jobs of ``queue`` (``job_id`` must be one of them) and complete
        ``job_id``; the others stay processing."""
        claimed = {c.job.id: c for c in await self.claim(queue)}
        assert job_id in claimed, f"job {job_id} was not claimable"
        await self.complete(claimed[job_id])

    async def all_ids(self, project: str = DEFAULT_PROJECT) -> list[uuid.UUID]:
        """Every job id of ``project`` as ``list_jobs`` pages through them."""
        ids: list[uuid.UUID] = []
        cursor: str | None = None
        while True:
            page = await self.storage.list_jobs(JobFilter(project=project), limit=7, cursor=cursor)
            ids.extend(job.id for job in page.items)
            if page.next_cursor is None:
                return ids
            cursor = page.next_cursor
