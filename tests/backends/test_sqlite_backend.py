"""The SQLite storage backend: URL handling, lifecycle, and every storage verb's behaviour."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import pathlib
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.to_thread
import pluggy
import pytest

from taskforge_backends.sqlite import SQLiteStorage
from taskforge_backends.sqlite._url import parse_url
from taskforge_backends.sqlite.backend import _CLAIMABLE
from taskforge_core import hookspecs
from taskforge_core.backends import BackendConfig, create_storage
from taskforge_core.clock import FakeClock, utc
from taskforge_core.errors import (
    ConfigurationError,
    DependencyError,
    InvalidJobError,
    QueueError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
)
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    ClaimedJob,
    ClaimRequest,
    Completion,
    ErrorInfo,
    ExecutionLog,
    Failure,
    Job,
    JobFilter,
    NewJob,
    QueueShare,
    QueueWorkerAssignment,
    RetryRequest,
    WorkerInfo,
    WorkerStatus,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.states import ExecutionStatus, JobStatus

WORKER = uuid.UUID("00000000-0000-7000-8000-00000000000a")
LEASE = dt.timedelta(seconds=30)
BOOM = ErrorInfo(type="ValueError", message="boom", traceback="Traceback ...")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def file_url(path: pathlib.Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "jobs.db"


@pytest.fixture
async def storage(db_path: pathlib.Path, clock: FakeClock) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(file_url(db_path), BackendConfig(clock=clock)) as opened:
        yield opened


def new(task: str = "work", **fields: Any) -> NewJob:
    return NewJob(id=uuid7(), task=task, **fields)


def claim_request(
    *queues: str,
    limit: int = 10,
    worker: uuid.UUID = WORKER,
    project: str = "default",
    lease: dt.timedelta = LEASE,
) -> ClaimRequest:
    names = queues or ("default",)
    return ClaimRequest(
        worker_id=worker,
        shares=tuple(QueueShare(name=name, limit=limit) for name in names),
        limit=limit,
        lease=lease,
        project=project,
    )


async def claim(storage: SQLiteStorage, *queues: str, limit: int = 10) -> list[ClaimedJob]:
    return await storage.claim(claim_request(*queues, limit=limit))


async def one(storage: SQLiteStorage, job_id: uuid.UUID, project: str = "default") -> Job:
    (job,) = await storage.get_jobs([job_id], project)
    return job


async def status(storage: SQLiteStorage, job_id: uuid.UUID) -> JobStatus:
    return (await one(storage, job_id)).status


async def run_to_success(storage: SQLiteStorage, job_id: uuid.UUID) -> None:
    """Claim everything runnable and complete ``job_id`` (giving the others back)."""
    claimed = await claim(storage, (await one(storage, job_id)).queue, limit=100)
    mine = [c for c in claimed if c.job.id == job_id]
    assert mine, f"{job_id} was not claimable"
    ack = await storage.complete([Completion(job_id=job_id, execution_id=mine[0].execution_id)])
    assert ack.accepted == (job_id,)
    others = [c for c in claimed if c.job.id != job_id]
    await storage.retry(
        [
            RetryRequest(
                job_id=c.job.id,
                execution_id=c.execution_id,
                run_at=c.job.scheduled_for,
                consume_attempt=False,
            )
            for c in others
        ]
    )


async def run_to_failure(storage: SQLiteStorage, job_id: uuid.UUID) -> None:
    claimed = [c for c in await claim(storage, limit=100) if c.job.id == job_id]
    ack = await storage.fail(
        [Failure(job_id=job_id, execution_id=claimed[0].execution_id, error=BOOM)]
    )
    assert ack.accepted == (job_id,)


async def all_jobs(storage: SQLiteStorage, project: str = "default") -> list[Job]:
    page = await storage.list_jobs(JobFilter(project=project), limit=1000, cursor=None)
    return list(page.items)


# ---------------------------------------------------------------------------------------------
# URL, plugin, lifecycle
# ---------------------------------------------------------------------------------------------


def test_url_forms_name_relative_absolute_and_memory_databases(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("sqlite:///rel/jobs.db").path == str(tmp_path / "rel" / "jobs.db")
    assert parse_url("sqlite:////var/lib/jobs.db").path == "/var/lib/jobs.db"
    assert parse_url("sqlite:///:memory:").in_memory
    assert parse_url("sqlite:///a%20b.db").path == str(tmp_path / "a b.db")
    settings = parse_url("sqlite:///x.db?synchronous=FULL&busy_timeout=2.5&poll_interval=0.1")
    assert (settings.synchronous, settings.busy_timeout, settings.poll_interval) == (
        "full",
        2.5,
        0.1,
    )
    defaults = parse_url("sqlite:///x.db")
    assert (defaults.synchronous, defaults.busy_timeout) == ("normal", 30.0)


def test_unknown_url_parameter_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="journal"):
        parse_url("sqlite:///x.db?journal=delete")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///x.db?busy_timeout=-1",
        "sqlite:///x.db?busy_timeout=soon",
        "sqlite:///x.db?poll_interval=0",
        "sqlite:///x.db?synchronous=full&synchronous=off",
        "sqlite://host/x.db",
        "sqlite:///",
        "sqlite:x.db",
        "postgresql:///x.db",
    ],
)
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStorage(url)


@pytest.mark.anyio
async def test_url_parameters_reach_the_connection(db_path: pathlib.Path) -> None:
    async with SQLiteStorage(file_url(db_path, "synchronous=full&busy_timeout=1.5")) as storage:
        conn = storage._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1500
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_the_entry_point_plugin_builds_the_backend(db_path: pathlib.Path) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    storage = create_storage(pm, file_url(db_path), BackendConfig())
    assert isinstance(storage, SQLiteStorage)
    assert isinstance(storage, Storage)


def test_loading_the_plugin_does_not_import_the_backend() -> None:
    code = (
        "import sys, taskforge_backends.sqlite.plugin as p\n"
        "assert p.taskforge_backends()[0].schemes == ('sqlite',)\n"
        "print('taskforge_backends.sqlite.backend' in sys.modules, 'sqlite3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_capabilities_depend_on_file_or_memory(db_path: pathlib.Path) -> None:
    on_file = SQLiteStorage(file_url(db_path)).capabilities
    in_memory = SQLiteStorage("sqlite:///:memory:").capabilities
    assert {Capability.MULTI_PROCESS, Capability.DURABLE, Capability.INJECTABLE_CLOCK} <= on_file
    assert {Capability.LOCAL_WAKEUP, Capability.CROSS_PROCESS_WAKEUP} <= on_file
    assert Capability.MULTI_PROCESS not in in_memory
    assert Capability.DURABLE not in in_memory
    assert {Capability.LOCAL_WAKEUP, Capability.INJECTABLE_CLOCK} <= in_memory


@pytest.mark.anyio
async def test_migrations_are_recorded_and_applied_once(db_path: pathlib.Path) -> None:
    config = BackendConfig(auto_migrate=False)
    async with SQLiteStorage(file_url(db_path), config) as storage:
        assert await storage.migrate() == ["0001_initial"]
        assert await storage.migrate() == []
    async with SQLiteStorage(file_url(db_path), config) as again:
        assert await again.migrate() == []
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name FROM schema_migrations").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        default = conn.execute("SELECT slug FROM projects").fetchall()
    conn.close()
    assert rows == [("0001_initial",)]
    assert {
        "organizations",
        "users",
        "subscriptions",
        "projects",
        "api_keys",
        "job_queues",
        "jobs",
        "workers",
        "queue_worker_assignments",
        "job_executions",
        "execution_logs",
        "job_dependencies",
    } <= tables
    assert default == [("default",)]


@pytest.mark.anyio
async def test_calls_before_open_or_after_close_raise_storage_error(
    db_path: pathlib.Path,
) -> None:
    storage = SQLiteStorage(file_url(db_path))
    with pytest.raises(StorageError, match="not open"):
        await storage.enqueue([new()])
    with pytest.raises(StorageError, match="not open"):
        await storage.wait_for_jobs(["default"], 0.1)
    await storage.open()
    await storage.close()
    await storage.close()  # twice is fine
    with pytest.raises(StorageError, match="not open"):
        await storage.list_queues("default")


@pytest.mark.anyio
async def test_a_database_in_a_missing_directory_is_a_storage_error(
    tmp_path: pathlib.Path,
) -> None:
    storage = SQLiteStorage(file_url(tmp_path / "missing" / "jobs.db"))
    with pytest.raises(StorageUnavailableError) as caught:
        await storage.open()
    assert not isinstance(caught.value, sqlite3.Error)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_a_storage_error(
    db_path: pathlib.Path,
) -> None:
    await anyio.Path(db_path).write_bytes(b"not a database, just text that is long enough" * 100)
    with pytest.raises(StorageError) as caught:
        await SQLiteStorage(file_url(db_path)).open()
    assert isinstance(caught.value.__cause__, sqlite3.Error)


@pytest.mark.anyio
async def test_a_write_lock_held_too_long_is_storage_unavailable(db_path: pathlib.Path) -> None:
    async with SQLiteStorage(file_url(db_path, "busy_timeout=0.05")) as storage:
        blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailableError) as caught:
                await storage.enqueue([new()])
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert len(await storage.enqueue([new()])) == 1  # and it recovers


@pytest.mark.anyio
async def test_an_in_memory_database_runs_a_job() -> None:
    clock = FakeClock()
    async with SQLiteStorage("sqlite:///:memory:", BackendConfig(clock=clock)) as storage:
        (job,) = await storage.enqueue([new()])
        (claimed,) = await claim(storage)
        ack = await storage.complete(
            [Completion(job_id=job.id, execution_id=claimed.execution_id, result=[1, 2])]
        )
        assert ack.accepted == (job.id,)
        assert (await one(storage, job.id)).result == [1, 2]


# ---------------------------------------------------------------------------------------------
# Enqueue
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_enqueue_returns_stored_jobs_in_request_order(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    requests = [
        new("b", args=(1, (2, 3)), kwargs={"x": {"y": [1]}}, priority=5, headers={"h": "v"}),
        new("a", queue="emails", max_attempts=3, timeout=2.5),
        new("c", args=("plain", 1.5, None, True)),
    ]
    stored = await storage.enqueue(requests)
    assert [j.id for j in stored] == [r.id for r in requests]
    assert stored == await storage.get_jobs([r.id for r in requests], "default")
    first = stored[0]
    assert first.status is JobStatus.PENDING
    assert first.args == (1, [2, 3])  # as JSON gives it back
    assert first.kwargs == {"x": {"y": [1]}}
    assert first.headers == {"h": "v"}
    assert (first.attempt, first.priority, first.project) == (0, 5, "default")
    assert first.scheduled_for == first.created_at == first.updated_at == clock.now()
    assert stored[1].queue == "emails"
    assert (stored[1].max_attempts, stored[1].timeout) == (3, 2.5)


@pytest.mark.anyio
async def test_a_future_job_is_scheduled_and_not_claimed_before_it_is_due(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    later = clock.now() + dt.timedelta(seconds=60)
    (job,) = await storage.enqueue([new(scheduled_for=later)])
    assert job.status is JobStatus.SCHEDULED
    assert job.scheduled_for == later
    assert await claim(storage) == []
    clock.advance(59.999)
    assert await claim(storage) == []
    clock.advance(0.001)
    assert [c.job.id for c in await claim(storage)] == [job.id]


@pytest.mark.anyio
async def test_a_past_due_time_means_pending(storage: SQLiteStorage, clock: FakeClock) -> None:
    earlier = clock.now() - dt.timedelta(hours=1)
    (job,) = await storage.enqueue([new(scheduled_for=earlier)])
    assert job.status is JobStatus.PENDING
    assert job.scheduled_for == earlier


@pytest.mark.anyio
async def test_an_existing_idempotency_key_returns_the_existing_job(
    storage: SQLiteStorage,
) -> None:
    (first,) = await storage.enqueue([new(key="order-1")])
    again = new(key="order-1", args=(2,))
    other = new(key="order-2")
    result = await storage.enqueue([again, other])
    assert result[0] == first
    assert result[1].id == other.id
    assert await storage.get_jobs([again.id], "default") == []
    assert len(await all_jobs(storage)) == 2


@pytest.mark.anyio
async def test_a_repeated_key_within_one_batch_stores_one_job(storage: SQLiteStorage) -> None:
    a, b = new(key="k"), new(key="k")
    result = await storage.enqueue([a, b])
    assert result[0] == result[1]
    assert result[0].id == a.id
    assert len(await all_jobs(storage)) == 1


@pytest.mark.anyio
async def test_idempotency_keys_are_per_project(storage: SQLiteStorage) -> None:
    a = new(key="k")
    b = new(key="k", project="other")
    result = await storage.enqueue([a, b])
    assert [j.id for j in result] == [a.id, b.id]


@pytest.mark.anyio
async def test_a_dependency_on_a_deduplicated_job_points_at_the_existing_job(
    storage: SQLiteStorage,
) -> None:
    (existing,) = await storage.enqueue([new(key="k")])
    duplicate = new(key="k")
    child = new(depends_on=[duplicate.id])
    result = await storage.enqueue([duplicate, child])
    assert result[1].depends_on == (existing.id,)
    assert result[1].status is JobStatus.BLOCKED


@pytest.mark.anyio
async def test_an_unknown_parent_rejects_the_whole_batch(storage: SQLiteStorage) -> None:
    good = new()
    orphan = new(depends_on=[uuid7()])
    with pytest.raises(DependencyError):
        await storage.enqueue([good, orphan])
    assert await all_jobs(storage) == []


@pytest.mark.anyio
async def test_a_parent_in_another_project_counts_as_unknown(storage: SQLiteStorage) -> None:
    (parent,) = await storage.enqueue([new(project="other")])
    with pytest.raises(DependencyError):
        await storage.enqueue([new(depends_on=[parent.id])])
    with pytest.raises(DependencyError):
        await storage.enqueue([(p := new(project="other")), new(depends_on=[p.id])])


@pytest.mark.anyio
async def test_a_cycle_in_the_batch_is_rejected(storage: SQLiteStorage) -> None:
    a_id, b_id, c_id = uuid7(), uuid7(), uuid7()
    cycle = [
        NewJob(id=a_id, task="t", depends_on=[c_id]),
        NewJob(id=b_id, task="t", depends_on=[a_id]),
        NewJob(id=c_id, task="t", depends_on=[b_id]),
    ]
    with pytest.raises(DependencyError, match="cycle"):
        await storage.enqueue(cycle)
    selfish = uuid7()
    with pytest.raises(DependencyError, match="itself"):
        await storage.enqueue([NewJob(id=selfish, task="t", depends_on=[selfish])])
    assert await all_jobs(storage) == []


@pytest.mark.anyio
async def test_parents_may_come_later_in_the_same_batch(storage: SQLiteStorage) -> None:
    parent = new()
    child = new(depends_on=[parent.id])
    stored = await storage.enqueue([child, parent])
    assert [j.status for j in stored] == [JobStatus.BLOCKED, JobStatus.PENDING]
    assert stored[0].depends_on == (parent.id,)


@pytest.mark.anyio
async def test_initial_status_follows_the_parents(storage: SQLiteStorage, clock: FakeClock) -> None:
    done, dead, waiting = new(), new(), new()
    await storage.enqueue([done, dead, waiting])
    await run_to_success(storage, done.id)
    await run_to_failure(storage, dead.id)
    later = clock.now() + dt.timedelta(minutes=5)
    children = [
        new(depends_on=[done.id]),
        new(depends_on=[done.id], scheduled_for=later),
        new(depends_on=[done.id, waiting.id]),
        new(depends_on=[done.id, dead.id]),
    ]
    stored = await storage.enqueue(children)
    assert [j.status for j in stored] == [
        JobStatus.PENDING,
        JobStatus.SCHEDULED,
        JobStatus.BLOCKED,
        JobStatus.CANCELLED,
    ]
    grandchild = new(depends_on=[children[3].id])
    (cancelled,) = await storage.enqueue([grandchild])
    assert cancelled.status is JobStatus.CANCELLED


@pytest.mark.anyio
async def test_a_child_of_a_cancelled_member_of_the_batch_is_cancelled(
    storage: SQLiteStorage,
) -> None:
    (dead,) = await storage.enqueue([new()])
    await storage.cancel([dead.id], "default")
    middle = new(depends_on=[dead.id])
    leaf = new(depends_on=[middle.id])
    stored = await storage.enqueue([leaf, middle])
    assert [j.status for j in stored] == [JobStatus.CANCELLED, JobStatus.CANCELLED]


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"scheduled_for": dt.datetime(2030, 1, 1)},  # naive
        {"task": ""},
        {"queue": ""},
        {"priority": 2**70},
    ],
)
@pytest.mark.anyio
async def test_invalid_values_reject_the_batch(
    storage: SQLiteStorage, fields: dict[str, Any]
) -> None:
    with pytest.raises(InvalidJobError):
        await storage.enqueue([new(), new(**fields)])
    assert await all_jobs(storage) == []


@pytest.mark.anyio
async def test_a_repeated_or_existing_id_is_rejected(storage: SQLiteStorage) -> None:
    job = new()
    with pytest.raises(InvalidJobError):
        await storage.enqueue([job, job])
    await storage.enqueue([job])
    with pytest.raises(InvalidJobError):
        await storage.enqueue([new(), job])
    assert len(await all_jobs(storage)) == 1


@pytest.mark.anyio
async def test_arguments_that_are_not_json_raise_serialization_error(
    storage: SQLiteStorage,
) -> None:
    with pytest.raises(SerializationError):
        await storage.enqueue([new(args=(object(),))])
    assert await all_jobs(storage) == []


@pytest.mark.anyio
async def test_an_unknown_queue_in_strict_mode_writes_nothing(
    db_path: pathlib.Path, clock: FakeClock
) -> None:
    config = BackendConfig(clock=clock, create_queues=False)
    async with SQLiteStorage(file_url(db_path), config) as storage:
        await storage.set_queue_paused("default", "known", False)
        with pytest.raises(QueueError, match="unknown"):
            await storage.enqueue([new(queue="known"), new(queue="unknown")])
        assert await all_jobs(storage) == []
        assert [q.name for q in await storage.list_queues("default")] == ["known"]
        (job,) = await storage.enqueue([new(queue="known")])
        assert job.queue == "known"


@pytest.mark.anyio
async def test_queues_and_projects_are_created_on_demand(storage: SQLiteStorage) -> None:
    (job,) = await storage.enqueue([new(project="acme", queue="emails")])
    assert job.project == "acme"
    assert [q.name for q in await storage.list_queues("acme")] == ["emails"]


# ---------------------------------------------------------------------------------------------
# Claim
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_claim_order_is_priority_then_due_time_then_id(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    t0 = clock.now()
    old = t0 - dt.timedelta(minutes=1)
    low = new(priority=0)
    high_late = new(priority=9)
    high_early = new(priority=9, scheduled_for=old)
    mid_a = new(priority=5, scheduled_for=old)
    mid_b = new(priority=5, scheduled_for=old)
    await storage.enqueue([low, high_late, mid_b, high_early, mid_a])
    claimed = await claim(storage, limit=10)
    assert [c.job.id for c in claimed] == [high_early.id, high_late.id, mid_a.id, mid_b.id, low.id]
    # One at a time gives the same order.
    await storage.cancel([c.job.id for c in claimed], "default")
    jobs = [new(priority=p) for p in (1, 3, 2)]
    await storage.enqueue(jobs)
    got = [(await claim(storage, limit=1))[0].job.id for _ in jobs]
    assert got == [jobs[1].id, jobs[2].id, jobs[0].id]


@pytest.mark.anyio
async def test_claim_fills_each_share_first_then_leftover_best_first(
    storage: SQLiteStorage,
) -> None:
    a_jobs = [new(queue="a", priority=1) for _ in range(5)]
    b_jobs = [new(queue="b", priority=2) for _ in range(5)]
    await storage.enqueue(a_jobs + b_jobs)
    request = ClaimRequest(
        worker_id=WORKER,
        shares=(QueueShare(name="a", limit=3), QueueShare(name="b", limit=1)),
        limit=6,
        lease=LEASE,
    )
    claimed = {c.job.id for c in await storage.claim(request)}
    # 3 from a and 1 from b by quota; the 2 left over go to b, whose jobs rank higher.
    assert claimed == {j.id for j in a_jobs[:3]} | {j.id for j in b_jobs[:3]}


@pytest.mark.anyio
async def test_claim_never_exceeds_its_limit_even_when_shares_do(storage: SQLiteStorage) -> None:
    await storage.enqueue([new(queue="a") for _ in range(5)] + [new(queue="b") for _ in range(5)])
    request = ClaimRequest(
        worker_id=WORKER,
        shares=(QueueShare(name="a", limit=4), QueueShare(name="b", limit=4)),
        limit=5,
        lease=LEASE,
    )
    claimed = await storage.claim(request)
    assert [c.job.queue for c in claimed].count("a") == 4
    assert len(claimed) == 5


@pytest.mark.anyio
async def test_a_zero_limit_or_no_shares_claims_nothing(storage: SQLiteStorage) -> None:
    await storage.enqueue([new()])
    assert await claim(storage, limit=0) == []
    empty = ClaimRequest(worker_id=WORKER, shares=(), limit=5, lease=LEASE)
    assert await storage.claim(empty) == []
    unknown = await storage.claim(claim_request("nope"))
    assert unknown == []


@pytest.mark.anyio
async def test_a_paused_queue_is_not_claimed_but_still_accepts_jobs(
    storage: SQLiteStorage,
) -> None:
    paused = await storage.set_queue_paused("default", "default", True)
    assert paused.paused
    (job,) = await storage.enqueue([new()])
    assert await claim(storage) == []
    await storage.set_queue_paused("default", "default", False)
    assert [c.job.id for c in await claim(storage)] == [job.id]


@pytest.mark.anyio
async def test_claim_starts_an_attempt_with_a_lease(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new(max_attempts=3)])
    (claimed,) = await claim(storage)
    assert claimed.lease_expires_at == clock.now() + LEASE
    held = claimed.job
    assert held.status is JobStatus.PROCESSING
    assert (held.attempt, held.worker_id) == (1, WORKER)
    assert held.execution_id == claimed.execution_id
    assert held.started_at == clock.now()
    assert held.lease_expires_at == claimed.lease_expires_at
    assert held == await one(storage, job.id)
    (execution,) = await storage.list_executions(job.id)
    assert (execution.id, execution.attempt, execution.status) == (
        claimed.execution_id,
        1,
        ExecutionStatus.STARTED,
    )
    assert execution.worker_id == WORKER
    assert await claim(storage) == []


@pytest.mark.anyio
async def test_claim_only_sees_its_own_project(storage: SQLiteStorage) -> None:
    (job,) = await storage.enqueue([new(project="other")])
    assert await claim(storage) == []
    claimed = await storage.claim(claim_request(project="other"))
    assert [c.job.id for c in claimed] == [job.id]


def test_claim_reads_only_the_head_of_a_queue_even_with_statistics(
    tmp_path: pathlib.Path,
) -> None:
    url = file_url(tmp_path / "plan.db")

    async def fill() -> None:
        async with SQLiteStorage(url) as storage:
            await storage.enqueue([new(priority=i % 3) for i in range(300)])

    anyio.run(fill)
    conn = sqlite3.connect(tmp_path / "plan.db")
    try:
        conn.execute("ANALYZE")  # statistics once tempted the planner into a sort
        plan = [
            row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _CLAIMABLE, ("p", "q", 1, 0, 5))
        ]
    finally:
        conn.close()
    assert plan == ["SEARCH j USING INDEX jobs_claim (queue_id=?)"]


# ---------------------------------------------------------------------------------------------
# Reports: complete, retry, fail
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_complete_stores_the_result_and_closes_the_attempt(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new()])
    (claimed,) = await claim(storage)
    clock.advance(2)
    ack = await storage.complete(
        [Completion(job_id=job.id, execution_id=claimed.execution_id, result={"ok": True})]
    )
    assert (ack.accepted, ack.rejected) == ((job.id,), ())
    done = await one(storage, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"ok": True}
    assert done.finished_at == clock.now()
    assert done.lease_expires_at is None
    (execution,) = await storage.list_executions(job.id)
    assert execution.status is ExecutionStatus.SUCCEEDED
    assert execution.finished_at == clock.now()


@pytest.mark.anyio
async def test_stale_completion_is_rejected(storage: SQLiteStorage, clock: FakeClock) -> None:
    (job,) = await storage.enqueue([new(max_attempts=3)])
    (first,) = await claim(storage)
    clock.advance(31)
    assert await storage.reclaim_expired() == [job.id]
    (second,) = await claim(storage)
    late = await storage.complete([Completion(job_id=job.id, execution_id=first.execution_id)])
    assert (late.accepted, late.rejected) == ((), (job.id,))
    assert (await one(storage, job.id)).status is JobStatus.PROCESSING
    for report in (
        storage.fail([Failure(job_id=job.id, execution_id=first.execution_id, error=BOOM)]),
        storage.retry(
            [RetryRequest(job_id=job.id, execution_id=first.execution_id, run_at=clock.now())]
        ),
    ):
        assert (await report).rejected == (job.id,)
    assert await one(storage, job.id) == second.job
    ok = await storage.complete([Completion(job_id=job.id, execution_id=second.execution_id)])
    assert ok.accepted == (job.id,)


@pytest.mark.anyio
async def test_a_second_report_on_the_same_claim_is_rejected(storage: SQLiteStorage) -> None:
    (job,) = await storage.enqueue([new()])
    (claimed,) = await claim(storage)
    report = Completion(job_id=job.id, execution_id=claimed.execution_id, result=1)
    ack = await storage.complete([report, Completion(job_id=job.id, execution_id=uuid7())])
    assert (ack.accepted, ack.rejected) == ((job.id,), (job.id,))
    again = await storage.complete([report])
    assert again.rejected == (job.id,)
    unknown = await storage.complete([Completion(job_id=uuid7(), execution_id=uuid7())])
    assert len(unknown.rejected) == 1


@pytest.mark.anyio
async def test_child_released_only_after_all_parents_succeed(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    p1, p2 = new(), new()
    later = clock.now() + dt.timedelta(minutes=10)
    child = new(depends_on=[p1.id, p2.id])
    delayed_child = new(depends_on=[p1.id], scheduled_for=later)
    await storage.enqueue([p1, p2, child, delayed_child])
    await run_to_success(storage, p1.id)
    assert await status(storage, child.id) is JobStatus.BLOCKED
    assert await status(storage, delayed_child.id) is JobStatus.SCHEDULED
    await run_to_success(storage, p2.id)
    assert await status(storage, child.id) is JobStatus.PENDING
    assert [c.job.id for c in await claim(storage)] == [child.id]


@pytest.mark.anyio
async def test_retry_reschedules_the_job_and_records_the_attempt(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new(max_attempts=3)])
    (first,) = await claim(storage)
    run_at = clock.now() + dt.timedelta(seconds=10)
    ack = await storage.retry(
        [RetryRequest(job_id=job.id, execution_id=first.execution_id, run_at=run_at, error=BOOM)]
    )
    assert ack.accepted == (job.id,)
    waiting = await one(storage, job.id)
    assert (waiting.status, waiting.scheduled_for, waiting.error) == (
        JobStatus.SCHEDULED,
        run_at,
        BOOM,
    )
    assert waiting.attempt == 1
    assert await claim(storage) == []
    clock.advance(10)
    (second,) = await claim(storage)
    assert second.job.attempt == 2
    executions = await storage.list_executions(job.id)
    assert [e.status for e in executions] == [ExecutionStatus.RETRYING, ExecutionStatus.STARTED]
    assert executions[0].error == BOOM
    assert [e.id for e in executions] == [first.execution_id, second.execution_id]


@pytest.mark.anyio
async def test_a_deferred_retry_gives_the_attempt_back(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new()])
    (first,) = await claim(storage)
    await storage.retry(
        [
            RetryRequest(
                job_id=job.id, execution_id=first.execution_id, run_at=clock.now(), error=BOOM
            )
        ]
    )
    (second,) = await claim(storage)
    assert second.job.attempt == 2
    ack = await storage.retry(
        [
            RetryRequest(
                job_id=job.id,
                execution_id=second.execution_id,
                run_at=clock.now(),
                consume_attempt=False,
            )
        ]
    )
    assert ack.accepted == (job.id,)
    back = await one(storage, job.id)
    assert (back.status, back.attempt, back.error) == (JobStatus.SCHEDULED, 1, BOOM)
    statuses = [e.status for e in await storage.list_executions(job.id)]
    assert statuses == [ExecutionStatus.RETRYING, ExecutionStatus.DEFERRED]


@pytest.mark.anyio
async def test_fail_dead_letters_the_job_and_cancels_its_descendants(
    storage: SQLiteStorage,
) -> None:
    root, bystander = new(), new()
    child = new(depends_on=[root.id])
    grandchild = new(depends_on=[child.id])
    joint = new(depends_on=[bystander.id, grandchild.id])
    await storage.enqueue([root, bystander, child, grandchild, joint])
    claimed = {c.job.id: c for c in await claim(storage)}
    ack = await storage.fail(
        [Failure(job_id=root.id, execution_id=claimed[root.id].execution_id, error=BOOM)]
    )
    assert ack.accepted == (root.id,)
    failed = await one(storage, root.id)
    assert (failed.status, failed.error) == (JobStatus.FAILED, BOOM)
    for job_id in (child.id, grandchild.id, joint.id):
        assert await status(storage, job_id) is JobStatus.CANCELLED
    assert await status(storage, bystander.id) is JobStatus.PROCESSING
    (execution,) = await storage.list_executions(root.id)
    assert (execution.status, execution.error) == (ExecutionStatus.FAILED, BOOM)


# ---------------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------------


def worker_info(worker_id: uuid.UUID = WORKER, *queues: tuple[str, int]) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        name="w1",
        hostname="host",
        pid=123,
        concurrency=4,
        queues=tuple(
            QueueWorkerAssignment(worker_id=worker_id, queue=q, weight=w) for q, w in queues
        ),
    )


@pytest.mark.anyio
async def test_heartbeat_extends_held_leases_and_names_the_lost_ones(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    await storage.register_worker(worker_info())
    kept, cancelled = new(), new()
    await storage.enqueue([kept, cancelled])
    claimed = {c.job.id: c for c in await claim(storage)}
    await storage.cancel([cancelled.id], "default")
    clock.advance(20)
    wanted = [claimed[kept.id].execution_id, claimed[cancelled.id].execution_id, uuid7()]
    state, lost = await storage.heartbeat(WORKER, wanted, dt.timedelta(seconds=60))
    assert state is WorkerStatus.RUNNING
    assert lost == wanted[1:]
    assert (await one(storage, kept.id)).lease_expires_at == clock.now() + dt.timedelta(seconds=60)
    (registered,) = await storage.list_workers("default")
    assert registered.last_heartbeat_at == clock.now()
    await storage.set_worker_status(WORKER, WorkerStatus.DRAINING)
    state, lost = await storage.heartbeat(WORKER, wanted[:1], LEASE)
    assert (state, lost) == (WorkerStatus.DRAINING, [])


@pytest.mark.anyio
async def test_heartbeat_of_another_worker_extends_nothing(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new()])
    (claimed,) = await claim(storage)
    stranger = uuid7()
    state, lost = await storage.heartbeat(stranger, [claimed.execution_id], LEASE * 10)
    assert (state, lost) == (WorkerStatus.RUNNING, [claimed.execution_id])
    assert (await one(storage, job.id)).lease_expires_at == clock.now() + LEASE


@pytest.mark.anyio
async def test_an_expired_lease_counts_as_a_failed_attempt(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    job = new(max_attempts=2)
    child = new(depends_on=[job.id])
    await storage.enqueue([job, child])
    await claim(storage)
    clock.advance(30)
    assert await storage.reclaim_expired() == []  # expires strictly after the lease
    clock.advance(0.001)
    assert await storage.reclaim_expired() == [job.id]
    again = await one(storage, job.id)
    assert (again.status, again.attempt, again.lease_expires_at) == (JobStatus.PENDING, 1, None)
    assert again.error is not None
    assert again.error.type == "LeaseExpired"
    (lost,) = await storage.list_executions(job.id)
    assert lost.status is ExecutionStatus.LOST
    assert lost.error is not None
    assert lost.error.type == "LeaseExpired"
    # The last attempt expiring dead-letters the job and cancels its child.
    (second,) = await claim(storage)
    assert second.job.attempt == 2
    clock.advance(31)
    assert await storage.reclaim_expired() == [job.id]
    assert await status(storage, job.id) is JobStatus.FAILED
    assert await status(storage, child.id) is JobStatus.CANCELLED
    assert await storage.reclaim_expired() == []


# ---------------------------------------------------------------------------------------------
# Cancel, replay, purge
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_stops_jobs_and_their_descendants(storage: SQLiteStorage) -> None:
    running, waiting, finished = new(), new(), new()
    child = new(depends_on=[running.id])
    grandchild = new(depends_on=[child.id])
    foreign = new(project="other")
    await storage.enqueue([running, finished, child, grandchild, foreign])
    await run_to_success(storage, finished.id)
    (held,) = [c for c in await claim(storage) if c.job.id == running.id]
    await storage.enqueue([waiting])
    cancelled = await storage.cancel(
        [running.id, finished.id, waiting.id, foreign.id, uuid7()], "default"
    )
    assert cancelled == [running.id, waiting.id, child.id, grandchild.id]
    assert await status(storage, finished.id) is JobStatus.SUCCEEDED
    assert (await one(storage, foreign.id, "other")).status is JobStatus.PENDING
    stopped = await one(storage, running.id)
    assert (stopped.status, stopped.lease_expires_at) == (JobStatus.CANCELLED, None)
    execution = (await storage.list_executions(running.id))[-1]
    assert (execution.id, execution.status) == (held.execution_id, ExecutionStatus.CANCELLED)
    late = await storage.complete([Completion(job_id=running.id, execution_id=held.execution_id)])
    assert late.rejected == (running.id,)
    assert await storage.cancel([running.id], "default") == []


@pytest.mark.anyio
async def test_replay_resets_a_dead_lettered_job(storage: SQLiteStorage, clock: FakeClock) -> None:
    (job,) = await storage.enqueue([new(max_attempts=1)])
    await run_to_failure(storage, job.id)
    clock.advance(60)
    result = await storage.replay(JobFilter(statuses=frozenset({JobStatus.FAILED})))
    assert (result.replayed, result.skipped) == ((job.id,), ())
    back = await one(storage, job.id)
    assert (back.status, back.attempt, back.error, back.result) == (
        JobStatus.PENDING,
        0,
        None,
        None,
    )
    assert (back.scheduled_for, back.updated_at, back.finished_at) == (
        clock.now(),
        clock.now(),
        None,
    )
    (claimed,) = await claim(storage)
    assert claimed.job.attempt == 1


@pytest.mark.anyio
async def test_replaying_parent_and_child_together_blocks_the_child_until_the_parent_succeeds(
    storage: SQLiteStorage,
) -> None:
    parent = new()
    child = new(depends_on=[parent.id])
    await storage.enqueue([parent, child])
    await run_to_failure(storage, parent.id)
    assert await status(storage, child.id) is JobStatus.CANCELLED
    result = await storage.replay(JobFilter())
    assert set(result.replayed) == {parent.id, child.id}
    assert await status(storage, parent.id) is JobStatus.PENDING
    assert await status(storage, child.id) is JobStatus.BLOCKED
    await run_to_success(storage, parent.id)
    assert await status(storage, child.id) is JobStatus.PENDING


@pytest.mark.anyio
async def test_replay_skips_a_job_whose_dead_parent_stays_dead(storage: SQLiteStorage) -> None:
    parent = new()
    child = new(depends_on=[parent.id])
    grandchild = new(depends_on=[child.id])
    await storage.enqueue([parent, child, grandchild])
    await run_to_failure(storage, parent.id)
    result = await storage.replay(JobFilter(ids=frozenset({child.id, grandchild.id})))
    assert result.replayed == ()
    reasons = dict(result.skipped)
    assert set(reasons) == {child.id, grandchild.id}
    assert str(parent.id) in reasons[child.id]
    assert await status(storage, child.id) is JobStatus.CANCELLED


@pytest.mark.anyio
async def test_replay_blocks_on_an_active_parent_and_reports_active_jobs(
    storage: SQLiteStorage,
) -> None:
    parent = new()
    child = new(depends_on=[parent.id])
    await storage.enqueue([parent, child])
    await storage.cancel([child.id], "default")
    result = await storage.replay(JobFilter(ids=frozenset({parent.id, child.id})))
    assert result.replayed == (child.id,)
    assert [job_id for job_id, _ in result.skipped] == [parent.id]
    assert await status(storage, child.id) is JobStatus.BLOCKED


@pytest.mark.anyio
async def test_purge_deletes_final_jobs_with_their_history_but_keeps_needed_parents(
    storage: SQLiteStorage,
) -> None:
    needed, lonely, active = new(), new(), new()
    await storage.enqueue([needed, lonely, active])
    await run_to_success(storage, needed.id)
    await storage.enqueue([child := new(depends_on=[needed.id])])
    (claimed,) = [c for c in await claim(storage) if c.job.id == lonely.id]
    await storage.add_logs(
        [
            ExecutionLog(
                execution_id=claimed.execution_id,
                job_id=lonely.id,
                at=dt.datetime(2030, 1, 1, tzinfo=utc),
                level="info",
                message="hello",
            )
        ]
    )
    await storage.fail([Failure(job_id=lonely.id, execution_id=claimed.execution_id, error=BOOM)])
    assert await storage.purge(JobFilter()) == 1
    remaining = {j.id for j in await all_jobs(storage)}
    assert remaining == {needed.id, active.id, child.id}
    assert await storage.list_executions(lonely.id) == []
    assert await storage.list_logs(lonely.id) == []
    assert await storage.purge(JobFilter(project="other")) == 0


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_jobs_pages_newest_first_without_skips_while_jobs_arrive(
    storage: SQLiteStorage,
) -> None:
    first = await storage.enqueue([new() for _ in range(7)])
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    while True:
        page = await storage.list_jobs(JobFilter(), limit=3, cursor=cursor)
        seen.extend(j.id for j in page.items)
        await storage.enqueue([new()])  # newer than anything listed so far
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted((j.id for j in first), reverse=True)


@pytest.mark.anyio
async def test_list_jobs_honours_every_filter(storage: SQLiteStorage, clock: FakeClock) -> None:
    old = new("a", queue="q1")
    await storage.enqueue([old])
    clock.advance(10)
    mid = new("b", queue="q1")
    late = new("a", queue="q2")
    foreign = new("a", project="other", queue="q1")
    await storage.enqueue([mid, late, foreign])
    await storage.cancel([mid.id], "default")

    async def ids(**fields: Any) -> set[uuid.UUID]:
        page = await storage.list_jobs(JobFilter(**fields), limit=50, cursor=None)
        return {j.id for j in page.items}

    assert await ids() == {old.id, mid.id, late.id}
    assert await ids(project="other") == {foreign.id}
    assert await ids(project="nobody") == set()
    assert await ids(statuses=frozenset({JobStatus.CANCELLED})) == {mid.id}
    assert await ids(statuses=frozenset()) == set()
    assert await ids(queue="q1") == {old.id, mid.id}
    assert await ids(queue="missing") == set()
    assert await ids(task="a") == {old.id, late.id}
    assert await ids(ids=frozenset({old.id, foreign.id})) == {old.id}
    assert await ids(updated_before=clock.now()) == {old.id}
    assert await ids(task="a", queue="q2", statuses=frozenset({JobStatus.PENDING})) == {late.id}


@pytest.mark.anyio
async def test_list_jobs_rejects_a_bad_limit_or_cursor(storage: SQLiteStorage) -> None:
    with pytest.raises(ValueError, match="limit"):
        await storage.list_jobs(JobFilter(), limit=0, cursor=None)
    with pytest.raises(ValueError, match="cursor"):
        await storage.list_jobs(JobFilter(), limit=5, cursor="garbage")


@pytest.mark.anyio
async def test_get_jobs_keeps_request_order_and_leaves_out_missing_and_foreign_jobs(
    storage: SQLiteStorage,
) -> None:
    a, b, foreign = new(), new(), new(project="other")
    await storage.enqueue([a, b, foreign])
    got = await storage.get_jobs([b.id, uuid7(), foreign.id, a.id], "default")
    assert [j.id for j in got] == [b.id, a.id]
    assert await storage.get_jobs([a.id], "nobody") == []


# ---------------------------------------------------------------------------------------------
# Queues, workers, history
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_queue_stats_count_every_status_per_queue(storage: SQLiteStorage) -> None:
    await storage.set_queue_paused("default", "empty", True)
    jobs = [new(queue="work") for _ in range(3)]
    await storage.enqueue(jobs)
    await storage.cancel([jobs[0].id], "default")
    await storage.enqueue([new(queue="elsewhere", project="other")])
    stats = await storage.queue_stats("default")
    assert [(s.queue, s.paused) for s in stats] == [("empty", True), ("work", False)]
    assert stats[0].counts == dict.fromkeys(JobStatus, 0)
    assert stats[1].counts == {
        **dict.fromkeys(JobStatus, 0),
        JobStatus.PENDING: 2,
        JobStatus.CANCELLED: 1,
    }
    assert await storage.queue_stats("nobody") == []


@pytest.mark.anyio
async def test_pausing_a_missing_queue_creates_it(storage: SQLiteStorage) -> None:
    queue = await storage.set_queue_paused("acme", "reports", True)
    assert (queue.project, queue.name, queue.paused) == ("acme", "reports", True)
    listed = await storage.list_queues("acme")
    assert [(q.name, q.paused) for q in listed] == [("reports", True)]
    await storage.set_queue_paused("acme", "reports", False)
    assert not (await storage.list_queues("acme"))[0].paused


@pytest.mark.anyio
async def test_registering_a_worker_again_replaces_its_assignments(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    await storage.register_worker(worker_info(WORKER, ("a", 1), ("b", 3)))
    (worker,) = await storage.list_workers("default")
    assert [(q.queue, q.weight) for q in worker.queues] == [("a", 1), ("b", 3)]
    assert (worker.status, worker.started_at, worker.pid) == (
        WorkerStatus.RUNNING,
        clock.now(),
        123,
    )
    await storage.register_worker(worker_info(WORKER, ("c", 2)))
    (worker,) = await storage.list_workers("default")
    assert [(q.queue, q.weight, q.worker_id) for q in worker.queues] == [("c", 2, WORKER)]
    await storage.set_worker_status(WORKER, WorkerStatus.STOPPED)
    (worker,) = await storage.list_workers("default")
    assert worker.status is WorkerStatus.STOPPED
    assert await storage.list_workers("other") == []
    with pytest.raises(ConfigurationError):
        await storage.register_worker(worker_info(WORKER, ("a", -1)))


@pytest.mark.anyio
async def test_logs_are_kept_oldest_first_and_dropped_for_unknown_jobs(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    (job,) = await storage.enqueue([new()])
    (claimed,) = await claim(storage)

    def line(message: str, seconds: float, job_id: uuid.UUID = job.id) -> ExecutionLog:
        return ExecutionLog(
            execution_id=claimed.execution_id,
            job_id=job_id,
            at=clock.now() + dt.timedelta(seconds=seconds),
            level="info",
            message=message,
            fields={"n": seconds, "odd": object()} if message == "odd" else {"n": seconds},
        )

    await storage.add_logs([line("second", 2), line("first", 1), line("lost", 0, uuid7())])
    await storage.add_logs([line("odd", 3)])
    logs = await storage.list_logs(job.id)
    assert [entry.message for entry in logs] == ["first", "second", "odd"]
    assert logs[0].fields == {"n": 1}
    assert logs[0].execution_id == claimed.execution_id
    assert logs[2].fields["odd"].startswith("<object object")


# ---------------------------------------------------------------------------------------------
# Projects
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_of_another_project_is_invisible(storage: SQLiteStorage) -> None:
    (job,) = await storage.enqueue([new(project="tenant-a")])
    assert await storage.get_jobs([job.id], "default") == []
    assert await all_jobs(storage) == []
    assert await storage.cancel([job.id], "default") == []
    replayed = await storage.replay(JobFilter(ids=frozenset({job.id})))
    assert (replayed.replayed, replayed.skipped) == ((), ())
    assert await storage.purge(JobFilter(ids=frozenset({job.id}))) == 0
    assert await storage.queue_stats("default") == []
    assert [j.id for j in await all_jobs(storage, "tenant-a")] == [job.id]


# ---------------------------------------------------------------------------------------------
# Wake-ups
# ---------------------------------------------------------------------------------------------


async def timed_wait(storage: SQLiteStorage, queues: Sequence[str], timeout: float) -> float:
    start = time.monotonic()
    await storage.wait_for_jobs(queues, timeout)
    return time.monotonic() - start


@pytest.mark.anyio
async def test_wait_returns_quickly_after_a_local_enqueue(db_path: pathlib.Path) -> None:
    async with SQLiteStorage(file_url(db_path, "poll_interval=5")) as storage:
        elapsed: list[float] = []
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                elapsed.append(await timed_wait(storage, ["default"], 20))

            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            await storage.enqueue([new()])
        assert elapsed[0] < 2  # far below both the timeout and the poll interval


@pytest.mark.anyio
async def test_wait_returns_after_the_timeout_when_nothing_happens(
    storage: SQLiteStorage,
) -> None:
    elapsed = await timed_wait(storage, ["default"], 0.1)
    assert 0.09 <= elapsed < 5
    assert await timed_wait(storage, ["default"], 0) < 1


@pytest.mark.anyio
async def test_wait_wakes_for_an_enqueue_from_another_thread_and_event_loop(
    db_path: pathlib.Path, anyio_backend: str
) -> None:
    url = file_url(db_path, "poll_interval=5")

    async def enqueue_elsewhere() -> None:
        async with SQLiteStorage(url) as other:
            await other.enqueue([new()])

    async with SQLiteStorage(url) as storage:
        elapsed: list[float] = []
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                elapsed.append(await timed_wait(storage, [], 20))

            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            other_backend = "trio" if anyio_backend == "asyncio" else "asyncio"
            thread = threading.Thread(
                target=anyio.run, args=(enqueue_elsewhere,), kwargs={"backend": other_backend}
            )
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
        assert elapsed[0] < 2


@pytest.mark.anyio
async def test_wait_notices_a_commit_by_another_process(db_path: pathlib.Path) -> None:
    async with SQLiteStorage(file_url(db_path, "poll_interval=0.01")) as storage:
        elapsed: list[float] = []
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                elapsed.append(await timed_wait(storage, ["default"], 20))

            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            # A bare connection stands for another process: no in-process signal is sent.
            conn = sqlite3.connect(db_path, isolation_level=None)
            conn.execute("UPDATE job_queues SET paused = paused")
            conn.execute(
                "INSERT INTO job_queues (project_id, name, created_at) "
                "SELECT id, 'x', 0 FROM projects WHERE slug = 'default'"
            )
            conn.close()
        assert elapsed[0] < 2


# ---------------------------------------------------------------------------------------------
# Several processes on one file
# ---------------------------------------------------------------------------------------------


def claim_until_empty(url: str, out: str, backend: str, start: Any) -> None:
    """Run in a child process: claim and complete in small batches until nothing is left."""

    async def main() -> None:
        worker = uuid7()
        got: list[str] = []
        async with SQLiteStorage(url) as storage:
            await anyio.to_thread.run_sync(start.wait)  # every process starts claiming together
            while True:
                claimed = await storage.claim(claim_request(limit=7, worker=worker))
                if not claimed:
                    break
                got.extend(str(c.job.id) for c in claimed)
                await storage.complete(
                    [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in claimed]
                )
        await anyio.Path(out).write_text(json.dumps(got))

    anyio.run(main, backend=backend)


@pytest.mark.slow
def test_two_processes_never_claim_the_same_job(tmp_path: pathlib.Path) -> None:
    url = file_url(tmp_path / "shared.db")

    async def setup() -> list[str]:
        async with SQLiteStorage(url) as storage:
            jobs = await storage.enqueue([new() for _ in range(1500)])
        return [str(j.id) for j in jobs]

    expected = anyio.run(setup)
    context = multiprocessing.get_context("spawn")
    outputs = [tmp_path / f"claimed-{i}.json" for i in range(3)]
    start = context.Barrier(len(outputs), timeout=60)
    processes = [
        context.Process(
            target=claim_until_empty,
            args=(url, str(out), "trio" if i % 2 else "asyncio", start),
        )
        for i, out in enumerate(outputs)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
        assert process.exitcode == 0
    claimed = [json.loads(out.read_text()) for out in outputs]
    union = [job_id for part in claimed for job_id in part]
    assert len(union) == len(set(union)), "a job was claimed twice"
    assert set(union) == set(expected)
    assert sum(1 for part in claimed if part) >= 2, "only one process got any work"

    async def check() -> None:
        async with SQLiteStorage(url) as storage:
            (stats,) = await storage.queue_stats("default")
            assert stats.counts[JobStatus.SUCCEEDED] == len(expected)

    anyio.run(check)
    assert os.path.exists(tmp_path / "shared.db")


# ---------------------------------------------------------------------------------------------
# The hot path's one-statement claims and reports
# ---------------------------------------------------------------------------------------------


def test_open_refuses_a_sqlite_without_returning(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")

    async def main() -> None:
        storage = SQLiteStorage(file_url(tmp_path / "old.db"))
        with pytest.raises(ConfigurationError, match=r"SQLite 3\.35\.0 or newer.*3\.34\.1"):
            await storage.open()

    anyio.run(main)
    assert not (tmp_path / "old.db").exists()


@pytest.mark.anyio
async def test_a_claimed_job_is_the_stored_job_field_for_field(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    parent = new()
    await storage.enqueue([parent])
    await run_to_success(storage, parent.id)
    rich = new(
        args=(1, "two", [3, {"four": 4.5}], None, True),
        kwargs={"k": [1, 2], "s": "é😀", "n": None},
        priority=7,
        max_attempts=3,
        timeout=2.5,
        depends_on=(parent.id,),
        key="the-key",
        headers={"trace": "abc"},
        scheduled_for=clock.now() - dt.timedelta(seconds=5),
    )
    plain = new(queue="other")
    await storage.enqueue([rich, plain])
    (first,) = await claim(storage)
    retried = RetryRequest(
        job_id=rich.id, execution_id=first.execution_id, run_at=clock.now(), error=BOOM
    )
    assert (await storage.retry([retried])).accepted == (rich.id,)
    clock.advance(1)
    request = ClaimRequest(
        worker_id=WORKER,
        shares=(QueueShare(name="default", limit=1), QueueShare(name="other", limit=0)),
        limit=5,
        lease=LEASE,
    )
    claimed = await storage.claim(request)
    assert [c.job.id for c in claimed] == [rich.id, plain.id]  # the leftover reaches "other"
    for c in claimed:
        assert c.job == await one(storage, c.job.id)
    again = claimed[0].job
    assert (again.attempt, again.error, again.depends_on) == (2, BOOM, (parent.id,))
    executions = await storage.list_executions(rich.id)
    assert [e.id for e in executions] == [first.execution_id, claimed[0].execution_id]


@pytest.mark.anyio
async def test_a_batch_naming_a_job_twice_applies_the_first_report_only(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    a, b, c = (new(max_attempts=3) for _ in range(3))
    await storage.enqueue([a, b, c])
    held = {h.job.id: h.execution_id for h in await claim(storage)}
    later = clock.now() + dt.timedelta(minutes=1)
    retry_a = RetryRequest(job_id=a.id, execution_id=held[a.id], run_at=later, error=BOOM)
    retry_b = RetryRequest(job_id=b.id, execution_id=held[b.id], run_at=clock.now())
    ack = await storage.retry([retry_a, retry_b, retry_a])
    assert (ack.accepted, ack.rejected) == ((a.id, b.id), (a.id,))
    assert (await one(storage, a.id)).scheduled_for == later
    fail_c = Failure(job_id=c.id, execution_id=held[c.id], error=BOOM)
    ack = await storage.fail([fail_c, Failure(job_id=c.id, execution_id=uuid7(), error=BOOM)])
    assert (ack.accepted, ack.rejected) == ((c.id,), (c.id,))
    assert (await one(storage, c.id)).status is JobStatus.FAILED
