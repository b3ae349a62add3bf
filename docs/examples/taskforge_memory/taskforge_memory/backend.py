"""An in-memory TaskForge storage backend: :class:`MemoryStorage` and its factory :func:`create`.

Everything lives in Python dictionaries of one storage object, so it is fast, needs nothing
installed, and is gone when the process ends. It is the worked example of
``docs/writing-a-backend.md``: small enough to read in one sitting, and correct enough to pass
the whole conformance suite.

How it keeps the protocol's promises
    Every verb first checks its input, then changes the dictionaries without awaiting anything
    in between. An event loop runs one task at a time, so each verb is atomic (a rejected batch
    writes nothing, two claimers never see the same runnable job) without a lock. Status changes
    go through :func:`~taskforge_core.states.check_transition`. Arguments and results are stored
    as JSON text, like a database would, so callers get copies back and a value JSON cannot
    hold is rejected when it is enqueued.

What it cannot do
    It is not durable and not shared between processes, so it declares neither
    ``Capability.DURABLE`` nor ``Capability.MULTI_PROCESS``. It declares ``LOCAL_WAKEUP`` (an
    enqueue wakes waiting workers of the same storage at once) and ``INJECTABLE_CLOCK`` (all
    times come from ``BackendConfig.clock``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from taskforge_core.backends import BackendConfig
from taskforge_core.errors import (
    ConfigurationError,
    DependencyError,
    InvalidJobError,
    QueueError,
    SerializationError,
    StorageError,
)
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    AckResult,
    ClaimedJob,
    ClaimRequest,
    Completion,
    ErrorInfo,
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
from taskforge_core.protocols import Capability
from taskforge_core.serialization import decode, encode
from taskforge_core.states import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    ExecutionStatus,
    JobStatus,
    check_transition,
)

__all__ = ["MemoryStorage", "create"]

_P, _S, _B, _R = JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.PROCESSING
_OK, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED


def create(url: str, config: BackendConfig) -> MemoryStorage:
    """The factory the plugin names: ``memory://`` gives a new, empty store every time."""
    if url.rstrip("/").lower() != "memory:":
        raise ConfigurationError(f"{url!r} is not a memory URL; use memory://")
    return MemoryStorage(config)


@attrs.define(kw_only=True)
class _Record:
    """One stored job: its public view plus what only the backend needs."""

    job: Job
    #: Insertion order, for "newest first" listings and their cursors.
    seq: int
    #: JSON text of the arguments and the result (the public view holds decoded copies).
    payload: str
    executions: list[Execution] = attrs.field(factory=list)


@attrs.define
class _Waiter:
    queues: frozenset[str]
    event: anyio.Event = attrs.field(factory=anyio.Event)


