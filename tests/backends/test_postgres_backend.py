"""The PostgreSQL storage backend: URL handling, lifecycle, driver errors, the schema and its
migrations, the server's clock, concurrency between sessions, wake-ups, enqueue in the caller's
transaction and history partitions.

The promises of the storage protocol are checked by the conformance suite, which runs on
PostgreSQL in ``tests/conformance/test_postgres_conformance.py``; this module tests what only
PostgreSQL has.

Needs a PostgreSQL server (``TASKFORGE_TEST_POSTGRES_URL``, default the local one); the module
creates its own database and drops it at the end. asyncpg runs on asyncio only, so these tests
do too.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import pluggy
import pytest
from pg_databases import RESET, execute, new_database, with_database
from storage_calls import (
    BOOM,
    LEASE,
    all_jobs,
    claim,
    claim_request,
    new,
    run_to_failure,
    run_to_success,
    status,
    timed_wait,
    wait_while,
)

from taskforge_backends.postgres import PostgresStorage
from taskforge_backends.postgres._migrations import apply_migrations, available_migrations
from taskforge_backends.postgres._sql import parse, queries
from taskforge_backends.postgres._url import parse_url
from taskforge_core import hookspecs
from taskforge_core.backends import BackendConfig, create_storage
from taskforge_core.clock import FakeClock, SystemClock, utc
from taskforge_core.errors import (
    ConfigurationError,
    DependencyError,
    InvalidJobError,
    QueueError,
    StorageError,
    StorageUnavailableError,
)
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    ClaimRequest,
    Completion,
    ExecutionLog,
    Failure,
    NewJob,
    QueueShare,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.retention import RetentionPolicy
from taskforge_core.states import JobStatus

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

#: Every migration shipped, in order.
MIGRATIONS = [
    "0001_initial",
    "0002_jobs_without_tenancy_foreign_keys",
    "0003_job_executions_room_for_hot_updates",
]


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="module")
def database_url(postgres_url: str) -> Iterator[str]:
    """A migrated database of this module's own, dropped at the end."""
    with new_database(postgres_url) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def url(database_url: str) -> str:
    """The module's database, migrated and emptied for this test."""
    await execute(database_url, RESET)
    return database_url


@pytest.fixture
async def storage(url: str, clock: FakeClock) -> AsyncIterator[PostgresStorage]:
    async with PostgresStorage(url, BackendConfig(clock=clock)) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------
# Enqueue: what SQL adds (every storage promise is in the conformance suite)
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_priority_beyond_64_bits_is_an_invalid_job(storage: PostgresStorage) -> None:
    with pytest.raises(InvalidJobError):
        await storage.enqueue([new(), new(priority=2**70)])
    assert await all_jobs(storage) == []


@pytest.mark.anyio
@pytest.mark.parametrize("batch", [1, 3])
async def test_an_enqueue_after_the_database_was_emptied_stores_its_jobs_in_new_queues(
    storage: PostgresStorage, url: str, batch: int
) -> None:
    """The fast path uses cached queue ids; with their rows gone it must notice (jobs carry
    no foreign key to their queue) and store the jobs in queues that exist again."""
    await storage.enqueue([new(queue="mail") for _ in range(batch)])
    await execute(url, RESET)
    stored = await storage.enqueue([new(queue="mail") for _ in range(batch)])
    assert [job.id for job in await all_jobs(storage)] == sorted(
        (job.id for job in stored), reverse=True
    )
    claimed = await storage.claim(claim_request("mail"))
    assert {c.job.id for c in claimed} == {job.id for job in stored}
    queues = await storage.queue_stats("default")
    assert [(q.queue, q.counts.get(JobStatus.PROCESSING)) for q in queues] == [("mail", batch)]


@pytest.mark.anyio
async def test_an_unknown_queue_is_reported_before_a_dependency_problem(
    url: str, clock: FakeClock
) -> None:
    """As SQLite does."""
    async with PostgresStorage(url, BackendConfig(clock=clock, create_queues=False)) as storage:
        with pytest.raises(QueueError):
            await storage.enqueue([new(queue="unknown", depends_on=[uuid7()])])
        selfish = uuid7()
        with pytest.raises(QueueError):
            await storage.enqueue(
                [NewJob(id=selfish, task="t", queue="nope", depends_on=[selfish])]
            )


# ---------------------------------------------------------------------------------------------
# URL, plugin, lifecycle
# ---------------------------------------------------------------------------------------------


