"""The rate limiter conformance suite has teeth: each broken limiter below breaks one promise,
and the suite test guarding that promise fails against it (run directly, not collected)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import pytest
from taskforge_conformance import RateLimiterConformance

from taskforge_core.clock import SystemClock
from taskforge_core.ratelimit import Admission, InProcessRateLimiter, KeyedLimit, RateLimiter


class FixedWindows(InProcessRateLimiter):
    """Counts ``count`` per fixed window of ``period``: up to twice the limit across a border."""

    def __init__(self) -> None:
        super().__init__(SystemClock())
        self.windows: dict[tuple[str, int], int] = {}

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        now = self.clock.now()
        slots = [(key, int(now.timestamp() // limit.period), limit.count) for key, limit in limits]
        if all(self.windows.get((key, w), 0) < count for key, w, count in slots):
            for key, w, _ in slots:
                self.windows[key, w] = self.windows.get((key, w), 0) + 1
            return Admission(True, 0.0, at=now)
        return Admission(False, 0.001, at=now)


class ChargesRefusals(InProcessRateLimiter):
    """A refused call pushes the key's next admission back by one interval."""

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        answer = await super().acquire_all(limits)
        if not answer.allowed:
            for key, limit in limits:
                self._tat[key] = self._tat.get(key, 0) + round(limit.period / limit.count * 1e9)
        return answer


class OneByOne(InProcessRateLimiter):
    """Admits the keys of ``acquire_all`` one at a time: the ones before a refusal stay charged."""

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        answer = Admission(True, 0.0)
        for limit in limits:
            answer = await super().acquire_all([limit])
            if not answer.allowed:
                break
        return answer


class HalfTheWait(InProcessRateLimiter):
    """Says to come back after half the real wait."""

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        answer = await super().acquire_all(limits)
        if answer.allowed:
            return answer
        return Admission(False, answer.retry_after / 2, key=answer.key, at=answer.at)


class _Suite(RateLimiterConformance):
    limiter: type[InProcessRateLimiter] = InProcessRateLimiter

    async def make_limiter(self, namespace: str) -> RateLimiter:
        limiter = self.limiter
        return limiter() if limiter is FixedWindows else limiter(SystemClock())


class PerProcessButClaimsShared(_Suite):
    """An in-process limiter that says processes share it: each process has its own budget."""

    shared_across_processes = True


@pytest.mark.parametrize(
    ("limiter", "test"),
    [
        (FixedWindows, "test_no_window_holds_more_than_count_under_concurrent_callers"),
        (ChargesRefusals, "test_a_refusal_consumes_nothing"),
        (OneByOne, "test_acquire_all_is_all_or_nothing"),
        (OneByOne, "test_a_refusal_consumes_nothing"),
        (HalfTheWait, "test_retry_after_is_honest"),
        (HalfTheWait, "test_retry_after_is_the_exact_rest_of_the_interval"),
    ],
)
def test_a_broken_limiter_fails_the_test_guarding_its_promise(
    limiter: type[InProcessRateLimiter], test: str
) -> None:
    suite = type("Broken", (_Suite,), {"limiter": limiter})()
    # hypothesis raises a group when it finds several distinct failures
    with pytest.raises((AssertionError, ExceptionGroup)) as raised:
        getattr(suite, test)(namespace="teeth")
    if isinstance(raised.value, ExceptionGroup):
        assert raised.value.subgroup(AssertionError) is not None, raised.value


def test_the_correct_limiter_passes_the_same_tests() -> None:
    suite = _Suite()
    for test in (
        "test_no_window_holds_more_than_count_under_concurrent_callers",
        "test_a_refusal_consumes_nothing",
        "test_acquire_all_is_all_or_nothing",
        "test_retry_after_is_honest",
    ):
        getattr(suite, test)(namespace="teeth")


@pytest.mark.slow
def test_a_limiter_not_shared_across_processes_fails_the_several_process_test(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(AssertionError, match="admitted"):
        PerProcessButClaimsShared().test_processes_sharing_a_limit_never_exceed_it(
            namespace="teeth", tmp_path=tmp_path
        )
