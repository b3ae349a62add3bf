"""The SQLite storage backend: URL handling, lifecycle, driver errors, wake-ups, several
processes on one file, and the SQL of the hot path.

The promises of the storage protocol are checked by the conformance suite, which runs on SQLite
in ``tests/conformance/test_sqlite_conformance.py``; this module tests what only SQLite has.
"""

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
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pluggy
import pytest
from storage_calls import (
    BOOM,
    LEASE,
    WORKER,
    all_jobs,
    claim,
    claim_request,
    new,
    one,
    run_to_success,
    timed_wait,
    wait_while,
)

from taskforge_backends.sqlite import SQLiteStorage
from taskforge_backends.sqlite import backend as sqlite_backend
from taskforge_backends.sqlite._url import parse_url
from taskforge_backends.sqlite.backend import _CLAIMABLE
from taskforge_core import hookspecs
from taskforge_core.backends import BackendConfig, create_storage
from taskforge_core.clock import FakeClock
from taskforge_core.errors import (
    ConfigurationError,
    InvalidJobError,
    StorageError,
    StorageUnavailableError,
)
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    ClaimRequest,
    Completion,
    Failure,
    QueueShare,
    RetryRequest,
)
from taskforge_core.protocols import Capability, Storage
from taskforge_core.states import JobStatus

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