def test_a_query_may_include_another_piece_of_the_queries_file() -> None:
    text = "-- name: head\nSELECT 1\n-- include: tail\n\n-- name: tail\n-- the end\nFROM t;\n"
    assert parse(text)["head"] == "SELECT 1\n-- the end\nFROM t;"
    with pytest.raises(ValueError, match="'-- include: nothing' names no query"):
        parse("-- name: head\nSELECT 1\n-- include: nothing\n")


@pytest.mark.anyio
async def test_a_claim_from_one_queue_takes_its_best_jobs_whatever_the_quota(
    storage: PostgresStorage, clock: FakeClock
) -> None:
    later = new(priority=9, scheduled_for=clock.now() + dt.timedelta(hours=1))
    low, high = new(priority=1), new(priority=5)
    await storage.enqueue([low, high, later])
    one_share = ClaimRequest(
        worker_id=uuid.uuid4(),
        shares=(QueueShare(name="default", limit=1),),
        limit=5,
        lease=dt.timedelta(seconds=30),
    )
    claimed = await storage.claim(one_share)
    assert [c.job.id for c in claimed] == [high.id, low.id]  # priority order, due jobs only
    await storage.set_queue_paused("default", "default", True)
    await storage.enqueue([new()])
    assert await storage.claim(one_share) == []  # a paused queue gives nothing


