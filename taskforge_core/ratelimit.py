"""Rate limits, and the in-process limiter used when no shared one is configured.

A job can fall under up to four limits, each counted under its own limiter key:

* its task's own ``rate_limit="100/s"`` (a :class:`RateLimit`), key ``task:project:queue:task``
  (:func:`rate_limit_key`);
* a limit on its queue, key ``queue:project:queue``;
* a limit on its project, key ``project:project``;
* the limit of its project's subscription tier, key ``tier:project`` (each project on a tier
  has that tier's budget of its own).

The last three come from :class:`RateLimits`, given as ``TaskForge(..., rate_limits=...)``.
Before running a job that falls under any limit, a worker asks the :class:`RateLimiter` from the
``taskforge_rate_limiter`` hook to :meth:`~RateLimiter.acquire_all` of them at once: the job is
admitted only if every limit admits it, and a refusal consumes nothing from any of them. On
``allowed=False`` the worker gives the job back unrun (not a failure) to run after
``retry_after`` seconds.

Each limit says what to do when a shared limiter cannot be reached (:attr:`RateLimit.fail_open`):
by default it *fails closed* (the job waits), or it *fails open* (the job runs unlimited).

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
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
    "KeyedLimit",
    "RateLimit",
    "RateLimiter",
    "RateLimits",
    "acquire_all",
    "interval_us",
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
    #: What a worker does when a shared limiter (Redis) cannot be reached: ``False`` (the
    #: default, *fail closed*) defers the job, as if the limit refused it, so the limit is never
    #: exceeded but jobs wait out the outage; ``True`` (*fail open*) admits it, so jobs keep
    #: running but this limit is not enforced during the outage. A job under several limits
    #: runs during an outage only if all of them fail open.
    fail_open: bool = False

    def __attrs_post_init__(self) -> None:
        if (
            isinstance(self.count, bool)
            or not isinstance(self.count, int)
            or not isinstance(self.period, int | float)
            or self.count < 1
            or not 0 < self.period < math.inf
        ):
            raise ConfigurationError(
                f"a rate limit needs count >= 1 and period > 0, got {self.count}/{self.period}s"
            )

    @classmethod
    def parse(cls, text: str, *, fail_open: bool = False) -> RateLimit:
        """Parse ``"100/s"``, ``"10/m"``, ``"5/10s"``, ``"1000/hour"``."""
        match = _PATTERN.match(text.lower())
        if not match or match.group(3) not in _UNITS:
            raise ConfigurationError(
                f"bad rate limit {text!r}: write COUNT/UNIT such as '100/s', '10/m' or '5/10s'"
            )
        count, multiple, unit = match.groups()
        return cls(
            count=int(count), period=float(multiple or 1) * _UNITS[unit], fail_open=fail_open
        )


#: One limit of a job and the limiter key it is counted under.
KeyedLimit = tuple[str, RateLimit]


def rate_limit_key(project: str, queue: str, task: str) -> str:
    """The limiter key of a task's own ``rate_limit``: ``"task:project:queue:task"``."""
    return f"task:{project}:{queue}:{task}"


