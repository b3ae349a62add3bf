"""How a failed attempt is retried: attempt limits, backoff with jitter, per-exception rules."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from taskforge_core.errors import ConfigurationError, TaskForgeError

__all__ = ["NO_RETRY", "Retry", "RetryLater"]


class RetryLater(TaskForgeError):
    """Raised by a task to ask for another attempt after ``delay`` seconds.

    It uses up an attempt like any failure (so a job cannot retry forever), but its delay
    replaces the backoff and it is retried even when the policy would not retry other errors.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        if delay < 0:
            raise ConfigurationError(f"RetryLater needs a delay >= 0 seconds, got {delay}")
        super().__init__(reason or f"retry requested in {delay:g}s")
        #: Seconds to wait before the next attempt.
        self.delay = delay


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"Retry.{attribute.name} must be >= 0, got {value}")


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ConfigurationError(f"Retry: expected exception classes, got {kind!r}")
    return types


@attrs.frozen(kw_only=True)
class Retry:
    """A retry policy: ``Retry(max_attempts=5, base_delay=1, max_delay=300)``.

    The n-th retry waits ``min(max_delay, base_delay * factor ** (n - 1))`` seconds, then
    "full jitter" picks a random delay between ``(1 - jitter)`` and 1 times that, so a burst of
    failures does not come back as a burst of retries.
    """

    #: Total attempts, the first run included. 1 means never retry.
    max_attempts: int = attrs.field(default=3)
    #: Delay before the first retry, in seconds.
    base_delay: float = attrs.field(default=1.0, validator=_positive)
    #: Growth of the delay per retry.
    factor: float = attrs.field(default=2.0, validator=_positive)
    #: Upper bound of any delay, in seconds.
    max_delay: float = attrs.field(default=3600.0, validator=_positive)
    #: Fraction of the delay that is random (0 = none, 1 = anywhere in [0, delay]).
    jitter: float = attrs.field(default=0.5, validator=_positive)
    #: Only these exceptions are retried (default: every ``Exception``).
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )
    #: These are never retried, even when they match ``retry_on``.
    never_retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(), converter=_exception_types
    )

    @max_attempts.validator
    def _check_attempts(self, _: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"Retry.max_attempts must be an integer >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _: attrs.Attribute[float], value: float) -> None:
        if value > 1:
            raise ConfigurationError(f"Retry.jitter must be between 0 and 1, got {value}")

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * self.factor ** max(0, attempt - 1))
        return ceiling * (1 - self.jitter * rand())

    def next_delay(
        self, error: BaseException, attempt: int, *, max_attempts: int | None = None
    ) -> float | None:
        """Seconds until the next attempt after ``error`` ended attempt ``attempt``, or None
        when the job must fail for good.

        ``max_attempts`` is the job's own limit (a job may be enqueued with another one than
        the task's policy, ``task.options(max_attempts=...)``); it defaults to the policy's.
        """
        limit = self.max_attempts if max_attempts is None else max_attempts
        if attempt >= limit:
            return None
        if isinstance(error, RetryLater):
            return error.delay
        if isinstance(error, self.never_retry_on) or not isinstance(error, self.retry_on):
            return None
        return self.backoff(attempt)


#: The policy of a task that must never run twice on failure.
NO_RETRY = Retry(max_attempts=1)
