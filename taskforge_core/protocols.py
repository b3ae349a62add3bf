"""The storage protocol every backend implements, and the capabilities it may declare.

The seam is made of domain verbs (enqueue, claim, complete, retry, fail, cancel, replay,
reclaim, prune), never SQL, because backends speak different languages. Every verb is async and
takes a batch, so a backend can do one round trip per batch; a single job is a batch of one.

Guarantees every implementation keeps (the conformance suite checks them):

* **At-least-once** — an enqueued job eventually runs, even if workers die.
* **Exclusive claim** — at any moment at most one worker holds a job's lease.
* **Fencing** — ``complete``/``retry``/``fail`` need the execution id of the current claim;
  a report carrying any other id is rejected and changes nothing.
* **Order** — among runnable jobs of one queue: higher priority, then earlier
  ``scheduled_for``, then older id. Nothing runs before ``scheduled_for`` or before all its
  parents succeeded.
* **Atomic batches** — a rejected enqueue batch writes none of its jobs.
* **Errors** — driver exceptions never escape; they become
  :class:`~taskforge_core.errors.StorageError`.

Status changes follow :data:`taskforge_core.states.TRANSITIONS`.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from taskforge_core.models import (
    AckResult,
    ClaimedJob,
    ClaimRequest,
    Completion,
    Execution,
    ExecutionLog,
    Failure,
    Job,
    JobFilter,
    NewJob,
    Page,
    Queue,
    QueueStats,
    ReplayResult,
    RetryRequest,
    WorkerInfo,
    WorkerStatus,
)

__all__ = ["Capability", "Notifier", "Storage"]


class Capability(enum.StrEnum):
    """Optional abilities a backend declares; tests and the worker skip or adapt by capability."""

    #: ``wait_for_jobs`` returns promptly when another *process* enqueues.
    CROSS_PROCESS_WAKEUP = "cross_process_wakeup"
    #: ``wait_for_jobs`` returns promptly when this process enqueues.
    LOCAL_WAKEUP = "local_wakeup"
    #: Several processes may share the store (SQLite file, database server).
    MULTI_PROCESS = "multi_process"
    #: The store keeps data across process restarts.
    DURABLE = "durable"
    #: Time for leases and due dates comes from the injected clock (tests can fake it).
    INJECTABLE_CLOCK = "injectable_clock"
    #: ``enqueue(jobs, transaction=conn)`` writes inside the application's own transaction,
    #: so the jobs exist only if it commits.
    TRANSACTIONAL_ENQUEUE = "transactional_enqueue"
    #: The storage is :class:`~taskforge_core.retention.Prunable`: ``prune(policy)`` deletes
    #: old finished jobs and history; workers call it every ``prune_every`` seconds.
    PRUNE = "prune"


@runtime_checkable
class Notifier(Protocol):
    """Wakes idle workers when jobs become runnable, so they need not poll hard."""

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when runnable jobs may have appeared in ``queues``, or after ``timeout``."""
        ...


@runtime_checkable
class Storage(Notifier, Protocol):
    """Where jobs live. One instance is used by one event loop."""

    #: What this backend can do beyond the required verbs.
    capabilities: frozenset[Capability]

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect; apply migrations first when the backend was configured to."""
        ...

    async def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names of those applied."""
        ...

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        """Store a batch atomically and return the stored jobs in request order.

        A job whose ``key`` already exists in its project is not stored again: the existing job
        is returned in its place. A backend declaring ``TRANSACTIONAL_ENQUEUE`` also takes a
        keyword ``transaction`` (a connection of its driver) to write inside the caller's own
        transaction; the core passes it only to such backends. Raises
        :class:`~taskforge_core.errors.DependencyError` for an
        unknown parent or a cycle, :class:`~taskforge_core.errors.QueueError` for an unknown
        queue when queues are not created on demand; then nothing is written.
        """
        ...

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        """Atomically claim runnable jobs (see :class:`ClaimRequest`) from unpaused queues.

        Each claimed job moves to processing with ``attempt + 1``, a new execution id and a
        lease that expires after ``request.lease``.
        """
        ...

    async def complete(self, completions: Sequence[Completion]) -> AckResult:
        """Move claimed jobs to succeeded, store results, and release children whose parents
        have now all succeeded."""
        ...

    async def retry(self, retries: Sequence[RetryRequest]) -> AckResult:
        """Move claimed jobs back to scheduled to run again at ``run_at``."""
        ...

    async def fail(self, failures: Sequence[Failure]) -> AckResult:
        """Move claimed jobs to failed (the dead-letter queue) and cancel their descendants."""
        ...

    async def heartbeat(
        self, worker_id: uuid.UUID, execution_ids: Sequence[uuid.UUID], lease: dt.timedelta
    ) -> tuple[WorkerStatus, list[uuid.UUID]]:
        """Extend the leases the worker still holds and record that it is alive.

        Returns the worker's status as stored (so a drain asked for elsewhere reaches it) and
        the execution ids it no longer holds (expired, cancelled), which it must abandon.
        """
        ...

    async def reclaim_expired(self) -> list[uuid.UUID]:
        """Take back jobs whose lease expired: each counts as a failed attempt and goes back to
        pending, or to failed when it has no attempts left. Returns their ids."""
        ...

    async def cancel(self, job_ids: Sequence[uuid.UUID], project: str) -> list[uuid.UUID]:
        """Cancel jobs that are not final, and their not-final descendants. Returns every id
        cancelled. A processing job is cancelled at once; its worker learns it at the next
        heartbeat and its late report is rejected."""
        ...

    async def replay(self, selection: JobFilter) -> ReplayResult:
        """Move failed or cancelled jobs back to pending (blocked while a parent in the same
        replay has still to succeed), with their attempt counter reset."""
        ...

    async def purge(self, selection: JobFilter) -> int:
        """Delete final jobs (succeeded, failed, cancelled) matching ``selection`` with their
        executions and logs; return how many jobs were deleted. Active jobs are never deleted,
        nor a job that an active job depends on."""
        ...

    async def get_jobs(self, job_ids: Sequence[uuid.UUID], project: str) -> list[Job]:
        """The jobs that exist among ``job_ids``, in request order, missing ones left out."""
        ...

    async def list_jobs(self, selection: JobFilter, *, limit: int, cursor: str | None) -> Page:
        """Jobs matching ``selection``, newest first. Pages neither skip nor repeat a job even
        while jobs are inserted between calls."""
        ...

    # -- queues ----------------------------------------------------------------------------

    async def queue_stats(self, project: str) -> list[QueueStats]:
        """Job counts per status for every queue of the project, sorted by queue name."""
        ...

    async def set_queue_paused(self, project: str, queue: str, paused: bool) -> Queue:
        """Pause or resume claims from a queue (enqueueing into a paused queue still works)."""
        ...

    async def list_queues(self, project: str) -> list[Queue]: ...

    # -- workers ---------------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Record a worker and its queue assignments (weights)."""
        ...

    async def set_worker_status(self, worker_id: uuid.UUID, status: WorkerStatus) -> None:
        """Ask a worker to drain, or record that it stopped."""
        ...

    async def list_workers(self, project: str) -> list[WorkerInfo]: ...

    # -- history ---------------------------------------------------------------------------

    async def list_executions(self, job_id: uuid.UUID) -> list[Execution]:
        """Every attempt of a job, oldest first."""
        ...

    async def add_logs(self, entries: Sequence[ExecutionLog]) -> None:
        """Store structured log lines written by tasks."""
        ...

    async def list_logs(self, job_id: uuid.UUID) -> list[ExecutionLog]:
        """A job's log lines across all attempts, oldest first."""
        ...