def _limit_map(what: str, value: object) -> dict[str, RateLimit]:
    """``{"name": "100/s" or RateLimit}`` checked and parsed; the error names the bad entry."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"rate_limits {what} must be a mapping of name to limit, got {value!r}"
        )
    limits: dict[str, RateLimit] = {}
    for name, limit in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"rate_limits {what}: bad name {name!r}, expected a string")
        if isinstance(limit, str):
            try:
                limits[name] = RateLimit.parse(limit)
            except ConfigurationError as exc:
                raise ConfigurationError(f"rate_limits {what}[{name!r}]: {exc}") from None
        elif isinstance(limit, RateLimit):
            limits[name] = limit
        else:
            raise ConfigurationError(
                f"rate_limits {what}[{name!r}]: bad limit {limit!r}, "
                "expected '100/s' or a RateLimit"
            )
    return limits


def _queues_map(value: object) -> dict[str, RateLimit]:
    return _limit_map("queues", value)


def _projects_map(value: object) -> dict[str, RateLimit]:
    return _limit_map("projects", value)


def _tiers_map(value: object) -> dict[str, RateLimit]:
    return _limit_map("tiers", value)


def _name_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigurationError(
            f"rate_limits project_tiers must map project names to tier names, got {value!r}"
        )
    return dict(value)


@attrs.frozen(kw_only=True)
class RateLimits:
    """Limits beyond each task's own ``rate_limit``: ``TaskForge(url, rate_limits=...)``.

    ::

        RateLimits(
            queues={"emails": "50/s"},
            projects={"acme": RateLimit.parse("500/s", fail_open=True)},
            tiers={"starter": "10/s", "pro": "100/s", "enterprise": "1000/s"},
            project_tiers={"acme": "pro"},
            default_tier="starter",
        )

    Limits are written like a task's ``rate_limit`` (``"100/s"``) or given as
    :class:`RateLimit` (which also says whether the limit fails open). All the limits that
    apply to a job are checked together and must all admit it. Kept here, in the core, rather
    than in a plugin, so that the in-process limiter enforces them as well and a deployment can
    move between one process and Redis without changing its configuration.
    """

    #: Queue name -> limit on the jobs of that queue (counted per project).
    queues: Mapping[str, RateLimit] = attrs.field(factory=dict, converter=_queues_map)
    #: Project name -> limit on all the rate-checked jobs of that project.
    projects: Mapping[str, RateLimit] = attrs.field(factory=dict, converter=_projects_map)
    #: Subscription tier -> the limit each project on that tier gets.
    tiers: Mapping[str, RateLimit] = attrs.field(factory=dict, converter=_tiers_map)
    #: Project name -> its tier (a key of :attr:`tiers`).
    project_tiers: Mapping[str, str] = attrs.field(factory=dict, converter=_name_map)
    #: The tier of projects missing from :attr:`project_tiers`; None: no tier limit for them.
    default_tier: str | None = None

    def __attrs_post_init__(self) -> None:
        for project, tier in self.project_tiers.items():
            if tier not in self.tiers:
                raise ConfigurationError(
                    f"rate_limits project_tiers[{project!r}]: unknown tier {tier!r} "
                    f"(tiers: {', '.join(sorted(self.tiers)) or 'none'})"
                )
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ConfigurationError(
                f"rate_limits default_tier: unknown tier {self.default_tier!r} "
                f"(tiers: {', '.join(sorted(self.tiers)) or 'none'})"
            )

    def __bool__(self) -> bool:
        """False when no limit is configured (the worker then skips the lookup)."""
        return bool(self.queues or self.projects or self.tiers)

    def tier_of(self, project: str) -> str | None:
        """The tier of ``project``, or None."""
        return self.project_tiers.get(project, self.default_tier)

    def applicable(
        self, project: str, queue: str, task: str, task_limit: RateLimit | None = None
    ) -> list[KeyedLimit]:
        """Every limit a job of ``task`` in ``project``/``queue`` falls under, narrowest first,
        each with its limiter key (``task_limit`` is the task's own ``rate_limit``)."""
        found: list[KeyedLimit] = []
        if task_limit is not None:
            found.append((rate_limit_key(project, queue, task), task_limit))
        if (limit := self.queues.get(queue)) is not None:
            found.append((f"queue:{project}:{queue}", limit))
        if (limit := self.projects.get(project)) is not None:
            found.append((f"project:{project}", limit))
        tier = self.tier_of(project)
        if tier is not None:
            found.append((f"tier:{project}", self.tiers[tier]))
        return found


@attrs.frozen
class Admission:
    """The answer of :meth:`RateLimiter.acquire` and :meth:`RateLimiter.acquire_all`.

    Two answers are equal when they make the same decision (``key`` and ``at`` are not
    compared).
    """

    #: True when one unit was admitted (and counted against every limit asked about).
    allowed: bool
    #: Seconds until a retry may be admitted; 0 when allowed.
    retry_after: float
    #: When refused, the key that refused with the longest wait (None when not known).
    key: str | None = attrs.field(default=None, eq=False, kw_only=True)
    #: The limiter's time of the decision, when it knows it (a shared limiter uses its own
    #: clock, such as Redis's ``TIME``, not the caller's).
    at: dt.datetime | None = attrs.field(default=None, eq=False, kw_only=True)


@runtime_checkable
class RateLimiter(Protocol):
    """Admits units of work under per-key :class:`RateLimit` s; from ``taskforge_rate_limiter``.

    Implementations must never admit more than ``limit.count`` units of one key in any window
    of ``limit.period`` seconds, and must be safe for concurrent callers. The conformance suite
    (:class:`taskforge_conformance.RateLimiterConformance`) checks these promises.

    A limiter may also have ``async def aclose(self) -> None``; a worker awaits it when it
    stops (to close connections).
    """

    async def acquire(self, key: str, limit: RateLimit) -> Admission:
        """Atomically admit one unit under ``limit`` for ``key``, or say when to try again.

        A refused call consumes nothing: ``Admission(False, retry_after)`` where
        ``retry_after`` is the number of seconds after which a call would be admitted if no
        other caller takes the unit first.
        """
        ...

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        """Atomically admit one unit under every ``(key, limit)`` of ``limits``, or none.

        All or nothing: if any key refuses, no key is charged, and ``retry_after`` is the
        longest wait among the refusing keys (with ``key`` naming it). Keys must be distinct.
        ``acquire_all([(key, limit)])`` is ``acquire(key, limit)``.
        """
        ...


async def acquire_all(limiter: Any, limits: Sequence[KeyedLimit]) -> Admission:
    """Ask ``limiter`` about ``limits`` with :meth:`RateLimiter.acquire_all`.

    For a limiter written before ``acquire_all`` existed (only ``acquire``), the keys are asked
    one by one, stopping at the first refusal: not atomic -- the keys admitted before a refusal
    stay charged -- so such a limiter may under-admit a job with several limits, never
    over-admit it.
    """
    method = getattr(limiter, "acquire_all", None)
    if method is not None:
        return await method(limits)  # type: ignore[no-any-return]
    admission = Admission(True, 0.0)
    for key, limit in limits:
        admission = await limiter.acquire(key, limit)
        if not admission.allowed:
            return Admission(False, admission.retry_after, key=key, at=admission.at)
    return admission


_NS = 10**9
_US = 1000  # nanoseconds in a microsecond, the resolution of the clock's datetimes
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


@functools.lru_cache(maxsize=1024)
def _interval_ns(limit: RateLimit) -> int:
    """The emission interval ``period / count`` in nanoseconds, rounded up (never faster)."""
    return math.ceil(Fraction(limit.period) * _NS / limit.count)


@functools.lru_cache(maxsize=1024)
def interval_us(limit: RateLimit) -> int:
    """The emission interval ``period / count`` in whole microseconds, rounded up: ``count``
    intervals are never shorter than the exact ``period``, so spacing admissions at least one
    interval apart keeps at most ``count`` in any window of ``period``."""
    return math.ceil(Fraction(limit.period) * 1_000_000 / limit.count)


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
        return await self.acquire_all(((key, limit),))

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        """All keys are read and written under one lock hold: all or nothing, atomically."""
        await anyio.lowlevel.checkpoint()  # before deciding: a cancelled caller consumes nothing
        intervals = [(key, _interval_ns(limit)) for key, limit in limits]
        if len({key for key, _ in intervals}) != len(intervals):
            raise ValueError(f"acquire_all needs distinct keys, got {[k for k, _ in intervals]}")
        with self._lock:
            when = self.clock.now()
            now = (when - _EPOCH) // _MICROSECOND * _US
            self._calls += 1
            if self._calls >= max(self.SWEEP_EVERY, len(self._tat)):
                self._sweep(now)
            wait, refused_by = 0, ""
            for key, interval in intervals:
                tat = self._tat.get(key, now)
                if tat - now > interval:  # the clock went backwards: never wait more than T
                    tat = self._tat[key] = now + interval
                if tat - now > wait:
                    wait, refused_by = tat - now, key
            if wait == 0:
                for key, interval in intervals:
                    self._tat[key] = now + interval
                return Admission(True, 0.0, at=when)
        wait_us = -(-wait // _US)
        return Admission(False, wait_us / 1_000_000, key=refused_by, at=when)

    def _sweep(self, now: int) -> None:
        self._calls = 0
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}


@hookimpl(trylast=True)
def taskforge_rate_limiter(app: TaskForge) -> RateLimiter:
    """The core's fallback: an :class:`InProcessRateLimiter` on ``app.clock``."""
    return InProcessRateLimiter(app.clock)
