from __future__ import annotations

import pytest

from taskforge_core import NO_RETRY, Retry, RetryLater


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = Retry(max_attempts=10, base_delay=1, factor=2, max_delay=10, jitter=0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_keeps_the_delay_between_its_bounds() -> None:
    policy = Retry(base_delay=8, factor=1, jitter=0.5)
    assert policy.backoff(1, rand=lambda: 0.0) == 8
    assert policy.backoff(1, rand=lambda: 1.0) == 4


def test_the_last_attempt_is_never_retried() -> None:
    policy = Retry(max_attempts=3)
    assert policy.next_delay(ValueError(), attempt=2) is not None
    assert policy.next_delay(ValueError(), attempt=3) is None
    assert NO_RETRY.next_delay(ValueError(), attempt=1) is None


def test_only_listed_exceptions_are_retried() -> None:
    policy = Retry(retry_on=(ConnectionError,), never_retry_on=ConnectionRefusedError)
    assert policy.next_delay(ConnectionResetError(), attempt=1) is not None
    assert policy.next_delay(ConnectionRefusedError(), attempt=1) is None
    assert policy.next_delay(KeyError(), attempt=1) is None


def test_retry_later_sets_the_delay_and_still_uses_an_attempt() -> None:
    policy = Retry(max_attempts=2, retry_on=(ConnectionError,))
    assert policy.next_delay(RetryLater(42), attempt=1) == 42
    assert policy.next_delay(RetryLater(42), attempt=2) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1}, "base_delay"),
        ({"jitter": 1.5}, "jitter"),
        ({"retry_on": ("ValueError",)}, "exception classes"),
    ],
)
def test_bad_policies_are_rejected_with_the_field_named(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Retry(**kwargs)


def test_retry_later_rejects_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay"):
        RetryLater(-1)