class MemoryStorage:
    """The :class:`~taskforge_core.protocols.Storage` protocol on Python dictionaries."""

    capabilities: frozenset[Capability] = frozenset(
        {Capability.LOCAL_WAKEUP, Capability.INJECTABLE_CLOCK}
    )

    def __init__(self, config: BackendConfig | None = None) -> None:
        self._config = config if config is not None else BackendConfig()
        self._clock = self._config.clock
        self._open = False
        self._jobs: dict[uuid.UUID, _Record] = {}
        self._children: dict[uuid.UUID, list[uuid.UUID]] = {}
        self._keys: dict[tuple[str, str], uuid.UUID] = {}
        self._queues: dict[tuple[str, str], bool] = {}  # (project, name) -> paused
        self._workers: dict[uuid.UUID, WorkerInfo] = {}
        self._logs: dict[uuid.UUID, list[ExecutionLog]] = {}
        self._waiters: list[_Waiter] = []
        self._seq = 0

    def __repr__(self) -> str:
        return f"<MemoryStorage {len(self._jobs)} jobs ({'open' if self._open else 'closed'})>"

    # -- plumbing --------------------------------------------------------------------------

    async def _enter(self) -> dt.datetime:
        """Every verb starts here: yield to the loop once, refuse to work when closed, and read
        the clock."""
        await anyio.lowlevel.checkpoint()
        if not self._open:
            raise StorageError("the memory storage is not open; call open()")
        return self._clock.now()

    def _set(self, record: _Record, **changes: Any) -> Job:
        if "status" in changes:
            check_transition(record.job.status, changes["status"])
        record.job = attrs.evolve(record.job, **changes)
        return record.job

    def _close_execution(
        self, record: _Record, status: ExecutionStatus, now: dt.datetime, error: ErrorInfo | None
    ) -> None:
        current = record.executions[-1]
        record.executions[-1] = attrs.evolve(current, status=status, finished_at=now, error=error)

    def _notify(self, queues: Iterable[str] | None = None) -> None:
        names = None if queues is None else set(queues)
        for waiter in self._waiters:
            if names is None or not waiter.queues or waiter.queues & names:
                waiter.event.set()

    def _in_project(self, job_id: uuid.UUID, project: str) -> _Record | None:
        record = self._jobs.get(job_id)
        return record if record is not None and record.job.project == project else None

    def _descendants(self, roots: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        start = set(roots)
        seen: dict[uuid.UUID, None] = {}
        stack = list(start)
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in seen and child not in start:
                    seen[child] = None
                    stack.append(child)
        return list(seen)

    def _cancel(self, record: _Record, now: dt.datetime) -> None:
        if record.job.status is _R:
            self._close_execution(record, ExecutionStatus.CANCELLED, now, None)
        self._set(record, status=_C, finished_at=now, updated_at=now, lease_expires_at=None)

    def _cancel_descendants(self, roots: Iterable[uuid.UUID], now: dt.datetime) -> list[uuid.UUID]:
        cancelled = []
        for job_id in self._descendants(roots):
            record = self._jobs[job_id]
            if record.job.status in ACTIVE_STATUSES:
                self._cancel(record, now)
                cancelled.append(job_id)
        return cancelled

    def _release_children(self, parents: Iterable[uuid.UUID], now: dt.datetime) -> set[str]:
        queues = set()
        for parent in parents:
            for child_id in self._children.get(parent, ()):
                child = self._jobs[child_id]
                if child.job.status is _B and all(
                    self._jobs[p].job.status is _OK for p in child.job.depends_on
                ):
                    target = _S if child.job.scheduled_for > now else _P
                    self._set(child, status=target, updated_at=now)
                    queues.add(child.job.queue)
        return queues

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Nothing to connect to; opening an open storage does nothing."""
        self._open = True

    async def close(self) -> None:
        """Forget nothing (a closed store can be opened again) but refuse calls until then."""
        self._open = False
        self._notify()

    async def migrate(self) -> list[str]:
        await self._enter()
        return []

    # -- enqueue ---------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        now = await self._enter()
        if not jobs:
            return []
        payloads = self._validate(jobs)

        # Idempotency keys: an existing job (or an earlier member) stands for the request.
        keys = dict(self._keys)
        alias: dict[uuid.UUID, uuid.UUID] = {}
        new: dict[uuid.UUID, NewJob] = {}
        for job in jobs:
            if job.key is not None:
                known = keys.get((job.project, job.key))
                if known is not None:
                    alias[job.id] = known
                    continue
                keys[job.project, job.key] = job.id
            alias[job.id] = job.id
            new[job.id] = job

        if not self._config.create_queues:
            for job in new.values():
                if (job.project, job.queue) not in self._queues:
                    raise QueueError(
                        f"queue {job.queue!r} does not exist in project {job.project!r} "
                        "(queues are not created on demand)"
                    )

        parents_of: dict[uuid.UUID, tuple[uuid.UUID, ...]] = {}
        for job in new.values():
            parents = tuple(dict.fromkeys(alias.get(p, p) for p in job.depends_on))
            for parent in parents:
                if parent == job.id:
                    raise DependencyError(f"job {job.id} depends on itself")
                owner = new.get(parent) or (
                    self._jobs[parent].job if parent in self._jobs else None
                )
                if owner is None or owner.project != job.project:
                    raise DependencyError(
                        f"job {job.id} depends on job {parent}, which does not exist in "
                        f"project {job.project!r}"
                    )
            parents_of[job.id] = parents
        order = _parents_first(new, parents_of)

        # Everything is checked: from here on nothing can fail, so the batch is atomic.
        status: dict[uuid.UUID, JobStatus] = {}
        for job_id in order:
            request = new[job_id]
            scheduled_for = request.scheduled_for or now
            parent_statuses = [
                status[p] if p in new else self._jobs[p].job.status for p in parents_of[job_id]
            ]
            if any(s in (_F, _C) for s in parent_statuses):
                target = _C
            elif all(s is _OK for s in parent_statuses):
                target = _S if scheduled_for > now else _P
            else:
                target = _B
            check_transition(None, target)
            status[job_id] = target
            args, kwargs = decode(payloads[job_id])
            self._seq += 1
            self._jobs[job_id] = _Record(
                seq=self._seq,
                payload=payloads[job_id],
                job=Job(
                    id=job_id,
                    project=request.project,
                    queue=request.queue,
                    task=request.task,
                    status=target,
                    args=tuple(args),
                    kwargs=kwargs,
                    priority=request.priority,
                    attempt=0,
                    max_attempts=request.max_attempts,
                    timeout=request.timeout,
                    scheduled_for=scheduled_for,
                    created_at=now,
                    updated_at=now,
                    depends_on=parents_of[job_id],
                    key=request.key,
                    headers=dict(request.headers),
                    finished_at=now if target is _C else None,
                ),
            )
            for parent in parents_of[job_id]:
                self._children.setdefault(parent, []).append(job_id)
            if request.key is not None:
                self._keys[request.project, request.key] = job_id
            self._queues.setdefault((request.project, request.queue), False)
        self._notify(new[j].queue for j in order if status[j] in (_P, _S))
        return [self._jobs[alias[job.id]].job for job in jobs]

    def _validate(self, jobs: Sequence[NewJob]) -> dict[uuid.UUID, str]:
        """Check every request; return each one's arguments as JSON text."""
        payloads: dict[uuid.UUID, str] = {}
        for job in jobs:
            if job.id in payloads or job.id in self._jobs:
                raise InvalidJobError(f"job id {job.id} is not new")
            for field, value in (
                ("task", job.task),
                ("project", job.project),
                ("queue", job.queue),
            ):
                if not isinstance(value, str) or not value:
                    raise InvalidJobError(f"job {job.id}: {field} must be a non-empty string")
            if not isinstance(job.max_attempts, int) or job.max_attempts < 1:
                raise InvalidJobError(f"job {job.id}: max_attempts must be >= 1")
            if not isinstance(job.priority, int):
                raise InvalidJobError(f"job {job.id}: priority must be an integer")
            timeout = job.timeout
            if timeout is not None and (
                type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
            ):
                raise InvalidJobError(
                    f"job {job.id}: timeout must be a positive number of seconds, not {timeout!r}"
                )
            if job.scheduled_for is not None and job.scheduled_for.utcoffset() is None:
                raise InvalidJobError(f"job {job.id}: scheduled_for must be timezone-aware")
            payloads[job.id] = encode(
                [list(job.args), dict(job.kwargs)], what=f"the arguments of job {job.id}"
            )
        return payloads

    # -- claim -----------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        now = await self._enter()
        if request.limit <= 0 or not request.shares:
            return []
        if request.lease < dt.timedelta(0):
            raise ValueError(f"a lease cannot be negative, got {request.lease}")
        names = {
            share.name
            for share in request.shares
            if self._queues.get((request.project, share.name)) is False
        }
        runnable = sorted(
            (
                record
                for record in self._jobs.values()
                if record.job.project == request.project
                and record.job.queue in names
                and self._runnable(record.job, now)
            ),
            key=lambda record: self._claim_order(record.job),
        )
        chosen: dict[uuid.UUID, _Record] = {}
        for share in request.shares:  # first each share from its own queue, up to its quota
            quota = min(share.limit, request.limit - len(chosen))
            for record in runnable:
                if quota <= 0:
                    break
                if record.job.queue == share.name and record.job.id not in chosen:
                    chosen[record.job.id] = record
                    quota -= 1
        for record in runnable:  # then the capacity left, best first
            if len(chosen) >= request.limit:
                break
            chosen.setdefault(record.job.id, record)

        expires = now + request.lease
        claimed = []
        for record in chosen.values():
            execution_id = uuid7()
            attempt = record.job.attempt + 1
            job = self._set(
                record,
                status=_R,
                attempt=attempt,
                execution_id=execution_id,
                worker_id=request.worker_id,
                lease_expires_at=expires,
                started_at=now,
                updated_at=now,
            )
            record.executions.append(
                Execution(
                    id=execution_id,
                    job_id=job.id,
                    attempt=attempt,
                    worker_id=request.worker_id,
                    status=ExecutionStatus.STARTED,
                    started_at=now,
                )
            )
            claimed.append(ClaimedJob(job=job, execution_id=execution_id, lease_expires_at=expires))
        return claimed

    @staticmethod
    def _runnable(job: Job, now: dt.datetime) -> bool:
        """Pending, or scheduled and due: nothing runs before its ``scheduled_for``."""
        return job.status is _P or (job.status is _S and job.scheduled_for <= now)

    @staticmethod
    def _claim_order(job: Job) -> tuple[int, dt.datetime, uuid.UUID]:
        """Higher priority first, then the earliest due, then the oldest id."""
        return (-job.priority, job.scheduled_for, job.id)

    # -- reports ---------------------------------------------------------------------------

    def _fenced(self, job_id: uuid.UUID, execution_id: uuid.UUID) -> _Record | None:
        """The job if ``execution_id`` is its current claim: the fence every report passes."""
        record = self._jobs.get(job_id)
        if record is None or record.job.status is not _R or record.job.execution_id != execution_id:
            return None
        return record

    async def complete(self, completions: Sequence[Completion]) -> AckResult:
        now = await self._enter()
        results = [encode(c.result, what=f"the result of job {c.job_id}") for c in completions]
        accepted, rejected = [], []
        for report, result in zip(completions, results, strict=True):
            record = self._fenced(report.job_id, report.execution_id)
            if record is None:
                rejected.append(report.job_id)
                continue
            self._close_execution(record, ExecutionStatus.SUCCEEDED, now, None)
            self._set(
                record,
                status=_OK,
                result=decode(result),
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
            accepted.append(report.job_id)
        self._notify(self._release_children(accepted, now))
        return AckResult(accepted=tuple(accepted), rejected=tuple(rejected))

    async def retry(self, retries: Sequence[RetryRequest]) -> AckResult:
        now = await self._enter()
        accepted, rejected, queues = [], [], set()
        for report in retries:
            record = self._fenced(report.job_id, report.execution_id)
            if record is None:
                rejected.append(report.job_id)
                continue
            outcome = (
                ExecutionStatus.RETRYING if report.consume_attempt else ExecutionStatus.DEFERRED
            )
            self._close_execution(record, outcome, now, report.error)
            self._set(
                record,
                status=_S,
                scheduled_for=report.run_at,
                attempt=record.job.attempt - (0 if report.consume_attempt else 1),
                error=report.error or record.job.error,
                updated_at=now,
                lease_expires_at=None,
            )
            accepted.append(report.job_id)
            queues.add(record.job.queue)
        self._notify(queues)
        return AckResult(accepted=tuple(accepted), rejected=tuple(rejected))

    async def fail(self, failures: Sequence[Failure]) -> AckResult:
        now = await self._enter()
        accepted, rejected = [], []
        for report in failures:
            record = self._fenced(report.job_id, report.execution_id)
            if record is None:
                rejected.append(report.job_id)
                continue
            self._close_execution(record, ExecutionStatus.FAILED, now, report.error)
            self._set(
                record,
                status=_F,
                error=report.error,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
            )
            accepted.append(report.job_id)
        self._cancel_descendants(accepted, now)
        return AckResult(accepted=tuple(accepted), rejected=tuple(rejected))

    # -- leases ----------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: uuid.UUID, execution_ids: Sequence[uuid.UUID], lease: dt.timedelta
    ) -> tuple[WorkerStatus, list[uuid.UUID]]:
        now = await self._enter()
        if lease < dt.timedelta(0):
            raise ValueError(f"a lease cannot be negative, got {lease}")
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._workers[worker_id] = attrs.evolve(worker, last_heartbeat_at=now)
        held = {
            record.job.execution_id: record
            for record in self._jobs.values()
            if record.job.status is _R and record.job.worker_id == worker_id
        }
        lost = []
        for execution_id in execution_ids:
            record = held.get(execution_id)
            if record is None:
                lost.append(execution_id)
            else:
                self._set(record, lease_expires_at=now + lease)
        return (worker.status if worker is not None else WorkerStatus.RUNNING), lost

    async def reclaim_expired(self) -> list[uuid.UUID]:
        now = await self._enter()
        reclaimed, failed = [], []
        for record in sorted(self._jobs.values(), key=lambda r: r.job.id):
            job = record.job
            if job.status is not _R or job.lease_expires_at is None or job.lease_expires_at >= now:
                continue
            error = ErrorInfo(
                type="LeaseExpired",
                message=f"attempt {job.attempt} was lost: the lease of worker {job.worker_id} "
                "expired before it reported",
            )
            target = _P if job.attempt < job.max_attempts else _F
            self._close_execution(record, ExecutionStatus.LOST, now, error)
            self._set(
                record,
                status=target,
                error=error,
                updated_at=now,
                lease_expires_at=None,
                finished_at=now if target is _F else None,
            )
            reclaimed.append(job.id)
            if target is _F:
                failed.append(job.id)
        self._cancel_descendants(failed, now)
        if reclaimed:
            self._notify()
        return reclaimed

    # -- cancel, replay, purge -------------------------------------------------------------

    async def cancel(self, job_ids: Sequence[uuid.UUID], project: str) -> list[uuid.UUID]:
        now = await self._enter()
        targets = []
        for job_id in dict.fromkeys(job_ids):
            record = self._in_project(job_id, project)
            if record is not None and record.job.status in ACTIVE_STATUSES:
                self._cancel(record, now)
                targets.append(job_id)
        return targets + self._cancel_descendants(targets, now)

    def _matching(self, selection: JobFilter) -> list[_Record]:
        return [
            record
            for record in self._jobs.values()
            if record.job.project == selection.project
            and (selection.statuses is None or record.job.status in selection.statuses)
            and (selection.queue is None or record.job.queue == selection.queue)
            and (selection.task is None or record.job.task == selection.task)
            and (selection.ids is None or record.job.id in selection.ids)
            and (
                selection.updated_before is None or record.job.updated_at < selection.updated_before
            )
        ]

    async def replay(self, selection: JobFilter) -> ReplayResult:
        now = await self._enter()
        matching = self._matching(selection)
        chosen = {r.job.id for r in matching if r.job.status in (_F, _C)}
        skipped = {
            r.job.id: f"it is {r.job.status.value}; only failed or cancelled jobs are replayed"
            for r in matching
            if r.job.id not in chosen
        }
        # A job whose dead parent stays dead cannot run again: it is skipped, and so are its
        # own children in this replay.
        changed = True
        while changed:
            changed = False
            for job_id in sorted(chosen):
                for parent in self._jobs[job_id].job.depends_on:
                    if self._jobs[parent].job.status in (_F, _C) and parent not in chosen:
                        chosen.discard(job_id)
                        skipped[job_id] = f"its parent {parent} is not replayed with it"
                        changed = True
                        break
        replayed = sorted(chosen)
        targets = {
            job_id: _B
            if any(self._jobs[p].job.status is not _OK for p in self._jobs[job_id].job.depends_on)
            else _P
            for job_id in replayed
        }
        for job_id in replayed:
            self._set(
                self._jobs[job_id],
                status=targets[job_id],
                attempt=0,
                error=None,
                result=None,
                lease_expires_at=None,
                finished_at=None,
                scheduled_for=now,
                updated_at=now,
            )
        if replayed:
            self._notify()
        return ReplayResult(replayed=tuple(replayed), skipped=tuple(sorted(skipped.items())))

    async def purge(self, selection: JobFilter) -> int:
        await self._enter()
        doomed = {
            r.job.id
            for r in self._matching(selection)
            if r.job.status in FINAL_STATUSES
            and not any(
                self._jobs[child].job.status in ACTIVE_STATUSES
                for child in self._children.get(r.job.id, ())
            )
        }
        for job_id in doomed:
            record = self._jobs.pop(job_id)
            self._logs.pop(job_id, None)
            if record.job.key is not None:
                self._keys.pop((record.job.project, record.job.key), None)
        for job_id in doomed:
            self._children.pop(job_id, None)
        return len(doomed)

    # -- reading ---------------------------------------------------------------------------

    async def get_jobs(self, job_ids: Sequence[uuid.UUID], project: str) -> list[Job]:
        await self._enter()
        found = (self._in_project(job_id, project) for job_id in job_ids)
        return [record.job for record in found if record is not None]

    async def list_jobs(self, selection: JobFilter, *, limit: int, cursor: str | None) -> Page:
        await self._enter()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        try:
            before = int(cursor) if cursor is not None else None
        except ValueError as exc:
            raise ValueError(f"{cursor!r} is not a cursor returned by list_jobs") from exc
        # The cursor is the insertion number of the last job shown: jobs inserted later have
        # higher numbers, so they never shift the pages still to come.
        records = sorted(self._matching(selection), key=lambda r: -r.seq)
        if before is not None:
            records = [r for r in records if r.seq < before]
        page = records[:limit]
        more = len(records) > limit
        return Page(
            items=tuple(r.job for r in page), next_cursor=str(page[-1].seq) if more else None
        )

    # -- queues ----------------------------------------------------------------------------

    async def queue_stats(self, project: str) -> list[QueueStats]:
        await self._enter()
        counts = {
            name: dict.fromkeys(JobStatus, 0) for (owner, name) in self._queues if owner == project
        }
        for record in self._jobs.values():
            if record.job.project == project:
                counts[record.job.queue][record.job.status] += 1
        return [
            QueueStats(
                project=project, queue=name, paused=self._queues[project, name], counts=counts[name]
            )
            for name in sorted(counts)
        ]

    async def set_queue_paused(self, project: str, queue: str, paused: bool) -> Queue:
        await self._enter()
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"a queue needs a non-empty name, got {queue!r}")
        self._queues[project, queue] = bool(paused)
        if not paused:
            self._notify([queue])
        return Queue(project=project, name=queue, paused=bool(paused))

    async def list_queues(self, project: str) -> list[Queue]:
        await self._enter()
        return [
            Queue(project=owner, name=name, paused=paused)
            for (owner, name), paused in sorted(self._queues.items())
            if owner == project
        ]

    # -- workers ---------------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        now = await self._enter()
        for assignment in worker.queues:
            if not isinstance(assignment.weight, int) or assignment.weight < 0:
                raise ConfigurationError(
                    f"queue weight must be an integer >= 0, got {assignment.weight!r} "
                    f"for queue {assignment.queue!r}"
                )
        for assignment in worker.queues:
            self._queues.setdefault((worker.project, assignment.queue), False)
        self._workers[worker.id] = attrs.evolve(
            worker,
            started_at=worker.started_at or now,
            last_heartbeat_at=worker.last_heartbeat_at or now,
        )

    async def set_worker_status(self, worker_id: uuid.UUID, status: WorkerStatus) -> None:
        await self._enter()
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._workers[worker_id] = attrs.evolve(worker, status=WorkerStatus(status))

    async def list_workers(self, project: str) -> list[WorkerInfo]:
        await self._enter()
        return sorted(
            (w for w in self._workers.values() if w.project == project),
            key=lambda w: (w.name, w.id),
        )

    # -- history ---------------------------------------------------------------------------

    async def list_executions(self, job_id: uuid.UUID) -> list[Execution]:
        await self._enter()
        record = self._jobs.get(job_id)
        return list(record.executions) if record is not None else []

    async def add_logs(self, entries: Sequence[ExecutionLog]) -> None:
        await self._enter()
        for entry in entries:
            if entry.job_id in self._jobs:  # lines of a purged job are dropped
                fields = decode(_encode_fields(entry.fields))
                self._logs.setdefault(entry.job_id, []).append(attrs.evolve(entry, fields=fields))

    async def list_logs(self, job_id: uuid.UUID) -> list[ExecutionLog]:
        await self._enter()
        return sorted(self._logs.get(job_id, ()), key=lambda entry: entry.at)

    # -- wake-ups --------------------------------------------------------------------------

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return as soon as this storage makes jobs runnable in ``queues`` (any queue when
        empty), or after ``timeout`` seconds of the event loop's own clock."""
        await self._enter()
        waiter = _Waiter(frozenset(queues))
        self._waiters.append(waiter)
        try:
            with anyio.move_on_after(max(0.0, timeout)):
                await waiter.event.wait()
        finally:
            self._waiters.remove(waiter)


def _encode_fields(fields: Mapping[str, Any]) -> str:
    """Log fields are written by task code: a value JSON cannot hold is kept as its repr rather
    than failing the worker's whole batch of log lines (and the reports that follow it)."""
    try:
        return encode(dict(fields), what="log fields")
    except SerializationError:
        return json.dumps(dict(fields), default=repr, ensure_ascii=False, separators=(",", ":"))


def _parents_first(
    new: dict[uuid.UUID, NewJob], parents_of: dict[uuid.UUID, tuple[uuid.UUID, ...]]
) -> list[uuid.UUID]:
    """The batch's new ids with every parent before its children, or DependencyError."""
    order: list[uuid.UUID] = []
    placed: set[uuid.UUID] = set()
    waiting: Collection[uuid.UUID] = list(new)
    while waiting:
        ready = [
            job_id
            for job_id in waiting
            if all(p not in new or p in placed for p in parents_of[job_id])
        ]
        if not ready:
            listed = ", ".join(str(job_id) for job_id in waiting)
            raise DependencyError(f"the dependencies of jobs {listed} form a cycle")
        order.extend(ready)
        placed.update(ready)
        waiting = [job_id for job_id in waiting if job_id not in placed]
    return order
