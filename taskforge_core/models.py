"""The value objects that cross the storage boundary.

All are frozen, keyword-only attrs classes. Backends build them from rows and the core builds
requests from user calls; :mod:`taskforge_core.serialization` turns them into JSON and back.
Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from taskforge_core.states import ExecutionStatus, JobStatus

__all__ = [
    "DEFAULT_PROJECT",
    "DEFAULT_QUEUE",
    "AckResult",
    "ClaimRequest",
    "ClaimedJob",
    "Completion",
    "ErrorInfo",
    "Execution",
    "ExecutionLog",
    "Failure",
    "Job",
    "JobFilter",
    "NewJob",
    "Page",
    "Queue",
    "QueueShare",
    "QueueStats",
    "QueueWorkerAssignment",
    "ReplayResult",
    "RetryRequest",
    "WorkerInfo",
    "WorkerStatus",
]

#: The project that embedded use (no hosted service) puts every queue in.
DEFAULT_PROJECT = "default"
#: The queue a task goes to when it names none.
DEFAULT_QUEUE = "default"


def _tuple_of_ids(value: Any) -> tuple[uuid.UUID, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """What went wrong in one attempt."""

    #: The exception's qualified class name, e.g. ``"ValueError"``.
    type: str
    #: ``str(exception)``.
    message: str
    #: The formatted traceback, or ``""`` when there is none (a lost lease).
    traceback: str = ""


@attrs.frozen(kw_only=True)
class NewJob:
    """An enqueue request for one job. ``id`` is chosen by the caller so a batch can wire
    dependencies between its own members before anything is written."""

    id: uuid.UUID
    task: str
    project: str = DEFAULT_PROJECT
    queue: str = DEFAULT_QUEUE
    #: JSON-compatible positional arguments.
    args: tuple[Any, ...] = ()
    #: JSON-compatible keyword arguments.
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    #: Higher runs first among jobs of one queue.
    priority: int = 0
    #: Not runnable before this time; None means now (the backend's clock).
    scheduled_for: dt.datetime | None = None
    #: Total attempts allowed, first run included (>= 1).
    max_attempts: int = 1
    #: Seconds a single attempt may run; None means no limit.
    timeout: float | None = None
    #: Jobs that must all succeed before this one runs.
    depends_on: tuple[uuid.UUID, ...] = attrs.field(default=(), converter=_tuple_of_ids)
    #: Idempotency key: a second enqueue with the same key in the project is a no-op that
    #: returns the job that already has it.
    key: str | None = None
    #: Free-form string metadata carried with the job (trace context, correlation id).
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: The JSON of ``args`` and ``kwargs`` as ``Task.build`` encoded them to check their size,
    #: so that a backend need not encode them again; None when not encoded yet. Leave it None
    #: when building a ``NewJob`` by hand.
    encoded: tuple[str, str] | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Job:
    """A job as stored."""

    id: uuid.UUID
    project: str
    queue: str
    task: str
    status: JobStatus
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    priority: int
    #: Attempts started so far.
    attempt: int
    max_attempts: int
    timeout: float | None
    scheduled_for: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    depends_on: tuple[uuid.UUID, ...] = attrs.field(default=(), converter=_tuple_of_ids)
    key: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: The current claim while processing (the fencing token), else the last one.
    execution_id: uuid.UUID | None = None
    worker_id: uuid.UUID | None = None
    lease_expires_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    #: The handler's return value once succeeded.
    result: Any = None
    #: The last attempt's error, if it failed.
    error: ErrorInfo | None = None


@attrs.frozen(kw_only=True)
class ClaimedJob:
    """A job a worker now holds, with the fencing token it must show to report on it."""

    job: Job
    execution_id: uuid.UUID
    lease_expires_at: dt.datetime


@attrs.frozen(kw_only=True)
class QueueShare:
    """At most ``limit`` jobs of one claim come from queue ``name``."""

    name: str
    limit: int


@attrs.frozen(kw_only=True)
class ClaimRequest:
    """Claim up to ``limit`` runnable jobs for ``worker_id``.

    First each share is filled from its own queue (its limit is its quota for this call, worked
    out by the worker from the queue weights); then any capacity left over is filled from all
    the listed queues together, best job first.
    """

    worker_id: uuid.UUID
    shares: tuple[QueueShare, ...]
    limit: int
    lease: dt.timedelta
    project: str = DEFAULT_PROJECT


@attrs.frozen(kw_only=True)
class Completion:
    """Report that an attempt succeeded."""

    job_id: uuid.UUID
    execution_id: uuid.UUID
    result: Any = None


@attrs.frozen(kw_only=True)
class RetryRequest:
    """Report that an attempt should run again at ``run_at``.

    ``error`` is None and ``consume_attempt`` False when a job is given back unrun (rate limited,
    worker draining): its attempt counter is then restored.
    """

    job_id: uuid.UUID
    execution_id: uuid.UUID
    run_at: dt.datetime
    error: ErrorInfo | None = None
    consume_attempt: bool = True


@attrs.frozen(kw_only=True)
class Failure:
    """Report that an attempt failed for good: the job goes to the dead-letter queue."""

    job_id: uuid.UUID
    execution_id: uuid.UUID
    error: ErrorInfo


@attrs.frozen(kw_only=True)
class AckResult:
    """Which reports of a batch were taken. A report is rejected when its execution id is not
    the job's current claim (the lease was lost, or the job was cancelled)."""

    accepted: tuple[uuid.UUID, ...] = ()
    #: Job ids whose report was refused by fencing.
    rejected: tuple[uuid.UUID, ...] = ()


