"""The in-process GCRA rate limiter, its protocol and its default plugin hook."""

from __future__ import annotations

import datetime as dt
import math
import threading
import types
from fractions import Fraction

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskforge_core import ConfigurationError, FakeClock, RateLimit, hookimpl
from taskforge_core.plugins import create_plugin_manager
from taskforge_core.ratelimit import (
    Admission,
    InProcessRateLimiter,
    RateLimiter,
    rate_limit_key,
    taskforge_rate_limiter,
)

pytestmark = pytest.mark.anyio

US = dt.timedelta(microseconds=1)


def micros(clock: FakeClock) -> int:
    return (clock.now() - dt.datetime(2030, 1, 1, tzinfo=dt.UTC)) // US


async def let_tasks_run() -> None:
    """Give every woken task time to take its next step (a few scheduler rounds)."""
    for _ in range(10):
        await anyio.lowlevel.checkpoint()


def assert_at_most_count_per_window(admitted: list[int], limit: RateLimit) -> None:
    """No half-open window ``[t, t + period)`` holds more than ``count`` admissions (times in
    microseconds, compared exactly)."""
    period_us = Fraction(limit.period) * 1_000_000
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t < start + period_us]
        assert len(inside) <= limit.count, (limit, admitted)


# -- the limit itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("100/s", 100, 1.0), ("10/m", 10, 60.0), ("5/10s", 5, 10.0), ("1000/hour", 1000, 3600.0)],
)
def test_rate_limits_parse_count_and_period(text: str, count: int, period: float) -> None:
    assert RateLimit.parse(text) == RateLimit(count=count, period=period)


@pytest.mark.parametrize("text", ["", "10", "0/s", "10/fortnight", "-1/s", "ten/s"])
def test_malformed_rate_limits_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ConfigurationError):
        RateLimit.parse(text)


# -- admissions ------------------------------------------------------------------------------


async def test_admissions_are_spread_one_per_emission_interval() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("5/10s")

    assert await limiter.acquire("k", limit) == Admission(True, 0.0)
    assert await limiter.acquire("k", limit) == Admission(False, 2.0)
    clock.advance(1.5)
    assert await limiter.acquire("k", limit) == Admission(False, 0.5)
    clock.advance(0.5)
    assert await limiter.acquire("k", limit) == Admission(True, 0.0)


async def test_a_retry_after_exactly_retry_after_is_admitted_and_one_microsecond_early_is_not() -> (
    None
):
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit(count=3, period=10.0)  # T = 3.333...s: not a whole number of microseconds
    await limiter.acquire("k", limit)
    refused = await limiter.acquire("k", limit)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(10 / 3, abs=1e-6)
    assert refused.retry_after >= 10 / 3

    clock.advance(refused.retry_after - 1e-6)
    assert await limiter.acquire("k", limit) == Admission(False, 1e-6)
    clock.advance(1e-6)
    assert (await limiter.acquire("k", limit)).allowed


async def test_a_refused_acquire_consumes_nothing() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("1/s")
    await limiter.acquire("k", limit)
    for _ in range(10):
        assert (await limiter.acquire("k", limit)).retry_after == 1.0
    clock.advance(1)
    assert (await limiter.acquire("k", limit)).allowed


async def test_keys_are_limited_independently() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("1/m")
    assert (await limiter.acquire("p:q:a", limit)).allowed
    assert (await limiter.acquire("p:q:b", limit)).allowed
    assert not (await limiter.acquire("p:q:a", limit)).allowed
    assert not (await limiter.acquire("p:q:b", limit)).allowed