async def generic_plan(url: str, statement: str, arguments: str) -> str:
    """EXPLAIN of the backend's ``statement`` as a generic plan (the plan asyncpg's prepared
    statements may get after five runs, for any arguments), run with SQL ``arguments``."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE probe AS {queries()[statement]}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({arguments})")
    finally:
        await conn.close()
    return "\n".join(row[0] for row in rows)


async def fleet_like(storage: PostgresStorage, url: str) -> None:
    """5,000 jobs, 200 of them processing, statistics taken while none was."""
    await storage.enqueue([new() for _ in range(5000)])
    await execute(url, "ANALYZE taskforge.jobs")
    await storage.claim(claim_request(limit=200))


#: A report of one job: its id and execution id, as SQL arrays.
ONE = "NULL, ARRAY[gen_random_uuid()], ARRAY[gen_random_uuid()]"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("statement", "arguments"),
    [
        ("complete", f"{ONE}, ARRAY['null']"),
        ("retry", f"{ONE}, ARRAY[interval '1s'], ARRAY[NULL::text], ARRAY[true]"),
        ("fail", f"{ONE}, ARRAY[NULL::text]"),
    ],
)
async def test_reports_find_their_jobs_by_id_whatever_else_is_processing(
    storage: PostgresStorage, url: str, statement: str, arguments: str
) -> None:
    """A fleet keeps many jobs processing: a report must look up its own jobs, not scan every
    processing job (which a generic plan did when the lookup also tested the status)."""
    await fleet_like(storage, url)
    plan = await generic_plan(url, statement, arguments)
    assert "jobs_lease" not in plan
    assert "Index Cond: (id = ANY ($2))" in plan


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("statement", "arguments"),
    [("reclaim", "NULL"), ("cancel", "NULL, ARRAY[gen_random_uuid()], 'default'")],
)
async def test_reclaim_and_cancel_never_read_every_job(
    storage: PostgresStorage, url: str, statement: str, arguments: str
) -> None:
    """Every worker reclaims now and then: its generic plan once hash-joined full scans of the
    jobs table (unknown due time and expired count), and cancel's OR of two IN sub-queries
    was no index condition at all."""
    await fleet_like(storage, url)
    plan = await generic_plan(url, statement, arguments)
    assert "Seq Scan on jobs " not in plan


def test_url_parameters_set_the_pool_and_pass_libpq_ones_through() -> None:
    settings = parse_url(
        "postgresql://u:pw@db:6543/app?min_size=0&max_size=3&command_timeout=none"
        "&synchronous_commit=OFF&sslmode=prefer&poll_interval=0.5&statement_cache_size=0"
    )
    assert (settings.min_size, settings.max_size, settings.command_timeout) == (0, 3, None)
    assert (settings.synchronous_commit, settings.poll_interval) == ("off", 0.5)
    assert settings.statement_cache_size == 0
    assert settings.dsn == "postgresql://u:pw@db:6543/app?sslmode=prefer"
    defaults = parse_url("postgres:///app")
    assert (defaults.min_size, defaults.max_size, defaults.synchronous_commit) == (1, 10, None)
    assert defaults.dsn == "postgres:///app"


def test_unknown_url_parameter_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="pool_size"):
        parse_url("postgresql://db/app?pool_size=5")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db/app?max_size=0",
        "postgresql://db/app?min_size=-1",
        "postgresql://db/app?min_size=5&max_size=2",
        "postgresql://db/app?max_size=many",
        "postgresql://db/app?connect_timeout=0",
        "postgresql://db/app?synchronous_commit=sometimes",
        "postgresql://db/app?max_size=2&max_size=3",
        "postgresql://db/app#fragment",
        "sqlite:///app.db",
    ],
)
def test_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        PostgresStorage(url)


def test_the_entry_point_plugin_builds_the_backend_for_both_schemes() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for scheme in ("postgresql", "postgres"):
        storage = create_storage(pm, f"{scheme}://db/app", BackendConfig())
        assert isinstance(storage, PostgresStorage)
        assert isinstance(storage, Storage)


def test_loading_the_plugin_imports_neither_the_backend_nor_asyncpg() -> None:
    code = (
        "import sys, taskforge_backends.postgres.plugin as p\n"
        "assert p.taskforge_backends()[0].schemes == ('postgresql', 'postgres')\n"
        "print('taskforge_backends.postgres.backend' in sys.modules, 'asyncpg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_an_injected_clock_is_declared_and_the_system_clock_means_the_servers() -> None:
    faked = PostgresStorage("postgresql://db/app", BackendConfig(clock=FakeClock())).capabilities
    real = PostgresStorage("postgresql://db/app", BackendConfig(clock=SystemClock())).capabilities
    common = {
        Capability.MULTI_PROCESS,
        Capability.DURABLE,
        Capability.TRANSACTIONAL_ENQUEUE,
        Capability.LOCAL_WAKEUP,
        Capability.CROSS_PROCESS_WAKEUP,
        Capability.PRUNE,
    }
    assert faked == common | {Capability.INJECTABLE_CLOCK}
    assert real == common


def test_opening_under_trio_is_a_clear_configuration_error() -> None:
    async def main() -> None:
        await PostgresStorage("postgresql://127.0.0.1/app").open()

    with pytest.raises(ConfigurationError, match="needs asyncio; asyncpg does not run under trio"):
        anyio.run(main, backend="trio")


@pytest.mark.anyio
async def test_calls_before_open_raise_storage_error(url: str) -> None:
    """(After close, and open or close twice: the conformance suite.)"""
    storage = PostgresStorage(url)
    with pytest.raises(StorageError, match="not open"):
        await storage.enqueue([new()])
    with pytest.raises(StorageError, match="not open"):
        await storage.wait_for_jobs(["default"], 0.1)


@pytest.mark.anyio
async def test_an_unreachable_server_is_storage_unavailable_with_the_driver_error_as_cause() -> (
    None
):
    storage = PostgresStorage("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    with pytest.raises(StorageUnavailableError) as caught:
        await storage.open()
    assert caught.value.__cause__ is not None
    assert "127.0.0.1:1" in str(caught.value)


@pytest.mark.anyio
async def test_a_missing_database_is_a_storage_error(postgres_url: str) -> None:
    with pytest.raises(StorageError) as caught:
        await PostgresStorage(with_database(postgres_url, "taskforge_no_such_db")).open()
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)


@pytest.mark.anyio
async def test_url_settings_reach_every_session(url: str) -> None:
    tuned = f"{url}?min_size=2&max_size=3&synchronous_commit=off&application_name=tf-test"
    async with PostgresStorage(tuned) as storage:
        pool = storage._pool
        assert (pool.min_size, pool.max_size, pool.idle) == (2, 3, 2)
        row = await pool.run(
            lambda conn: conn.fetchrow(
                "SELECT current_setting('synchronous_commit') AS sc, "
                "current_setting('TimeZone') AS tz, current_setting('application_name') AS app, "
                "current_setting('jit') AS jit"
            )
        )
        assert dict(row) == {"sc": "off", "tz": "UTC", "app": "tf-test", "jit": "off"}


@pytest.mark.anyio
async def test_a_killed_connection_fails_at_most_one_call_then_the_pool_recovers(
    url: str, clock: FakeClock
) -> None:
    name = f"tf-kill-{secrets.token_hex(3)}"
    async with PostgresStorage(
        f"{url}?min_size=1&max_size=1&application_name={name}", BackendConfig(clock=clock)
    ) as storage:
        await storage.enqueue([new()])
        await execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{name}'",
        )
        await anyio.sleep(0.1)
        errors: list[StorageUnavailableError] = []
        for _ in range(3):
            try:
                await storage.enqueue([new()])
            except StorageUnavailableError as exc:
                errors.append(exc)
        failures = len(errors)
        assert failures <= 1
        assert all(isinstance(e.__cause__, Exception) for e in errors)
        assert len(await all_jobs(storage)) == 4 - failures


# ---------------------------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrations_are_recorded_and_applied_once(url: str) -> None:
    async with PostgresStorage(url, BackendConfig(auto_migrate=False)) as storage:
        assert await storage.migrate() == []
    conn = await asyncpg.connect(url)
    try:
        names = [r[0] for r in await conn.fetch("SELECT name FROM taskforge.schema_migrations")]
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'taskforge'"
            )
        }
        default = await conn.fetch("SELECT slug FROM taskforge.projects")
    finally:
        await conn.close()
    assert names == [name for name, _ in available_migrations()] == MIGRATIONS
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
    assert [r[0] for r in default] == ["default"]


@pytest.fixture
def fresh_databases(postgres_url: str) -> Iterator[list[str]]:
    """Two more empty databases for tests that need a blank slate."""
    with (
        new_database(postgres_url, migrate=False) as first,
        new_database(postgres_url, migrate=False) as second,
    ):
        yield [first, second]


@pytest.mark.anyio
async def test_processes_migrating_at_once_apply_each_migration_once(
    fresh_databases: list[str],
) -> None:
    url = fresh_databases[0]
    config = BackendConfig(auto_migrate=False)
    storages = [PostgresStorage(url, config) for _ in range(4)]
    results: list[list[str]] = []
    try:
        async with anyio.create_task_group() as tg:
            for storage in storages:
                await storage.open()

                async def migrate(s: PostgresStorage = storage) -> None:
                    results.append(await s.migrate())

                tg.start_soon(migrate)
    finally:
        for storage in storages:
            await storage.close()
    assert sorted(results) == [[], [], [], MIGRATIONS]


def _dump(url: str) -> str:
    parts = urlsplit(url)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    command = [
        "pg_dump",
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--schema=taskforge",
        "--exclude-table=taskforge.schema_migrations",
        f"--host={parts.hostname or '127.0.0.1'}",
        f"--port={parts.port or 5432}",
        f"--username={parts.username or 'postgres'}",
        parts.path.lstrip("/"),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    lines = [
        line
        for line in out.splitlines()
        if line.strip()
        and not line.startswith(
            ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")
        )
    ]
    return "\n".join(lines)


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
async def test_replaying_every_migration_gives_the_schema_of_schema_sql(
    fresh_databases: list[str],
) -> None:
    migrated, from_file = fresh_databases
    conn = await asyncpg.connect(migrated)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    schema = (
        pathlib.Path(__file__).parents[2] / "taskforge_backends" / "postgres" / "sql" / "schema.sql"
    ).read_text()
    await execute(from_file, schema)
    replayed, declared = await anyio.to_thread.run_sync(lambda: (_dump(migrated), _dump(from_file)))
    assert "CREATE TABLE taskforge.jobs" in replayed
    assert replayed == declared


# ---------------------------------------------------------------------------------------------
# Time: the server's clock unless one is injected
# ---------------------------------------------------------------------------------------------


class SkewedClock(SystemClock):
    """A worker whose clock runs an hour fast."""

    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(hours=1)


@pytest.mark.anyio
async def test_the_servers_clock_decides_and_a_skewed_application_clock_does_not_matter(
    url: str,
) -> None:
    async with PostgresStorage(url, BackendConfig(clock=SkewedClock())) as storage:
        conn = await asyncpg.connect(url)
        try:
            before = await conn.fetchval("SELECT now()")
            app = SkewedClock().now()
            now_job, later_job = await storage.enqueue(
                [new(), new(scheduled_for=app + dt.timedelta(seconds=60))]
            )
            after = await conn.fetchval("SELECT now()")
        finally:
            await conn.close()
        assert before <= now_job.created_at <= after
        assert now_job.status is JobStatus.PENDING
        assert later_job.status is JobStatus.SCHEDULED
        delay = later_job.scheduled_for - later_job.created_at
        assert dt.timedelta(seconds=59) < delay <= dt.timedelta(seconds=61)
        (claimed,) = await claim(storage)
        assert claimed.job.id == now_job.id
        assert claimed.job.started_at is not None
        assert claimed.lease_expires_at - claimed.job.started_at == LEASE


# ---------------------------------------------------------------------------------------------
# Concurrent sessions (each storage has its own pool, as another process would)
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sessions_claiming_at_once_never_claim_one_job_twice(
    url: str, clock: FakeClock
) -> None:
    config = BackendConfig(clock=clock)
    async with PostgresStorage(url, config) as storage:
        expected = {j.id for j in await storage.enqueue([new() for _ in range(400)])}
    claimed: list[list[uuid.UUID]] = [[] for _ in range(4)]

    async def drain(index: int) -> None:
        async with PostgresStorage(url, config) as mine:
            worker = uuid7()
            while True:
                got = await mine.claim(claim_request(limit=7, worker=worker))
                if not got:
                    return
                claimed[index].extend(c.job.id for c in got)
                ack = await mine.complete(
                    [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in got]
                )
                assert not ack.rejected

    async with anyio.create_task_group() as tg:
        for index in range(4):
            tg.start_soon(drain, index)
    union = [job_id for part in claimed for job_id in part]
    assert len(union) == len(set(union)), "a job was claimed twice"
    assert set(union) == expected
    assert sum(1 for part in claimed if part) >= 2


async def _race(*calls: Any) -> list[Any]:
    """Run the coroutine functions at once; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index)
    return results


