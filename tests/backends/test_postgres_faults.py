"""Workers as real processes on PostgreSQL, under faults: killed with SIGKILL at random, frozen
with SIGSTOP past their lease, and the database server restarted under them. Nothing is lost
and no job succeeds twice.

The restart tests restart the server, which disturbs everything else using it: they run only
when ``TASKFORGE_TEST_POSTGRES_RESTART`` holds the command that restarts it, with ``{mode}``
for the shutdown mode, e.g.
``pg_ctlcluster --skip-systemctl-redirect 15 main restart -m {mode}``.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shlex
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import asyncpg
import pytest
from pg_databases import new_database

from taskforge_backends.postgres import PostgresStorage
from taskforge_core.ids import uuid7
from taskforge_core.models import NewJob

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    # Real processes on a shared 2-core machine: the waits below are generous so that a slow
    # run is not mistaken for a lost job; what is checked does not depend on speed.
    pytest.mark.timeout(400),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SCRIPT = pathlib.Path(__file__).with_name("postgres_worker.py")
RESTART_ENV = "TASKFORGE_TEST_POSTGRES_RESTART"


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    """A migrated database of each test's own, dropped at the end."""
    with new_database(postgres_url) as database:
        yield database


@asynccontextmanager
async def worker_process(url: str, concurrency: int = 16) -> AsyncIterator[anyio.abc.Process]:
    """A worker subprocess; killed on exit if still running."""
    command = [sys.executable, str(SCRIPT), url, "--concurrency", str(concurrency)]
    async with await anyio.open_process(command, stderr=None) as process:
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()


async def stats_of(process: anyio.abc.Process, timeout: float = 40) -> dict[str, Any]:
    """Ask the worker to drain (SIGTERM), wait for it to exit cleanly, return its stats."""
    assert process.stdout is not None
    process.send_signal(signal.SIGTERM)
    output = b""
    with anyio.fail_after(timeout):
        async for chunk in process.stdout:
            output += chunk
        assert await process.wait() == 0
    return dict(json.loads(output.decode().strip().splitlines()[-1]))


async def query(url: str, sql: str, *args: Any) -> list[Any]:
    """Run one query on a new connection, waiting for the server if it is restarting."""
    with anyio.fail_after(60):
        while True:
            try:
                conn = await asyncpg.connect(url, timeout=5)
            except (OSError, asyncpg.PostgresError):
                await anyio.sleep(0.2)
                continue
            try:
                return list(await conn.fetch(sql, *args))
            except (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError):
                await anyio.sleep(0.2)
            finally:
                await conn.close()


async def counts(url: str) -> dict[str, int]:
    rows = await query(url, "SELECT status::text, count(*) FROM taskforge.jobs GROUP BY 1")
    return {row[0]: row[1] for row in rows}


async def wait_for_status(url: str, status: str, at_least: int, timeout: float) -> None:
    """Poll the database (another process changes it: there is nothing to wait on here)."""
    with anyio.fail_after(timeout):
        while True:
            if (await counts(url)).get(status, 0) >= at_least:
                return
            await anyio.sleep(0.2)


async def jobs_succeeded_twice(url: str) -> list[uuid.UUID]:
    rows = await query(
        url,
        "SELECT job_id FROM taskforge.job_executions WHERE status = 'succeeded' "
        "GROUP BY job_id HAVING count(*) > 1",
    )
    return [row[0] for row in rows]


async def enqueue(url: str, count: int, seconds: float) -> list[uuid.UUID]:
    jobs = [
        NewJob(id=uuid7(), task="fault.work", args=(seconds,), max_attempts=20)
        for _ in range(count)
    ]
    async with PostgresStorage(url) as storage:
        for start in range(0, count, 1000):
            await storage.enqueue(jobs[start : start + 1000])
    return [job.id for job in jobs]


# ---------------------------------------------------------------------------------------------
# Workers killed and frozen
# ---------------------------------------------------------------------------------------------