@pytest.mark.anyio
async def test_storages_opened_at_once_on_a_new_file_all_open(tmp_path: pathlib.Path) -> None:
    # Workers started together race to switch a new file to WAL; SQLite refuses the losers at
    # once ("database is locked") without waiting. About one round in ten failed before the
    # backend retried the switch.
    for round_number in range(25):
        url = file_url(tmp_path / f"round-{round_number}.db")
        storages = [SQLiteStorage(url) for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for storage in storages:
                tg.start_soon(storage.open)
        for storage in storages:
            assert storage._conn is not None
            assert storage._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            await storage.close()


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
async def test_calls_before_open_raise_storage_error(db_path: pathlib.Path) -> None:
    """(After close, and open or close twice: the conformance suite.)"""
    storage = SQLiteStorage(file_url(db_path))
    with pytest.raises(StorageError, match="not open"):
        await storage.enqueue([new()])
    with pytest.raises(StorageError, match="not open"):
        await storage.wait_for_jobs(["default"], 0.1)


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
# Enqueue and claim: what SQL adds (every storage promise is in the conformance suite)
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_priority_beyond_64_bits_is_an_invalid_job(storage: SQLiteStorage) -> None:
    with pytest.raises(InvalidJobError):
        await storage.enqueue([new(), new(priority=2**70)])
    assert await all_jobs(storage) == []


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
# WAL checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_threads(path: object) -> list[threading.Thread]:
    """The checkpoint threads of the database at ``path`` alive now."""
    name = f"taskforge-sqlite-checkpoint {path}"
    return [t for t in threading.enumerate() if t.name == name]


@pytest.mark.anyio
async def test_the_wal_is_checkpointed_in_the_background_not_by_a_commit(
    db_path: pathlib.Path,
) -> None:
    """No commit here takes the WAL near the storage's own automatic threshold, so only the
    checkpoint thread can copy the log into the database file while the storage is open."""
    async with SQLiteStorage(file_url(db_path)) as storage:
        assert len(checkpoint_threads(db_path)) == 1
        await storage.enqueue([new() for _ in range(300)])
        database = anyio.Path(db_path)
        before = (await database.stat()).st_size
        with anyio.fail_after(10):
            while True:
                if (await database.stat()).st_size > before:
                    break
                await anyio.sleep(0.05)
    assert checkpoint_threads(db_path) == []  # stopped by close()


@pytest.mark.anyio
async def test_an_idle_database_is_not_checkpointed_again(db_path: pathlib.Path) -> None:
    """Once a checkpoint has copied the whole log, the thread waits for the next commit
    instead of checkpointing an idle database five times a second."""
    async with SQLiteStorage(file_url(db_path)) as storage:
        checkpointer = storage._checkpointer
        assert checkpointer is not None

        async def checkpointed_beyond(count: int) -> None:
            with anyio.fail_after(10):
                while True:
                    if checkpointer.checkpoints > count:
                        return
                    await anyio.sleep(0.05)

        await storage.enqueue([new()])
        await checkpointed_beyond(0)
        await anyio.sleep(0.5)  # the checkpoint of that commit is done
        idle = checkpointer.checkpoints
        await anyio.sleep(1.2)  # six turns of the thread, no commit
        assert checkpointer.checkpoints == idle
        await storage.enqueue([new()])
        await checkpointed_beyond(idle)


@pytest.mark.anyio
async def test_an_in_memory_storage_has_no_checkpoint_thread() -> None:
    async with SQLiteStorage("sqlite:///:memory:") as storage:
        await storage.enqueue([new()])
        assert checkpoint_threads(":memory:") == []


# ---------------------------------------------------------------------------------------------
# Wake-ups
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_returns_quickly_after_a_local_enqueue(db_path: pathlib.Path) -> None:
    async with SQLiteStorage(file_url(db_path, "poll_interval=5")) as storage:

        async def act() -> None:
            await storage.enqueue([new()])

        # Far below both the timeout and the poll interval.
        assert await wait_while(storage, ["default"], act) < 2


@pytest.mark.anyio
async def test_wait_returns_after_the_timeout_when_nothing_happens(
    storage: SQLiteStorage,
) -> None:
    elapsed = await timed_wait(storage, ["default"], 0.1)
    assert 0.09 <= elapsed < 5  # no spurious wake-up with nothing to do


@pytest.mark.anyio
async def test_wait_wakes_for_an_enqueue_from_another_thread_and_event_loop(
    db_path: pathlib.Path, anyio_backend: str
) -> None:
    url = file_url(db_path, "poll_interval=5")

    async def enqueue_elsewhere() -> None:
        async with SQLiteStorage(url) as other:
            await other.enqueue([new()])

    async with SQLiteStorage(url) as storage:

        async def act() -> None:
            other_backend = "trio" if anyio_backend == "asyncio" else "asyncio"
            thread = threading.Thread(
                target=anyio.run, args=(enqueue_elsewhere,), kwargs={"backend": other_backend}
            )
            thread.start()
            await anyio.to_thread.run_sync(thread.join)

        assert await wait_while(storage, [], act) < 2


def commit_elsewhere(db_path: pathlib.Path) -> None:
    """A bare connection stands for another process: no in-process signal is sent."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "INSERT INTO job_queues (project_id, name, created_at) "
        "SELECT id, 'x', 0 FROM projects WHERE slug = 'default'"
    )
    conn.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("watch", "query"),
    [
        pytest.param(
            True,
            "poll_interval=30",
            id="inotify",
            marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
        ),
        pytest.param(False, "poll_interval=0.01", id="polling"),
    ],
)
async def test_wait_notices_a_commit_by_another_process(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, watch: bool, query: str
) -> None:
    """On Linux an inotify watch on the WAL wakes the waiter (the poll interval here is far
    longer than the test); elsewhere, or without inotify, ``PRAGMA data_version`` polling."""
    if not watch:
        monkeypatch.setattr(sqlite_backend, "open_wal_watch", lambda path: None)
    async with SQLiteStorage(file_url(db_path, query)) as storage:

        async def act() -> None:
            commit_elsewhere(db_path)

        assert await wait_while(storage, ["default"], act) < 2


@pytest.mark.anyio
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux only")
async def test_a_commit_during_a_settle_pause_ends_the_pause(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch pauses to let a commit it heard become visible; a write that committed
    nothing new (this process's own commit, heard late) starts such a pause too. Another
    process's commit during the pause must be noticed at its write, not at the pause's end
    (a 5 ms pause was most of the cross-process wake-up time). Here the pause is 30 s."""
    monkeypatch.setattr(sqlite_backend, "_SETTLE_DELAYS", (0.0, 30.0))
    async with SQLiteStorage(file_url(db_path, "poll_interval=60")) as storage:
        await timed_wait(storage, ["default"], 0.01)  # the watch exists from here on
        await storage.enqueue([new()])  # its write is heard by the next wait, which pauses

        async def act() -> None:
            commit_elsewhere(db_path)

        assert await wait_while(storage, ["default"], act) < 10


@pytest.mark.anyio
async def test_an_idle_waiter_is_not_woken_without_a_commit(db_path: pathlib.Path) -> None:
    """Reads by other connections do not write the WAL: the inotify watch stays quiet."""
    async with SQLiteStorage(file_url(db_path, "poll_interval=30")) as storage:
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            async with anyio.create_task_group() as tg:
                elapsed: list[float] = []

                async def waiter() -> None:
                    elapsed.append(await timed_wait(storage, ["default"], 0.5))

                tg.start_soon(waiter)
                for _ in range(5):
                    await anyio.sleep(0.02)
                    conn.execute("SELECT count(*) FROM jobs").fetchone()
            assert elapsed[0] >= 0.45
        finally:
            conn.close()


@pytest.mark.anyio
async def test_closing_the_storage_ends_a_wait_at_once(db_path: pathlib.Path) -> None:
    storage = SQLiteStorage(file_url(db_path, "poll_interval=30"))
    await storage.open()
    assert await wait_while(storage, ["default"], storage.close) < 2


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
