"""A small, pure-Python reference model of what a storage backend must do.

:class:`ReferenceModel` keeps jobs in dictionaries and moves them only through
:func:`taskforge_core.states.check_transition`, so it cannot drift from
:data:`taskforge_core.states.TRANSITIONS`. The stateful test
(:mod:`taskforge_conformance.machine`) applies every call it makes on a backend to this model as
well, and checks after every step that the two agree.

The model follows the :class:`~taskforge_core.protocols.Storage` docstrings. Where they leave a
detail open, it takes the reading forced by the guarantees, and says so where it does:

* a job is runnable when it is pending, or scheduled with ``scheduled_for <= now``;
* a new job (or a released child) is scheduled when ``scheduled_for > now``, else pending;
* a replayed job is runnable from the time of the replay (``scheduled_for`` becomes *now*);
* a replayed job whose failed or cancelled parent is not replayed with it is skipped: pending
  would run it before its parent succeeded, and blocked would wait forever;
* a second enqueue of an idempotency key -- also within one batch -- returns the first job.

Time is whatever the caller passes as ``now``. ``None`` means "untimed": the backend does not
use an injectable clock, so every job the test enqueues is due and no lease expires.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from taskforge_core.errors import DependencyError, InvalidJobError, QueueError
from taskforge_core.models import ClaimRequest, JobFilter, NewJob
from taskforge_core.states import (
    ACTIVE_STATUSES,
    ExecutionStatus,
    JobStatus,
    check_transition,
)

__all__ = ["ModelExecution", "ModelJob", "ReferenceModel", "claim_order"]

_P, _S, _B, _R = JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.PROCESSING
_OK, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED


@attrs.define(kw_only=True)
class ModelExecution:
    """One attempt, as the model expects ``list_executions`` to report it."""

    id: uuid.UUID
    attempt: int
    status: ExecutionStatus = ExecutionStatus.STARTED


@attrs.define(kw_only=True)
class ModelJob:
    """One job as the model expects the backend to store it."""

    id: uuid.UUID
    project: str
    queue: str
    task: str
    priority: int
    max_attempts: int
    scheduled_for: dt.datetime | None
    #: Parents after idempotency-key aliasing, without repeats.
    depends_on: tuple[uuid.UUID, ...]
    key: str | None
    status: JobStatus
    #: The enqueue call that created the job, counted from 1: newest first means highest first.
    #: Jobs of one batch are equally new.
    batch: int
    attempt: int = 0
    execution_id: uuid.UUID | None = None
    worker_id: uuid.UUID | None = None
    lease_expires_at: dt.datetime | None = None
    result: Any = None
    executions: list[ModelExecution] = attrs.field(factory=list)


def claim_order(job: ModelJob) -> tuple[int, dt.datetime, uuid.UUID]:
    """The protocol's order among runnable jobs: higher priority, earlier due, older id."""
    due = job.scheduled_for or dt.datetime.min.replace(tzinfo=dt.UTC)
    return (-job.priority, due, job.id)


