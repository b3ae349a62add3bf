"""The Redis rate limiter: its keys, its script, Redis going away, several processes, workers.

The promises every limiter keeps are tested by the conformance suite
(``test_redis_ratelimit_conformance.py``); these are the Redis-specific ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import anyio
import attrs
import pytest
import redis.asyncio
from taskforge_conformance import RateLimiterConformance
from taskforge_conformance.ratelimit import assert_at_most_count_per_window, run_processes

from taskforge_backends.redis import RedisPlugin
from taskforge_backends.redis._settings import RedisSettings
from taskforge_backends.redis.ratelimit import RedisRateLimiter
from taskforge_core import RateLimit, TaskForge
from taskforge_core.ratelimit import RateLimiter, interval_us
from taskforge_core.states import JobStatus
from taskforge_core.worker import Worker

pytestmark = pytest.mark.anyio

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def limiter(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisRateLimiter]:
    limiter = RedisRateLimiter(RedisSettings(url=redis_url, prefix=redis_prefix))
    yield limiter
    await limiter.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def closed_port() -> str:
    """The URL of a port where nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


# -- the plugin ------------------------------------------------------------------------------


def test_the_plugin_answers_the_hook_before_the_in_process_limiter(
    redis_plugin: RedisPlugin, tmp_path: pathlib.Path
) -> None:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", plugins=[redis_plugin])
    limiter = app.plugins.hook.taskforge_rate_limiter(app=app)
    assert isinstance(limiter, RedisRateLimiter)
    assert isinstance(limiter, RateLimiter)
    assert limiter.settings == redis_plugin.settings


