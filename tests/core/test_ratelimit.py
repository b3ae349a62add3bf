"""The in-process GCRA rate limiter, its protocol and its default plugin hook."""

from __future__ import annotations

import datetime as dt
import math
import threading
import types
from collections.abc import Sequence
from fractions import Fraction

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskforge_core import ConfigurationError, FakeClock, RateLimit, RateLimits, TaskForge, hookimpl
from taskforge_core.plugins import create_plugin_manager
from taskforge_core.ratelimit import (
    Admission,
    InProcessRateLimiter,
    KeyedLimit,
    RateLimiter,
    acquire_all,
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

        async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
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


# -- several limits at once ------------------------------------------------------------------


async def test_acquire_all_admits_only_when_every_key_admits_and_charges_none_otherwise() -> None:
    clock = FakeClock()
    limiter = InProcessRateLimiter(clock)
    fast, slow = RateLimit.parse("10/s"), RateLimit.parse("1/s")
    assert (await limiter.acquire("slow", slow)).allowed

    refused = await limiter.acquire_all([("fast", fast), ("slow", slow)])
    assert refused == Admission(False, 1.0)
    assert refused.key == "slow"
    assert refused.at == clock.now()
    # "fast" was not charged by the refused call: it admits at once, alone.
    assert (await limiter.acquire("fast", fast)).allowed
    clock.advance(1)
    assert (await limiter.acquire_all([("fast", fast), ("slow", slow)])).allowed
    clock.advance(0.1)
    refused = await limiter.acquire_all([("fast", fast), ("slow", slow)])
    assert refused == Admission(False, 0.9)  # the longest wait among the refusing keys
    assert refused.key == "slow"


async def test_acquire_all_refuses_a_key_named_twice() -> None:
    limiter = InProcessRateLimiter(FakeClock())
    limit = RateLimit.parse("1/s")
    with pytest.raises(ValueError, match="distinct keys"):
        await limiter.acquire_all([("k", limit), ("k", limit)])


def test_answers_compare_by_decision_not_by_key_or_time() -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert Admission(False, 1.0, key="a", at=when) == Admission(False, 1.0)
    assert Admission(False, 1.0) != Admission(False, 2.0)


async def test_a_limiter_with_only_acquire_is_asked_key_by_key() -> None:
    asked: list[str] = []

    class Legacy:
        async def acquire(self, key: str, limit: RateLimit) -> Admission:
            asked.append(key)
            return Admission(key != "b", 0.0 if key != "b" else 2.0)

    limit = RateLimit.parse("1/s")
    answer = await acquire_all(Legacy(), [("a", limit), ("b", limit), ("c", limit)])
    assert answer == Admission(False, 2.0)
    assert answer.key == "b"
    assert asked == ["a", "b"]  # stops at the first refusal
    assert (await acquire_all(Legacy(), [("a", limit)])).allowed


# -- limits per queue, project and tier ------------------------------------------------------


def test_rate_limits_parse_strings_and_keep_rate_limit_objects() -> None:
    open_limit = RateLimit.parse("500/s", fail_open=True)
    limits = RateLimits(
        queues={"emails": "50/s"},
        projects={"acme": open_limit},
        tiers={"starter": "10/s", "pro": "100/s"},
        project_tiers={"acme": "pro"},
        default_tier="starter",
    )
    assert limits.queues == {"emails": RateLimit(count=50, period=1.0)}
    assert limits.projects["acme"].fail_open
    assert not limits.queues["emails"].fail_open  # limits fail closed unless told otherwise
    assert limits.tier_of("acme") == "pro"
    assert limits.tier_of("other") == "starter"
    assert limits
    assert not RateLimits()


def test_every_applicable_limit_has_its_own_key_narrowest_first() -> None:
    limits = RateLimits(
        queues={"emails": "50/s"},
        projects={"acme": "500/s"},
        tiers={"starter": "10/s", "pro": "100/s"},
        project_tiers={"acme": "pro"},
    )
    own = RateLimit.parse("5/s")
    assert limits.applicable("acme", "emails", "send", own) == [
        ("task:acme:emails:send", own),
        ("queue:acme:emails", RateLimit.parse("50/s")),
        ("project:acme", RateLimit.parse("500/s")),
        ("tier:acme", RateLimit.parse("100/s")),
    ]
    # Another project: its own queue budget, no project limit, no tier (no default tier).
    assert limits.applicable("zeta", "emails", "send") == [
        ("queue:zeta:emails", RateLimit.parse("50/s"))
    ]
    assert limits.applicable("zeta", "reports", "build") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queues": {"emails": "fast"}}, r"queues\['emails'\]: bad rate limit 'fast'"),
        ({"projects": {"acme": 100}}, r"projects\['acme'\]: bad limit 100"),
        ({"tiers": ["pro"]}, "tiers must be a mapping"),
        ({"queues": {"": "1/s"}}, "queues: bad name ''"),
        ({"tiers": {"pro": "1/s"}, "project_tiers": {"acme": "gold"}}, "unknown tier 'gold'"),
        ({"tiers": {"pro": "1/s"}, "default_tier": "gold"}, "default_tier: unknown tier 'gold'"),
        ({"project_tiers": {"acme": 1}}, "project_tiers must map project names to tier names"),
    ],
)
def test_bad_rate_limit_settings_name_the_bad_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RateLimits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"count": 0, "period": 1.0},
        {"count": True, "period": 1.0},
        {"count": 1, "period": float("inf")},
        {"count": 1, "period": 0},
    ],
)
def test_a_rate_limit_needs_a_positive_count_and_a_finite_period(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimit(**bad)  # type: ignore[arg-type]


def test_the_app_takes_rate_limits_and_refuses_anything_else(tmp_path: object) -> None:
    limits = RateLimits(queues={"emails": "5/s"})
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", rate_limits=limits)
    assert app.rate_limits is limits
    assert not TaskForge(f"sqlite:///{tmp_path}/other.db").rate_limits
    with pytest.raises(ConfigurationError, match="rate_limits must be a RateLimits"):
        TaskForge(f"sqlite:///{tmp_path}/bad.db", rate_limits={"emails": "5/s"})  # type: ignore[arg-type]
