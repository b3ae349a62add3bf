"""Deliberately broken storage backends: each breaks one promise of the protocol.

Every one is a thin subclass of the example in-memory backend (``docs/examples/taskforge_memory``),
which passes the whole suite; ``test_suite_has_teeth.py`` checks that the suite fails each of
them, in the tests that guard the promise it breaks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

import anyio.lowlevel
import attrs
from taskforge_memory.backend import MemoryStorage, _Record

from taskforge_core.backends import BackendConfig
from taskforge_core.clock import SystemClock
from taskforge_core.models import ClaimedJob, ClaimRequest, Job
from taskforge_core.protocols import Capability
from taskforge_core.states import JobStatus

__all__ = [
    "ForgetsExpiredLeases",
    "HandsOutJobsTwice",
    "IgnoresPriority",
    "RunsJobsEarly",
    "StartsChildrenEarly",
    "TakesStaleReports",
    "Untimed",
]


class HandsOutJobsTwice(MemoryStorage):
    """Marks a claim processing only after another round trip: meanwhile a concurrent claimer
    still sees the jobs as pending and takes them too (a lost update)."""

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        claimed = await super().claim(request)
        records = [self._jobs[c.job.id] for c in claimed]
        taken = [record.job for record in records]
        for record in records:
            record.job = attrs.evolve(record.job, status=JobStatus.PENDING)
        await anyio.lowlevel.checkpoint()
        for record, job in zip(records, taken, strict=True):
            record.job = job
        return claimed


class TakesStaleReports(MemoryStorage):
    """Fences on "the job is processing" but forgets to compare the execution id, so a worker
    that lost its lease can still complete the job someone else now runs."""

    def _fenced(self, job_id: uuid.UUID, execution_id: uuid.UUID) -> _Record | None:
        record = self._jobs.get(job_id)
        if record is None or record.job.status is not JobStatus.PROCESSING:
            return None
        return record


class IgnoresPriority(MemoryStorage):
    """Claims by due time and age only."""

    @staticmethod
    def _claim_order(job: Job) -> tuple[int, dt.datetime, uuid.UUID]:
        return (0, job.scheduled_for, job.id)


class RunsJobsEarly(MemoryStorage):
    """Treats scheduled jobs as runnable whether or not they are due."""

    @staticmethod
    def _runnable(job: Job, now: dt.datetime) -> bool:
        return job.status in (JobStatus.PENDING, JobStatus.SCHEDULED)


class ForgetsExpiredLeases(MemoryStorage):
    """Takes back expired leases by deleting the job: it never runs again."""

    async def reclaim_expired(self) -> list[uuid.UUID]:
        reclaimed = await super().reclaim_expired()
        for job_id in reclaimed:
            del self._jobs[job_id]
        return reclaimed


class StartsChildrenEarly(MemoryStorage):
    """Releases the children of a job when it is claimed rather than when it succeeded."""

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        claimed = await super().claim(request)
        self._release_all(c.job.id for c in claimed)
        return claimed

    def _release_all(self, parents: Iterable[uuid.UUID]) -> None:
        for parent in parents:
            for child_id in self._children.get(parent, ()):
                child = self._jobs[child_id]
                if child.job.status is JobStatus.BLOCKED:
                    self._set(child, status=JobStatus.PENDING)


class Untimed(MemoryStorage):
    """A correct backend on the wall clock that does not declare ``INJECTABLE_CLOCK`` (like a
    server with its own clock): the suite must pass it, skipping what needs a fake clock."""

    capabilities = frozenset({Capability.LOCAL_WAKEUP})

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(attrs.evolve(config or BackendConfig(), clock=SystemClock()))