@pytest.mark.anyio
async def test_a_child_enqueued_while_its_parent_completes_is_never_left_blocked(
    url: str, clock: FakeClock
) -> None:
    config = BackendConfig(clock=clock)
    async with PostgresStorage(url, config) as a, PostgresStorage(url, config) as b:
        for _ in range(25):
            (parent,) = await a.enqueue([new(queue="race")])
            (held,) = await a.claim(claim_request("race"))
            child = new(queue="race-children", depends_on=[parent.id])
            done = Completion(job_id=parent.id, execution_id=held.execution_id)
            await _race(lambda: a.complete([done]), lambda: b.enqueue([child]))  # noqa: B023
            assert await status(a, child.id) is JobStatus.PENDING


@pytest.mark.anyio
async def test_a_child_enqueued_while_its_parent_fails_is_cancelled(
    url: str, clock: FakeClock
) -> None:
    config = BackendConfig(clock=clock)
    async with PostgresStorage(url, config) as a, PostgresStorage(url, config) as b:
        for _ in range(15):
            (parent,) = await a.enqueue([new(queue="race")])
            (held,) = await a.claim(claim_request("race"))
            child = new(queue="race-children", depends_on=[parent.id])
            failure = Failure(job_id=parent.id, execution_id=held.execution_id, error=BOOM)
            await _race(lambda: a.fail([failure]), lambda: b.enqueue([child]))  # noqa: B023
            assert await status(a, child.id) is JobStatus.CANCELLED


