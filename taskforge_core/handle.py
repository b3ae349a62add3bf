"""A handle on an enqueued job: its id, its last known status, and a way to await its result."""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from taskforge_core.errors import (
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    WaitTimeoutError,
)
from taskforge_core.states import JobStatus

if TYPE_CHECKING:
    from taskforge_core.app import TaskForge
    from taskforge_core.models import Job

__all__ = ["JobHandle"]

_FIRST_POLL = 0.005
_MAX_POLL = 0.5


class JobHandle:
    """Returned by every enqueue. ``status`` is what was known last; ``refresh`` reloads it."""

    def __init__(self, app: TaskForge, job: Job) -> None:
        self.app = app
        #: The job as last loaded.
        self.job = job

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.status.value}>"

    @property
    def id(self) -> uuid.UUID:
        return self.job.id

    @property
    def status(self) -> JobStatus:
        return self.job.status

    async def refresh(self) -> Job:
        """Reload the job from storage."""
        jobs = await (await self.app.storage()).get_jobs([self.id], self.app.project)
        if not jobs:
            raise JobNotFoundError(f"job {self.id} no longer exists (purged?)")
        self.job = jobs[0]
        return self.job

    async def wait(self, timeout: float | None = None) -> Any:
        """Wait until the job is final and return its result.

        Raises :class:`JobFailedError` (with the last error) or :class:`JobCancelledError`, and
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first; the job itself is never
        touched by waiting.
        """
        delay = _FIRST_POLL
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                job = await self.refresh()
                if job.status is JobStatus.SUCCEEDED:
                    return job.result
                if job.status is JobStatus.FAILED:
                    raise JobFailedError(job.id, job.error)
                if job.status is JobStatus.CANCELLED:
                    raise JobCancelledError(job.id)
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_POLL)
        raise WaitTimeoutError(
            f"job {self.id} was still {self.status.value} after {timeout} s of waiting"
        )
