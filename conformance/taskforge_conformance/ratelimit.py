"""The rate limiter conformance suite: :class:`RateLimiterConformance`, a base class of tests.

Subclass it in a test module with a name pytest collects and give it a factory::

    from taskforge_conformance import RateLimiterConformance

    class TestMyLimiter(RateLimiterConformance):
        shared_across_processes = True  # if processes share its limits (see below)

        async def make_limiter(self, namespace):
            return MyLimiter(f"mylimiter://host/{namespace}")

Every ``test_*`` method below is then a test of your limiter against the promises of
:class:`~taskforge_core.ratelimit.RateLimiter`:

* no window of ``period`` seconds holds more than ``count`` admissions of one key, whatever the
  callers do concurrently (several tasks; several processes when the limiter is shared);
* a refusal consumes nothing, and :meth:`~taskforge_core.ratelimit.RateLimiter.acquire_all` is
  all or nothing;
* ``retry_after`` is honest: a caller that waits that long, with nobody else competing, is
  admitted; one that comes back early is not.

The suite runs on real time, on asyncio, with short periods (tens to hundreds of
milliseconds), so the limiter must use a real clock (an in-process limiter:
:class:`~taskforge_core.clock.SystemClock`). Windows are checked on the limiter's own clock: the
limiter must set :attr:`Admission.at <taskforge_core.ratelimit.Admission.at>` on its answers.
Keys are random per example, so a limiter needs no cleaning between examples.

A limiter whose limits are shared by every process that builds it with the same ``namespace``
(one backed by a server) sets ``shared_across_processes = True``; the several-process test
skips otherwise. For that test the subclass must be importable by name (module level) and
``make_limiter`` must work in a fresh process.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import multiprocessing
import pathlib
import pickle
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from taskforge_conformance.profiles import active_profile
from taskforge_core.ratelimit import Admission, KeyedLimit, RateLimit, RateLimiter

__all__ = [
    "RateLimiterConformance",
    "assert_at_most_count_per_window",
    "hammer",
    "micros",
    "run_processes",
]

#: Longest time one test may run on the event loop before it counts as hung.
TEST_TIMEOUT = 50.0
#: Extra wait after ``retry_after`` in the honesty tests: the test sleeps on its event loop's
#: monotonic clock while the limiter reads its own (a wall clock, maybe in another process),
#: and the two may drift apart by a little while NTP slews the wall clock.
SLACK = 0.003

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Real time: no deadline. The tests are methods of a base class that each subclass runs with
#: its own ``self`` (differing executors), and the only fixture is a name: both health checks
#: are about replaying saved examples, and the suite keeps none (``database=None``).
#: No "explain" phase: it re-runs a failing example many times, in real time here.
_BASE = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.differing_executors,
        HealthCheck.too_slow,
    ],
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)
#: ``TASKFORGE_CONFORMANCE_PROFILE=thorough`` runs five times the examples (each test stays
#: well under a minute).
_SCALE = 5 if active_profile() == "thorough" else 1

_Body = Callable[[RateLimiter], Awaitable[None]]


def micros(admission: Admission) -> int:
    """The limiter's time of ``admission`` in whole microseconds since the epoch."""
    assert admission.at is not None, (
        "the limiter must say when it answered (Admission.at, on its own clock): the suite "
        f"checks windows on the limiter's clock; got {admission}"
    )
    return (admission.at - _EPOCH) // dt.timedelta(microseconds=1)


def assert_at_most_count_per_window(times: Sequence[int], limit: RateLimit, key: str = "") -> None:
    """No half-open window ``[t, t + period)`` holds more than ``count`` of ``times`` (integer
    microseconds, compared exactly against the exact ``period``)."""
    ordered = sorted(times)
    period = Fraction(limit.period) * 1_000_000
    for i, start in enumerate(ordered):
        end = bisect.bisect_left(ordered, start + period, lo=i)  # first time >= start + period
        if end - i > limit.count:
            inside = ordered[i:end]
            raise AssertionError(
                f"key {key!r} admitted {end - i} units within {limit.period} s "
                f"(limit {limit.count}/{limit.period}s): offsets in microseconds "
                f"{[t - start for t in inside]}"
            )


def _key(tag: str) -> str:
    return f"conformance:{tag}:{uuid.uuid4().hex}"


def _seconds(limit: RateLimit) -> float:
    return float(Fraction(limit.period) / limit.count)


# Limits with emission intervals of 4 to 200 ms: windows are short enough to fill many times
# in a test, and long enough that a loaded machine still hits them.
_limits = st.builds(
    RateLimit,
    count=st.integers(min_value=1, max_value=5),
    period=st.sampled_from([0.02, 0.05, 0.1, 0.2]),
)


