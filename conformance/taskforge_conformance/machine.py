"""The stateful test: random sequences of storage calls, checked against the reference model.

:class:`StorageMachine` is a hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine`.
Each rule makes one call on the backend under test (enqueue single jobs and batches -- delayed,
prioritized, keyed, with dependencies on stored jobs and on earlier members of the batch -- and
rejected batches; claims by several workers over several queues with various limits; complete,
retry with and without using up an attempt, fail; heartbeats; time passing and
``reclaim_expired``; cancel; replay; pausing queues; and late reports from workers that lost
their claim), applies the same call to :class:`~taskforge_conformance.model.ReferenceModel`,
and compares the answers. After every step an invariant reads the backend's whole state back
and compares it with the model.

Hypothesis drives the machine from synchronous code, so the storage lives on an asyncio event
loop in a thread, reached through one :func:`anyio.from_thread.start_blocking_portal` per run.
Time comes from a :class:`~taskforge_core.clock.FakeClock`. Backends that do not declare
:attr:`~taskforge_core.protocols.Capability.INJECTABLE_CLOCK` are driven "untimed": no delays,
no time passing, no lease expiry.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskforge_conformance.model import ModelJob, ReferenceModel
from taskforge_conformance.profiles import suite_settings
from taskforge_core.clock import FakeClock
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    ClaimRequest,
    Completion,
    ErrorInfo,
    Failure,
    Job,
    JobFilter,
    NewJob,
    QueueShare,
    QueueStats,
    RetryRequest,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.states import ExecutionStatus, JobStatus

__all__ = ["StorageFactory", "StorageMachine", "run_machine"]

T = TypeVar("T")

#: ``async factory(clock, directory) -> Storage`` (opened or not).
StorageFactory = Callable[[FakeClock, pathlib.Path], Awaitable[Storage]]

PROJECTS = ("default", "tenant-b")
#: Most calls go to the first project, so that its queues fill up; the second keeps them honest.
PROJECT_CHOICES = st.sampled_from(["default", "default", "default", "tenant-b"])
QUEUES = ("alpha", "beta")
#: Leases end half a second off the whole seconds that time moves by, so "expired" is never a
#: question of ``<`` against ``<=``.
LEASES = (dt.timedelta(seconds=30.5), dt.timedelta(seconds=90.5))
UNTIMED_LEASE = dt.timedelta(days=1)
#: A due time in the past of every clock, for untimed retries.
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
BOOM = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback (most recent call)")
RESULTS = st.sampled_from([None, 1, "done", {"rows": 3}, [1, 2]])
# Strategies are built once: building one per draw (sampled_from a fresh list) costs more than
# the storage call it feeds. Dynamic choices draw an index instead (see pick()).
DELAYS = st.sampled_from([None, None, None, -30, 10, 45, 3600])
KEYS = st.sampled_from([None, None, None, "k1", "k2"])
TASKS = st.sampled_from(["send", "resize"])
QUEUE_CHOICES = st.sampled_from(QUEUES)
QUEUE_LISTS = st.lists(QUEUE_CHOICES, min_size=1, max_size=len(QUEUES), unique=True)
PRIORITIES = st.sampled_from([0, 5, 1, -3])
ATTEMPTS = st.sampled_from([2, 1, 3])
LEASE_CHOICES = st.sampled_from(LEASES)
QUOTAS = st.sampled_from([2, 1, 3, 0])
LIMITS = st.sampled_from([1, 3, 2, 5, 8, 0])
RUN_AFTER = st.sampled_from([0, 5, 60])
BOOLEANS: st.SearchStrategy[bool] = st.booleans()
OUTCOMES = st.sampled_from(["complete", "retry", "fail", "defer"])
BAD_ATTEMPTS = st.sampled_from([0, -1])
REPLAY_QUEUES = st.sampled_from([None, None, *QUEUES])
_FAILED, _CANCELLED = JobStatus.FAILED, JobStatus.CANCELLED
REPLAY_STATUSES = st.sampled_from(
    [
        frozenset({_FAILED}),
        frozenset({_CANCELLED}),
        frozenset({_FAILED, _CANCELLED}),
        frozenset({_FAILED, _CANCELLED, JobStatus.PENDING, JobStatus.SUCCEEDED}),
    ]
)


def pick(data: st.DataObject, items: Sequence[T], label: str) -> T:
    """One of ``items`` (the draw shows its index)."""
    return items[data.draw(st.integers(0, len(items) - 1), label)]


def pick_some(
    data: st.DataObject, items: Sequence[T], label: str, *, min_size: int = 0, max_size: int
) -> list[T]:
    """Distinct members of ``items``, in drawn order (the draw shows their indexes)."""
    if not items:
        return []
    indexes = st.lists(
        st.integers(0, len(items) - 1), min_size=min_size, max_size=max_size, unique=True
    )
    return [items[i] for i in data.draw(indexes, label)]


class StorageMachine(RuleBasedStateMachine):
    """One run: a fresh store, a fresh model, and random calls on both."""

    def __init__(self, factory: StorageFactory, directory: pathlib.Path) -> None:
        super().__init__()
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=directory))
        self._portal_cm = start_blocking_portal("asyncio")
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.clock = FakeClock()
        try:
            self.storage = self.portal.call(self._open, factory)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self.timed = Capability.INJECTABLE_CLOCK in self.storage.capabilities
        self.model = ReferenceModel()
        self.workers = tuple(uuid7() for _ in range(3))
        #: Every claim ever made: execution id -> (job id, worker id).
        self.claims: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]] = {}
        #: What each job looked like at the last check, to re-read only changed histories.
        self._seen: dict[uuid.UUID, tuple[Any, ...]] = {}

    async def _open(self, factory: StorageFactory) -> Storage:
        storage = await factory(self.clock, self.directory)
        await storage.open()
        leftovers = await storage.list_jobs(JobFilter(), limit=1, cursor=None)
        if leftovers.items:
            await storage.close()
            raise AssertionError(
                "the storage the factory returned already holds jobs; every test needs a fresh, "
                "empty store (use a new directory, database or key prefix per call)"
            )
        return storage

    def teardown(self) -> None:
        try:
            self.portal.call(self.storage.close)
        finally:
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- plumbing --------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one storage call on the event loop and wait for its answer."""
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    @property
    def now(self) -> dt.datetime | None:
        return self.clock.now() if self.timed else None

    def held(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """``(job id, execution id)`` of claims whose lease is still running."""
        now = self.now
        return [
            (job.id, job.execution_id)
            for job in self.model.jobs.values()
            if job.status is JobStatus.PROCESSING
            and job.execution_id is not None
            and (now is None or job.lease_expires_at is None or job.lease_expires_at > now)
        ]

    def lost_claims(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """``(job id, execution id)`` of claims that are no longer current (the lease expired
        and was reclaimed, the job was cancelled, reported on, or claimed again). Claims of
        jobs that someone else runs now come first: a late report is most harmful there."""
        lost = [
            (job_id, execution_id)
            for execution_id, (job_id, _) in self.claims.items()
            if not self.model.holds(job_id, execution_id)
        ]
        return sorted(lost, key=lambda c: self.model.jobs[c[0]].status is not JobStatus.PROCESSING)

    def expired_unreclaimed(self) -> set[uuid.UUID]:
        """Execution ids whose lease ran out but that nobody reclaimed yet. The protocol does not
        say whether their worker still holds them, so no rule reports or heartbeats on them."""
        now = self.now
        if now is None:
            return set()
        return {
            job.execution_id
            for job in self.model.jobs.values()
            if job.status is JobStatus.PROCESSING
            and job.execution_id is not None
            and job.lease_expires_at is not None
            and job.lease_expires_at <= now
        }

    def describe(self, job_id: uuid.UUID) -> str:
        """A job as the model sees it, for failure messages."""
        job = self.model.jobs.get(job_id)
        if job is None:
            return f"{job_id} (unknown to the model)"
        paused = self.model.queues.get((job.project, job.queue))
        return (
            f"{job_id} ({job.status.value}, priority {job.priority}, due {job.scheduled_for}, "
            f"queue {job.project}/{job.queue}{' (paused)' if paused else ''}, "
            f"parents {[self.model.jobs[p].status.value for p in job.depends_on]})"
        )

    def compare_job(self, got: Job, want: ModelJob, where: str) -> None:
        problems: list[str] = []

        def check(field: str, actual: object, expected: object) -> None:
            if actual != expected:
                problems.append(f"{field} is {actual!r} but should be {expected!r}")

        check("status", got.status, want.status)
        check("project", got.project, want.project)
        check("queue", got.queue, want.queue)
        check("task", got.task, want.task)
        check("priority", got.priority, want.priority)
        check("attempt", got.attempt, want.attempt)
        check("max_attempts", got.max_attempts, want.max_attempts)
        check("key", got.key, want.key)
        check("depends_on", set(got.depends_on), set(want.depends_on))
        if want.scheduled_for is not None:
            check("scheduled_for", got.scheduled_for, want.scheduled_for)
        if want.status is JobStatus.PROCESSING:
            check("execution_id", got.execution_id, want.execution_id)
            check("worker_id", got.worker_id, want.worker_id)
            if self.timed:
                check("lease_expires_at", got.lease_expires_at, want.lease_expires_at)
        if want.status is JobStatus.SUCCEEDED:
            check("result", got.result, want.result)
        if problems:
            raise AssertionError(
                f"{where}: job {want.id} disagrees with the reference model: " + "; ".join(problems)
            )

    def adopt_due_time(self, job: Job) -> None:
        """Untimed runs cannot know the backend's "now": take its due time for jobs that were
        enqueued without one or replayed."""
        want = self.model.jobs[job.id]
        if not self.timed and want.scheduled_for is None:
            want.scheduled_for = job.scheduled_for

    # -- drawing requests ------------------------------------------------------------------

    def draw_job(
        self, data: st.DataObject, project: str, batch: Sequence[NewJob], *, keyed: bool = True
    ) -> NewJob:
        scheduled_for = None
        now = self.now
        if now is not None:
            delay = data.draw(DELAYS, "delay")
            if delay is not None:
                scheduled_for = now + dt.timedelta(seconds=delay)
        parents = [job.id for job in self.model.in_project(project)]
        parents += [job.id for job in batch if job.key is None]
        depends_on = pick_some(data, parents, "depends_on", max_size=2)
        key = data.draw(KEYS, "key") if keyed else None
        return NewJob(
            id=uuid7(),
            task=data.draw(TASKS, "task"),
            project=project,
            queue=data.draw(QUEUE_CHOICES, "queue"),
            args=(len(batch),),
            priority=data.draw(PRIORITIES, "priority"),
            scheduled_for=scheduled_for,
            max_attempts=data.draw(ATTEMPTS, "max_attempts"),
            depends_on=tuple(depends_on),
            key=key,
        )

    def draw_lease(self, data: st.DataObject) -> dt.timedelta:
        return data.draw(LEASE_CHOICES, "lease") if self.timed else UNTIMED_LEASE

    # -- enqueue ---------------------------------------------------------------------------

    @initialize(data=st.data())
    def start_with_some_jobs(self, data: st.DataObject) -> None:
        """Every run starts with a batch of work in the main project."""
        self.enqueue_batch(data, "default", data.draw(st.integers(2, 8), "batch size"))

    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        """A single job or a batch, possibly delayed, prioritized, keyed or with parents."""
        project = data.draw(PROJECT_CHOICES, "project")
        self.enqueue_batch(data, project, data.draw(st.integers(1, 4), "batch size"))

    def enqueue_batch(self, data: st.DataObject, project: str, size: int) -> None:
        batch: list[NewJob] = []
        for _ in range(size):
            batch.append(self.draw_job(data, project, batch))
        stored = self.call(self.storage.enqueue, batch)
        ids = self.model.enqueue(batch, self.now)
        got_ids = [job.id for job in stored]
        assert got_ids == ids, f"enqueue returned jobs {got_ids}, expected {ids} (request order)"
        for job in stored:
            self.adopt_due_time(job)
            self.compare_job(job, self.model.jobs[job.id], "enqueue's answer")

    @rule(
        data=st.data(),
        defect=st.sampled_from(
            ["unknown parent", "foreign parent", "cycle", "self", "max_attempts"]
        ),
    )
    def enqueue_invalid_batch(self, data: st.DataObject, defect: str) -> None:
        """A batch with one bad member gets its typed error and writes nothing."""
        project = data.draw(PROJECT_CHOICES, "project")
        batch: list[NewJob] = []
        for _ in range(data.draw(st.integers(1, 3), "batch size")):
            batch.append(self.draw_job(data, project, batch, keyed=False))
        bad = batch[-1]
        if defect == "unknown parent":
            bad = attrs.evolve(bad, depends_on=(*bad.depends_on, uuid7()))
        elif defect == "foreign parent":
            foreign = [j.id for j in self.model.jobs.values() if j.project != project]
            parent = pick(data, foreign, "parent") if foreign else uuid7()
            bad = attrs.evolve(bad, depends_on=(*bad.depends_on, parent))
        elif defect == "self":
            bad = attrs.evolve(bad, depends_on=(*bad.depends_on, bad.id))
        elif defect == "max_attempts":
            attempts = data.draw(BAD_ATTEMPTS, "max_attempts")
            bad = attrs.evolve(bad, max_attempts=attempts)
        batch[-1] = bad
        if defect == "cycle":
            first = batch[0]
            other = NewJob(id=uuid7(), task="send", project=project, depends_on=(first.id,))
            batch[0] = attrs.evolve(first, depends_on=(*first.depends_on, other.id))
            batch.append(other)
        expected = self.model.check_enqueue(batch)
        assert expected is not None, f"the suite built a valid batch for defect {defect!r}"
        try:
            self.call(self.storage.enqueue, batch)
        except expected:
            pass
        except Exception as exc:
            raise AssertionError(
                f"a batch with a bad member ({defect}) raised {exc!r}, expected {expected.__name__}"
            ) from exc
        else:
            raise AssertionError(
                f"a batch with a bad member ({defect}) was accepted; expected {expected.__name__}"
            )

    # -- claim and reports -----------------------------------------------------------------

    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        """A worker claims from one or several queues with a limit and per-queue quotas."""
        project = data.draw(PROJECT_CHOICES, "project")
        worker = pick(data, self.workers, "worker")
        names = data.draw(QUEUE_LISTS, "queues")
        shares = tuple(
            QueueShare(name=name, limit=data.draw(QUOTAS, f"quota {name}")) for name in names
        )
        limit = data.draw(LIMITS, "limit")
        lease = self.draw_lease(data)
        request = ClaimRequest(
            worker_id=worker, shares=shares, limit=limit, lease=lease, project=project
        )
        expected = self.model.expected_claim(request, self.now)
        claimed = self.call(self.storage.claim, request)
        got = [c.job.id for c in claimed]
        if sorted(got) != sorted(expected):
            wrong = [self.describe(job_id) for job_id in got if job_id not in expected]
            left = [self.describe(job_id) for job_id in expected if job_id not in got]
            raise AssertionError(
                f"claim({request}) at {self.now} took {got}; the reference model expected "
                f"{expected} (each share from its queue up to its quota, then the rest best "
                "first: higher priority, earlier due time, older id; only runnable jobs of "
                f"unpaused queues). Taken but not expected: {wrong or 'none'}. Expected but not "
                f"taken: {left or 'none'}"
            )
        for item in claimed:
            assert item.execution_id not in self.claims, "a claim reused an execution id"
            assert item.job.execution_id == item.execution_id
            expires = None
            if self.timed:
                expires = self.clock.now() + lease
                assert item.lease_expires_at == expires, (
                    f"lease ends at {item.lease_expires_at}, expected now + lease = {expires}"
                )
            self.model.claim(item.job.id, item.execution_id, worker, expires)
            self.claims[item.execution_id] = (item.job.id, worker)
            self.compare_job(item.job, self.model.jobs[item.job.id], "claim's answer")

    @precondition(lambda self: bool(self.held()))
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        """Workers report on jobs they hold: success; another attempt (a retry) or the job given
        back unrun (a deferral, ``consume_attempt`` off); failure for good. Each kind goes in
        one batch; a report repeated within a batch is rejected."""
        completions: list[Completion] = []
        retries: list[RetryRequest] = []
        failures: list[Failure] = []
        now = self.now
        for job_id, execution_id in pick_some(data, self.held(), "claims", min_size=1, max_size=3):
            job = self.model.jobs[job_id]
            outcome = data.draw(OUTCOMES, "outcome")
            if outcome == "retry" and job.attempt >= job.max_attempts:
                outcome = "fail"  # a worker retries only while attempts remain
            if outcome == "complete":
                result = data.draw(RESULTS, "result")
                completions.append(
                    Completion(job_id=job_id, execution_id=execution_id, result=result)
                )
            elif outcome == "fail":
                failures.append(Failure(job_id=job_id, execution_id=execution_id, error=BOOM))
            else:
                run_at = LONG_AGO
                if now is not None:
                    run_at = now + dt.timedelta(seconds=data.draw(RUN_AFTER, "run after"))
                consume = outcome == "retry"
                retries.append(
                    RetryRequest(
                        job_id=job_id,
                        execution_id=execution_id,
                        run_at=run_at,
                        error=BOOM if consume else None,
                        consume_attempt=consume,
                    )
                )
        if completions and data.draw(BOOLEANS, "repeat a completion") is True:
            completions.append(completions[0])
        if completions:
            ack = self.call(self.storage.complete, completions)
            accepted, rejected = self.model.complete(
                [(c.job_id, c.execution_id, c.result) for c in completions], now
            )
            _check_ack("complete", ack.accepted, ack.rejected, accepted, rejected)
        if retries:
            ack = self.call(self.storage.retry, retries)
            accepted, rejected = self.model.retry(
                [(r.job_id, r.execution_id, r.run_at, r.consume_attempt) for r in retries]
            )
            _check_ack("retry", ack.accepted, ack.rejected, accepted, rejected)
        if failures:
            ack = self.call(self.storage.fail, failures)
            accepted, rejected = self.model.fail([(f.job_id, f.execution_id) for f in failures])
            _check_ack("fail", ack.accepted, ack.rejected, accepted, rejected)

    @precondition(lambda self: bool(self.lost_claims()))
    @rule(data=st.data(), kind=st.sampled_from(["complete", "retry", "fail"]))
    def report_on_a_lost_claim(self, data: st.DataObject, kind: str) -> None:
        """A worker that lost its claim reports late: rejected, and nothing changes."""
        job_id, execution_id = pick(data, self.lost_claims(), "lost claim")
        if kind == "complete":
            ack = self.call(
                self.storage.complete,
                [Completion(job_id=job_id, execution_id=execution_id, result="stale")],
            )
        elif kind == "retry":
            run_at = self.now or LONG_AGO
            ack = self.call(
                self.storage.retry,
                [RetryRequest(job_id=job_id, execution_id=execution_id, run_at=run_at, error=BOOM)],
            )
        else:
            ack = self.call(
                self.storage.fail, [Failure(job_id=job_id, execution_id=execution_id, error=BOOM)]
            )
        assert (ack.accepted, ack.rejected) == ((), (job_id,)), (
            f"a late {kind} report from a worker that lost claim {execution_id} of job {job_id} "
            f"was answered {ack}; it must be rejected by fencing"
        )

    # -- leases and time -------------------------------------------------------------------

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        """A worker extends its leases; ids it does not hold (lost, another worker's, unknown)
        come back as lost and are not extended."""
        worker = pick(data, self.workers, "worker")
        unclear = self.expired_unreclaimed()
        candidates = [e for _, e in self.held() + self.lost_claims() if e not in unclear]
        candidates.append(uuid7())
        execution_ids = pick_some(data, candidates, "execution ids", max_size=4)
        lease = self.draw_lease(data)
        _, lost = self.call(self.storage.heartbeat, worker, execution_ids, lease)
        now = self.now
        expected = self.model.heartbeat(worker, execution_ids, None if now is None else now + lease)
        assert sorted(lost) == sorted(expected), (
            f"heartbeat of worker {worker} for {execution_ids} named {lost} as lost; "
            f"expected {expected}"
        )

    @precondition(lambda self: self.timed)
    @rule(seconds=st.sampled_from([31, 5, 1, 20, 61, 3600]))
    def advance_time(self, seconds: int) -> None:
        """Time passes: delayed jobs fall due, leases run out."""
        self.clock.advance(seconds)

    @precondition(lambda self: self.timed)
    @rule()
    def reclaim_expired(self) -> None:
        """Expired leases are taken back: pending with attempts left, else failed."""
        got = self.call(self.storage.reclaim_expired)
        expected = self.model.reclaim_expired(self.now)
        assert sorted(got) == sorted(expected), (
            f"reclaim_expired returned {got}; expected the jobs whose lease ended: {expected}"
        )

    # -- cancel, replay, pause -------------------------------------------------------------

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel some jobs of a project (others' ids and unknown ids are ignored)."""
        project = data.draw(PROJECT_CHOICES, "project")
        candidates = [*self.model.jobs, uuid7()]
        job_ids = pick_some(data, candidates, "ids", min_size=1, max_size=2)
        got = self.call(self.storage.cancel, job_ids, project)
        expected = self.model.cancel(job_ids, project)
        assert len(got) == len(set(got)), f"cancel returned an id twice: {got}"
        assert set(got) == set(expected), (
            f"cancel({job_ids}) returned {got}; expected the active ones and their active "
            f"descendants: {expected}"
        )

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Replay failed or cancelled jobs, by status or by id."""
        project = data.draw(PROJECT_CHOICES, "project")
        statuses: frozenset[JobStatus] | None = None
        ids: frozenset[uuid.UUID] | None = None
        in_project = [job.id for job in self.model.in_project(project)]
        if in_project and data.draw(BOOLEANS, "by id") is True:
            ids = frozenset(pick_some(data, in_project, "ids", min_size=1, max_size=4))
        else:
            statuses = data.draw(REPLAY_STATUSES, "statuses")
        queue = data.draw(REPLAY_QUEUES, "queue")
        selection = JobFilter(project=project, statuses=statuses, ids=ids, queue=queue)
        result = self.call(self.storage.replay, selection)
        replayed, skipped = self.model.replay(selection, self.now)
        assert sorted(result.replayed) == replayed, (
            f"replay({selection}) replayed {sorted(result.replayed)}; expected {replayed}"
        )
        assert sorted(job_id for job_id, _ in result.skipped) == skipped, (
            f"replay({selection}) skipped {result.skipped}; expected {skipped}"
        )
        if not self.timed and replayed:
            for job in self.call(self.storage.get_jobs, replayed, project):
                self.model.jobs[job.id].scheduled_for = job.scheduled_for

    @precondition(lambda self: bool(self.model.queues))
    @rule(data=st.data())
    def pause_or_resume_queue(self, data: st.DataObject) -> None:
        """Pause a queue (it takes jobs but is not claimed from), or resume a paused one."""
        queue = pick(data, sorted(self.model.queues), "queue")
        self.set_paused(queue, not self.model.queues[queue])

    def set_paused(self, queue: tuple[str, str], paused: bool) -> None:
        project, name = queue
        answer = self.call(self.storage.set_queue_paused, project, name, paused)
        assert (answer.project, answer.name, answer.paused) == (project, name, paused)
        self.model.set_queue_paused(project, name, paused)

    # -- the check after every step --------------------------------------------------------

    @invariant()
    def backend_agrees_with_the_model(self) -> None:
        changed = [
            job.id for job in self.model.jobs.values() if self._seen.get(job.id) != _looks(job)
        ]
        snapshot = self.portal.call(self._snapshot, changed)
        for project in PROJECTS:
            jobs, listed, stats = snapshot.projects[project]
            wanted = self.model.in_project(project)
            ids = {job.id for job in wanted}
            assert [job.id for job in jobs] == [job.id for job in wanted], (
                f"get_jobs in project {project!r} found {[j.id for j in jobs]}; "
                f"the model holds {[j.id for j in wanted]}"
            )
            for got, want in zip(jobs, wanted, strict=True):
                self.compare_job(got, want, "get_jobs")
            batches = [self.model.jobs[job_id].batch for job_id in listed if job_id in ids]
            problem = (
                f"list_jobs in project {project!r} gave {listed}; expected every job of the "
                f"project once, newest first: {[j.id for j in sorted(wanted, key=_newest)]}"
            )
            assert sorted(listed) == sorted(ids), problem
            assert batches == sorted(batches, reverse=True), problem
            counts = self.model.counts(project)
            optional = {q for p, q in self.model.optional_queues if p == project}
            got_counts = {
                s.queue: {k: v for k, v in s.counts.items() if v}
                for s in stats
                if s.queue not in optional or s.queue in counts or any(s.counts.values())
            }
            want_counts = {q: {k: v for k, v in c.items() if v} for q, c in counts.items()}
            assert got_counts == want_counts, (
                f"queue_stats of project {project!r} is {got_counts}; expected {want_counts}"
            )
            paused = {s.queue: s.paused for s in stats if s.queue in counts}
            want_paused = {q: p for (proj, q), p in self.model.queues.items() if proj == project}
            assert paused == want_paused, f"queues paused {paused}; expected {want_paused}"
        for job_id, executions in snapshot.executions.items():
            want_executions = [
                (e.id, e.attempt, e.status) for e in self.model.jobs[job_id].executions
            ]
            assert executions == want_executions, (
                f"list_executions({job_id}) is {executions}; expected {want_executions}"
            )
        for job_id in changed:
            self._seen[job_id] = _looks(self.model.jobs[job_id])

    async def _snapshot(self, changed: Sequence[uuid.UUID]) -> _Snapshot:
        snapshot = _Snapshot()
        for project in PROJECTS:
            ids = [job.id for job in self.model.in_project(project)]
            jobs = await self.storage.get_jobs(ids, project)
            listed: list[uuid.UUID] = []
            cursor: str | None = None
            while True:
                page = await self.storage.list_jobs(
                    JobFilter(project=project), limit=50, cursor=cursor
                )
                listed.extend(job.id for job in page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
            stats = await self.storage.queue_stats(project)
            snapshot.projects[project] = (jobs, listed, stats)
        for job_id in changed:
            snapshot.executions[job_id] = [
                (e.id, e.attempt, e.status) for e in await self.storage.list_executions(job_id)
            ]
        return snapshot


class _Snapshot:
    def __init__(self) -> None:
        self.projects: dict[str, tuple[list[Job], list[uuid.UUID], list[QueueStats]]] = {}
        self.executions: dict[uuid.UUID, list[tuple[uuid.UUID, int, ExecutionStatus]]] = {}


def _newest(job: ModelJob) -> tuple[int, uuid.UUID]:
    return (-job.batch, job.id)


def _looks(job: ModelJob) -> tuple[Any, ...]:
    return (job.status, job.attempt, job.execution_id, tuple(e.status for e in job.executions))


def _check_ack(
    verb: str,
    accepted: Sequence[uuid.UUID],
    rejected: Sequence[uuid.UUID],
    want_accepted: Sequence[uuid.UUID],
    want_rejected: Sequence[uuid.UUID],
) -> None:
    got = (collections.Counter(accepted), collections.Counter(rejected))
    want = (collections.Counter(want_accepted), collections.Counter(want_rejected))
    assert got == want, (
        f"{verb} accepted {list(accepted)} and rejected {list(rejected)}; expected accepted "
        f"{list(want_accepted)} and rejected {list(want_rejected)} (a report is taken only "
        "with the execution id of the job's current claim)"
    )


def run_machine(factory: StorageFactory, directory: pathlib.Path, shards: int = 1) -> None:
    """Run the state machine with the active profile's settings, or one of ``shards`` equal
    parts of its examples (one portal per run)."""

    def new_run() -> StorageMachine:
        return StorageMachine(factory, directory)

    # hypothesis calls its argument to make each run's machine; any factory will do, though
    # its annotation asks for the class.
    run_state_machine_as_test(
        cast("type[RuleBasedStateMachine]", new_run), settings=suite_settings(shards)
    )