@pytest.mark.anyio
async def test_two_parents_completing_at_once_release_their_child(
    url: str, clock: FakeClock
) -> None:
    config = BackendConfig(clock=clock)
    async with PostgresStorage(url, config) as a, PostgresStorage(url, config) as b:
        for _ in range(15):
            p1, p2 = new(queue="race"), new(queue="race")
            child = new(queue="race-children", depends_on=[p1.id, p2.id])
            await a.enqueue([p1, p2, child])
            held = {c.job.id: c for c in await a.claim(claim_request("race"))}
            c1 = Completion(job_id=p1.id, execution_id=held[p1.id].execution_id)
            c2 = Completion(job_id=p2.id, execution_id=held[p2.id].execution_id)
            await _race(lambda: a.complete([c1]), lambda: b.complete([c2]))  # noqa: B023
            assert await status(a, child.id) is JobStatus.PENDING


@pytest.mark.anyio
async def test_concurrent_enqueues_of_one_key_store_one_job(url: str, clock: FakeClock) -> None:
    config = BackendConfig(clock=clock)
    storages = [PostgresStorage(url, config) for _ in range(3)]
    for storage in storages:
        await storage.open()
    try:
        for round_ in range(5):
            key = f"order-{round_}"
            queue = "fresh" if round_ == 0 else "known"  # a new queue, then a cached one
            results = await _race(
                *(
                    lambda s=s: s.enqueue([new(key=key, queue=queue)])  # noqa: B023
                    for s in storages
                )
            )
            assert len({result[0].id for result in results}) == 1
        assert len(await all_jobs(storages[0])) == 5
    finally:
        for storage in storages:
            await storage.close()


@pytest.mark.anyio
async def test_a_queue_deleted_behind_the_cache_of_queue_ids_is_created_again(
    storage: PostgresStorage, url: str
) -> None:
    await storage.enqueue([new(queue="cached")])
    await storage.enqueue([new(queue="cached")])  # the fast path, from the cache
    await execute(url, RESET)
    (job,) = await storage.enqueue([new(queue="cached")])
    assert job.status is JobStatus.PENDING
    assert [q.name for q in await storage.list_queues("default")] == ["cached"]