async def test_workers_killed_at_random_finish_every_job_exactly_once(url: str) -> None:
    total = 10_000
    await enqueue(url, total, 0.002)
    rng = random.Random(7)
    async with (
        worker_process(url) as w1,
        worker_process(url) as w2,
        worker_process(url) as w3,
        worker_process(url) as w4,
    ):
        workers = [w1, w2, w3, w4]
        replacements: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def chaos() -> None:
                for _ in range(6):
                    await anyio.sleep(rng.uniform(0.5, 1.5))
                    index = rng.randrange(len(workers))
                    workers[index].kill()
                    await workers[index].wait()
                    fresh = await tg.start(keep, url)
                    replacements.append(fresh)
                    workers[index] = fresh

            async def keep(url: str, *, task_status: Any) -> None:
                async with worker_process(url) as process:
                    task_status.started(process)
                    with anyio.CancelScope(shield=True):
                        await process.wait()

            await chaos()
            await wait_for_status(url, "succeeded", total, timeout=240)
            for process in workers:
                stats = await stats_of(process)
                assert stats["failed"] == 0
        assert await counts(url) == {"succeeded": total}
        assert await jobs_succeeded_twice(url) == []
        lost = await query(
            url, "SELECT count(*) FROM taskforge.job_executions WHERE status = 'lost'"
        )
        assert lost[0][0] > 0, "no kill hit a worker holding jobs: the test proved nothing"


async def test_a_frozen_worker_is_superseded_and_its_late_report_changes_nothing(
    url: str,
) -> None:
    async with worker_process(url, concurrency=4) as frozen:
        ids = await enqueue(url, 4, 1.5)
        await wait_for_status(url, "processing", 4, timeout=20)
        frozen.send_signal(signal.SIGSTOP)
        try:
            async with worker_process(url, concurrency=4) as rescuer:
                # The frozen worker's leases (2 s) expire; the rescuer reclaims and reruns.
                await wait_for_status(url, "succeeded", 4, timeout=90)
                frozen.send_signal(signal.SIGCONT)
                await anyio.sleep(3)  # the frozen worker wakes and reports, too late
                late = await stats_of(frozen)
                await stats_of(rescuer)
        finally:
            if frozen.returncode is None:
                frozen.send_signal(signal.SIGCONT)
        assert late["succeeded"] == 0
        assert late["lost"] == 4
        rows = await query(
            url,
            "SELECT j.id, j.status::text, j.result::text, "
            "array_agg(e.status::text ORDER BY e.started_at) AS attempts "
            "FROM taskforge.jobs j JOIN taskforge.job_executions e ON e.job_id = j.id "
            "GROUP BY j.id ORDER BY j.id",
        )
        assert [row["id"] for row in rows] == sorted(ids)
        for row in rows:
            assert row["status"] == "succeeded"
            assert json.loads(row["result"]) == rescuer.pid
            assert list(row["attempts"]) == ["lost", "succeeded"]


# ---------------------------------------------------------------------------------------------
# The database server restarted under the workers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_restart_loses_no_job_and_workers_carry_on(
    url: str, mode: str, tmp_path: pathlib.Path
) -> None:
    restart = os.environ.get(RESTART_ENV)
    if not restart:
        pytest.skip(f"set {RESTART_ENV} to the command that restarts the server (with {{mode}})")
    await enqueue(url, 2000, 0.005)
    returned = tmp_path / "enqueued.txt"
    enqueuer = [sys.executable, str(SCRIPT), url, "--enqueue", str(returned), "--seconds", "8"]
    started = "SELECT pg_postmaster_start_time()"
    before = (await query(url, started))[0][0]
    async with worker_process(url) as w1, worker_process(url) as w2:
        # Both workers registered and running jobs before anything else happens (a worker
        # that is still starting when the server goes away exits: see the report).
        with anyio.fail_after(30):
            while True:
                rows = await query(
                    url, "SELECT count(*) FROM taskforge.workers WHERE status = 'running'"
                )
                if rows[0][0] >= 2:
                    break
                await anyio.sleep(0.1)
        await wait_for_status(url, "succeeded", 1, timeout=30)
        async with await anyio.open_process(enqueuer, stderr=None) as producer:
            with anyio.fail_after(30):  # restart in the middle of the enqueues
                while True:
                    if returned.exists() and len(returned.read_text().split()) >= 50:
                        break
                    await anyio.sleep(0.05)
            await anyio.run_process(shlex.split(restart.format(mode=mode)))
            assert (await query(url, started))[0][0] > before, "the server did not restart"
            with anyio.fail_after(60):
                assert await producer.wait() == 0
        ids = [uuid.UUID(line) for line in returned.read_text().split()]
        assert len(ids) > 100
        await wait_for_status(url, "succeeded", 2000 + len(ids), timeout=240)
        assert (w1.returncode, w2.returncode) == (None, None), "a worker died with the server"
        for process in (w1, w2):
            stats = await stats_of(process)
            assert stats["failed"] == 0
    rows = await query(
        url, "SELECT count(*) FROM taskforge.jobs WHERE id = ANY($1) AND status = 'succeeded'", ids
    )
    assert rows[0][0] == len(ids), "an enqueue that returned did not survive the restart"
    assert await jobs_succeeded_twice(url) == []
    assert (await counts(url)).keys() == {"succeeded"}