def test_the_task_key_names_project_queue_and_task() -> None:
    assert rate_limit_key("acme", "emails", "app.send") == "task:acme:emails:app.send"


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=12),
    period=st.sampled_from([0.5, 1.0, 2.5, 10.0, 60.0]),
    gaps=st.lists(st.integers(min_value=0, max_value=3_000_000), min_size=1, max_size=80),
)
async def test_never_admits_more_than_count_in_any_window_and_refuses_only_when_needed(
    count: int, period: float, gaps: list[int]
) -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit(count=count, period=period)
    interval_us = Fraction(period) * 1_000_000 / count
    admitted: list[int] = []
    for gap in gaps:
        clock.advance(gap / 1_000_000)
        now = micros(clock)
        answer = await limiter.acquire("k", limit)
        earliest = admitted[-1] + interval_us if admitted else now
        if answer.allowed:
            assert answer.retry_after == 0
            admitted.append(now)
        else:
            # Refused only when needed, and told exactly (to the microsecond) when to return.
            assert now < earliest
            assert answer.retry_after * 1_000_000 == pytest.approx(
                math.ceil(earliest - now), abs=1e-3
            )
        assert answer.allowed == (now >= math.ceil(earliest))
    assert_at_most_count_per_window(admitted, limit)


async def test_many_concurrent_tasks_share_the_limit_and_still_get_the_full_rate() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("100/s")
    admitted: list[int] = []

    async def worker() -> None:
        while True:
            answer = await limiter.acquire("shared", limit)
            if answer.allowed:
                admitted.append(micros(clock))
                await clock.sleep(0.003)  # the "job" takes 3 ms
            else:
                await clock.sleep(answer.retry_after)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(worker)
        await let_tasks_run()
        for _ in range(500):
            clock.advance(0.002)
            await let_tasks_run()
        tg.cancel_scope.cancel()

    assert_at_most_count_per_window(admitted, limit)
    assert len([t for t in admitted if t < 1_000_000]) == 100


def test_acquires_from_many_threads_admit_one_unit_at_a_frozen_instant() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("10/s")
    answers: list[Admission] = []
    lock = threading.Lock()

    async def hammer() -> None:
        mine = [await limiter.acquire("k", limit) for _ in range(500)]
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=anyio.run, args=(hammer,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4000
    assert sum(a.allowed for a in answers) == 1


async def test_keys_whose_time_has_passed_are_forgotten() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    limiter.SWEEP_EVERY = 10
    limit = RateLimit.parse("1/s")
    for i in range(500):
        await limiter.acquire(f"key-{i}", limit)
    assert len(limiter) <= 500
    clock.advance(1)
    for i in range(1000):
        await limiter.acquire("hot", limit)
        if i % 2:
            clock.advance(0.001)
    assert len(limiter) <= 1  # only the key still inside its interval is remembered


class SteppingClock(FakeClock):
    def set(self, when: dt.datetime) -> None:
        self._now = when


async def test_a_clock_stepping_backwards_never_blocks_a_key_longer_than_one_interval() -> None:
    clock = SteppingClock()
    limiter = InProcessRateLimiter(clock)
    limit = RateLimit.parse("1/s")
    await limiter.acquire("k", limit)
    clock.set(clock.now() - dt.timedelta(hours=1))
    assert await limiter.acquire("k", limit) == Admission(False, 1.0)
    clock.advance(1)
    assert (await limiter.acquire("k", limit)).allowed


def test_the_default_plugin_gives_an_in_process_limiter_on_the_app_clock() -> None:
    clock = FakeClock()
    app = types.SimpleNamespace(clock=clock)
    limiter = create_plugin_manager(load_entry_points=False).hook.taskforge_rate_limiter(app=app)
    assert isinstance(limiter, InProcessRateLimiter)
    assert isinstance(limiter, RateLimiter)
    assert limiter.clock is clock


def test_a_plugin_limiter_takes_precedence_over_the_in_process_one() -> None:
    class Shared:
        async def acquire(self, key: str, limit: RateLimit) -> Admission:
            return Admission(True, 0.0)

    class Plugin:
        @hookimpl
        def taskforge_rate_limiter(self, app: object) -> RateLimiter:
            return Shared()

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin())
    app = types.SimpleNamespace(clock=FakeClock())
    assert isinstance(pm.hook.taskforge_rate_limiter(app=app), Shared)
    assert isinstance(taskforge_rate_limiter(app), InProcessRateLimiter)  # type: ignore[arg-type]
