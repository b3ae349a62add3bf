"""The PostgreSQL backend's connection pool, on the real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from taskforge_backends.postgres._pool import ConnectionPool, PoolClosedError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg runs on asyncio only


class Opened:
    """A ``connect`` that counts what it opened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0

    async def __call__(self) -> Any:
        self.count += 1
        return await asyncpg.connect(self.url)


@pytest.fixture
async def opened(postgres_url: str) -> Opened:
    return Opened(postgres_url)


@pytest.fixture
async def pool(opened: Opened) -> AsyncIterator[ConnectionPool]:
    made = ConnectionPool(opened, min_size=1, max_size=2, acquire_timeout=5)
    await made.open()
    yield made
    await made.close()


async def backend_pid(conn: Any) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_calls_beyond_the_size_wait_and_never_open_more(
    pool: ConnectionPool, opened: Opened
) -> None:
    pids: list[int] = []

    async def slow(conn: Any) -> None:
        pids.append(await backend_pid(conn))
        await conn.execute("SELECT pg_sleep(0.05)")

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(pool.run, slow)
    assert len(pids) == 10
    assert len(set(pids)) == opened.count == 2
    assert pool.idle == 2


async def test_a_call_that_waits_too_long_for_a_connection_times_out(opened: Opened) -> None:
    pool = ConnectionPool(opened, min_size=1, max_size=1, acquire_timeout=0.1)
    await pool.open()
    held = anyio.Event()
    release = anyio.Event()

    async def hold(conn: Any) -> None:
        held.set()
        await release.wait()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, hold)
            await held.wait()
            with pytest.raises(TimeoutError):
                await pool.run(backend_pid)
            release.set()
        assert await pool.run(backend_pid) > 0  # the held connection came back
        assert opened.count == 1
    finally:
        await pool.close()


async def test_a_failed_statement_keeps_the_connection(pool: ConnectionPool) -> None:
    first = await pool.run(backend_pid)
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await pool.run(lambda conn: conn.execute("SELEC 1"))
    assert await pool.run(backend_pid) == first


async def test_a_cancelled_call_or_an_open_transaction_discards_the_connection(
    pool: ConnectionPool, opened: Opened
) -> None:
    first = await pool.run(backend_pid)
    with anyio.move_on_after(0.1):
        await pool.run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
    second = await pool.run(backend_pid)
    assert second != first

    async def leave_open(conn: Any) -> None:
        await conn.execute("BEGIN")

    await pool.run(leave_open)
    third = await pool.run(backend_pid)
    assert third != second

    async def in_transaction(conn: Any) -> bool:
        return bool(conn.is_in_transaction())

    assert await pool.run(in_transaction) is False
    assert opened.count == 3


async def test_a_connection_killed_by_the_server_fails_one_call_then_is_replaced(
    pool: ConnectionPool, postgres_url: str
) -> None:
    pid = await pool.run(backend_pid)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.1)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await pool.run(backend_pid)
    assert await pool.run(backend_pid) != pid


async def test_close_waits_for_calls_in_flight_and_fails_waiting_ones(opened: Opened) -> None:
    pool = ConnectionPool(opened, min_size=1, max_size=1, acquire_timeout=5)
    await pool.open()
    held, release, refused = anyio.Event(), anyio.Event(), anyio.Event()
    finished: list[str] = []
    outcome: list[BaseException] = []

    async def hold(conn: Any) -> None:
        await conn.execute("SELECT 1")
        held.set()
        await release.wait()
        finished.append("held")

    async def wait_for_one() -> None:
        try:
            await pool.run(backend_pid)
        except PoolClosedError as exc:
            outcome.append(exc)
            refused.set()

    async def close() -> None:
        await pool.close()
        finished.append("closed")

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run, hold)
        await held.wait()
        tg.start_soon(wait_for_one)
        await anyio.wait_all_tasks_blocked()  # the second call waits for the only connection
        assert pool.idle == 0
        tg.start_soon(close)
        await refused.wait()
        await anyio.wait_all_tasks_blocked()
        assert finished == []  # close() is still waiting for the call in flight
        release.set()
    assert finished == ["held", "closed"]
    assert len(outcome) == 1
    with pytest.raises(PoolClosedError):
        await pool.run(backend_pid)


def test_sizes_are_checked() -> None:
    async def never() -> Any:
        raise AssertionError

    with pytest.raises(ValueError, match="min_size"):
        ConnectionPool(never, min_size=3, max_size=2, acquire_timeout=1)