class RateLimiterConformance:
    """Tests every promise of :class:`~taskforge_core.ratelimit.RateLimiter`. Subclass it and
    implement :meth:`make_limiter`."""

    #: True when processes that build the limiter with the same ``namespace`` share its limits.
    shared_across_processes: ClassVar[bool] = False

    async def make_limiter(self, namespace: str) -> RateLimiter:
        """Return a new limiter, on the running asyncio event loop.

        ``namespace`` is a fresh string per test (the :meth:`namespace` fixture): a limiter
        shared across processes must reach the same limits when built again with it, in this
        process or another. The suite closes the limiter (``aclose()``, if it has one).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_limiter()")

    @pytest.fixture
    def namespace(self) -> str:
        """A fresh name per test; override it to use your own (say, a cleaned-up key prefix)."""
        return f"tfconf-{uuid.uuid4().hex[:12]}"

    def run(self, namespace: str, body: _Body) -> None:
        """Run ``body`` with a new limiter on an asyncio event loop, then close the limiter."""

        async def main() -> None:
            limiter = await self.make_limiter(namespace)
            try:
                with anyio.fail_after(TEST_TIMEOUT):
                    await body(limiter)
            finally:
                aclose = getattr(limiter, "aclose", None)
                if aclose is not None:
                    await aclose()

        anyio.run(main, backend="asyncio")

    # =====================================================================================
    # At most count in any window
    # =====================================================================================

    @settings(_BASE, max_examples=20 * _SCALE)
    @given(
        limits=st.lists(_limits, min_size=1, max_size=3),
        callers=st.lists(
            st.lists(
                st.tuples(st.integers(min_value=1, max_value=7), st.sampled_from([0, 0, 1, 3])),
                min_size=5,
                max_size=40,
            ),
            min_size=2,
            max_size=6,
        ),
    )
    def test_no_window_holds_more_than_count_under_concurrent_callers(
        self,
        namespace: str,
        limits: list[RateLimit],
        callers: list[list[tuple[int, int]]],
    ) -> None:
        """Concurrent callers, each asking for a random subset of up to three keys with a
        random pause (0 to 3 ms) between calls: per key, every window holds at most
        ``count`` admissions, and a refusal's ``retry_after`` is within one interval."""
        keyed = [(_key(f"window{i}"), limit) for i, limit in enumerate(limits)]
        admitted: dict[str, list[int]] = defaultdict(list)

        async def caller(steps: list[tuple[int, int]], limiter: RateLimiter) -> None:
            for mask, pause_ms in steps:
                chosen = [kl for i, kl in enumerate(keyed) if mask >> i & 1] or keyed[:1]
                answer = await limiter.acquire_all(chosen)
                if answer.allowed:
                    now = micros(answer)
                    for key, _ in chosen:
                        admitted[key].append(now)
                else:
                    longest = max(_seconds(limit) for _, limit in chosen)
                    assert 0 < answer.retry_after <= longest + 1e-6, (answer, chosen)
                await anyio.sleep(pause_ms / 1000)

        async def body(limiter: RateLimiter) -> None:
            async with anyio.create_task_group() as tg:
                for steps in callers:
                    tg.start_soon(caller, steps, limiter)

        self.run(namespace, body)
        assert admitted, "no call was ever admitted"
        for key, limit in keyed:
            assert_at_most_count_per_window(admitted[key], limit, key)

    # =====================================================================================
    # Refusals consume nothing; all or nothing
    # =====================================================================================

    def test_a_refusal_consumes_nothing(self, namespace: str) -> None:
        """Refused calls do not push the next admission back, on the key that refused nor on
        the other keys of a refused ``acquire_all``."""
        busy, idle = _key("busy"), _key("idle")
        limit = RateLimit(count=1, period=0.3)
        slow = RateLimit(count=1, period=3600.0)

        async def body(limiter: RateLimiter) -> None:
            assert (await limiter.acquire(busy, limit)).allowed
            waits = []
            for _ in range(20):
                answer = await limiter.acquire(busy, limit)
                assert not answer.allowed
                waits.append(answer.retry_after)
            assert waits == sorted(waits, reverse=True), f"refusals pushed the wait: {waits}"
            both = await limiter.acquire_all([(idle, slow), (busy, limit)])
            assert not both.allowed
            assert both.key in (busy, None)
            assert (await limiter.acquire(idle, slow)).allowed, "a refused acquire_all charged"
            await anyio.sleep(waits[-1] + SLACK)
            assert (await limiter.acquire(busy, limit)).allowed

        self.run(namespace, body)

    @settings(_BASE, max_examples=40 * _SCALE)
    @given(
        counts=st.lists(st.integers(min_value=1, max_value=3), min_size=2, max_size=4),
        masks=st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=25),
    )
    # Always tried (also under CI's derandomized profile): a refusal by the second key must
    # not charge the first, so the first alone is admitted afterwards.
    @example(counts=[1, 1], masks=[2, 3, 1])
    def test_acquire_all_is_all_or_nothing(
        self, namespace: str, counts: list[int], masks: list[int]
    ) -> None:
        """Random ``acquire_all`` calls over a few keys whose interval (20 minutes or more)
        outlasts the test, so each key admits once: a call is admitted exactly when none of
        its keys was admitted before, the refusing key is one of those, and only admitted
        calls charge their keys."""
        keyed = [(_key(f"all{i}"), RateLimit(count=c, period=3600.0)) for i, c in enumerate(counts)]

        async def body(limiter: RateLimiter) -> None:
            used: set[str] = set()
            for mask in masks:
                chosen = [kl for i, kl in enumerate(keyed) if mask >> i & 1] or keyed[:1]
                keys = {key for key, _ in chosen}
                answer = await limiter.acquire_all(chosen)
                assert answer.allowed == (not keys & used), (answer, sorted(keys), sorted(used))
                if answer.allowed:
                    used |= keys
                else:
                    assert answer.key is None or answer.key in keys & used, answer
                    longest = max(_seconds(limit) for key, limit in chosen if key in used)
                    assert 0 < answer.retry_after <= longest + 1e-6, answer

        self.run(namespace, body)

    @settings(_BASE, max_examples=10 * _SCALE)
    @given(masks=st.lists(st.integers(min_value=1, max_value=15), min_size=8, max_size=30))
    def test_concurrent_acquire_all_charges_each_key_once(
        self, namespace: str, masks: list[int]
    ) -> None:
        """The same, with every call made at once from its own task: the admitted calls have
        disjoint keys, and every refused call shares a key with an admitted one."""
        keyed = [(_key(f"race{i}"), RateLimit(count=1, period=3600.0)) for i in range(4)]

        async def body(limiter: RateLimiter) -> None:
            answers: list[tuple[set[str], Admission]] = []
            start = anyio.Event()

            async def call(mask: int) -> None:
                chosen = [kl for i, kl in enumerate(keyed) if mask >> i & 1]
                await start.wait()
                answers.append(({k for k, _ in chosen}, await limiter.acquire_all(chosen)))

            async with anyio.create_task_group() as tg:
                for mask in masks:
                    tg.start_soon(call, mask)
                await anyio.sleep(0.01)
                start.set()
            granted = [keys for keys, answer in answers if answer.allowed]
            charged = [key for keys in granted for key in keys]
            assert len(charged) == len(set(charged)), f"a key admitted twice: {granted}"
            for keys, answer in answers:
                if not answer.allowed:
                    assert keys & set(charged), f"{keys} refused though none was charged"
            assert granted, "every call was refused"

        self.run(namespace, body)

    # =====================================================================================
    # retry_after is honest
    # =====================================================================================

    @settings(_BASE, max_examples=10 * _SCALE)
    @given(limits=st.lists(_limits, min_size=1, max_size=3), early=st.floats(0.1, 0.8))
    def test_retry_after_is_honest(
        self, namespace: str, limits: list[RateLimit], early: float
    ) -> None:
        """After one admission of every key, a call is refused with ``0 < retry_after <=``
        the longest interval; coming back a fraction ``early`` of that is refused again; coming
        back after ``retry_after`` (nobody else competing) is admitted."""
        keyed: list[KeyedLimit] = [(_key(f"honest{i}"), lim) for i, lim in enumerate(limits)]

        async def body(limiter: RateLimiter) -> None:
            assert (await limiter.acquire_all(keyed)).allowed
            refused = await limiter.acquire_all(keyed)
            assert not refused.allowed
            longest = max(_seconds(limit) for _, limit in keyed)
            assert 0 < refused.retry_after <= longest + 1e-6, (refused, longest)
            await anyio.sleep(refused.retry_after * early)
            again = await limiter.acquire_all(keyed)
            elapsed = micros(again) - micros(refused)
            if again.allowed:  # only if a loaded machine slept past retry_after
                assert elapsed >= refused.retry_after * 1_000_000 - 1, (refused, again)
                return
            # Refused again, and told the rest of the same wait.
            assert again.retry_after == pytest.approx(
                refused.retry_after - elapsed / 1_000_000, abs=2e-6
            ), (refused, again)
            await anyio.sleep(again.retry_after + SLACK)
            admitted = await limiter.acquire_all(keyed)
            assert admitted.allowed, f"refused after waiting retry_after: {admitted}"

        self.run(namespace, body)

    def test_retry_after_is_the_exact_rest_of_the_interval(self, namespace: str) -> None:
        """With a 10-second interval, a refusal's ``retry_after`` is what remains of the
        interval on the limiter's clock, to the microsecond."""
        key, limit = _key("early"), RateLimit(count=1, period=10.0)

        async def body(limiter: RateLimiter) -> None:
            first = await limiter.acquire(key, limit)
            assert first.allowed
            refused = await limiter.acquire(key, limit)
            assert not refused.allowed
            elapsed = (micros(refused) - micros(first)) / 1_000_000
            assert refused.retry_after == pytest.approx(10.0 - elapsed, abs=2e-6)

        self.run(namespace, body)

    # =====================================================================================
    # Several processes
    # =====================================================================================

    def test_processes_sharing_a_limit_never_exceed_it(
        self, namespace: str, tmp_path: pathlib.Path
    ) -> None:
        """Three processes with three callers each hammer one key for 1.5 s: every window of
        the union of their admissions holds at most ``count`` (``shared_across_processes``)."""
        if not self.shared_across_processes:
            pytest.skip("the limiter does not declare shared_across_processes")
        limit = RateLimit(count=5, period=0.1)
        times = run_processes(type(self), namespace, tmp_path, limit, processes=3, seconds=1.5)
        assert len(times) >= 5, f"only {len(times)} admissions in 1.5 s at {limit}"
        assert_at_most_count_per_window(times, limit)