@attrs.frozen(kw_only=True)
class ReplayResult:
    """Which jobs a replay moved back to pending/blocked, and which it left alone and why."""

    replayed: tuple[uuid.UUID, ...] = ()
    #: ``(job id, reason)`` for every matching job that was not replayed.
    skipped: tuple[tuple[uuid.UUID, str], ...] = ()


@attrs.frozen(kw_only=True)
class JobFilter:
    """Which jobs a list, replay or purge applies to; None fields do not filter."""

    project: str = DEFAULT_PROJECT
    statuses: frozenset[JobStatus] | None = None
    queue: str | None = None
    task: str | None = None
    ids: frozenset[uuid.UUID] | None = None
    #: Only jobs last updated before this time (retention, purge of old failures).
    updated_before: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class Page:
    """One page of a listing, newest first; pass ``next_cursor`` back for the next page."""

    items: tuple[Any, ...]
    #: Opaque; None when this is the last page.
    next_cursor: str | None = None


@attrs.frozen(kw_only=True)
class Execution:
    """One attempt of a job: created by a claim, closed by the report on it."""

    id: uuid.UUID
    job_id: uuid.UUID
    attempt: int
    worker_id: uuid.UUID | None
    status: ExecutionStatus
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    error: ErrorInfo | None = None


@attrs.frozen(kw_only=True)
class ExecutionLog:
    """A structured log line a task wrote through its context while it ran."""

    execution_id: uuid.UUID
    job_id: uuid.UUID
    at: dt.datetime
    level: str
    message: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Queue:
    """A named queue inside a project."""

    project: str
    name: str
    paused: bool = False


@attrs.frozen(kw_only=True)
class QueueStats:
    """How many jobs of a queue are in each status."""

    project: str
    queue: str
    paused: bool
    counts: Mapping[JobStatus, int]


class WorkerStatus(enum.StrEnum):
    """A worker's own life: running, asked to drain, or gone."""

    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@attrs.frozen(kw_only=True)
class QueueWorkerAssignment:
    """A worker serves ``queue`` with this weight (its share of claims when queues compete)."""

    worker_id: uuid.UUID
    queue: str
    weight: int = 1


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """A worker process as registered in storage."""

    id: uuid.UUID
    name: str
    hostname: str
    pid: int
    concurrency: int
    project: str = DEFAULT_PROJECT
    status: WorkerStatus = WorkerStatus.RUNNING
    queues: tuple[QueueWorkerAssignment, ...] = ()
    started_at: dt.datetime | None = None
    last_heartbeat_at: dt.datetime | None = None
