"""A rate limiter shared by every process that talks to one Redis: :class:`RedisRateLimiter`.

The algorithm is the core's GCRA with zero burst tolerance (see
:class:`~taskforge_core.ratelimit.InProcessRateLimiter`), run as one Lua script so that it is
atomic across every worker of the fleet:

* per key Redis holds one integer, the theoretical arrival time (TAT) in microseconds since the
  epoch; a missing key means "admit now";
* the script reads the time from Redis's own ``TIME`` (never from the callers, whose clocks
  differ), then for every key of the job computes ``wait = TAT - now`` (a TAT more than one
  emission interval ``T`` ahead -- Redis's clock stepped back, or the limit was raised -- counts
  as ``now + T``);
* if every wait is ``<= 0`` it writes ``TAT = now + T`` for every key, with a ``PX`` expiry of
  ``T`` rounded up to the millisecond: once the TAT is in the past the key carries no
  information, so Redis forgets it. Otherwise it writes nothing and answers the longest wait.

Why this keeps the window promise: a key admits only when ``now >= TAT`` and then moves TAT to
``now + T``, so two admissions of one key are always at least ``T`` apart on Redis's clock, and
``count + 1`` admissions span at least ``count * T >= period``; no window of ``period`` holds
more than ``count``. ``T`` is an integer number of microseconds rounded up, and Lua's doubles
hold integers exactly up to 2**53 (about 285 years of microseconds), so nothing drifts.

Redis unreachable (connection refused, time-out, a server error) is not an exception for the
worker: each limit's :attr:`~taskforge_core.ratelimit.RateLimit.fail_open` decides. If every
limit of the job fails open the job is admitted; otherwise it is refused with
``retry_after=unavailable_retry``. The first failure of an outage is logged as a warning and
the recovery as info, not one line per job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from taskforge_core.ratelimit import Admission, KeyedLimit, RateLimit, interval_us

if TYPE_CHECKING:
    import redis.asyncio

    from taskforge_backends.redis._settings import RedisSettings

__all__ = ["GCRA_SCRIPT", "RedisRateLimiter"]

logger = logging.getLogger("taskforge.redis.ratelimit")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: KEYS: the limiter keys of one job. ARGV[i]: the emission interval of KEYS[i] in microseconds.
#: Returns ``{admitted (1/0), wait_us, index of the key with the longest wait (1-based, 0 when
#: admitted), now_us}``.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, worst = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat - now > interval then tat = now + interval end
  if tat - now > wait then wait = tat - now; worst = i end
end
if wait > 0 then return {0, wait, worst, now} end
for i = 1, #KEYS do
  local interval = tonumber(ARGV[i])
  redis.call('SET', KEYS[i], string.format('%.0f', now + interval),
             'PX', math.ceil(interval / 1000))
end
return {1, 0, 0, now}
"""


class RedisRateLimiter:
    """GCRA rate limits shared by every process using the same Redis and key prefix.

    Keys are ``{prefix}:ratelimit:{limiter key}``. One ``EVALSHA`` per job, whatever the number
    of its limits (the script is loaded on the first ``NOSCRIPT``, e.g. after a Redis restart
    or ``SCRIPT FLUSH``). The client is made on first use, on the running asyncio loop; close
    it with :meth:`aclose` (a worker does so when it stops).

    :param settings: where to connect, and the key prefix.
    :param timeout: seconds to wait for Redis (connect and each reply) before treating it as
        unreachable. Short, because a worker waits for the answer before running a job.
    :param unavailable_retry: the ``retry_after`` of a job refused because Redis is unreachable
        and one of its limits fails closed.
    """

    def __init__(
        self,
        settings: RedisSettings,
        *,
        timeout: float = 1.0,
        unavailable_retry: float = 1.0,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.unavailable_retry = unavailable_retry
        self.script = GCRA_SCRIPT
        self._client: redis.asyncio.Redis | None = None
        self._unavailable = False

    def __repr__(self) -> str:
        return f"<RedisRateLimiter {self.settings.url} prefix={self.settings.prefix!r}>"

    @property
    def sha(self) -> str:
        """The SHA1 that ``EVALSHA`` names the script by."""
        return hashlib.sha1(self.script.encode(), usedforsecurity=False).hexdigest()

    def _connect(self) -> redis.asyncio.Redis:
        if self._client is None:  # ConfigurationError under trio
            self._client = self.settings.client(
                socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections (a later call opens new ones)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def acquire(self, key: str, limit: RateLimit) -> Admission:
        return await self.acquire_all(((key, limit),))

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        """One atomic script for all of ``limits``; never raises because Redis is away."""
        keys = [self.settings.key("ratelimit", key) for key, _ in limits]
        if len(set(keys)) != len(keys):
            raise ValueError(f"acquire_all needs distinct keys, got {[k for k, _ in limits]}")
        args = [interval_us(limit) for _, limit in limits]
        import redis.exceptions

        try:
            reply = await self._evalsha(keys, args)
        except (redis.exceptions.RedisError, OSError) as exc:
            return self._unreachable(limits, exc)
        if self._unavailable:
            self._unavailable = False
            logger.info("the Redis rate limiter at %s answers again", self.settings.url)
        allowed, wait_us, worst, now_us = (int(x) for x in reply)
        at = _EPOCH + dt.timedelta(microseconds=now_us)
        if allowed:
            return Admission(True, 0.0, at=at)
        return Admission(False, wait_us / 1_000_000, key=limits[worst - 1][0], at=at)

    async def _evalsha(self, keys: list[str], args: list[int]) -> list[int]:
        import redis.exceptions

        client = self._connect()
        try:
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.script)
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        return cast("list[int]", reply)

    def _unreachable(self, limits: Sequence[KeyedLimit], exc: BaseException) -> Admission:
        fail_open = all(limit.fail_open for _, limit in limits)
        if not self._unavailable:
            self._unavailable = True
            logger.warning(
                "the Redis rate limiter at %s is unreachable (%s: %s): limits that fail open "
                "admit, the others defer their jobs by %g s, until it answers again",
                self.settings.url,
                type(exc).__name__,
                exc,
                self.unavailable_retry,
            )
        if fail_open:
            return Admission(True, 0.0)
        closed = next(key for key, limit in limits if not limit.fail_open)
        return Admission(False, self.unavailable_retry, key=closed)