class ReferenceModel:
    """The expected state of one store. Every mutator mirrors one storage verb."""

    def __init__(self, *, create_queues: bool = True) -> None:
        self.jobs: dict[uuid.UUID, ModelJob] = {}
        #: ``(project, queue) -> paused`` for every queue that exists.
        self.queues: dict[tuple[str, str], bool] = {}
        self.create_queues = create_queues
        self._children: dict[uuid.UUID, list[uuid.UUID]] = {}
        self._keys: dict[tuple[str, str], uuid.UUID] = {}
        self._batches = 0
        #: Queues named only by requests an idempotency key turned into no-ops. Whether such a
        #: request creates its queue is not specified, so they may exist, empty, or not.
        self.optional_queues: set[tuple[str, str]] = set()

    # -- helpers ---------------------------------------------------------------------------

    def _move(self, job: ModelJob, target: JobStatus) -> None:
        check_transition(job.status, target)
        job.status = target

    @staticmethod
    def is_due(job: ModelJob, now: dt.datetime | None) -> bool:
        return now is None or job.scheduled_for is None or job.scheduled_for <= now

    def runnable(self, job: ModelJob, now: dt.datetime | None) -> bool:
        if job.status is _P:
            return True
        return job.status is _S and self.is_due(job, now)

    def in_project(self, project: str) -> list[ModelJob]:
        return [job for job in self.jobs.values() if job.project == project]

    def descendants(self, roots: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Every descendant of ``roots`` (through jobs of any status), without the roots."""
        seen: dict[uuid.UUID, None] = {}
        stack = list(roots)
        start = set(stack)
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in seen and child not in start:
                    seen[child] = None
                    stack.append(child)
        return list(seen)

    def _cancel(self, job: ModelJob) -> None:
        if job.status is _R and job.executions:
            job.executions[-1].status = ExecutionStatus.CANCELLED
        self._move(job, _C)
        job.lease_expires_at = None

    def _cancel_descendants(self, roots: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        cancelled = []
        for job_id in self.descendants(roots):
            job = self.jobs[job_id]
            if job.status in ACTIVE_STATUSES:
                self._cancel(job)
                cancelled.append(job_id)
        return cancelled

    def _release_children(self, parents: Iterable[uuid.UUID], now: dt.datetime | None) -> None:
        for parent in parents:
            for child_id in self._children.get(parent, ()):
                child = self.jobs[child_id]
                if child.status is _B and all(self.jobs[p].status is _OK for p in child.depends_on):
                    self._move(child, _P if self.is_due(child, now) else _S)

    # -- enqueue ---------------------------------------------------------------------------

    def check_enqueue(self, batch: Sequence[NewJob]) -> type[Exception] | None:
        """The error the batch must be rejected with, or None when it is valid."""
        for job in batch:
            if job.max_attempts < 1:
                return InvalidJobError
        if not self.create_queues:
            for job in batch:
                if (job.project, job.queue) not in self.queues:
                    return QueueError
        alias = self._aliases(batch)
        members = {job.id: job for job in batch if alias[job.id] == job.id}
        for job in members.values():
            for given in job.depends_on:
                parent = alias.get(given, given)
                if parent == job.id:
                    return DependencyError
                if parent in members:
                    if members[parent].project != job.project:
                        return DependencyError
                elif parent not in self.jobs or self.jobs[parent].project != job.project:
                    return DependencyError
        if self._parents_first(members, alias) is None:
            return DependencyError
        return None

    def _aliases(self, batch: Sequence[NewJob]) -> dict[uuid.UUID, uuid.UUID]:
        """Each request id -> the id of the job that stands for it (itself unless its key is
        already taken, in the store or by an earlier member of the batch)."""
        keys = dict(self._keys)
        alias: dict[uuid.UUID, uuid.UUID] = {}
        for job in batch:
            if job.key is not None:
                known = keys.get((job.project, job.key))
                if known is not None:
                    alias[job.id] = known
                    continue
                keys[job.project, job.key] = job.id
            alias[job.id] = job.id
        return alias

    def _parents_first(
        self, members: Mapping[uuid.UUID, NewJob], alias: Mapping[uuid.UUID, uuid.UUID]
    ) -> list[uuid.UUID] | None:
        order: list[uuid.UUID] = []
        placed: set[uuid.UUID] = set()
        pending = list(members)
        while pending:
            ready = [
                job_id
                for job_id in pending
                if all(
                    alias.get(p, p) not in members or alias.get(p, p) in placed
                    for p in members[job_id].depends_on
                )
            ]
            if not ready:
                return None  # what is left lies on (or behind) a cycle
            order.extend(ready)
            placed.update(ready)
            pending = [job_id for job_id in pending if job_id not in placed]
        return order

    def enqueue(self, batch: Sequence[NewJob], now: dt.datetime | None) -> list[uuid.UUID]:
        """Store a valid batch (see :meth:`check_enqueue`); return the id standing for each
        request, in request order. ``scheduled_for`` None is stored as ``now``."""
        if self.check_enqueue(batch) is not None:
            raise AssertionError("the model was asked to enqueue an invalid batch")
        alias = self._aliases(batch)
        members = {job.id: job for job in batch if alias[job.id] == job.id}
        order = self._parents_first(members, alias) or []
        self._batches += 1
        for job_id in order:
            request = members[job_id]
            parents = tuple(dict.fromkeys(alias.get(p, p) for p in request.depends_on))
            scheduled_for = request.scheduled_for if request.scheduled_for is not None else now
            job = ModelJob(
                id=job_id,
                project=request.project,
                queue=request.queue,
                task=request.task,
                priority=request.priority,
                max_attempts=request.max_attempts,
                scheduled_for=scheduled_for,
                depends_on=parents,
                key=request.key,
                status=_P,
                batch=self._batches,
            )
            statuses = [self.jobs[p].status for p in parents]
            if any(s in (_F, _C) for s in statuses):
                target = _C
            elif all(s is _OK for s in statuses):
                target = _P if self.is_due(job, now) else _S
            else:
                target = _B
            check_transition(None, target)
            job.status = target
            self.jobs[job_id] = job
            for parent in parents:
                self._children.setdefault(parent, []).append(job_id)
            if request.key is not None:
                self._keys[request.project, request.key] = job_id
            self.queues.setdefault((request.project, request.queue), False)
        for request in batch:
            if (request.project, request.queue) not in self.queues:
                self.optional_queues.add((request.project, request.queue))
        return [alias[job.id] for job in batch]

    # -- claim -----------------------------------------------------------------------------

    def expected_claim(self, request: ClaimRequest, now: dt.datetime | None) -> list[uuid.UUID]:
        """The ids a claim must take: each share from its own queue up to its quota, then the
        capacity left from all the listed queues together, best first."""
        if request.limit <= 0:
            return []
        open_queues = [
            share.name
            for share in request.shares
            if self.queues.get((request.project, share.name)) is False
        ]
        runnable = sorted(
            (
                job
                for job in self.in_project(request.project)
                if job.queue in open_queues and self.runnable(job, now)
            ),
            key=claim_order,
        )
        chosen: dict[uuid.UUID, None] = {}
        for share in request.shares:
            room = request.limit - len(chosen)
            if room <= 0:
                break
            if share.name not in open_queues or share.limit <= 0:
                continue
            quota = min(share.limit, room)
            for job in runnable:
                if quota == 0:
                    break
                if job.queue == share.name and job.id not in chosen:
                    chosen[job.id] = None
                    quota -= 1
        for job in runnable:
            if len(chosen) >= request.limit:
                break
            chosen.setdefault(job.id, None)
        return list(chosen)

    def claim(
        self,
        job_id: uuid.UUID,
        execution_id: uuid.UUID,
        worker_id: uuid.UUID,
        lease_expires_at: dt.datetime | None,
    ) -> None:
        """Record that ``job_id`` was claimed (the backend chose the execution id)."""
        job = self.jobs[job_id]
        self._move(job, _R)
        job.attempt += 1
        job.execution_id = execution_id
        job.worker_id = worker_id
        job.lease_expires_at = lease_expires_at
        job.executions.append(ModelExecution(id=execution_id, attempt=job.attempt))

    # -- reports ---------------------------------------------------------------------------

    def holds(self, job_id: uuid.UUID, execution_id: uuid.UUID) -> bool:
        """True when ``execution_id`` is the current claim of ``job_id`` (the fence)."""
        job = self.jobs.get(job_id)
        return job is not None and job.status is _R and job.execution_id == execution_id

    def complete(
        self, reports: Sequence[tuple[uuid.UUID, uuid.UUID, Any]], now: dt.datetime | None
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """``(job id, execution id, result)`` reports -> ``(accepted, rejected)`` job ids."""
        accepted, rejected = [], []
        for job_id, execution_id, result in reports:
            if not self.holds(job_id, execution_id):
                rejected.append(job_id)
                continue
            job = self.jobs[job_id]
            self._move(job, _OK)
            job.result = result
            job.lease_expires_at = None
            job.executions[-1].status = ExecutionStatus.SUCCEEDED
            accepted.append(job_id)
        self._release_children(accepted, now)
        return accepted, rejected

    def retry(
        self, reports: Sequence[tuple[uuid.UUID, uuid.UUID, dt.datetime, bool]]
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """``(job id, execution id, run_at, consume_attempt)`` -> ``(accepted, rejected)``."""
        accepted, rejected = [], []
        for job_id, execution_id, run_at, consume in reports:
            if not self.holds(job_id, execution_id):
                rejected.append(job_id)
                continue
            job = self.jobs[job_id]
            self._move(job, _S)
            job.scheduled_for = run_at
            job.lease_expires_at = None
            if not consume:
                job.attempt -= 1
            job.executions[-1].status = (
                ExecutionStatus.RETRYING if consume else ExecutionStatus.DEFERRED
            )
            accepted.append(job_id)
        return accepted, rejected

    def fail(
        self, reports: Sequence[tuple[uuid.UUID, uuid.UUID]]
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """``(job id, execution id)`` -> ``(accepted, rejected)``; descendants are cancelled."""
        accepted, rejected = [], []
        for job_id, execution_id in reports:
            if not self.holds(job_id, execution_id):
                rejected.append(job_id)
                continue
            job = self.jobs[job_id]
            self._move(job, _F)
            job.lease_expires_at = None
            job.executions[-1].status = ExecutionStatus.FAILED
            accepted.append(job_id)
        self._cancel_descendants(accepted)
        return accepted, rejected

    # -- leases ----------------------------------------------------------------------------

    def heartbeat(
        self,
        worker_id: uuid.UUID,
        execution_ids: Sequence[uuid.UUID],
        lease_expires_at: dt.datetime | None,
    ) -> list[uuid.UUID]:
        """Extend the leases ``worker_id`` holds; return the execution ids it does not hold."""
        held = {
            job.execution_id: job
            for job in self.jobs.values()
            if job.status is _R and job.worker_id == worker_id
        }
        lost = []
        for execution_id in execution_ids:
            job = held.get(execution_id)
            if job is None:
                lost.append(execution_id)
            else:
                job.lease_expires_at = lease_expires_at
        return lost

    def reclaim_expired(self, now: dt.datetime | None) -> list[uuid.UUID]:
        """Jobs whose lease ended before ``now``: pending with attempts left, else failed."""
        if now is None:
            return []
        reclaimed, failed = [], []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.status is not _R or job.lease_expires_at is None:
                continue
            if not job.lease_expires_at < now:
                continue
            target = _P if job.attempt < job.max_attempts else _F
            self._move(job, target)
            job.lease_expires_at = None
            job.executions[-1].status = ExecutionStatus.LOST
            reclaimed.append(job.id)
            if target is _F:
                failed.append(job.id)
        self._cancel_descendants(failed)
        return reclaimed

    # -- cancel, replay, queues ------------------------------------------------------------

    def cancel(self, job_ids: Sequence[uuid.UUID], project: str) -> list[uuid.UUID]:
        """Cancel the active jobs among ``job_ids`` in ``project`` and their active
        descendants; return every id cancelled."""
        targets = [
            job_id
            for job_id in dict.fromkeys(job_ids)
            if job_id in self.jobs
            and self.jobs[job_id].project == project
            and self.jobs[job_id].status in ACTIVE_STATUSES
        ]
        for job_id in targets:
            self._cancel(self.jobs[job_id])
        return targets + self._cancel_descendants(targets)

    def matches(self, job: ModelJob, selection: JobFilter) -> bool:
        return (
            job.project == selection.project
            and (selection.statuses is None or job.status in selection.statuses)
            and (selection.queue is None or job.queue == selection.queue)
            and (selection.task is None or job.task == selection.task)
            and (selection.ids is None or job.id in selection.ids)
        )

    def replay(
        self, selection: JobFilter, now: dt.datetime | None
    ) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Return ``(replayed, skipped)`` ids. ``selection.updated_before`` is not modelled."""
        if selection.updated_before is not None:
            raise ValueError("the model does not track updated_at")
        matching = [job for job in self.jobs.values() if self.matches(job, selection)]
        chosen = {job.id for job in matching if job.status in (_F, _C)}
        skipped = {job.id for job in matching if job.id not in chosen}
        changed = True
        while changed:
            changed = False
            for job_id in sorted(chosen):
                for parent in self.jobs[job_id].depends_on:
                    if self.jobs[parent].status in (_F, _C) and parent not in chosen:
                        chosen.discard(job_id)
                        skipped.add(job_id)
                        changed = True
                        break
        for job_id in sorted(chosen):
            job = self.jobs[job_id]
            waits = any(self.jobs[p].status is not _OK for p in job.depends_on)
            self._move(job, _B if waits else _P)
            job.attempt = 0
            job.result = None
            job.lease_expires_at = None
            if now is not None:
                job.scheduled_for = now
        return sorted(chosen), sorted(skipped)

    def set_queue_paused(self, project: str, queue: str, paused: bool) -> None:
        self.queues[project, queue] = paused
        self.optional_queues.discard((project, queue))

    def counts(self, project: str) -> dict[str, dict[JobStatus, int]]:
        """Jobs per status for every queue of ``project``, as ``queue_stats`` reports them."""
        counts: dict[str, dict[JobStatus, int]] = {
            queue: dict.fromkeys(JobStatus, 0) for (p, queue) in self.queues if p == project
        }
        for job in self.in_project(project):
            counts[job.queue][job.status] += 1
        return counts