@pytest.mark.anyio
async def test_keyed_jobs_in_a_dependency_graph_resolve_against_stored_keys(
    storage: PostgresStorage,
) -> None:
    (stored,) = await storage.enqueue([new(key="root")])
    again = new(key="root")
    fresh = new(key="leaf", depends_on=[again.id])
    third = new(depends_on=[fresh.id, again.id])
    result = await storage.enqueue([third, again, fresh])
    assert [j.id for j in result] == [third.id, stored.id, fresh.id]
    assert result[2].depends_on == (stored.id,)
    assert result[0].depends_on == (fresh.id, stored.id)
    assert [j.status for j in result] == [JobStatus.BLOCKED, JobStatus.PENDING, JobStatus.BLOCKED]
    # A cycle through a member whose key is stored is no cycle: that member is not stored.
    a, b = new(key="root"), new()
    a = NewJob(id=a.id, task="t", key="root", depends_on=[b.id])
    b = NewJob(id=b.id, task="t", depends_on=[a.id])
    assert [j.id for j in await storage.enqueue([a, b])] == [stored.id, b.id]


# ---------------------------------------------------------------------------------------------
# Wake-ups
# ---------------------------------------------------------------------------------------------


async def listening(storage: PostgresStorage) -> None:
    """Wait until the storage's LISTEN connection is up (it connects in the background)."""
    listener = storage._listener
    assert listener is not None
    with anyio.fail_after(10):
        while not listener.listening:
            await storage.wait_for_jobs([], 0.05)


@pytest.mark.anyio
async def test_wait_returns_quickly_after_a_local_enqueue(url: str) -> None:
    async with PostgresStorage(f"{url}?poll_interval=5") as storage:
        await listening(storage)

        async def act() -> None:
            await storage.enqueue([new()])

        assert await wait_while(storage, ["default"], act) < 2


@pytest.mark.anyio
async def test_wait_returns_after_the_timeout_when_nothing_happens(
    storage: PostgresStorage,
) -> None:
    await listening(storage)
    elapsed = await timed_wait(storage, ["default"], 0.3)
    assert 0.29 <= elapsed < 5  # no spurious wake-up with nothing to do


@pytest.mark.anyio
async def test_wait_ignores_jobs_for_other_queues(url: str) -> None:
    async with PostgresStorage(url) as storage, PostgresStorage(url) as other:
        await listening(storage)
        async with anyio.create_task_group() as tg:
            elapsed: list[float] = []

            async def waiter() -> None:
                elapsed.append(await timed_wait(storage, ["mine"], 1.0))

            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await other.enqueue([new(queue="theirs")])
        assert elapsed[0] >= 0.95


@pytest.mark.anyio
@pytest.mark.parametrize("batch", [1, 2])
async def test_a_queue_name_too_long_for_a_notify_payload_still_wakes_waiters(
    url: str, batch: int
) -> None:
    """NOTIFY payloads stop at 8,000 bytes; past 1,000 the payload is '*' (every waiter)."""
    long_name = "é" * 600  # 1,200 bytes
    async with (
        PostgresStorage(f"{url}?poll_interval=5") as storage,
        PostgresStorage(url) as other,
    ):
        await listening(storage)

        async def act() -> None:
            await other.enqueue([new(queue=long_name) for _ in range(batch)])

        assert await wait_while(storage, [long_name], act) < 2


@pytest.mark.anyio
async def test_wait_wakes_for_an_enqueue_by_another_process(url: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from taskforge_backends.postgres import PostgresStorage\n"
        "from taskforge_core.ids import uuid7\n"
        "from taskforge_core.models import NewJob\n"
        "async def main():\n"
        "    async with PostgresStorage(sys.argv[1]) as s:\n"
        "        await s.enqueue([NewJob(id=uuid7(), task='t', queue='remote')])\n"
        "asyncio.run(main())\n"
    )
    async with PostgresStorage(f"{url}?poll_interval=30") as storage:
        await listening(storage)
        async with anyio.create_task_group() as tg:
            woke: list[float] = []

            async def waiter() -> None:
                await storage.wait_for_jobs(["remote"], 60)
                woke.append(time.monotonic())

            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await anyio.run_process([sys.executable, "-c", code, url])
            finished = time.monotonic()
        assert woke[0] - finished < 2


@pytest.mark.anyio
async def test_wait_polls_while_the_listener_is_down_and_listens_again(url: str) -> None:
    name = f"tf-listen-{secrets.token_hex(3)}"
    async with PostgresStorage(f"{url}?poll_interval=0.3&application_name={name}") as storage:
        listener = storage._listener
        assert listener is not None
        await listening(storage)
        assert listener.listening
        await execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = '{name}' AND query ILIKE 'LISTEN%'",
        )
        with anyio.fail_after(5):
            while listener.listening:
                await storage.wait_for_jobs([], 0.05)
        # Down: a long wait returns within about poll_interval (the caller polls) ...
        assert await timed_wait(storage, ["default"], 20) < 3
        # ... and once it listens again, notifications wake waiters as before.
        await listening(storage)

        async def act() -> None:
            async with PostgresStorage(url) as other:
                await other.enqueue([new()])

        assert await wait_while(storage, ["default"], act) < 2


