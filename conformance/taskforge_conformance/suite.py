"""The conformance suite: :class:`StorageConformance`, a base class of pytest tests.

Subclass it in a test module with a name pytest collects and give it a factory::

    class TestMyBackend(StorageConformance):
        async def make_storage(self, clock, tmp_path):
            return MyStorage(f"mydb:///{tmp_path}/jobs", clock=clock)

Every ``test_*`` method below is then a test of your backend. Each one builds a fresh store with
:meth:`~StorageConformance.make_storage`, opens it, runs on an asyncio event loop, and closes
it. A test that needs an optional ability skips when the storage does not list it in
``storage.capabilities``; nothing skips by backend name.

The scenario tests cover what random call sequences hardly reach (many concurrent claimers,
several processes, exact orderings, typed errors, pagination while jobs arrive);
:meth:`~StorageConformance.test_backend_agrees_with_the_reference_model` runs the stateful
test of :mod:`taskforge_conformance.machine`.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import multiprocessing
import pathlib
import pickle
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import anyio
import pytest

from taskforge_conformance._harness import BOOM, LEASE, Env, new_job
from taskforge_conformance._processes import claim_until_empty
from taskforge_conformance.machine import run_machine
from taskforge_conformance.profiles import machine_shards
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import FakeClock
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
    ClaimRequest,
    Completion,
    ExecutionLog,
    Failure,
    JobFilter,
    NewJob,
    QueueShare,
    QueueWorkerAssignment,
    RetryRequest,
    WorkerInfo,
    WorkerStatus,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.retention import Prunable, RetentionPolicy
from taskforge_core.states import ExecutionStatus, JobStatus

__all__ = ["StorageConformance", "scenario"]

#: Longest time one scenario may take before it counts as hung.
SCENARIO_TIMEOUT = 90.0

_P, _S, _B, _R = JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.PROCESSING
_OK, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED

_Body = Callable[["StorageConformance", Env], Awaitable[None]]
_Test = Callable[["StorageConformance", pathlib.Path], None]
_TestFn = TypeVar("_TestFn", bound=Callable[..., None])


def scenario(*needs: Capability) -> Callable[[_Body], _Test]:
    """Turn ``async def test_x(self, env)`` into a pytest test that runs it on a fresh, opened
    storage, and skips unless the storage declares every capability in ``needs``."""

    def decorate(body: _Body) -> _Test:
        def test(self: StorageConformance, tmp_path: pathlib.Path) -> None:
            self.run_scenario(tmp_path, frozenset(needs), body)

        test.__name__ = getattr(body, "__name__", "test")
        test.__qualname__ = getattr(body, "__qualname__", test.__name__)
        test.__doc__ = body.__doc__
        return test

    return decorate


async def _require_empty(storage: Storage) -> None:
    page = await storage.list_jobs(JobFilter(), limit=1, cursor=None)
    if page.items:
        raise AssertionError(
            "the storage the factory returned already holds jobs; every test needs a fresh, "
            "empty store (use tmp_path, or a new database or key prefix per call)"
        )


def _sharded(test: _TestFn) -> _TestFn:
    """Split the stateful test into the profile's parts (``[part1]`` ...), if more than one."""
    shards = machine_shards()
    if shards == 1:
        return test
    parts = pytest.mark.parametrize("machine_part", range(1, shards + 1), ids=lambda n: f"part{n}")
    return cast("_TestFn", parts(test))


def _missing(needs: frozenset[Capability], storage: Storage) -> str:
    lacking = sorted(c.value for c in needs - storage.capabilities)
    return ", ".join(lacking)


