"""The worker: running jobs, retries, timeouts, cancellation, queues, limits, drain, leases."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from taskforge_core import (
    ConfigurationError,
    FakeClock,
    JobStatus,
    NewJob,
    RetentionPolicy,
    Retry,
    RetryLater,
    StorageError,
    TaskForge,
    current_job,
    hookimpl,
)
from taskforge_core.context import JobContext
from taskforge_core.ids import uuid7
from taskforge_core.middleware import CallNext
from taskforge_core.models import ClaimRequest, QueueShare, WorkerInfo, WorkerStatus
from taskforge_core.states import RUNNABLE_STATUSES, ExecutionStatus
from taskforge_core.worker import Worker, WorkerStats, _WeightedRoundRobin

pytestmark = pytest.mark.anyio


def db_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
async def app(tmp_path: pathlib.Path, anyio_backend: str) -> AsyncIterator[TaskForge]:
    async with TaskForge(db_url(tmp_path)) as application:
        yield application


def make_worker(app: TaskForge, queues: Any = ("default",), **options: Any) -> Worker:
    """A worker with short intervals, so tests on the real clock run fast."""
    return Worker(app, queues, **{"poll_interval": 0.05, "lease": 2.0, **options})


async def run_until_idle(worker: Worker, timeout: float = 30.0) -> WorkerStats:
    with anyio.fail_after(timeout):
        return await worker.run(stop_when_idle=True)


@asynccontextmanager
async def running(worker: Worker, timeout: float = 30.0) -> AsyncIterator[Worker]:
    """Run ``worker`` in the background for the body; drain it and wait for it on exit."""
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            try:
                yield worker
            finally:
                worker.drain()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)


async def execution_statuses(app: TaskForge, job_id: Any) -> list[ExecutionStatus]:
    storage = await app.storage()
    return [e.status for e in await storage.list_executions(job_id)]


# -- running ----------------------------------------------------------------------------------


async def test_async_and_sync_tasks_run_and_their_results_are_stored(app: TaskForge) -> None:
    threads: list[str] = []

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def multiply(a: int, b: int) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"product": a * b, "job": str(current_job().job_id)}

    added = await add.enqueue(1, b=2)
    multiplied = await multiply.enqueue(3, 4)
    stats = await run_until_idle(make_worker(app))

    assert await added.wait(timeout=5) == 3
    assert await multiplied.wait(timeout=5) == {"product": 12, "job": str(multiplied.id)}
    assert threads
    assert threads[0] != threading.current_thread().name  # plain functions run in a thread
    assert (stats.claimed, stats.succeeded, stats.failed) == (2, 2, 0)


async def test_retries_with_backoff_then_success(app: TaskForge) -> None:
    attempts: list[int] = []

    @app.task(retry=Retry(max_attempts=5, base_delay=0.01, jitter=0))
    async def flaky() -> str:
        attempts.append(current_job().attempt)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    handle = await flaky.enqueue()
    stats = await run_until_idle(make_worker(app))

    assert await handle.wait(timeout=5) == "ok"
    assert attempts == [1, 2, 3]
    assert await execution_statuses(app, handle.id) == [
        ExecutionStatus.RETRYING,
        ExecutionStatus.RETRYING,
        ExecutionStatus.SUCCEEDED,
    ]
    assert (stats.retried, stats.succeeded) == (2, 1)


async def test_non_retryable_exception_fails_at_once(app: TaskForge) -> None:
    @app.task(retry=Retry(max_attempts=5, never_retry_on=(KeyError,)))
    async def lookup() -> None:
        raise KeyError("missing")

    handle = await lookup.enqueue()
    stats = await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    assert job.error is not None
    assert job.error.type == "KeyError"
    assert stats.failed == 1


async def test_job_max_attempts_overrides_the_task_policy(app: TaskForge) -> None:
    @app.task(retry=Retry(max_attempts=5, base_delay=0.01))
    async def fragile() -> None:
        raise RuntimeError("no")

    handle = await fragile.options(max_attempts=1).enqueue()
    await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)


async def test_retry_later_runs_the_job_again_after_its_delay(app: TaskForge) -> None:
    @app.task(retry=Retry(max_attempts=2, retry_on=(KeyError,)))
    async def poll() -> str:
        if current_job().attempt == 1:
            raise RetryLater(0.05, "not ready yet")
        return "ready"

    handle = await poll.enqueue()
    await run_until_idle(make_worker(app))

    assert await handle.wait(timeout=5) == "ready"
    storage = await app.storage()
    first, second = await storage.list_executions(handle.id)
    assert first.status is ExecutionStatus.RETRYING
    assert first.error is not None
    assert first.error.type == "taskforge_core.retry.RetryLater"
    assert first.error.message == "not ready yet"
    assert second.status is ExecutionStatus.SUCCEEDED


async def test_dead_letter_after_max_attempts_records_every_error(app: TaskForge) -> None:
    @app.task(retry=Retry(max_attempts=3, base_delay=0.01, jitter=0))
    async def always_fails(order: int) -> None:
        raise ValueError(f"bad order {order}")

    handle = await always_fails.enqueue(7)
    stats = await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 3)
    storage = await app.storage()
    executions = await storage.list_executions(handle.id)
    assert [e.status for e in executions] == [
        ExecutionStatus.RETRYING,
        ExecutionStatus.RETRYING,
        ExecutionStatus.FAILED,
    ]
    for execution in executions:
        assert execution.error is not None
        assert (execution.error.type, execution.error.message) == ("ValueError", "bad order 7")
        assert "always_fails" in execution.error.traceback
        assert "ValueError: bad order 7" in execution.error.traceback
    dead = await app.dead_letters()
    assert [j.id for j in dead.items] == [handle.id]
    assert (stats.retried, stats.failed) == (2, 1)


async def test_unknown_task_fails_without_retry(app: TaskForge) -> None:
    (handle,) = await app.enqueue_jobs([NewJob(id=uuid7(), task="gone.task", max_attempts=3)])
    await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    assert job.error is not None
    assert job.error.type == "taskforge_core.errors.UnknownTaskError"
    assert "gone.task" in job.error.message


async def test_result_that_is_not_json_fails_with_serialization_error(app: TaskForge) -> None:
    @app.task(retry=Retry(max_attempts=3))
    async def opaque() -> object:
        return object()

    handle = await opaque.enqueue()
    await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    assert job.error is not None
    assert job.error.type == "taskforge_core.errors.SerializationError"


async def test_timeout_interrupts_the_attempt(app: TaskForge) -> None:
    interrupted: list[int] = []

    @app.task(timeout=0.1, retry=Retry(max_attempts=2, base_delay=0.01))
    async def slow() -> None:
        try:
            await anyio.sleep(30)
        finally:
            interrupted.append(current_job().attempt)

    handle = await slow.enqueue()
    stats = await run_until_idle(make_worker(app))

    job = await handle.refresh()
    assert (job.status, job.attempt) == (JobStatus.FAILED, 2)
    assert job.error is not None
    assert job.error.type == "taskforge_core.errors.JobTimeoutError"
    assert interrupted == [1, 2]
    assert (stats.retried, stats.failed) == (1, 1)


async def test_stop_when_idle_runs_jobs_due_soon_and_leaves_later_ones(app: TaskForge) -> None:
    @app.task
    async def reminder() -> str:
        return "sent"

    soon = await reminder.options(delay=0.3).enqueue()
    later = await reminder.options(delay=3600).enqueue()
    await run_until_idle(make_worker(app))

    assert await soon.wait(timeout=1) == "sent"
    assert (await later.refresh()).status is JobStatus.SCHEDULED


async def test_cancelling_a_running_job_interrupts_it(app: TaskForge) -> None:
    started, interrupted = anyio.Event(), anyio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            interrupted.set()
            raise

    handle = await forever.enqueue()
    worker = make_worker(app, heartbeat_interval=0.05)
    async with running(worker):
        with anyio.fail_after(10):
            await started.wait()
        assert await app.cancel(handle.id) == [handle.id]
        with anyio.fail_after(10):  # the worker learns it at its next heartbeat
            await interrupted.wait()

    assert (await handle.refresh()).status is JobStatus.CANCELLED
    stats = worker.stats
    assert (stats.cancelled, stats.succeeded, stats.lost) == (1, 0, 0)


async def test_dependencies_run_in_order(app: TaskForge) -> None:
    order: list[str] = []

    @app.task
    async def step(name: str) -> None:
        order.append(name)

    first = await step.enqueue("first")
    second = await step.options(depends_on=[first]).enqueue("second")
    await step.options(depends_on=[second]).enqueue("third")
    await run_until_idle(make_worker(app, concurrency=4))

    assert order == ["first", "second", "third"]


async def test_weighted_queues_share_claims_by_weight(app: TaskForge) -> None:
    order: list[str] = []

    @app.task
    async def record(queue: str) -> None:
        order.append(queue)

    await record.options(queue="heavy").enqueue_many([("heavy",)] * 40)
    await record.options(queue="light").enqueue_many([("light",)] * 40)
    await run_until_idle(make_worker(app, {"heavy": 3, "light": 1}, concurrency=2))

    assert len(order) == 80
    heavy = order[:40].count("heavy")  # both queues were full for the first 40 jobs
    assert 24 <= heavy <= 36, order[:40]


def test_weighted_round_robin_keeps_its_state_across_claims() -> None:
    wrr = _WeightedRoundRobin({"a": 3, "b": 1})
    picks = [next(s.name for s in wrr.split(1) if s.limit) for _ in range(8)]
    assert picks == ["a", "a", "b", "a"] * 2
    shares = wrr.split(8)
    assert {s.name: s.limit for s in shares} == {"a": 6, "b": 2}
    assert {s.name: s.limit for s in _WeightedRoundRobin({"a": 1}).split(5)} == {"a": 5}


async def test_concurrency_limit_is_never_exceeded(app: TaskForge) -> None:
    lock = threading.Lock()
    current = peak = 0

    def enter() -> None:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)

    def leave() -> None:
        nonlocal current
        with lock:
            current -= 1

    @app.task
    async def busy() -> None:
        enter()
        await anyio.sleep(0.01)
        leave()

    @app.task
    def busy_sync() -> None:
        enter()
        time.sleep(0.01)
        leave()

    await busy.enqueue_many([()] * 15)
    await busy_sync.enqueue_many([()] * 15)
    stats = await run_until_idle(make_worker(app, concurrency=3, batch_size=2))

    assert stats.succeeded == 30
    assert 1 <= peak <= 3


async def test_rate_limited_task_is_deferred_not_failed(app: TaskForge) -> None:
    @app.task(rate_limit="2/s", retry=Retry(max_attempts=1))
    async def limited() -> str:
        return "ok"

    handles = await limited.enqueue_many([()] * 4)
    stats = await run_until_idle(make_worker(app, concurrency=4, poll_interval=0.1))

    for handle in handles:
        assert await handle.wait(timeout=5) == "ok"
        assert (await handle.refresh()).attempt == 1  # deferrals used up no attempt
    assert stats.deferred >= 1
    assert stats.failed == 0
    deferred = [await execution_statuses(app, h.id) for h in handles]
    assert any(ExecutionStatus.DEFERRED in statuses for statuses in deferred)


async def test_middleware_wraps_execution_in_plugin_order(app: TaskForge) -> None:
    events: list[str] = []

    class Layer:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @hookimpl
        def taskforge_execution_middleware(self, app: TaskForge) -> Any:
            async def middleware(ctx: JobContext, call_next: CallNext) -> Any:
                events.append(f"{self.tag} before attempt {ctx.attempt}")
                result = await call_next()
                events.append(f"{self.tag} after {result}")
                return result

            return middleware

    app.plugins.register(Layer("outer"))
    app.plugins.register(Layer("inner"))

    @app.task
    async def work() -> int:
        events.append("task")
        return 42

    handle = await work.enqueue()
    await run_until_idle(make_worker(app))

    assert await handle.wait(timeout=5) == 42
    assert events == [
        "outer before attempt 1",
        "inner before attempt 1",
        "task",
        "inner after 42",
        "outer after 42",
    ]


async def test_job_log_lines_are_stored_and_readable(app: TaskForge) -> None:
    @app.task
    async def chatty(n: int) -> None:
        log = current_job().log
        log.info("starting", n=n)
        log.warning("almost done")

    @app.task
    def chatty_sync() -> None:
        current_job().log.info("from a thread", ok=True)

    handle = await chatty.enqueue(3)
    sync_handle = await chatty_sync.enqueue()
    await run_until_idle(make_worker(app))

    storage = await app.storage()
    lines = await storage.list_logs(handle.id)
    assert [(x.level, x.message, dict(x.fields)) for x in lines] == [
        ("info", "starting", {"n": 3}),
        ("warning", "almost done", {}),
    ]
    (job,) = await storage.get_jobs([handle.id], app.project)
    assert {x.execution_id for x in lines} == {job.execution_id}
    sync_lines = await storage.list_logs(sync_handle.id)
    assert [(x.message, dict(x.fields)) for x in sync_lines] == [("from a thread", {"ok": True})]


async def test_job_finished_hook_sees_each_accepted_outcome(app: TaskForge) -> None:
    seen: list[tuple[str, ExecutionStatus]] = []

    class Recorder:
        @hookimpl
        def taskforge_job_finished(
            self, app: TaskForge, job: Any, outcome: ExecutionStatus, run_seconds: float
        ) -> None:
            assert run_seconds >= 0
            seen.append((job.task.rsplit(".", 1)[-1], outcome))

    app.plugins.register(Recorder())

    @app.task(retry=Retry(max_attempts=2, base_delay=0.01))
    async def twice() -> None:
        raise RuntimeError("x")

    @app.task
    async def once() -> None:
        return None

    await twice.enqueue()
    await once.enqueue()
    await run_until_idle(make_worker(app))

    assert sorted(seen) == [
        ("once", ExecutionStatus.SUCCEEDED),
        ("twice", ExecutionStatus.FAILED),
        ("twice", ExecutionStatus.RETRYING),
    ]


# -- drain and shutdown -----------------------------------------------------------------------


async def test_drain_finishes_running_jobs_and_gives_back_the_rest(app: TaskForge) -> None:
    quick_started, stubborn_started = anyio.Event(), anyio.Event()

    @app.task(priority=2)
    async def quick() -> str:
        quick_started.set()
        await anyio.sleep(0.2)
        return "done"

    @app.task(priority=1)
    async def stubborn() -> None:
        stubborn_started.set()
        await anyio.sleep(60)

    @app.task
    async def waiting() -> None:
        return None

    quick_handle = await quick.enqueue()
    stubborn_handle = await stubborn.enqueue()
    waiting_handles = await waiting.enqueue_many([()] * 3)
    worker = make_worker(app, concurrency=2, grace_period=0.5)
    async with running(worker):
        with anyio.fail_after(10):
            await quick_started.wait()
            await stubborn_started.wait()

    assert await quick_handle.wait(timeout=1) == "done"
    stubborn_job = await stubborn_handle.refresh()
    assert stubborn_job.status in RUNNABLE_STATUSES  # given back, to run again
    assert stubborn_job.attempt == 0  # without using up an attempt
    assert await execution_statuses(app, stubborn_handle.id) == [ExecutionStatus.DEFERRED]
    for handle in waiting_handles:  # never claimed while draining
        assert (await handle.refresh()).status is JobStatus.PENDING
    storage = await app.storage()
    (info,) = [w for w in await storage.list_workers(app.project) if w.id == worker.id]
    assert info.status is WorkerStatus.STOPPED
    stats = worker.stats
    assert (stats.succeeded, stats.deferred, stats.lost) == (1, 1, 0)


async def test_stop_now_skips_the_grace_period(app: TaskForge) -> None:
    started = anyio.Event()

    @app.task
    async def stubborn() -> None:
        started.set()
        await anyio.sleep(60)

    handle = await stubborn.enqueue()
    worker = make_worker(app, grace_period=60)
    with anyio.fail_after(10):
        async with running(worker):
            await started.wait()
            worker.drain()
            await anyio.sleep(0.05)
            worker.stop_now()

    assert (await handle.refresh()).status in RUNNABLE_STATUSES


async def test_cancelling_run_gives_running_jobs_back(app: TaskForge) -> None:
    started = anyio.Event()

    @app.task
    async def stubborn() -> None:
        started.set()
        await anyio.sleep(60)

    handle = await stubborn.enqueue()
    worker = make_worker(app, grace_period=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            tg.cancel_scope.cancel()  # the caller's scope ends: no grace, but nothing is lost

    job = await handle.refresh()
    assert (job.status in RUNNABLE_STATUSES, job.attempt) == (True, 0)
    storage = await app.storage()
    (info,) = [w for w in await storage.list_workers(app.project) if w.id == worker.id]
    assert info.status is WorkerStatus.STOPPED


async def test_drain_requested_through_storage_stops_the_worker(app: TaskForge) -> None:
    worker = make_worker(app, heartbeat_interval=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await (await app.storage()).set_worker_status(worker.id, WorkerStatus.DRAINING)
    assert worker.draining


async def test_a_worker_runs_only_once(app: TaskForge) -> None:
    worker = make_worker(app)
    await run_until_idle(worker)
    with pytest.raises(RuntimeError, match="runs once"):
        await worker.run()


# -- leases -----------------------------------------------------------------------------------


async def test_lease_expiry_reruns_the_job_elsewhere_and_rejects_the_late_report(
    tmp_path: pathlib.Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, first_started = anyio.Event(), anyio.Event()

    def register(app: TaskForge) -> Any:
        @app.task(name="hold", retry=Retry(max_attempts=3))
        async def hold() -> str:
            if current_job().attempt == 1:
                first_started.set()
                await release.wait()
                return "late"
            return "second"

        return hold

    async with TaskForge(db_url(tmp_path)) as app_a, TaskForge(db_url(tmp_path)) as app_b:
        hold = register(app_a)
        register(app_b)
        handle = await hold.enqueue()

        async def partitioned(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("network partition")

        # Worker A cannot reach storage to extend its lease, so the lease runs out.
        monkeypatch.setattr(await app_a.storage(), "heartbeat", partitioned)
        worker_a = make_worker(app_a, concurrency=1, lease=1.0, heartbeat_interval=0.2)
        worker_b = make_worker(app_b, concurrency=1, lease=1.0, reclaim_interval=0.1)
        async with running(worker_a):
            with anyio.fail_after(10):
                await first_started.wait()
            await run_until_idle(worker_b)  # reclaims the expired lease and reruns the job
            assert await handle.wait(timeout=1) == "second"
            release.set()  # worker A finishes late; its report must be refused
            await wait_until(lambda: worker_a.stats.lost == 1)

        job = await handle.refresh()
        assert (job.status, job.result) == (JobStatus.SUCCEEDED, "second")
        statuses = await execution_statuses(app_a, handle.id)
        assert statuses.count(ExecutionStatus.SUCCEEDED) == 1
        assert statuses[0] is ExecutionStatus.LOST
        assert (worker_a.stats.succeeded, worker_b.stats.succeeded) == (0, 1)


async def test_fake_clock_drives_reclaim_of_a_dead_workers_jobs(
    tmp_path: pathlib.Path, anyio_backend: str
) -> None:
    clock = FakeClock()
    async with TaskForge(db_url(tmp_path), clock=clock) as app:

        @app.task(retry=Retry(max_attempts=3))
        async def job() -> str:
            return "ok"

        handle = await job.enqueue()
        storage = await app.storage()
        dead = uuid7()  # a worker that claims a job and dies without a word
        await storage.register_worker(
            WorkerInfo(id=dead, name="dead", hostname="gone", pid=1, concurrency=1)
        )
        claimed = await storage.claim(
            ClaimRequest(
                worker_id=dead,
                shares=(QueueShare(name="default", limit=1),),
                limit=1,
                lease=dt.timedelta(seconds=30),
            )
        )
        assert [c.job.id for c in claimed] == [handle.id]

        worker = Worker(app, lease=30.0, poll_interval=0.05)
        async with running(worker):
            await anyio.sleep(0.1)
            assert (await handle.refresh()).status is JobStatus.PROCESSING
            clock.advance(31)  # the lease runs out, and the reclaimer's next sweep is due
            assert await handle.wait(timeout=10) == "ok"

        assert await execution_statuses(app, handle.id) == [
            ExecutionStatus.LOST,
            ExecutionStatus.SUCCEEDED,
        ]


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queues", "options", "message"),
    [
        ((), {}, "at least one queue"),
        ({"a": 0}, {}, "weight of queue 'a'"),
        ({"a": 1.5}, {}, "weight of queue 'a'"),
        ({"a": True}, {}, "weight of queue 'a'"),
        (["a", "a"], {}, "twice"),
        ([""], {}, "non-empty"),
        (42, {}, "queues must be"),
        (("default",), {"concurrency": 0}, "concurrency"),
        (("default",), {"batch_size": -1}, "batch_size"),
        (("default",), {"lease": 0}, "lease"),
        (("default",), {"lease": float("nan")}, "lease"),
        (("default",), {"lease": 3, "heartbeat_interval": 3}, "shorter than the lease"),
        (("default",), {"reclaim_interval": -1}, "reclaim_interval"),
        (("default",), {"poll_interval": 0}, "poll_interval"),
        (("default",), {"grace_period": -1}, "grace_period"),
        (("default",), {"threads": 0}, "threads"),
        (("default",), {"name": ""}, "name"),
    ],
)
def test_bad_configuration_is_refused(
    tmp_path: pathlib.Path, queues: Any, options: dict[str, Any], message: str
) -> None:
    app = TaskForge(db_url(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        Worker(app, queues, **options)


def test_defaults_follow_the_lease_and_concurrency(tmp_path: pathlib.Path) -> None:
    app = TaskForge(db_url(tmp_path))
    worker = Worker(app, "emails", concurrency=8, lease=30)
    assert worker.queues == {"emails": 1}
    assert (worker.batch_size, worker.threads) == (8, 8)
    assert (worker.heartbeat_interval, worker.reclaim_interval) == (10.0, 15.0)


async def test_a_worker_waits_for_an_unreachable_store_instead_of_exiting(
    app: TaskForge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskforge_core import StorageUnavailableError

    @app.task(name="ping")
    async def ping() -> str:
        return "pong"

    job = await ping.enqueue()
    storage = await app.storage()
    real_register = storage.register_worker
    failures = [StorageUnavailableError("restarting"), StorageUnavailableError("restarting")]

    async def flaky_register(info: WorkerInfo) -> None:
        if failures:
            raise failures.pop()
        await real_register(info)

    monkeypatch.setattr(storage, "register_worker", flaky_register)
    await run_until_idle(make_worker(app))
    assert failures == []
    assert await job.wait(5) == "pong"


async def test_a_worker_serves_every_queue_of_the_apps_tasks_by_default(app: TaskForge) -> None:
    @app.task(name="mail", queue="emails")
    async def mail() -> None: ...

    @app.task(name="report", queue="reports")
    async def report() -> None: ...

    assert Worker(app).queues == {"emails": 1, "reports": 1}
    jobs = [await mail.enqueue(), await report.enqueue()]
    await run_until_idle(Worker(app, poll_interval=0.05))
    assert [await job.wait(5) for job in jobs] == [None, None]


async def test_jobs_refused_by_the_rate_limit_come_back_spread_out(app: TaskForge) -> None:
    @app.task(name="limited", rate_limit="50/s")
    async def limited(n: int) -> int:
        return n

    jobs = await limited.enqueue_many([(n,) for n in range(50)])
    stats = await run_until_idle(make_worker(app, concurrency=25))
    assert [await job.wait(5) for job in jobs] == list(range(50))
    # Each refused job gets its own later slot, so a job is refused a few times at most (jobs
    # due together are claimed together): without slots this run saw ~25 refusals per job.
    assert stats.deferred <= 5 * len(jobs)


async def test_the_worker_prunes_old_finished_jobs_by_its_retention_policy(app: TaskForge) -> None:
    @app.task(name="noop")
    async def noop() -> None: ...

    first = await noop.enqueue()
    await run_until_idle(make_worker(app, prune_every=None))
    assert (await app.get_job(first.id)).status is JobStatus.SUCCEEDED
    keep = await noop.options(delay=3600).enqueue()
    policy = RetentionPolicy(succeeded=dt.timedelta(0), history=None)
    async with running(make_worker(app, prune_every=0.05, retention=policy)):
        with anyio.fail_after(10):
            while True:
                if first.id not in {job.id for job in (await app.list_jobs()).items}:
                    break
                await anyio.sleep(0.05)
    assert {job.id for job in (await app.list_jobs()).items} == {keep.id}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prune_every": 0}, "prune_every"),
        ({"prune_every": -1.0}, "prune_every"),
        ({"retention": {"succeeded": 7}}, "retention must be a RetentionPolicy"),
    ],
)
def test_bad_pruning_options_are_refused(
    tmp_path: pathlib.Path, options: dict[str, Any], message: str
) -> None:
    app = TaskForge(db_url(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        Worker(app, **options)


@pytest.mark.parametrize(
    "fields",
    [{"succeeded": dt.timedelta(days=-1)}, {"history": 30}, {"partitions_ahead": -1}],
)
def test_a_bad_retention_policy_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="RetentionPolicy"):
        RetentionPolicy(**fields)


async def test_a_sigterm_while_the_worker_starts_drains_it_instead_of_killing_it(
    tmp_path: pathlib.Path,
) -> None:
    """A deploy may stop a worker it has just started: the signal arrives while the worker
    still opens its storage or registers. It must drain (and return), not die."""
    async with TaskForge(db_url(tmp_path)) as app:
        await app.storage()
        # Another connection holds the write lock, so registering waits for it.
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        worker = make_worker(app)
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    results: list[WorkerStats] = []

                    async def run() -> None:
                        results.append(await worker.run(handle_signals=True))

                    tg.start_soon(run)
                    await anyio.sleep(0.3)  # the worker waits to register
                    os.kill(os.getpid(), signal.SIGTERM)
                    await wait_until(lambda: worker.draining)
                    blocker.execute("COMMIT")
        finally:
            blocker.close()
        assert results[0].claimed == 0