def test_loading_the_plugin_does_not_import_redis() -> None:
    code = (
        "import sys, taskforge_backends.redis.plugin, taskforge_core;"
        "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if 'redis' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- keys and script -------------------------------------------------------------------------


async def test_a_key_holds_integer_microseconds_and_expires_once_it_carries_no_information(
    limiter: RedisRateLimiter, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    limit = RateLimit(count=3, period=0.5)  # T = 166,667 µs: not a whole millisecond
    answer = await limiter.acquire("task:p:q:t", limit)
    assert answer.allowed
    assert answer.at is not None
    stored = await raw.get(f"{redis_prefix}:ratelimit:task:p:q:t")
    assert stored is not None
    tat = int(stored)  # an integer, not a float
    now_us = (answer.at - _EPOCH) // dt.timedelta(microseconds=1)
    assert tat == now_us + interval_us(limit) == now_us + 166_667
    ttl = await raw.pttl(f"{redis_prefix}:ratelimit:task:p:q:t")
    assert 0 < ttl <= math.ceil(166_667 / 1000)  # PX 167: gone soon after the TAT passed
    await anyio.sleep(0.25)
    assert await raw.exists(f"{redis_prefix}:ratelimit:task:p:q:t") == 0


async def test_a_refusal_writes_nothing(
    limiter: RedisRateLimiter, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    slow = RateLimit(count=1, period=60.0)
    assert (await limiter.acquire("busy", slow)).allowed
    refused = await limiter.acquire_all([("fresh", slow), ("busy", slow)])
    assert not refused.allowed
    assert refused.key == "busy"
    assert await raw.exists(f"{redis_prefix}:ratelimit:fresh") == 0


async def test_decisions_use_the_time_of_redis(
    limiter: RedisRateLimiter, raw: redis.asyncio.Redis
) -> None:
    before_s, before_us = await raw.time()
    answer = await limiter.acquire("k", RateLimit.parse("1/s"))
    after_s, after_us = await raw.time()
    assert answer.at is not None
    at = (answer.at - _EPOCH) // dt.timedelta(microseconds=1)
    assert before_s * 1_000_000 + before_us <= at <= after_s * 1_000_000 + after_us


async def test_the_script_is_loaded_again_when_redis_has_lost_it(
    limiter: RedisRateLimiter, raw: redis.asyncio.Redis
) -> None:
    # A script text no Redis has seen (a unique comment), as after a restart or SCRIPT FLUSH,
    # without flushing the scripts of the other tests sharing the server.
    limiter.script += f"\n-- {uuid.uuid4().hex}\n"
    assert await raw.script_exists(limiter.sha) == [False]
    assert (await limiter.acquire("k", RateLimit.parse("1/s"))).allowed
    assert await raw.script_exists(limiter.sha) == [True]
    assert not (await limiter.acquire("k", RateLimit.parse("1/s"))).allowed


# -- Redis unreachable -----------------------------------------------------------------------


async def test_unreachable_redis_admits_fail_open_limits_and_refuses_the_others(
    closed_port: str, redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RedisSettings(url=closed_port, prefix=redis_prefix)
    limiter = RedisRateLimiter(settings, unavailable_retry=2.5)
    open_, closed = RateLimit.parse("10/s", fail_open=True), RateLimit.parse("10/s")
    try:
        with caplog.at_level(logging.INFO, logger="taskforge.redis.ratelimit"):
            assert (await limiter.acquire("a", open_)).allowed
            refused = await limiter.acquire("b", closed)
            assert (refused.allowed, refused.retry_after, refused.key) == (False, 2.5, "b")
            mixed = await limiter.acquire_all([("a", open_), ("b", closed)])
            assert (mixed.allowed, mixed.key) == (False, "b")
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1  # one line per outage, not per job
            assert "unreachable" in warnings[0].getMessage()
            # Redis is back (here: the limiter now points at a live server).
            await limiter.aclose()
            limiter.settings = attrs.evolve(settings, url=redis_url)
            assert (await limiter.acquire("b", closed)).allowed
            assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await limiter.aclose()


async def test_a_redis_that_never_answers_times_out_instead_of_holding_the_worker(
    redis_prefix: str,
) -> None:
    with socket.socket() as server:  # accepts connections, never replies
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        limiter = RedisRateLimiter(RedisSettings(url=url, prefix=redis_prefix), timeout=0.2)
        try:
            started = time.monotonic()
            answer = await limiter.acquire("k", RateLimit.parse("5/s"))
            assert not answer.allowed  # fails closed
            assert time.monotonic() - started < 2
        finally:
            await limiter.aclose()


# -- several processes -----------------------------------------------------------------------


class RedisLimiterSuite(RateLimiterConformance):
    """The factory the child processes build their limiters with (not collected by pytest)."""

    async def make_limiter(self, namespace: str) -> RateLimiter:
        import os

        url = os.environ.get("TASKFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        return RedisRateLimiter(RedisSettings(url=url, prefix=namespace))


@pytest.mark.slow
def test_four_processes_hammering_one_limit_admit_within_one_of_it_per_window(
    redis_prefix: str, tmp_path: pathlib.Path
) -> None:
    """4 processes x 3 callers on one 20/s key for 4 s: no window of 1 s holds more than 20
    admissions, and each full second from the first admission holds at least 19.

    Why 20/s and not more: with zero burst tolerance every admission lands a little after its
    slot (the time for the next call to reach Redis), and the slot after it starts from there,
    so ``count`` slots of a window lose ``count * lag`` seconds. Measured on a loaded 2-core
    machine the lag is 0.2 ms typically and 0.3-0.5 ms on average: about 1 admission in 2 s
    lost at 20/s, but 1 to 3 in a second at 50/s -- a test at 50/s would measure the machine.
    """
    limit = RateLimit.parse("20/s")
    seconds = 4.0
    # Over-admission is checked on every run. Under-admission depends on how promptly a loaded
    # machine schedules the callers, so a run short of the lower bound gets one more try.
    for attempt in (1, 2):
        times = sorted(
            run_processes(
                RedisLimiterSuite, redis_prefix, tmp_path, limit, processes=4, seconds=seconds
            )
        )
        assert_at_most_count_per_window(times, limit)
        first = times[0]
        per_second = [
            sum(first + n * 1_000_000 <= t < first + (n + 1) * 1_000_000 for t in times)
            for n in range(int(seconds) - 1)  # the last second may be cut by the deadline
        ]
        print(f"admissions per second at {limit}, run {attempt}: {per_second}")  # shown with -s
        if all(limit.count - 1 <= n <= limit.count for n in per_second):
            return
    raise AssertionError(f"admissions per second fell short of {limit.count - 1}: {per_second}")


# -- workers ---------------------------------------------------------------------------------


async def test_workers_sharing_a_redis_limit_run_at_the_limit_and_fail_nothing(
    redis_plugin: RedisPlugin, tmp_path: pathlib.Path
) -> None:
    starts: list[float] = []
    async with TaskForge(f"sqlite:///{tmp_path}/jobs.db", plugins=[redis_plugin]) as app:

        @app.task(name="limited", rate_limit="20/s")
        async def limited(n: int) -> int:
            starts.append(time.monotonic())
            return n

        handles = await limited.enqueue_many([(n,) for n in range(20)])
        workers = [Worker(app, poll_interval=0.05, concurrency=5) for _ in range(2)]
        stats = []
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for worker in workers:

                    async def run(worker: Worker = worker) -> None:
                        stats.append(await worker.run(stop_when_idle=True))

                    tg.start_soon(run)
        assert [await h.wait(5) for h in handles] == list(range(20))
    assert sum(s.failed for s in stats) == 0
    assert sum(s.succeeded for s in stats) == 20
    assert sum(s.deferred for s in stats) > 0
    # 20 starts at one per 50 ms, shared by the two workers: 19 intervals, 0.95 s at least
    # (less the jitter between an admission and its handler starting).
    assert 0.9 <= max(starts) - min(starts) < 3.0


async def test_with_redis_unreachable_fail_open_jobs_run_and_fail_closed_jobs_wait_unlost(
    closed_port: str, redis_url: str, redis_prefix: str, tmp_path: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"

    def declare(app: TaskForge) -> tuple[object, object]:
        @app.task(name="lenient", rate_limit=RateLimit.parse("100/s", fail_open=True))
        async def lenient(n: int) -> int:
            return n

        @app.task(name="strict", rate_limit="100/s")
        async def strict(n: int) -> int:
            return n

        return lenient, strict

    down = TaskForge(url, plugins=[RedisPlugin(closed_port, prefix=redis_prefix)])
    async with down:
        lenient, strict = declare(down)
        open_jobs = await lenient.enqueue_many([(n,) for n in range(3)])  # type: ignore[attr-defined]
        closed_jobs = await strict.enqueue_many([(n,) for n in range(3)])  # type: ignore[attr-defined]
        worker = Worker(down, poll_interval=0.05)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await anyio.sleep(1.5)  # the strict jobs keep coming back, deferred each time
            worker.drain()
        assert [await h.wait(5) for h in open_jobs] == [0, 1, 2]
        for handle in closed_jobs:  # deferred, not failed, and no attempt used
            job = await handle.refresh()
            assert job.status in (JobStatus.SCHEDULED, JobStatus.PENDING)
            assert job.attempt == 0
        assert worker.stats.failed == 0
        assert worker.stats.deferred >= 3

    # Redis is back: the deferred jobs run.
    up = TaskForge(url, plugins=[RedisPlugin(redis_url, prefix=redis_prefix)])
    async with up:
        declare(up)
        with anyio.fail_after(30):
            stats = await Worker(up, poll_interval=0.05).run(stop_when_idle=True)
        assert stats.failed == 0
        results = [(await up.get_job(h.id)).status for h in closed_jobs]
    assert results == [JobStatus.SUCCEEDED] * 3
