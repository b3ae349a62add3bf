"""The servers the service tests need answer real requests (in CI their absence fails)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg and redis.asyncio are asyncio-only drivers


async def test_postgres_answers_a_query(postgres_url: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(postgres_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_redis_answers_a_ping(redis_url: str) -> None:
    redis = pytest.importorskip("redis.asyncio")
    client = redis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