@pytest.mark.anyio
async def test_a_storage_listens_only_once_something_waits(url: str) -> None:
    """A process that only enqueues (a web app) must not receive every notification of the
    cluster: the LISTEN session starts at the first wait."""
    name = f"tf-lazy-{secrets.token_hex(3)}"

    async def listen_sessions() -> int:
        conn = await asyncpg.connect(url)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
                name,
            )
        finally:
            await conn.close()
        return int(count)

    async with PostgresStorage(f"{url}?application_name={name}") as storage:
        await storage.enqueue([new() for _ in range(3)])
        assert await listen_sessions() == 0
        await listening(storage)
        assert await listen_sessions() == 1


# ---------------------------------------------------------------------------------------------
# Enqueue inside the application's transaction
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_enqueue_in_the_callers_transaction_exists_only_if_it_commits(
    storage: PostgresStorage, url: str
) -> None:
    conn = await asyncpg.connect(url)
    try:
        committed, rolled_back = new(), new()
        async with conn.transaction():
            (job,) = await storage.enqueue([committed], transaction=conn)
            assert job.status is JobStatus.PENDING
            assert await storage.get_jobs([committed.id], "default") == []  # not yet visible
        assert await status(storage, committed.id) is JobStatus.PENDING
        tx = conn.transaction()
        await tx.start()
        await storage.enqueue([rolled_back], transaction=conn)
        await tx.rollback()
        assert await storage.get_jobs([rolled_back.id], "default") == []
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_a_rejected_enqueue_leaves_the_callers_transaction_usable(
    storage: PostgresStorage, url: str
) -> None:
    (existing,) = await storage.enqueue([new()])
    conn = await asyncpg.connect(url)
    try:
        kept = new()
        async with conn.transaction():
            await storage.enqueue([kept], transaction=conn)
            with pytest.raises(DependencyError):
                await storage.enqueue([new(depends_on=[uuid7()])], transaction=conn)
            with pytest.raises(InvalidJobError):
                await storage.enqueue([new(), NewJob(id=existing.id, task="t")], transaction=conn)
            assert await conn.fetchval("SELECT 1") == 1
        assert await status(storage, kept.id) is JobStatus.PENDING
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_an_enqueue_joins_a_transaction_the_caller_began_by_hand(
    storage: PostgresStorage, url: str
) -> None:
    conn = await asyncpg.connect(url)
    try:
        kept, dropped = new(), new()
        await conn.execute("BEGIN")
        await storage.enqueue([kept], transaction=conn)
        with pytest.raises(DependencyError):
            await storage.enqueue([new(depends_on=[uuid7()])], transaction=conn)
        await conn.execute("COMMIT")
        await conn.execute("BEGIN")
        await storage.enqueue([dropped], transaction=conn)
        await conn.execute("ROLLBACK")
        assert await status(storage, kept.id) is JobStatus.PENDING
        assert await storage.get_jobs([dropped.id], "default") == []
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_workers_are_woken_when_the_callers_transaction_commits(
    storage: PostgresStorage, url: str
) -> None:
    await listening(storage)
    conn = await asyncpg.connect(url)
    try:

        async def act() -> None:
            async with conn.transaction():
                await storage.enqueue([new()], transaction=conn)
                await anyio.sleep(0.5)  # nothing is sent before the commit

        assert 0.45 < await wait_while(storage, ["default"], act) < 2.5
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# History partitions and retention
# ---------------------------------------------------------------------------------------------


