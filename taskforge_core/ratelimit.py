"""Rate limits for tasks, and the in-process limiter used when no shared one is configured.

A task declares ``rate_limit="100/s"`` (a :class:`RateLimit`). Before running a job of such a
task, a worker asks the :class:`RateLimiter` from the ``taskforge_rate_limiter`` hook to
:meth:`~RateLimiter.acquire` one unit under the key :func:`rate_limit_key` (project, queue,
task). On ``allowed=False`` the worker gives the job back unrun (not a failure) to run after
``retry_after`` seconds.

The core answers the hook last with :class:`InProcessRateLimiter`: exact within one process,
but each process has its own budget, so N worker processes sharing a SQLite file may together
admit up to N times the limit. A limit shared across processes needs a shared limiter (the
Redis plugin).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import threading
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio.lowlevel
import attrs

from taskforge_core.errors import ConfigurationError
from taskforge_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from taskforge_core.app import TaskForge
    from taskforge_core.clock import Clock

__all__ = [
    "Admission",
    "InProcessRateLimiter",
    "RateLimit",
    "RateLimiter",
    "rate_limit_key",
    "taskforge_rate_limiter",
]

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")


@attrs.frozen(kw_only=True)
class RateLimit:
    """At most ``count`` admissions per ``period`` seconds, e.g. ``RateLimit.parse("100/s")``."""

    count: int
    period: float

    def __attrs_post_init__(self) -> None:
        if self.count < 1 or self.period <= 0:
            raise ConfigurationError(
                f"a rate limit needs count >= 1 and period > 0, got {self.count}/{self.period}s"
            )

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``"100/s"``, ``"10/m"``, ``"5/10s"``, ``"1000/hour"``."""
        match = _PATTERN.match(text.lower())
        if not match or match.group(3) not in _UNITS:
            raise ConfigurationError(
                f"bad rate limit {text!r}: write COUNT/UNIT such as '100/s', '10/m' or '5/10s'"
            )
        count, multiple, unit = match.groups()
        return cls(count=int(count), period=float(multiple or 1) * _UNITS[unit])


def rate_limit_key(project: str, queue: str, task: str) -> str:
    """The limiter key of a task's own ``rate_limit``: ``"project:queue:task"``."""
    return f"{project}:{queue}:{task}"


@attrs.frozen
class Admission:
    """The answer of :meth:`RateLimiter.acquire`."""

    #: True when one unit was admitted (and counted against the limit).
    allowed: bool
    #: Seconds until a retry may be admitted; 0 when allowed.
    retry_after: float


_ADMITTED = Admission(True, 0.0)


@runtime_checkable
class RateLimiter(Protocol):
    """Admits units of work under per-key :class:`RateLimit` s; from ``taskforge_rate_limiter``.

    Implementations must never admit more than ``limit.count`` units of one key in any window
    of ``limit.period`` seconds, and must be safe for concurrent callers.
    """

    async def acquire(self, key: str, limit: RateLimit) -> Admission:
        """Atomically admit one unit under ``limit`` for ``key``, or say when to try again.

        A refused call consumes nothing: ``Admission(False, retry_after)`` where
        ``retry_after`` is the number of seconds after which a call would be admitted if no
        other caller takes the unit first.
        """
        ...


_NS = 10**9
_US = 1000  # nanoseconds in a microsecond, the resolution of the clock's datetimes
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


@functools.lru_cache(maxsize=1024)
def _interval_ns(limit: RateLimit) -> int:
    """The emission interval ``period / count`` in nanoseconds, rounded up (never faster)."""
    return math.ceil(Fraction(limit.period) * _NS / limit.count)


class InProcessRateLimiter:
    """A GCRA (generic cell rate algorithm) limiter held in this process's memory.

    For a limit of ``count`` per ``period`` the emission interval is ``T = period / count``.
    Per key the limiter keeps one number, the theoretical arrival time (TAT): a unit is
    admitted when ``TAT <= now``, and then ``TAT = now + T``; otherwise ``retry_after`` is
    ``TAT - now``. The burst tolerance is 0: that is the largest tolerance for which at most
    ``count`` units are admitted in *every* window of ``period`` seconds (with the classic
    tolerance ``period - T``, a burst of ``count`` followed by the steady rate could admit
    ``2 * count - 1`` in one window). So admissions are spread evenly: ``"10/m"`` admits one
    unit every 6 seconds.

    Time comes from ``clock`` (integer nanoseconds, so no rounding drift; ``T`` is rounded up
    and ``retry_after`` is rounded up to the clock's microsecond, so a retry after exactly
    ``retry_after`` is admitted). If the clock steps backwards, a key waits at most ``T``.
    Arithmetic is under a :class:`threading.Lock` with no awaits inside, so callers from
    several tasks and threads are safe. Keys whose TAT is in the past carry no information
    and are forgotten in occasional sweeps, so memory stays bounded by the active keys.
    """

    #: Sweep forgotten keys after this many acquires (or the number of keys, if larger).
    SWEEP_EVERY = 1024

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._tat: dict[str, int] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def __repr__(self) -> str:
        return f"<InProcessRateLimiter keys={len(self._tat)}>"

    def __len__(self) -> int:
        """The number of keys currently remembered."""
        return len(self._tat)

    async def acquire(self, key: str, limit: RateLimit) -> Admission:
        await anyio.lowlevel.checkpoint()  # before deciding: a cancelled caller consumes nothing
        interval = _interval_ns(limit)
        with self._lock:
            now = (self.clock.now() - _EPOCH) // _MICROSECOND * _US
            self._calls += 1
            if self._calls >= max(self.SWEEP_EVERY, len(self._tat)):
                self._sweep(now)
            tat = self._tat.get(key, now)
            if tat <= now:
                self._tat[key] = now + interval
                return _ADMITTED
            if tat - now > interval:  # the clock went backwards: never wait more than T
                tat = self._tat[key] = now + interval
        wait_us = -(-(tat - now) // _US)
        return Admission(False, wait_us / 1_000_000)

    def _sweep(self, now: int) -> None:
        self._calls = 0
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}


@hookimpl(trylast=True)
def taskforge_rate_limiter(app: TaskForge) -> RateLimiter:
    """The core's fallback: an :class:`InProcessRateLimiter` on ``app.clock``."""
    return InProcessRateLimiter(app.clock)