class StorageConformance:
    """Tests every promise of :class:`~taskforge_core.protocols.Storage`. Subclass it and
    implement :meth:`make_storage` (and, to test strict queues,
    :meth:`make_storage_with_config`)."""

    async def make_storage(self, clock: FakeClock, tmp_path: pathlib.Path) -> Storage:
        """Return a storage on a fresh, empty store, opened or not (the suite opens it; an open
        storage's ``open()`` must then do nothing).

        ``clock`` is the time to use if the backend declares ``INJECTABLE_CLOCK``. ``tmp_path``
        is a new empty directory per test. A backend that declares ``DURABLE`` or
        ``MULTI_PROCESS`` must reach the same store when called again with the same
        ``tmp_path`` -- from a new storage object or from another process.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_storage()")

    async def make_storage_with_config(
        self, config: BackendConfig, tmp_path: pathlib.Path
    ) -> Storage:
        """Like :meth:`make_storage`, honouring every field of ``config`` (the suite uses it with
        ``create_queues=False``). Optional: the tests that need it skip when it is missing."""
        raise NotImplementedError

    # -- running a scenario ----------------------------------------------------------------

    def run_scenario(
        self, tmp_path: pathlib.Path, needs: frozenset[Capability], body: _Body
    ) -> None:
        """Run ``body`` on a fresh opened storage on an asyncio event loop."""

        async def main() -> str:
            clock = FakeClock()
            storage = await self.make_storage(clock, tmp_path)
            await storage.open()
            try:
                lacking = _missing(needs, storage)
                if lacking:
                    return lacking
                await _require_empty(storage)
                with anyio.fail_after(SCENARIO_TIMEOUT):
                    await body(self, Env(storage=storage, clock=clock, tmp_path=tmp_path))
            finally:
                await storage.close()
            return ""

        lacking = anyio.run(main, backend="asyncio")
        if lacking:
            pytest.skip(f"the backend does not declare the capability {lacking}")

    # =====================================================================================
    # The stateful test
    # =====================================================================================

    @pytest.fixture
    def machine_part(self) -> int:
        """Which part of the stateful test's examples this item runs (profiles with several
        parts parametrize it)."""
        return 1

    @_sharded
    def test_backend_agrees_with_the_reference_model(
        self, tmp_path: pathlib.Path, machine_part: int
    ) -> None:
        """Random sequences of every verb agree, step by step, with the reference model."""
        run_machine(self.make_storage, tmp_path, machine_shards())

    # =====================================================================================
    # Exclusive claim
    # =====================================================================================

    @scenario()
    async def test_concurrent_claimers_never_get_the_same_job(self, env: Env) -> None:
        """Twenty claimers on one storage, claiming and completing at once, each job once."""
        jobs = [new_job() for _ in range(300)]
        await env.storage.enqueue(jobs)
        got: list[uuid.UUID] = []

        async def claimer() -> None:
            worker = uuid7()
            for limit in itertools.cycle([1, 3, 7]):
                claimed = await env.storage.claim(env.request(limit=limit, worker=worker))
                if not claimed:
                    return
                got.extend(c.job.id for c in claimed)
                await env.storage.complete(
                    [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in claimed]
                )

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(claimer)
        twice = sorted(job_id for job_id, n in collections.Counter(got).items() if n > 1)
        assert not twice, f"{len(twice)} jobs were handed to two claimers, e.g. {twice[:3]}"
        assert set(got) == {job.id for job in jobs}, "some jobs were never claimed"
        (stats,) = await env.storage.queue_stats("default")
        assert stats.counts[_OK] == len(jobs)

    def test_claimers_in_several_processes_never_get_the_same_job(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Three processes claim from one store at once (``MULTI_PROCESS`` backends)."""
        expected: list[str] = []

        async def fill(_: StorageConformance, env: Env) -> None:
            jobs = await env.storage.enqueue([new_job() for _ in range(600)])
            expected.extend(str(job.id) for job in jobs)

        self.run_scenario(tmp_path, frozenset({Capability.MULTI_PROCESS}), fill)
        try:
            pickle.dumps(type(self))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            pytest.fail(
                f"{type(self).__qualname__} must be importable by name for the multi-process "
                f"test (define it at module level; do not use --import-mode=importlib): {exc}"
            )
        context = multiprocessing.get_context("spawn")
        outputs = [tmp_path / f"claimed-{n}.json" for n in range(3)]
        start = context.Barrier(len(outputs), timeout=60)
        processes = [
            context.Process(
                target=claim_until_empty, args=(type(self), str(tmp_path), str(out), start)
            )
            for out in outputs
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=100)
        for process in processes:
            if process.is_alive():
                process.kill()
        assert [p.exitcode for p in processes] == [0] * len(processes), "a claimer process failed"
        parts = [json.loads(out.read_text(encoding="utf-8")) for out in outputs]
        got = [job_id for part in parts for job_id in part]
        twice = sorted(job_id for job_id, n in collections.Counter(got).items() if n > 1)
        assert not twice, f"{len(twice)} jobs were claimed by two processes, e.g. {twice[:3]}"
        assert set(got) == set(expected), "some jobs were never claimed"

    @scenario()
    async def test_a_claimed_job_is_not_claimed_again_while_its_lease_runs(self, env: Env) -> None:
        """A second claim sees nothing while the first holds the job; it starts an attempt, and
        the claimed job is the job as stored."""
        (job,) = await env.enqueue(new_job(max_attempts=3))
        (first,) = await env.claim()
        assert first.job.status is _R
        assert first.job.attempt == 1
        assert first.job.execution_id == first.execution_id
        assert first.job.worker_id == env.worker
        assert first.job.lease_expires_at == first.lease_expires_at
        if env.timed:
            assert first.lease_expires_at == env.clock.now() + LEASE
            assert first.job.started_at == env.clock.now()
        assert first.job == await env.job(job.id), "a claim returns the job as stored"
        assert await env.claim(worker=uuid7()) == []
        (execution,) = await env.storage.list_executions(job.id)
        assert (execution.id, execution.attempt, execution.status, execution.worker_id) == (
            first.execution_id,
            1,
            ExecutionStatus.STARTED,
            env.worker,
        )

    # =====================================================================================
    # Order
    # =====================================================================================

    @scenario()
    async def test_claim_order_is_priority_then_due_time_then_age(self, env: Env) -> None:
        """Among runnable jobs: higher priority, then earlier due time, then older id."""
        t0 = env.past(3600)
        low = new_job(priority=0, scheduled_for=t0)
        high_late = new_job(priority=9, scheduled_for=t0 + dt.timedelta(minutes=20))
        high_early = new_job(priority=9, scheduled_for=t0)
        mid_old = new_job(priority=5, scheduled_for=t0 + dt.timedelta(minutes=10))
        mid_young = new_job(priority=5, scheduled_for=t0 + dt.timedelta(minutes=10))
        negative = new_job(priority=-5, scheduled_for=t0 - dt.timedelta(minutes=10))
        await env.enqueue(mid_young, low, negative, high_late, mid_old, high_early)
        expected = [high_early, high_late, mid_old, mid_young, low, negative]
        one_by_one = [(await env.claim_ids(limit=1)) for _ in expected]
        assert one_by_one == [[job.id] for job in expected], (
            "claiming one at a time must follow priority, then due time, then age"
        )
        again = [new_job(priority=p) for p in (1, 3, 2, 3)]
        await env.enqueue(*again)
        best_two = await env.claim_ids(limit=2)
        assert set(best_two) == {again[1].id, again[3].id}

    @scenario()
    async def test_claim_fills_each_queue_share_then_the_best_of_the_rest(self, env: Env) -> None:
        """Each share gets up to its quota from its queue; what is left goes best first. A
        claim with a zero limit or no shares gets nothing."""
        a_jobs = [new_job(queue="a", priority=1) for _ in range(5)]
        b_jobs = [new_job(queue="b", priority=2) for _ in range(5)]
        await env.enqueue(*a_jobs, *b_jobs)
        request = ClaimRequest(
            worker_id=env.worker,
            shares=(QueueShare(name="a", limit=3), QueueShare(name="b", limit=1)),
            limit=6,
            lease=LEASE,
        )
        claimed = {c.job.id for c in await env.storage.claim(request)}
        assert claimed == {j.id for j in a_jobs[:3]} | {j.id for j in b_jobs[:3]}
        await env.enqueue(*(new_job(queue=q) for q in "cdcd"))
        capped = ClaimRequest(
            worker_id=env.worker,
            shares=(QueueShare(name="c", limit=5), QueueShare(name="d", limit=5)),
            limit=3,
            lease=LEASE,
        )
        got = [c.job.queue for c in await env.storage.claim(capped)]
        assert sorted(got) == ["c", "c", "d"], "a claim never takes more than its limit"
        assert await env.claim("nowhere") == []
        assert await env.storage.claim(env.request("a", "b", limit=0)) == []
        no_shares = ClaimRequest(worker_id=env.worker, shares=(), limit=5, lease=LEASE)
        assert await env.storage.claim(no_shares) == []

    @scenario()
    async def test_a_paused_queue_is_not_claimed_from_but_takes_jobs(self, env: Env) -> None:
        """Pausing stops claims from one queue; enqueueing into it still works."""
        (running,) = await env.enqueue(new_job(queue="open"))
        paused = await env.storage.set_queue_paused("default", "held", True)
        assert paused.paused
        (held,) = await env.enqueue(new_job(queue="held"))
        assert await env.claim_ids("held", "open") == [running.id]
        await env.storage.set_queue_paused("default", "held", False)
        assert await env.claim_ids("held") == [held.id]

    # =====================================================================================
    # Nothing runs before its time or its parents
    # =====================================================================================

    @scenario(Capability.INJECTABLE_CLOCK)
    async def test_nothing_runs_before_its_due_time(self, env: Env) -> None:
        """Delayed jobs, retries and released children wait for ``scheduled_for``."""
        now = env.clock.now()
        later = new_job(scheduled_for=now + dt.timedelta(seconds=60))
        past = new_job(scheduled_for=now - dt.timedelta(seconds=60))
        stored = await env.enqueue(later, past)
        assert [job.status for job in stored] == [_S, _P]
        assert [job.scheduled_for for job in stored] == [later.scheduled_for, past.scheduled_for]
        assert await env.claim_ids() == [past.id]
        env.clock.advance(59)
        assert await env.claim_ids() == []
        env.clock.advance(1)
        (claimed,) = await env.claim()
        assert claimed.job.id == later.id, "a job is runnable once its due time has come"

        run_at = env.clock.now() + dt.timedelta(seconds=30)
        ack = await env.storage.retry(
            [RetryRequest(job_id=later.id, execution_id=claimed.execution_id, run_at=run_at)]
        )
        assert ack.accepted == (later.id,)
        assert (await env.job(later.id)).scheduled_for == run_at
        env.clock.advance(29)
        assert await env.claim_ids() == []
        env.clock.advance(1)
        assert await env.claim_ids() == [later.id]

        parent = new_job(queue="p")
        child = new_job(
            depends_on=(parent.id,), scheduled_for=env.clock.now() + dt.timedelta(hours=1)
        )
        await env.enqueue(parent, child)
        await env.run_to_success(parent.id, "p")
        assert await env.status(child.id) is _S, "a released child still waits for its due time"
        assert await env.claim_ids() == []
        env.clock.advance(3600)
        assert await env.claim_ids() == [child.id]

    @scenario()
    async def test_nothing_runs_before_all_its_parents_succeeded(self, env: Env) -> None:
        """A child waits while any parent is pending or running, and runs once all succeeded;
        parents may be stored jobs or other members of the same batch."""
        (stored,) = await env.enqueue(new_job(queue="parents"))
        sibling = new_job(queue="parents")
        child = new_job(depends_on=(stored.id, sibling.id))
        late_parent = new_job(queue="parents")
        early_child = new_job(depends_on=(late_parent.id,))  # its parent comes later in the batch
        jobs = await env.enqueue(sibling, child, early_child, late_parent)
        assert [job.status for job in jobs] == [_P, _B, _B, _P]
        assert set(jobs[1].depends_on) == {stored.id, sibling.id}
        claimed = {c.job.id: c for c in await env.claim("parents")}
        assert set(claimed) == {stored.id, sibling.id, late_parent.id}
        assert await env.claim_ids() == [], "children of running parents must wait"
        await env.complete(claimed[stored.id])
        assert await env.status(child.id) is _B, "one parent of two succeeded: still blocked"
        assert await env.claim_ids() == []
        await env.complete(claimed[sibling.id])
        await env.complete(claimed[late_parent.id])
        assert await env.statuses([child.id, early_child.id]) == [_P, _P]
        assert set(await env.claim_ids()) == {child.id, early_child.id}

        done = new_job()
        await env.enqueue(done)
        await env.run_to_success(done.id)
        (after,) = await env.enqueue(new_job(depends_on=(done.id,)))
        assert after.status is _P, "a child of jobs that already succeeded is runnable at once"

    @scenario()
    async def test_a_failed_or_cancelled_parent_cancels_its_descendants(self, env: Env) -> None:
        """Failure and cancellation reach every not-final descendant, never a bystander."""
        root, bystander = new_job(queue="roots"), new_job(queue="roots")
        child = new_job(depends_on=(root.id,))
        grandchild = new_job(depends_on=(child.id,))
        joint = new_job(depends_on=(bystander.id, grandchild.id))
        await env.enqueue(root, bystander, child, grandchild, joint)
        claimed = {c.job.id: c for c in await env.claim("roots")}
        ack = await env.storage.fail(
            [Failure(job_id=root.id, execution_id=claimed[root.id].execution_id, error=BOOM)]
        )
        assert ack.accepted == (root.id,)
        assert await env.statuses([root.id, child.id, grandchild.id, joint.id, bystander.id]) == [
            _F,
            _C,
            _C,
            _C,
            _R,
        ]
        (orphan,) = await env.enqueue(new_job(depends_on=(root.id,)))
        assert orphan.status is _C, "a job whose parent already failed is cancelled at once"

        parent = new_job(queue="other")
        kid = new_job(depends_on=(parent.id,))
        await env.enqueue(parent, kid)
        assert set(await env.storage.cancel([parent.id], "default")) == {parent.id, kid.id}
        assert await env.status(kid.id) is _C

    @scenario()
    async def test_a_new_jobs_status_follows_its_parents(self, env: Env) -> None:
        """A new job whose parents all succeeded is pending (scheduled while not due); one with
        a parent still active is blocked; one with a failed or cancelled parent is cancelled at
        once, also when that parent was cancelled on arrival, earlier or later in the batch."""
        done, dead, waiting = new_job(queue="p"), new_job(queue="p"), new_job(queue="w")
        await env.enqueue(done, dead, waiting)
        claimed = {c.job.id: c for c in await env.claim("p")}
        await env.complete(claimed[done.id])
        failure = Failure(job_id=dead.id, execution_id=claimed[dead.id].execution_id, error=BOOM)
        assert (await env.storage.fail([failure])).accepted == (dead.id,)
        children = [
            new_job(depends_on=(done.id,)),
            new_job(depends_on=(done.id,), scheduled_for=env.future(3600)),
            new_job(depends_on=(done.id, waiting.id)),
            new_job(depends_on=(done.id, dead.id)),
        ]
        stored = await env.enqueue(*children)
        assert [job.status for job in stored] == [_P, _S, _B, _C]
        (grandchild,) = await env.enqueue(new_job(depends_on=(children[3].id,)))
        assert grandchild.status is _C, "a child of a job cancelled on arrival is cancelled"

        (gone,) = await env.enqueue(new_job(queue="x"))
        assert await env.storage.cancel([gone.id], "default") == [gone.id]
        middle = new_job(depends_on=(gone.id,))
        leaf = new_job(depends_on=(middle.id,))
        assert [job.status for job in await env.enqueue(leaf, middle)] == [_C, _C]

    # =====================================================================================
    # Fencing and leases
    # =====================================================================================

    @scenario(Capability.INJECTABLE_CLOCK)
    async def test_a_late_report_from_a_worker_that_lost_its_lease_is_rejected(
        self, env: Env
    ) -> None:
        """After the lease expired and the job was claimed again, the old claim's complete,
        retry and fail are all rejected, and the job keeps its new claim."""
        (job,) = await env.enqueue(new_job(max_attempts=3))
        (first,) = await env.claim(lease=dt.timedelta(seconds=30))
        env.clock.advance(31)
        assert await env.storage.reclaim_expired() == [job.id]
        (second,) = await env.claim(worker=uuid7())
        assert second.execution_id != first.execution_id
        late = await env.storage.complete(
            [Completion(job_id=job.id, execution_id=first.execution_id, result="late")]
        )
        assert (late.accepted, late.rejected) == ((), (job.id,)), "a stale completion was taken"
        for report in (
            env.storage.fail([Failure(job_id=job.id, execution_id=first.execution_id, error=BOOM)]),
            env.storage.retry(
                [
                    RetryRequest(
                        job_id=job.id, execution_id=first.execution_id, run_at=env.clock.now()
                    )
                ]
            ),
        ):
            assert (await report).rejected == (job.id,)
        current = await env.job(job.id)
        assert (current.status, current.execution_id, current.attempt) == (
            _R,
            second.execution_id,
            2,
        )
        ok = await env.storage.complete(
            [Completion(job_id=job.id, execution_id=second.execution_id, result="on time")]
        )
        assert ok.accepted == (job.id,)
        assert (await env.job(job.id)).result == "on time"

    @scenario()
    async def test_a_report_on_a_cancelled_job_or_a_finished_claim_is_rejected(
        self, env: Env
    ) -> None:
        """Only the current claim's execution id is taken, and only once per claim."""
        running, other = new_job(), new_job()
        await env.enqueue(running, other)
        claimed = {c.job.id: c for c in await env.claim()}
        assert await env.storage.cancel([running.id], "default") == [running.id]
        late = await env.storage.complete(
            [Completion(job_id=running.id, execution_id=claimed[running.id].execution_id)]
        )
        assert late.rejected == (running.id,)
        assert await env.status(running.id) is _C
        executions = await env.storage.list_executions(running.id)
        assert [e.status for e in executions] == [ExecutionStatus.CANCELLED]

        report = Completion(job_id=other.id, execution_id=claimed[other.id].execution_id, result=1)
        forged = Completion(job_id=other.id, execution_id=uuid7())
        ack = await env.storage.complete([forged, report, report])
        assert collections.Counter(ack.accepted) == collections.Counter([other.id])
        assert collections.Counter(ack.rejected) == collections.Counter([other.id, other.id])
        unknown = await env.storage.complete([Completion(job_id=uuid7(), execution_id=uuid7())])
        assert (unknown.accepted, len(unknown.rejected)) == ((), 1)

    @scenario()
    async def test_complete_and_fail_close_the_attempt_they_report_on(self, env: Env) -> None:
        """``complete`` stores the result and moves the job to succeeded, ``fail`` moves it to
        failed with its error; either way the lease is released, the job is finished and its
        execution closed with the same outcome."""
        ok, bad = new_job(), new_job()
        await env.enqueue(ok, bad)
        claimed = {c.job.id: c for c in await env.claim()}
        env.clock.advance(2)
        await env.complete(claimed[ok.id], result={"ok": [1, 2]})
        failure = Failure(job_id=bad.id, execution_id=claimed[bad.id].execution_id, error=BOOM)
        ack = await env.storage.fail([failure])
        assert (ack.accepted, ack.rejected) == ((bad.id,), ())
        done, dead = await env.storage.get_jobs([ok.id, bad.id], "default")
        assert (done.status, done.result, done.lease_expires_at) == (_OK, {"ok": [1, 2]}, None)
        assert (dead.status, dead.error, dead.lease_expires_at) == (_F, BOOM, None)
        (won,) = await env.storage.list_executions(ok.id)
        (lost,) = await env.storage.list_executions(bad.id)
        assert (won.id, won.status) == (claimed[ok.id].execution_id, ExecutionStatus.SUCCEEDED)
        assert (lost.id, lost.status, lost.error) == (
            claimed[bad.id].execution_id,
            ExecutionStatus.FAILED,
            BOOM,
        )
        finished = [done.finished_at, dead.finished_at, won.finished_at, lost.finished_at]
        assert None not in finished
        if env.timed:
            assert finished == [env.clock.now()] * 4

    @scenario(Capability.INJECTABLE_CLOCK)
    async def test_heartbeat_extends_only_the_leases_the_worker_holds(self, env: Env) -> None:
        """Held leases move to now + lease; others' and lost claims come back as lost."""
        kept, cancelled = new_job(), new_job()
        await env.enqueue(kept, cancelled)
        claimed = {c.job.id: c for c in await env.claim()}
        await env.storage.cancel([cancelled.id], "default")
        env.clock.advance(20)
        unknown = uuid7()
        ids = [claimed[kept.id].execution_id, claimed[cancelled.id].execution_id, unknown]
        _, lost = await env.storage.heartbeat(env.worker, ids, dt.timedelta(seconds=60))
        assert sorted(lost) == sorted(ids[1:])
        expected = env.clock.now() + dt.timedelta(seconds=60)
        assert (await env.job(kept.id)).lease_expires_at == expected
        _, lost = await env.storage.heartbeat(uuid7(), ids[:1], dt.timedelta(hours=1))
        assert lost == ids[:1], "another worker's heartbeat must not extend this lease"
        assert (await env.job(kept.id)).lease_expires_at == expected
        env.clock.advance(50)
        assert await env.storage.reclaim_expired() == [], "a renewed lease is still running"

    @scenario(Capability.INJECTABLE_CLOCK)
    async def test_an_expired_lease_is_run_again_or_dead_lettered_never_lost(
        self, env: Env
    ) -> None:
        """A lease runs out once ``lease_expires_at < now``. A lost lease counts as a failed
        attempt: pending while attempts remain, then failed (cancelling its children); the job
        and its execution, recorded as lost, carry a ``LeaseExpired`` error."""
        job = new_job(max_attempts=2)
        child = new_job(depends_on=(job.id,))
        await env.enqueue(job, child)
        lease = dt.timedelta(seconds=30)
        await env.claim(lease=lease)
        env.clock.advance(30)
        assert await env.storage.reclaim_expired() == [], "the lease has not run out yet"
        env.clock.advance(0.001)
        assert await env.storage.reclaim_expired() == [job.id]
        again = await env.job(job.id)
        assert (again.status, again.attempt, again.lease_expires_at) == (_P, 1, None)
        assert again.error is not None
        assert again.error.type == "LeaseExpired"
        (second,) = await env.claim(lease=lease)
        assert (second.job.id, second.job.attempt) == (job.id, 2)
        env.clock.advance(31)
        assert await env.storage.reclaim_expired() == [job.id]
        assert await env.statuses([job.id, child.id]) == [_F, _C]
        executions = await env.storage.list_executions(job.id)
        assert [e.status for e in executions] == [ExecutionStatus.LOST, ExecutionStatus.LOST]
        assert [e.error.type if e.error else None for e in executions] == ["LeaseExpired"] * 2
        assert await env.storage.reclaim_expired() == []

    @scenario()
    async def test_retry_and_deferral_count_attempts_and_record_executions(self, env: Env) -> None:
        """A retry keeps the attempt used and records its error; a deferral
        (``consume_attempt=False``) gives the attempt back."""
        (job,) = await env.enqueue(new_job(max_attempts=3))
        (first,) = await env.claim()
        run_at = env.past(1)
        ack = await env.storage.retry(
            [
                RetryRequest(
                    job_id=job.id, execution_id=first.execution_id, run_at=run_at, error=BOOM
                )
            ]
        )
        assert ack.accepted == (job.id,)
        waiting = await env.job(job.id)
        assert (waiting.status, waiting.attempt, waiting.scheduled_for) == (_S, 1, run_at)
        assert waiting.error == BOOM
        (second,) = await env.claim()
        assert second.job.attempt == 2
        ack = await env.storage.retry(
            [
                RetryRequest(
                    job_id=job.id,
                    execution_id=second.execution_id,
                    run_at=run_at,
                    consume_attempt=False,
                )
            ]
        )
        assert ack.accepted == (job.id,)
        back = await env.job(job.id)
        assert (back.status, back.attempt, back.error) == (_S, 1, BOOM), (
            "a deferral gives the attempt back and keeps the last error"
        )
        executions = await env.storage.list_executions(job.id)
        assert [(e.id, e.attempt, e.status) for e in executions] == [
            (first.execution_id, 1, ExecutionStatus.RETRYING),
            (second.execution_id, 2, ExecutionStatus.DEFERRED),
        ]
        assert executions[0].error == BOOM

    # =====================================================================================
    # Enqueue: atomic batches, typed errors, idempotency keys
    # =====================================================================================

    @scenario()
    async def test_enqueue_returns_the_stored_jobs_in_request_order(self, env: Env) -> None:
        """What enqueue returns is what a read returns: the request's fields, pending, with
        arguments as JSON gives them back and every time stamp the enqueue's time."""
        jobs = [
            new_job("b", args=(1, ("x", 2)), kwargs={"k": [1, 2]}, priority=3, max_attempts=4),
            new_job("a", queue="q2", headers={"trace": "t-1"}, timeout=2.5, key="only"),
        ]
        stored = await env.storage.enqueue(jobs)
        assert [job.id for job in stored] == [job.id for job in jobs]
        for request, job in zip(jobs, stored, strict=True):
            assert (job.task, job.queue, job.priority, job.max_attempts, job.attempt) == (
                request.task,
                request.queue,
                request.priority,
                request.max_attempts,
                0,
            )
            assert (job.status, job.project) == (_P, "default")
            assert job.scheduled_for == job.created_at == job.updated_at
            if env.timed:
                assert job.created_at == env.clock.now()
            assert (job.key, dict(job.headers), job.timeout) == (
                request.key,
                dict(request.headers),
                request.timeout,
            )
        assert list(stored[0].args) == [1, ["x", 2]], "arguments come back as JSON gives them"
        assert dict(stored[0].kwargs) == {"k": [1, 2]}
        read = await env.storage.get_jobs([jobs[1].id, uuid7(), jobs[0].id], "default")
        assert [job.id for job in read] == [jobs[1].id, jobs[0].id]
        assert read == [stored[1], stored[0]]
        assert await env.storage.enqueue([]) == []

    async def _assert_rejected(
        self, env: Env, error: type[Exception], batch: list[NewJob], why: str
    ) -> None:
        before = await env.all_ids()
        queues = await env.storage.list_queues("default")
        with pytest.raises(error):
            await env.storage.enqueue(batch)
        assert await env.all_ids() == before, f"a batch rejected for {why} wrote jobs"
        assert await env.storage.list_queues("default") == queues, (
            f"a batch rejected for {why} created a queue"
        )

    @scenario()
    async def test_an_unknown_parent_rejects_the_whole_batch(self, env: Env) -> None:
        """DependencyError, and none of the batch is written."""
        good = new_job(queue="fresh")
        bad = new_job(queue="fresh", depends_on=(uuid7(),))
        await self._assert_rejected(env, DependencyError, [good, bad], "an unknown parent")

    @scenario()
    async def test_a_dependency_cycle_rejects_the_whole_batch(self, env: Env) -> None:
        """A cycle (or a job depending on itself) is a DependencyError; nothing is written."""
        a_id, b_id, c_id = uuid7(), uuid7(), uuid7()
        a = NewJob(id=a_id, task="work", queue="fresh", depends_on=(c_id,))
        b = NewJob(id=b_id, task="work", queue="fresh", depends_on=(a_id,))
        c = NewJob(id=c_id, task="work", queue="fresh", depends_on=(b_id,))
        await self._assert_rejected(env, DependencyError, [new_job(), a, b, c], "a cycle")
        selfish_id = uuid7()
        selfish = NewJob(id=selfish_id, task="work", queue="fresh", depends_on=(selfish_id,))
        await self._assert_rejected(env, DependencyError, [selfish], "a self-dependency")

    @scenario()
    async def test_a_parent_in_another_project_counts_as_unknown(self, env: Env) -> None:
        """Dependencies never cross projects."""
        (foreign,) = await env.enqueue(new_job(project="elsewhere"))
        child = new_job(queue="fresh", depends_on=(foreign.id,))
        await self._assert_rejected(env, DependencyError, [child], "a parent in another project")
        member = new_job(queue="fresh", project="elsewhere")
        batch = [member, new_job(queue="fresh", depends_on=(member.id,))]
        await self._assert_rejected(env, DependencyError, batch, "a member of another project")
        assert await env.all_ids("elsewhere") == [foreign.id]

    @scenario()
    async def test_max_attempts_below_one_rejects_the_whole_batch(self, env: Env) -> None:
        """InvalidJobError, and none of the batch is written."""
        for attempts in (0, -1):
            batch = [new_job(queue="fresh"), new_job(queue="fresh", max_attempts=attempts)]
            await self._assert_rejected(env, InvalidJobError, batch, f"max_attempts={attempts}")

    @scenario()
    async def test_an_invalid_job_rejects_the_whole_batch(self, env: Env) -> None:
        """InvalidJobError for an id that is not new (repeated in the batch or already stored),
        an empty task or queue, a naive ``scheduled_for`` or a timeout that is not a positive
        number of seconds; SerializationError (an InvalidJobError) for arguments JSON cannot
        hold. None of the batch is written."""
        (stored,) = await env.enqueue(new_job(queue="kept"))
        twin = new_job(queue="fresh")
        naive = dt.datetime(2030, 1, 1)  # no time zone: invalid
        invalid = {
            "an id repeated in the batch": twin,
            "an id already stored": NewJob(id=stored.id, task="work", queue="fresh"),
            "an empty task": new_job("", queue="fresh"),
            "an empty queue": new_job(queue=""),
            "a naive due time": new_job(queue="fresh", scheduled_for=naive),
            "a negative timeout": new_job(queue="fresh", timeout=-1.0),
            "a zero timeout": new_job(queue="fresh", timeout=0.0),
            "a timeout that is not a number": new_job(queue="fresh", timeout=float("nan")),
        }
        for why, job in invalid.items():
            await self._assert_rejected(env, InvalidJobError, [twin, job], why)
        not_json = new_job(queue="fresh", args=(object(),))
        await self._assert_rejected(
            env, SerializationError, [new_job(queue="fresh"), not_json], "arguments not JSON"
        )
        assert await env.all_ids() == [stored.id]

    def test_an_unknown_queue_is_a_queue_error_when_queues_are_not_created_on_demand(
        self, tmp_path: pathlib.Path
    ) -> None:
        """With ``create_queues=False`` an unknown queue is a QueueError and nothing of the batch
        is written; a queue created by pausing or resuming it takes jobs."""

        async def main() -> bool:
            config = BackendConfig(clock=FakeClock(), create_queues=False)
            try:
                storage = await self.make_storage_with_config(config, tmp_path)
            except NotImplementedError:
                return False
            await storage.open()
            try:
                await storage.set_queue_paused("default", "known", False)
                with pytest.raises(QueueError):
                    await storage.enqueue([new_job(queue="known"), new_job(queue="nowhere")])
                page = await storage.list_jobs(JobFilter(), limit=10, cursor=None)
                assert page.items == (), "a batch rejected for an unknown queue wrote jobs"
                names = [q.name for q in await storage.list_queues("default")]
                assert names == ["known"]
                (job,) = await storage.enqueue([new_job(queue="known")])
                assert job.queue == "known"
            finally:
                await storage.close()
            return True

        if not anyio.run(main, backend="asyncio"):
            pytest.skip("override make_storage_with_config() to test create_queues=False")

    @scenario()
    async def test_an_idempotency_key_returns_the_job_that_has_it(self, env: Env) -> None:
        """Within a project a key is stored once: a second enqueue, in a later batch or the same
        one, returns the first job unchanged, and a dependency on such a request points at the
        job that has the key. Other projects have their own keys."""
        first = new_job(key="invoice-7", priority=1)
        (stored,) = await env.enqueue(first)
        again = await env.enqueue(new_job(key="invoice-7", priority=9), new_job(key="other"))
        assert again[0].id == first.id
        assert again[0].priority == 1, "the existing job is returned as it is"
        assert again[0] == stored
        twice = await env.enqueue(new_job(key="pair"), new_job(key="pair"))
        assert twice[0].id == twice[1].id, "a key repeated within a batch is stored once"
        (foreign,) = await env.enqueue(new_job(key="invoice-7", project="tenant-b"))
        assert foreign.id != first.id, "keys are per project"
        assert len(await env.all_ids()) == 3
        claimed = await env.claim_ids()
        assert len(claimed) == 3
        assert first.id in claimed
        assert stored.key == "invoice-7"
        duplicate = new_job(key="invoice-7")
        _, child = await env.enqueue(duplicate, new_job(depends_on=(duplicate.id,)))
        assert child.depends_on == (first.id,), "the child of a duplicate waits for the original"
        assert child.status is _B

    # =====================================================================================
    # Projects, listing, replay, purge
    # =====================================================================================

    @scenario()
    async def test_projects_are_isolated_from_each_other(self, env: Env) -> None:
        """Two projects with the same queue names never see each other's jobs or queues: not to
        read, claim, cancel, replay or purge."""
        (mine,) = await env.enqueue(new_job(queue="shared"))
        (theirs,) = await env.enqueue(new_job(queue="shared", project="tenant-b"))
        assert await env.storage.get_jobs([theirs.id], "default") == []
        assert await env.all_ids() == [mine.id]
        assert await env.all_ids("tenant-b") == [theirs.id]
        assert await env.storage.cancel([theirs.id], "default") == []
        await env.storage.set_queue_paused("tenant-b", "shared", True)
        assert await env.claim_ids("shared") == [mine.id]
        assert await env.claim_ids("shared", project="tenant-b") == []
        await env.storage.set_queue_paused("tenant-b", "shared", False)
        assert await env.claim_ids("shared") == [], "a claim takes only its own project's jobs"
        stats = {s.queue: s.counts for s in await env.storage.queue_stats("tenant-b")}
        assert stats["shared"][_P] == 1
        assert stats["shared"][_R] == 0
        assert [q.name for q in await env.storage.list_queues("tenant-b")] == ["shared"]
        (claimed,) = await env.claim("shared", project="tenant-b")
        assert claimed.job.id == theirs.id
        assert claimed.job.project == "tenant-b"
        await env.complete(claimed)
        theirs_only = JobFilter(ids=frozenset({theirs.id}))
        result = await env.storage.replay(theirs_only)
        assert result.replayed == ()
        assert result.skipped == ()
        assert await env.storage.purge(theirs_only) == 0
        assert await env.all_ids("tenant-b") == [theirs.id]
        await env.enqueue(new_job(queue="private", project="tenant-b"))
        assert [s.queue for s in await env.storage.queue_stats("default")] == ["shared"]
        assert [q.name for q in await env.storage.list_queues("default")] == ["shared"]
        assert await env.storage.purge(JobFilter(project="tenant-b", ids=theirs_only.ids)) == 1

    @scenario()
    async def test_pages_neither_skip_nor_repeat_while_jobs_arrive(self, env: Env) -> None:
        """``list_jobs`` pages newest first; jobs inserted between pages shift nothing."""
        first = []
        for _ in range(23):
            (job,) = await env.enqueue(new_job())
            first.append(job.id)
        seen: list[uuid.UUID] = []
        cursor: str | None = None
        while True:
            page = await env.storage.list_jobs(JobFilter(), limit=4, cursor=cursor)
            assert len(page.items) <= 4
            seen.extend(job.id for job in page.items)
            await env.enqueue(new_job(), new_job())
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        repeated = [job_id for job_id, n in collections.Counter(seen).items() if n > 1]
        assert not repeated, f"pages repeated {repeated}"
        older = [job_id for job_id in seen if job_id in set(first)]
        assert older == first[::-1], "pages skipped jobs or were not newest first"

    @scenario()
    async def test_listing_honours_status_queue_task_and_id_filters(self, env: Env) -> None:
        """Each filter field narrows the listing, and the fields combine."""
        a = new_job("send", queue="q1")
        b = new_job("send", queue="q2")
        c = new_job("resize", queue="q1")
        foreign = new_job("send", queue="q1", project="other")
        await env.enqueue(a, b, c, foreign)
        await env.storage.cancel([b.id], "default")

        async def listed(selection: JobFilter) -> set[uuid.UUID]:
            page = await env.storage.list_jobs(selection, limit=50, cursor=None)
            return {job.id for job in page.items}

        assert await listed(JobFilter(statuses=frozenset({_C}))) == {b.id}
        assert await listed(JobFilter(statuses=frozenset())) == set()
        assert await listed(JobFilter(queue="q1")) == {a.id, c.id}
        assert await listed(JobFilter(task="send")) == {a.id, b.id}
        assert await listed(JobFilter(ids=frozenset({a.id, c.id}), task="resize")) == {c.id}
        assert await listed(JobFilter(ids=frozenset({a.id, foreign.id}))) == {a.id}
        assert await listed(JobFilter(queue="missing")) == set()
        assert await listed(JobFilter(task="send", queue="q1", statuses=frozenset({_P}))) == {a.id}
        assert await listed(JobFilter(project="other")) == {foreign.id}
        assert await listed(JobFilter(project="nobody")) == set()
        assert await listed(JobFilter(updated_before=env.past(3600))) == set()
        if env.timed:
            env.clock.advance(10)
            await env.storage.cancel([a.id], "default")
            before = JobFilter(updated_before=env.clock.now())
            assert await listed(before) == {b.id, c.id}, "updated_before compares updated_at"

    @scenario()
    async def test_listing_rejects_a_bad_limit_or_cursor(self, env: Env) -> None:
        """``list_jobs`` raises a ValueError naming the limit for a limit below one, and one
        naming the cursor for a cursor it did not give."""
        await env.enqueue(new_job(), new_job())
        with pytest.raises(ValueError, match="limit"):
            await env.storage.list_jobs(JobFilter(), limit=0, cursor=None)
        with pytest.raises(ValueError, match="cursor"):
            await env.storage.list_jobs(JobFilter(), limit=5, cursor="garbage")

    @scenario()
    async def test_cancel_stops_active_jobs_and_their_descendants_only(self, env: Env) -> None:
        """``cancel`` returns every id it cancelled: the active jobs named and their active
        descendants. Finished jobs, unknown ids and other projects' jobs are left alone; a
        running job loses its lease at once; cancelling again changes nothing."""
        running, finished, waiting = new_job(queue="r"), new_job(queue="f"), new_job(queue="w")
        child = new_job(depends_on=(running.id,))
        grandchild = new_job(depends_on=(child.id,))
        foreign = new_job(project="other")
        await env.enqueue(running, finished, waiting, child, grandchild, foreign)
        await env.run_to_success(finished.id, "f")
        await env.claim("r")
        named = [running.id, finished.id, waiting.id, foreign.id, uuid7()]
        cancelled = await env.storage.cancel(named, "default")
        assert sorted(cancelled) == sorted([running.id, waiting.id, child.id, grandchild.id])
        assert await env.status(finished.id) is _OK
        assert await env.status(foreign.id, "other") is _P
        stopped = await env.job(running.id)
        assert (stopped.status, stopped.lease_expires_at) == (_C, None)
        assert await env.storage.cancel([running.id, child.id], "default") == []

    @scenario()
    async def test_replay_resets_attempts_and_waits_for_replayed_parents(self, env: Env) -> None:
        """Replayed jobs go back to pending with attempts reset; a child replayed with its
        parent, or whose parent is still active, is blocked until the parent succeeds; a job
        whose dead parent stays dead is skipped (and so are its own descendants), and so are
        active jobs."""
        parent = new_job(queue="p", max_attempts=1)
        child = new_job(depends_on=(parent.id,))
        grandchild = new_job(depends_on=(child.id,))
        alive = new_job(queue="alive")
        await env.enqueue(parent, child, grandchild, alive)
        (held,) = await env.claim("p")
        await env.storage.fail(
            [Failure(job_id=parent.id, execution_id=held.execution_id, error=BOOM)]
        )
        orphans = frozenset({child.id, grandchild.id, alive.id})
        alone = await env.storage.replay(JobFilter(ids=orphans))
        assert alone.replayed == ()
        assert {job_id for job_id, _ in alone.skipped} == orphans
        assert await env.statuses([child.id, grandchild.id]) == [_C, _C]
        both = await env.storage.replay(JobFilter(statuses=frozenset({_F, _C})))
        assert set(both.replayed) == {parent.id, child.id, grandchild.id}
        back = await env.job(parent.id)
        assert (back.status, back.attempt) == (_P, 0)
        assert await env.statuses([child.id, grandchild.id]) == [_B, _B]
        await env.run_to_success(parent.id, "p")
        assert await env.statuses([child.id, grandchild.id]) == [_P, _B]

        waiting = new_job(queue="w")
        kid = new_job(queue="w", depends_on=(waiting.id,))
        await env.enqueue(waiting, kid)
        assert await env.storage.cancel([kid.id], "default") == [kid.id]
        result = await env.storage.replay(JobFilter(ids=frozenset({waiting.id, kid.id})))
        assert result.replayed == (kid.id,)
        assert [job_id for job_id, _ in result.skipped] == [waiting.id]
        assert await env.status(kid.id) is _B, "a replayed child waits for its active parent"

    @scenario(Capability.INJECTABLE_CLOCK)
    async def test_a_replayed_job_starts_afresh_at_the_time_of_the_replay(self, env: Env) -> None:
        """A replayed job keeps nothing of its dead run (attempts, error, result, finish time)
        and is due, and updated, at the time of the replay."""
        (job,) = await env.enqueue(new_job(max_attempts=1))
        (held,) = await env.claim()
        failure = Failure(job_id=job.id, execution_id=held.execution_id, error=BOOM)
        assert (await env.storage.fail([failure])).accepted == (job.id,)
        env.clock.advance(60)
        result = await env.storage.replay(JobFilter(statuses=frozenset({_F})))
        assert (result.replayed, result.skipped) == ((job.id,), ())
        back = await env.job(job.id)
        assert (back.status, back.attempt, back.error, back.result, back.finished_at) == (
            _P,
            0,
            None,
            None,
            None,
        )
        assert back.scheduled_for == back.updated_at == env.clock.now()
        (again,) = await env.claim()
        assert again.job.attempt == 1

    @scenario()
    async def test_purge_deletes_only_final_jobs_that_no_active_job_needs(self, env: Env) -> None:
        """Succeeded, failed and cancelled jobs go with their history (executions and logs);
        active ones and parents of active ones stay."""
        done, needed, dead = new_job(queue="p"), new_job(queue="p"), new_job(queue="p")
        waiting, dropped = new_job(queue="w"), new_job(queue="w")
        child = new_job(queue="c", depends_on=(needed.id,))
        blocker = new_job(queue="c")
        grandchild = new_job(queue="c", depends_on=(child.id, blocker.id))
        await env.enqueue(done, needed, dead, waiting, dropped, child, blocker, grandchild)
        claimed = {c.job.id: c for c in await env.claim("p")}
        await env.complete(claimed[done.id])
        await env.complete(claimed[needed.id])
        dead_run = claimed[dead.id].execution_id
        line = ExecutionLog(
            execution_id=dead_run, job_id=dead.id, at=env.past(1), level="info", message="hi"
        )
        await env.storage.add_logs([line])
        failure = Failure(job_id=dead.id, execution_id=dead_run, error=BOOM)
        assert (await env.storage.fail([failure])).accepted == (dead.id,)
        assert await env.storage.cancel([dropped.id], "default") == [dropped.id]
        assert await env.storage.purge(JobFilter(project="other")) == 0
        deleted = await env.storage.purge(JobFilter())
        assert deleted == 3
        remaining = set(await env.all_ids())
        assert remaining == {needed.id, waiting.id, child.id, blocker.id, grandchild.id}
        for gone in (done.id, dead.id, dropped.id):
            assert await env.storage.list_executions(gone) == []
        assert await env.storage.list_logs(dead.id) == []

    @scenario(Capability.PRUNE, Capability.INJECTABLE_CLOCK)
    async def test_prune_deletes_what_the_retention_policy_lets_go(self, env: Env) -> None:
        """Finished jobs older than their status's age go; younger ones, the dead-letter queue
        (kept by default), active jobs and parents of active jobs stay."""
        storage = env.storage
        assert isinstance(storage, Prunable), "declares Capability.PRUNE but has no prune()"
        old_done, old_dead, old_parent = new_job(queue="p"), new_job(queue="p"), new_job(queue="p")
        child = new_job(queue="c", depends_on=(old_parent.id,))
        blocker = new_job(queue="b")
        waiting = new_job(queue="c", depends_on=(child.id, blocker.id))
        await env.enqueue(old_done, old_dead, old_parent, child, blocker, waiting)
        claimed = {c.job.id: c for c in await env.claim("p")}
        await env.complete(claimed[old_done.id])
        await env.complete(claimed[old_parent.id])
        dead = claimed[old_dead.id]
        failure = Failure(job_id=old_dead.id, execution_id=dead.execution_id, error=BOOM)
        assert (await storage.fail([failure])).accepted == (old_dead.id,)
        env.clock.advance(10 * 86400)
        (young,) = await env.enqueue(new_job(queue="y"))
        await env.run_to_success(young.id, "y")

        report = await storage.prune(
            RetentionPolicy(succeeded=dt.timedelta(days=7), history=dt.timedelta(days=30))
        )

        assert report.purged.get(_OK) == 1, report
        assert _F not in report.purged, "failed=None keeps the dead-letter queue"
        remaining = set(await env.all_ids())
        assert old_done.id not in remaining
        assert {old_dead.id, old_parent.id, child.id, blocker.id, waiting.id} <= remaining
        assert young.id in remaining
        assert await storage.list_executions(old_done.id) == []
        assert len(await storage.list_executions(young.id)) == 1

        env.clock.advance(40 * 86400)
        await storage.prune(RetentionPolicy(succeeded=None, cancelled=None, history=None))
        assert len(await storage.list_executions(young.id)) == 1, "history=None keeps history"
        await storage.prune(RetentionPolicy(succeeded=None, cancelled=None))
        assert await storage.list_executions(young.id) == [], "30-day history was kept"
        assert young.id in set(await env.all_ids()), "succeeded=None keeps the job"
        again = await storage.prune(RetentionPolicy(succeeded=None, cancelled=None))
        assert not again.purged.get(_OK), again

    # =====================================================================================
    # Queues
    # =====================================================================================

    @scenario()
    async def test_queues_are_created_on_demand_and_counted_per_status(self, env: Env) -> None:
        """Enqueueing into a queue, or pausing it, creates it (and its project); pausing and
        resuming are listed. ``queue_stats`` counts every status of every queue of the
        project, empty queues included, sorted by queue name."""
        (job,) = await env.enqueue(new_job(project="acme", queue="emails"))
        assert (job.project, job.queue) == ("acme", "emails")
        paused = await env.storage.set_queue_paused("acme", "reports", True)
        assert (paused.project, paused.name, paused.paused) == ("acme", "reports", True)
        fresh = await env.storage.set_queue_paused("newco", "jobs", False)
        assert (fresh.project, fresh.name, fresh.paused) == ("newco", "jobs", False)
        assert [q.name for q in await env.storage.list_queues("newco")] == ["jobs"]
        listed = {(q.project, q.name, q.paused) for q in await env.storage.list_queues("acme")}
        assert listed == {("acme", "emails", False), ("acme", "reports", True)}
        more = await env.enqueue(*(new_job(project="acme", queue="emails") for _ in range(2)))
        assert await env.storage.cancel([more[0].id], "acme") == [more[0].id]
        stats = await env.storage.queue_stats("acme")
        assert [(s.project, s.queue, s.paused) for s in stats] == [
            ("acme", "emails", False),
            ("acme", "reports", True),
        ]
        assert dict(stats[0].counts) == {**dict.fromkeys(JobStatus, 0), _P: 2, _C: 1}
        assert dict(stats[1].counts) == dict.fromkeys(JobStatus, 0)
        await env.storage.set_queue_paused("acme", "reports", False)
        resumed = {q.name: q.paused for q in await env.storage.list_queues("acme")}
        assert resumed == {"emails": False, "reports": False}
        assert await env.storage.queue_stats("nobody") == []

    # =====================================================================================
    # Workers and history
    # =====================================================================================

    @scenario()
    async def test_a_worker_learns_at_its_heartbeat_that_it_should_drain(self, env: Env) -> None:
        """Registered workers are listed with their queues; a drain asked for reaches them."""
        worker = WorkerInfo(
            id=env.worker,
            name="w-1",
            hostname="host",
            pid=4242,
            concurrency=8,
            queues=(
                QueueWorkerAssignment(worker_id=env.worker, queue="mail", weight=3),
                QueueWorkerAssignment(worker_id=env.worker, queue="zip", weight=1),
            ),
        )
        await env.storage.register_worker(worker)
        (listed,) = await env.storage.list_workers("default")
        assert (listed.id, listed.name, listed.concurrency, listed.status) == (
            env.worker,
            "w-1",
            8,
            WorkerStatus.RUNNING,
        )
        assert {(a.queue, a.weight) for a in listed.queues} == {("mail", 3), ("zip", 1)}
        status, lost = await env.storage.heartbeat(env.worker, [], LEASE)
        assert (status, lost) == (WorkerStatus.RUNNING, [])
        await env.storage.set_worker_status(env.worker, WorkerStatus.DRAINING)
        status, _ = await env.storage.heartbeat(env.worker, [], LEASE)
        assert status is WorkerStatus.DRAINING
        assert await env.storage.list_workers("tenant-b") == []

    @scenario()
    async def test_a_worker_registered_again_is_replaced(self, env: Env) -> None:
        """Registering a worker id again replaces its queue assignments; its start and its last
        heartbeat are recorded; a stopped worker is listed as stopped; a negative weight is a
        ConfigurationError."""

        def worker(*queues: tuple[str, int]) -> WorkerInfo:
            return WorkerInfo(
                id=env.worker,
                name="w-1",
                hostname="host",
                pid=123,
                concurrency=4,
                queues=tuple(
                    QueueWorkerAssignment(worker_id=env.worker, queue=q, weight=w)
                    for q, w in queues
                ),
            )

        async def listed() -> WorkerInfo:
            (found,) = await env.storage.list_workers("default")
            return found

        await env.storage.register_worker(worker(("a", 1), ("b", 3)))
        first = await listed()
        assert {(a.queue, a.weight) for a in first.queues} == {("a", 1), ("b", 3)}
        assert (first.status, first.pid) == (WorkerStatus.RUNNING, 123)
        if env.timed:
            assert first.started_at == env.clock.now()
        await env.storage.register_worker(worker(("c", 2)))
        again = await listed()
        assert [(a.queue, a.weight, a.worker_id) for a in again.queues] == [("c", 2, env.worker)]
        env.clock.advance(5)
        await env.storage.heartbeat(env.worker, [], LEASE)
        if env.timed:
            assert (await listed()).last_heartbeat_at == env.clock.now()
        await env.storage.set_worker_status(env.worker, WorkerStatus.STOPPED)
        assert (await listed()).status is WorkerStatus.STOPPED
        with pytest.raises(ConfigurationError):
            await env.storage.register_worker(worker(("a", -1)))

    @scenario()
    async def test_execution_logs_are_kept_per_job_oldest_first(self, env: Env) -> None:
        """Log lines come back in time order with their fields. Lines of an unknown job are
        dropped, and a field value JSON cannot hold is kept as its ``repr`` (task code writes
        the fields; one odd value must not fail the worker's whole batch)."""
        (job,) = await env.enqueue(new_job())
        (claimed,) = await env.claim()
        t0 = env.past(10)
        odd = object()

        def line(n: int, job_id: uuid.UUID = job.id, **fields: object) -> ExecutionLog:
            return ExecutionLog(
                execution_id=claimed.execution_id,
                job_id=job_id,
                at=t0 + dt.timedelta(seconds=n),
                level="info",
                message=f"line {n}",
                fields={"n": n, **fields},
            )

        await env.storage.add_logs([line(2), line(0), line(1), line(5, uuid7())])
        await env.storage.add_logs([line(3, odd=odd)])
        got = await env.storage.list_logs(job.id)
        assert [(log.message, dict(log.fields)) for log in got] == [
            ("line 0", {"n": 0}),
            ("line 1", {"n": 1}),
            ("line 2", {"n": 2}),
            ("line 3", {"n": 3, "odd": repr(odd)}),
        ]
        assert {log.execution_id for log in got} == {claimed.execution_id}
        assert await env.storage.list_logs(uuid7()) == []

    # =====================================================================================
    # Errors and lifecycle
    # =====================================================================================

    def test_calls_on_a_closed_storage_raise_storage_error(self, tmp_path: pathlib.Path) -> None:
        """After close, every verb raises StorageError (no driver exception escapes); opening an
        open storage and closing twice are fine."""

        async def main() -> None:
            storage = await self.make_storage(FakeClock(), tmp_path)
            await storage.open()
            await storage.open()
            (job,) = await storage.enqueue([new_job()])
            await storage.close()
            await storage.close()
            worker = uuid7()
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "enqueue": lambda: storage.enqueue([new_job()]),
                "claim": lambda: storage.claim(
                    ClaimRequest(
                        worker_id=worker,
                        shares=(QueueShare(name="default", limit=1),),
                        limit=1,
                        lease=LEASE,
                    )
                ),
                "complete": lambda: storage.complete(
                    [Completion(job_id=job.id, execution_id=uuid7())]
                ),
                "heartbeat": lambda: storage.heartbeat(worker, [uuid7()], LEASE),
                "reclaim_expired": storage.reclaim_expired,
                "cancel": lambda: storage.cancel([job.id], "default"),
                "get_jobs": lambda: storage.get_jobs([job.id], "default"),
                "list_jobs": lambda: storage.list_jobs(JobFilter(), limit=5, cursor=None),
                "queue_stats": lambda: storage.queue_stats("default"),
                "replay": lambda: storage.replay(JobFilter()),
                "list_queues": lambda: storage.list_queues("default"),
                "wait_for_jobs": lambda: storage.wait_for_jobs(["default"], 0.1),
            }
            escaped = {}
            for name, call in calls.items():
                try:
                    await call()
                except StorageError:
                    continue
                except Exception as exc:
                    escaped[name] = repr(exc)
                else:
                    escaped[name] = "returned normally"
            assert not escaped, f"calls after close must raise StorageError: {escaped}"

        anyio.run(main, backend="asyncio")

    # =====================================================================================
    # Capabilities
    # =====================================================================================

    @scenario(Capability.LOCAL_WAKEUP)
    async def test_an_enqueue_wakes_a_waiting_worker_at_once(self, env: Env) -> None:
        """``wait_for_jobs`` returns promptly when this process enqueues a runnable job."""
        woke = anyio.Event()
        started = anyio.Event()

        async def wait() -> None:
            started.set()
            await env.storage.wait_for_jobs(["mail"], 30)
            woke.set()

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await started.wait()
            await anyio.sleep(0.05)
            began = time.monotonic()
            await env.enqueue(new_job(queue="mail"))
            with anyio.fail_after(5):
                await woke.wait()
        assert time.monotonic() - began < 5

    @scenario()
    async def test_waiting_for_jobs_returns_after_the_timeout(self, env: Env) -> None:
        """With nothing to do, ``wait_for_jobs`` still comes back after its timeout, at once
        for a timeout of zero."""
        with anyio.fail_after(10):
            await env.storage.wait_for_jobs(["idle"], 0.1)
        with anyio.fail_after(1):
            await env.storage.wait_for_jobs(["idle"], 0)

    @scenario(Capability.DURABLE)
    async def test_jobs_survive_closing_and_reopening_the_store(self, env: Env) -> None:
        """A durable store keeps every job, its status and its result across a reopen."""
        done, waiting = new_job(), new_job(queue="later")
        await env.enqueue(done, waiting)
        await env.run_to_success(done.id)
        await env.storage.close()
        reopened = await self.make_storage(env.clock, env.tmp_path)
        await reopened.open()
        try:
            jobs = await reopened.get_jobs([done.id, waiting.id], "default")
            assert [(job.id, job.status) for job in jobs] == [(done.id, _OK), (waiting.id, _P)]
        finally:
            await reopened.close()