async def partitions(url: str, parent: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
            parent,
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


@pytest.mark.anyio
async def test_migrate_creates_daily_history_partitions_around_today(
    storage: PostgresStorage, url: str
) -> None:
    await storage.migrate()  # the clock says 2030-01-01
    days = [f"2029123{1}"] + [f"2030010{d}" for d in range(1, 9)]
    for parent in ("job_executions", "execution_logs"):
        found = await partitions(url, parent)
        assert {f"{parent}_p{day}" for day in days} <= set(found)
        assert f"{parent}_default" in found


@pytest.mark.anyio
async def test_execution_partitions_leave_room_so_finishing_an_attempt_touches_no_index(
    url: str,
) -> None:
    # A day no other test writes to, so the partition's statistics count this test alone.
    clock = FakeClock(dt.datetime(2032, 3, 3, tzinfo=utc))
    async with PostgresStorage(url, BackendConfig(clock=clock, auto_migrate=False)) as storage:
        await storage.migrate()
        conn = await asyncpg.connect(url)
        try:
            options = dict(
                await conn.fetch(
                    "SELECT c.relname, c.reloptions FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE p.relname IN ('job_executions', 'execution_logs')"
                )
            )
            assert options["job_executions_default"] == ["fillfactor=40"]
            assert options["job_executions_p20320303"] == ["fillfactor=40"]  # made by migrate
            assert options["execution_logs_p20320303"] == ["fillfactor=100"]
            # Enough attempts to fill several pages: in packed pages most updates would move.
            await storage.enqueue([new() for _ in range(300)])
            claimed = await claim(storage, limit=300)
            ack = await storage.complete(
                [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in claimed]
            )
            assert len(ack.accepted) == 300
            # Other sessions' statistics reach the view within about a second of their commit.
            query = (
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relname = 'job_executions_p20320303'"
            )
            with anyio.fail_after(20):
                while True:
                    updated, hot = await conn.fetchrow(query)
                    if updated >= 300:
                        break
                    await anyio.sleep(0.2)
        finally:
            await conn.close()
    assert (updated, hot) == (300, 300)


@pytest.mark.anyio
async def test_prune_drops_old_history_and_purges_finished_jobs_by_policy(
    storage: PostgresStorage, clock: FakeClock, url: str
) -> None:
    await storage.migrate()
    done, dead = new(), new()
    await storage.enqueue([done, dead])
    await run_to_success(storage, done.id)
    await run_to_failure(storage, dead.id)
    clock.advance(40 * 86400)
    report = await storage.prune(RetentionPolicy(history=dt.timedelta(days=30)))
    assert "job_executions_p20300101" in report.dropped
    assert "execution_logs_p20291231" in report.dropped
    assert "job_executions_p20300215" in report.created
    assert report.purged == {JobStatus.SUCCEEDED: 1, JobStatus.CANCELLED: 0}
    assert [j.id for j in await all_jobs(storage)] == [dead.id]
    assert "job_executions_p20300101" not in await partitions(url, "job_executions")
    again = await storage.prune(RetentionPolicy(history=dt.timedelta(days=30)))
    assert (again.created, again.dropped) == ((), ())


@pytest.mark.anyio
async def test_history_outside_every_partition_waits_in_the_default_one_until_it_gets_its_own(
    url: str,
) -> None:
    clock = FakeClock(dt.datetime(2031, 6, 1, tzinfo=utc))
    async with PostgresStorage(url, BackendConfig(clock=clock, auto_migrate=False)) as storage:
        (job,) = await storage.enqueue([new()])
        (held,) = await claim(storage)
        line = ExecutionLog(
            execution_id=held.execution_id,
            job_id=job.id,
            at=clock.now(),
            level="info",
            message="hi",
        )
        await storage.add_logs([line])
        conn = await asyncpg.connect(url)
        try:
            where = "SELECT tableoid::regclass::text FROM taskforge.job_executions WHERE id = $1"
            assert (
                await conn.fetchval(where, held.execution_id) == "taskforge.job_executions_default"
            )
            report = await storage.prune(RetentionPolicy(succeeded=None, cancelled=None))
            assert "job_executions_p20310601" in report.created
            assert await conn.fetchval(where, held.execution_id) == (
                "taskforge.job_executions_p20310601"
            )
        finally:
            await conn.close()
        (execution,) = await storage.list_executions(job.id)
        assert execution.id == held.execution_id
        assert [entry.message for entry in await storage.list_logs(job.id)] == ["hi"]
        ack = await storage.complete([Completion(job_id=job.id, execution_id=held.execution_id)])
        assert ack.accepted == (job.id,)


@pytest.mark.anyio
async def test_task_options_transaction_enqueues_in_the_applications_transaction(
    url: str,
) -> None:
    from taskforge_core import TaskForge

    app = TaskForge(url)

    @app.task(name="send")
    async def send(to: str) -> None: ...

    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            kept = await send.options(transaction=conn).enqueue("a@example.com")
        tx = conn.transaction()
        await tx.start()
        dropped = await send.options(transaction=conn).enqueue_many([("b@example.com",)])
        await tx.rollback()
        assert (await app.get_job(kept.id)).status is JobStatus.PENDING
        storage = await app.storage()
        assert await storage.get_jobs([dropped[0].id], app.project) == []
    finally:
        await conn.close()
        await app.close()