def run_processes(
    suite: type[RateLimiterConformance],
    namespace: str,
    tmp_path: pathlib.Path,
    limit: RateLimit,
    *,
    processes: int,
    seconds: float,
    callers: int = 3,
) -> list[int]:
    """Start ``processes`` spawned processes that :func:`hammer` one key under ``limit`` at
    once for ``seconds``; return every admission time (microseconds, the limiter's clock)."""
    try:
        pickle.dumps(suite)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        pytest.fail(
            f"{suite.__qualname__} must be importable by name for the several-process test "
            f"(define it at module level; do not use --import-mode=importlib): {exc}"
        )
    key = _key("processes")
    context = multiprocessing.get_context("spawn")
    outputs = [tmp_path / f"admitted-{n}.json" for n in range(processes)]
    start = context.Barrier(processes, timeout=60)
    spec = (key, limit.count, limit.period)
    children = [
        context.Process(
            target=hammer, args=(suite, namespace, spec, seconds, callers, str(out), start)
        )
        for out in outputs
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=90)
    for child in children:
        if child.is_alive():
            child.kill()
    assert [c.exitcode for c in children] == [0] * processes, "a hammering process failed"
    return [t for out in outputs for t in json.loads(out.read_text(encoding="utf-8"))]


def hammer(
    suite: type[RateLimiterConformance],
    namespace: str,
    spec: tuple[str, int, float],
    seconds: float,
    callers: int,
    out: str,
    start: Any,
) -> None:
    """Run in a child process: wait at ``start`` with the other processes, then let
    ``callers`` tasks acquire the key of ``spec`` (key, count, period) for ``seconds``, each
    sleeping a random part of ``retry_after`` after a refusal (so that calls keep arriving at
    every moment, as from a fleet of workers); write the admission times to ``out``."""
    key, count, period = spec
    limit = RateLimit(count=count, period=period)

    async def main() -> list[int]:
        limiter = await suite().make_limiter(namespace)
        times: list[int] = []
        try:
            await anyio.to_thread.run_sync(start.wait)
            deadline = time.monotonic() + seconds

            async def caller() -> None:
                while time.monotonic() < deadline:
                    answer = await limiter.acquire(key, limit)
                    if answer.allowed:
                        times.append(micros(answer))
                    else:
                        await anyio.sleep(answer.retry_after * random.random())

            async with anyio.create_task_group() as tg:
                for _ in range(callers):
                    tg.start_soon(caller)
        finally:
            aclose = getattr(limiter, "aclose", None)
            if aclose is not None:
                await aclose()
        return times

    times = anyio.run(main, backend="asyncio")
    pathlib.Path(out).write_text(json.dumps(times), encoding="utf-8")
