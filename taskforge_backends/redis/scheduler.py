"""The Redis cron scheduler: one leader among the instances fires each tick exactly once.

Every worker started with a :class:`~taskforge_backends.redis.RedisPlugin` runs a
:class:`RedisScheduler`. The instances share a few Redis keys (all under the plugin's prefix):

``{prefix}:scheduler:entries``
    hash ``name -> JSON`` of every cron entry. Each instance publishes its app's
    ``@app.periodic`` entries there when it starts (the last one started wins when two versions
    disagree); :class:`Schedules` adds and removes entries at run time. The leader re-reads
    the hash about once a second, so changes apply without a restart.
``{prefix}:scheduler:last``
    hash ``name -> microseconds since the epoch`` of the last tick handled per entry (fired,
    or dropped on purpose). A new entry, or one whose definition changed, gets an *anchor*
    there -- the time it was published -- so its first tick is the first one after it
    appeared or changed (an hourly entry made daily does not catch up a day of hourly ticks).
``{prefix}:scheduler:lease`` and ``{prefix}:scheduler:epoch``
    the leader's lease and the counter its fencing tokens come from.

**Leader election.** An instance becomes leader with a Lua script that, when the lease key
is absent, increments the epoch and sets the lease (``SET ... PX``) to the token
``"{epoch}:{instance}"``. The epoch is the fencing token: every later write of the leader
(renewing, recording ticks, releasing) is a script that first checks that the lease still
holds exactly that token, so a leader that lost its lease -- paused by the OS, cut off from
Redis -- can never write again, even if it wakes up and tries. The leader renews every
``lease / 3`` seconds and trusts its leadership only until ``lease * 2 / 3`` seconds after it
*sent* its last successful renewal (its local deadline, measured on the monotonic clock, is
shorter than the lease so that clock drift and slow replies cannot make two leaders fire at
once). Followers try to take the lease every ``lease / 3`` seconds, so after a leader dies a
new one fires within about ``lease + lease / 3`` seconds (4 s with the default 3 s lease). A
leader that stops cleanly releases the lease at once.

**Exactly once.** The leader enqueues each tick's job with the idempotency key
:meth:`PeriodicEntry.job_key` and records the tick in ``last`` only once the job is stored.
If it dies between the two, the next leader enqueues the tick again and the storage answers
with the job already stored: the tick still has exactly one job. A tick is never recorded
before it is stored, so none is lost; a stale leader's late enqueue hits the same key.

**Missed ticks** (ticks that came due while no leader was firing: every instance down, a
leader killed before the next one took over, Redis unreachable) follow
:class:`MissedTicks`: ``catch_up`` (the default) fires every missed tick, oldest first, up
to ``max_catch_up`` per entry (the most recent ones; older ones are dropped with a warning);
``latest`` fires only the latest missed tick (like the in-process scheduler's coalescing);
``skip`` fires no tick that came due before this leader took over. The default catches up
because "no job is lost" is TaskForge's first promise; pick ``latest`` for entries where a
backlog of stale runs is useless.

**Redis unreachable.** Nothing fires: the leader cannot renew, so it stops at its local
deadline, before its lease can have run out, and no follower can be elected. Every instance
logs the error on the ``taskforge.scheduler`` logger and retries with back-off (0.5 s doubling
up to 10 s); the worker keeps running jobs. When Redis is back, a leader is elected and, with
``catch_up``, fires the ticks missed meanwhile (Redis must keep its data -- AOF or RDB
persistence -- for ``last`` to survive a restart of Redis itself; if it is lost, every
instance publishes its entries again when it reconnects, and ticks before that are not caught
up).

**Why the idempotency key still matters.** The lease makes one leader the rule, not a proof:
a failover to a Redis replica that had not yet received the lease, or a leader whose enqueue
outlasted its lease (renewal happens between enqueues, not during one), can let two instances
fire the same tick for a moment. Both enqueues carry the same key, so the tick still has one
job; the fenced record keeps ``last`` consistent.

**Storage errors.** A tick whose enqueue fails is not recorded, and is tried again after a
back-off (1 s doubling up to 60 s) -- with ``catch_up`` it stays due until it is stored. A
job that can never be stored (an unknown task, arguments that no longer fit:
:class:`~taskforge_core.errors.InvalidJobError`) is logged and its tick counted as handled,
so one broken entry never holds back the others.

**Time.** Ticks come from :meth:`PeriodicEntry.next_tick` (time zones and daylight-saving
changes are handled there) and "now" from ``app.clock``, so tests can drive ticks with a
:class:`~taskforge_core.clock.FakeClock`. Leases are real time (they live in Redis). The
leader's wall clock decides when a tick is due: keep the hosts' clocks in sync (NTP).

redis.asyncio runs on asyncio only: under trio, :meth:`RedisScheduler.run` raises
:class:`~taskforge_core.errors.ConfigurationError`.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import redis.asyncio
import redis.exceptions

from taskforge_core.clock import Clock, SystemClock
from taskforge_core.errors import InvalidCronError, InvalidJobError
from taskforge_core.scheduler import PeriodicEntry

if TYPE_CHECKING:
    import anyio.abc

    from taskforge_backends.redis._settings import RedisSettings
    from taskforge_core.app import TaskForge
    from taskforge_core.models import NewJob

__all__ = ["Leader", "MissedTicks", "RedisScheduler", "SchedulerConfig", "Schedules"]

logger = logging.getLogger("taskforge.scheduler")

_T = TypeVar("_T")

#: Back-off while Redis cannot be reached: first retry after this many seconds, doubling...
REDIS_RETRY_FIRST = 0.5
#: ...up to this many seconds.
REDIS_RETRY_MAX = 10.0
#: Back-off of ticks whose enqueue failed (as in the in-process scheduler).
ENQUEUE_RETRY_FIRST = 1.0
ENQUEUE_RETRY_MAX = 60.0

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class MissedTicks(enum.StrEnum):
    """What the leader does with ticks that came due while no leader was firing."""

    #: Fire every missed tick, oldest first (at most ``max_catch_up`` per entry, the latest).
    CATCH_UP = "catch_up"
    #: Fire only the latest missed tick of each entry.
    LATEST = "latest"
    #: Fire none of the ticks that came due before this leader took over.
    SKIP = "skip"


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """Settings of the :class:`RedisScheduler` (``RedisPlugin(url, scheduler=...)``)."""

    #: Seconds a leader's lease lasts without renewal. A killed leader is replaced after about
    #: ``lease * 4 / 3`` seconds; shorter leases hand over faster but need a steadier link.
    lease: float = attrs.field(default=3.0)
    #: The policy for ticks missed while no leader was firing.
    missed_ticks: MissedTicks = attrs.field(default=MissedTicks.CATCH_UP, converter=MissedTicks)
    #: With ``catch_up``: the most ticks of one entry fired in one go; older ones are dropped.
    max_catch_up: int = attrs.field(default=100)

    @lease.validator
    def _check_lease(self, _: object, value: float) -> None:
        if not 0.1 <= value <= 3600:
            raise ValueError(f"lease must be between 0.1 and 3600 seconds, not {value!r}")

    @max_catch_up.validator
    def _check_max_catch_up(self, _: object, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_catch_up must be at least 1, not {value!r}")

    @property
    def renew_interval(self) -> float:
        """How often the leader renews and followers try to take over."""
        return self.lease / 3

    @property
    def trusted_for(self) -> float:
        """How long after sending a successful renewal the leader still fires."""
        return self.lease * 2 / 3


@attrs.frozen(kw_only=True)
class Leader:
    """Who holds the scheduler's lease (:meth:`Schedules.leader`)."""

    #: The fencing token: it grows with every new leadership.
    epoch: int
    #: ``host:pid:random`` of the instance.
    instance: str
    #: Milliseconds before the lease runs out unless renewed.
    expires_in_ms: int


# -- keys, encoding ----------------------------------------------------------------------------


@attrs.frozen
class _Keys:
    entries: str
    last: str
    lease: str
    epoch: str

    @classmethod
    def of(cls, settings: RedisSettings) -> _Keys:
        return cls(
            entries=settings.key("scheduler", "entries"),
            last=settings.key("scheduler", "last"),
            lease=settings.key("scheduler", "lease"),
            epoch=settings.key("scheduler", "epoch"),
        )


def _micros(moment: dt.datetime) -> int:
    """A UTC time as whole microseconds since the epoch (exact, and ordered in Lua)."""
    delta = moment.astimezone(dt.UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: bytes | str | int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=int(value))


def _encode(entry: PeriodicEntry) -> str:
    """An entry as the JSON stored in Redis; its arguments must be JSON values (as job
    arguments are)."""
    try:
        return json.dumps(
            {
                "name": entry.name,
                "cron": entry.cron,
                "task": entry.task,
                "timezone": entry.timezone,
                "args": list(entry.args),
                "kwargs": dict(entry.kwargs),
            },
            sort_keys=True,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(
            f"the arguments of periodic entry {entry.name!r} are not JSON values: {exc}"
        ) from exc


def _decode(raw: bytes | str) -> PeriodicEntry:
    data = json.loads(raw)
    return PeriodicEntry(
        name=data["name"],
        cron=data["cron"],
        task=data["task"],
        timezone=data.get("timezone", "UTC"),
        args=tuple(data.get("args", ())),
        kwargs=dict(data.get("kwargs", {})),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- Lua scripts: every write of the leader is fenced by its token ----------------------------

#: KEYS: lease, epoch. ARGV: instance, lease ms. -> {1, epoch} when taken, {0, pttl} otherwise.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, epoch}
"""

#: KEYS: lease. ARGV: token, lease ms. -> 1 when still held (and extended), 0 otherwise.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: lease. ARGV: token. -> 1 when released.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS: lease, last, entries. ARGV: token, then name, tick pairs. Moves each entry's last
#: tick forward (never back), for entries that still exist. -> 1, or 0 when not the leader.
_RECORD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then
    local old = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
    if tonumber(ARGV[i + 1]) > old then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
  end
end
return 1
"""


#: KEYS: entries, last. ARGV: now, then name, JSON pairs. An entry that is new or whose
#: definition changed starts afresh: its last tick moves up to ``now``, so that neither a new
#: entry nor a changed schedule (an hourly entry made daily, say) fires ticks from before the
#: change. Not fenced: any instance may publish, and it never moves a last tick backwards.
_PUBLISH = """
for i = 2, #ARGV, 2 do
  local changed = redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1]
  if changed or redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
    if tonumber(ARGV[1]) > last then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
    end
  end
end
return 1
"""


# -- the runtime API ---------------------------------------------------------------------------


class Schedules:
    """Cron entries kept in Redis, changed at run time: ``await plugin.schedules.add(entry)``.

    The leader picks changes up within about a second, without a restart. Each call opens a
    connection and closes it (these are administrative calls, not a hot path); asyncio only.
    """

    def __init__(self, settings: RedisSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        #: Where "now" comes from when an entry is added without ``app`` (the wall clock).
        self.clock: Clock = clock or SystemClock()
        self._keys = _Keys.of(settings)

    def __repr__(self) -> str:
        return f"<Schedules prefix={self.settings.prefix!r}>"

    async def add(self, entry: PeriodicEntry, *, app: TaskForge | None = None) -> None:
        """Add ``entry``, or replace the entry of that name.

        A new or changed entry's first tick is its first tick after now (an unchanged one
        keeps its progress). The cron expression and time
        zone were checked when the :class:`PeriodicEntry` was built
        (:class:`~taskforge_core.errors.InvalidCronError`); given ``app``, the task is looked
        up and its arguments checked too
        (:class:`~taskforge_core.errors.UnknownTaskError`,
        :class:`~taskforge_core.errors.InvalidJobError`). Without ``app`` an unknown task is
        reported by the leader at fire time, and the tick is dropped.
        """
        if app is not None:
            app.get_task(entry.task).build(entry.args, entry.kwargs)
        raw = _encode(entry)
        now = _micros((app.clock if app is not None else self.clock).now())
        await self._call(lambda client: _publish(client, self._keys, [(entry.name, raw)], now))

    async def remove(self, name: str) -> bool:
        """Remove the entry ``name`` (no further tick fires); False when there was none.

        An entry declared with ``@app.periodic`` comes back when an instance of that app
        starts; remove it from the code too.
        """

        async def remove(client: redis.asyncio.Redis) -> bool:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._keys.entries, name)
                pipe.hdel(self._keys.last, name)
                removed, _ = await pipe.execute()
            return bool(removed)

        return await self._call(remove)

    async def list(self) -> list[PeriodicEntry]:
        """Every entry, sorted by name (entries Redis holds but cannot be read are logged)."""

        async def read(client: redis.asyncio.Redis) -> list[PeriodicEntry]:
            return sorted(
                _parse_entries(await client.hgetall(self._keys.entries), {}).values(),
                key=lambda e: e.name,
            )

        return await self._call(read)

    async def last_ticks(self) -> dict[str, dt.datetime]:
        """The last tick handled per entry (or, before its first, the time it was added)."""

        async def read(client: redis.asyncio.Redis) -> dict[str, dt.datetime]:
            raw = await client.hgetall(self._keys.last)
            return {_text(k): _from_micros(v) for k, v in raw.items()}

        return await self._call(read)

    async def leader(self) -> Leader | None:
        """The instance that holds the lease now, or None between leaders."""

        async def read(client: redis.asyncio.Redis) -> Leader | None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.lease)
                pipe.pttl(self._keys.lease)
                token, ttl = await pipe.execute()
            if token is None:
                return None
            epoch, _, instance = _text(token).partition(":")
            return Leader(epoch=int(epoch), instance=instance, expires_in_ms=int(ttl))

        return await self._call(read)

    async def _call(self, operation: Callable[[redis.asyncio.Redis], Awaitable[_T]]) -> _T:
        client = self.settings.client()
        try:
            return await operation(client)
        finally:
            await client.aclose()


async def _publish(
    client: redis.asyncio.Redis, keys: _Keys, entries: Iterable[tuple[str, str]], now: int
) -> None:
    """Write entries; a new or changed one is anchored at ``now`` (see :data:`_PUBLISH`)."""
    args: list[Any] = [now]
    for name, raw in entries:
        args += [name, raw]
    await client.eval(_PUBLISH, 2, keys.entries, keys.last, *args)


#: Parsed entries by their JSON, so the leader's once-a-second reload parses only changes.
_ParseCache = dict[bytes | str, PeriodicEntry | None]


def _parse_entries(
    raw: Mapping[bytes | str, bytes | str], cache: _ParseCache
) -> dict[str, PeriodicEntry]:
    entries: dict[str, PeriodicEntry] = {}
    for name, value in raw.items():
        if value not in cache:
            try:
                cache[value] = _decode(value)
            except (ValueError, KeyError, TypeError, InvalidCronError) as exc:
                logger.error("periodic %r in Redis cannot be read (%s); ignored", _text(name), exc)
                cache[value] = None
        entry = cache[value]
        if entry is not None:
            entries[entry.name] = entry
    return entries


# -- the scheduler -----------------------------------------------------------------------------


class _LostLeadership(Exception):
    """The lease is no longer ours (or we cannot be sure it is)."""


@attrs.define
class _Lease:
    token: str
    epoch: int
    #: Monotonic time after which the leader no longer trusts its lease.
    trusted_until: float
    #: Monotonic time of the next renewal.
    renew_at: float
    #: ``app.clock`` time the leadership began (the ``skip`` policy fires nothing before it).
    since: dt.datetime


class RedisScheduler:
    """A :class:`~taskforge_core.scheduler.Scheduler` shared by every instance through Redis.

    See the module documentation for leader election, fencing, the missed-tick policy and the
    behaviour when Redis or the storage fail.
    """

    def __init__(self, settings: RedisSettings, config: SchedulerConfig | None = None) -> None:
        self.settings = settings
        self.config = config or SchedulerConfig()
        #: ``host:pid:random``: names this instance in the lease and the logs.
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._keys = _Keys.of(settings)
        self._cache: _ParseCache = {}
        #: Entries whose expression has no tick left (logged once).
        self._exhausted: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return (
            f"<RedisScheduler prefix={self.settings.prefix!r} instance={self.instance} "
            f"missed_ticks={self.config.missed_ticks.value}>"
        )

    async def run(
        self,
        app: TaskForge,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        client = self.settings.client()  # ConfigurationError under trio
        lease: _Lease | None = None
        try:
            logger.info(
                "Redis scheduler %s started (prefix %r, %d periodic entries of this app)",
                self.instance,
                self.settings.prefix,
                len(app.periodic_entries),
            )
            task_status.started()
            delay = REDIS_RETRY_FIRST
            published = False
            while True:
                try:
                    if not published:
                        await self._publish_app(client, app)
                        published = True
                    lease = await self._acquire(client, app)
                    delay = REDIS_RETRY_FIRST
                    if lease is None:
                        continue
                    try:
                        await self._lead(client, app, lease)
                    except _LostLeadership as exc:
                        logger.warning(
                            "scheduler %s is no longer the leader (epoch %d): %s",
                            self.instance,
                            lease.epoch,
                            exc,
                        )
                    lease = None
                except (redis.exceptions.RedisError, OSError) as exc:
                    if lease is not None:
                        logger.warning(
                            "scheduler %s stops firing (epoch %d): Redis failed",
                            self.instance,
                            lease.epoch,
                        )
                        lease = None
                    reason = str(exc) or f"no answer within {self.config.renew_interval:g} s"
                    logger.warning(
                        "scheduler %s cannot reach Redis (%s: %s); no tick fires from this "
                        "instance, trying again in %g s",
                        self.instance,
                        type(exc).__name__,
                        reason,
                        delay,
                    )
                    published = False  # Redis may have restarted empty: publish again
                    await anyio.sleep(delay)
                    delay = min(delay * 2, REDIS_RETRY_MAX)
        finally:
            with anyio.CancelScope(shield=True):
                if lease is not None:
                    with anyio.move_on_after(1.0):
                        try:
                            await self._script(client, _RELEASE, [self._keys.lease], [lease.token])
                            logger.info(
                                "scheduler %s released the lease (epoch %d)",
                                self.instance,
                                lease.epoch,
                            )
                        except (redis.exceptions.RedisError, OSError):
                            logger.warning(
                                "scheduler %s could not release its lease", self.instance
                            )
                with anyio.move_on_after(1.0):
                    await client.aclose()

    # -- Redis calls -----------------------------------------------------------------------

    async def _timed(self, call: Awaitable[_T]) -> _T:
        """A Redis call that gives up (``TimeoutError``) after a third of the lease."""
        with anyio.fail_after(self.config.renew_interval):
            return await call

    async def _script(
        self, client: redis.asyncio.Redis, script: str, keys: list[str], args: list[Any]
    ) -> Any:
        return await self._timed(client.eval(script, len(keys), *keys, *args))

    async def _publish_app(self, client: redis.asyncio.Redis, app: TaskForge) -> None:
        entries: list[tuple[str, str]] = []
        for entry in app.periodic_entries.values():
            try:
                entries.append((entry.name, _encode(entry)))
            except InvalidJobError as exc:
                logger.error("periodic %r is not published: %s", entry.name, exc)
        if entries:
            await self._timed(_publish(client, self._keys, entries, _micros(app.clock.now())))

    # -- election --------------------------------------------------------------------------

    async def _acquire(self, client: redis.asyncio.Redis, app: TaskForge) -> _Lease | None:
        """Try to take the lease; as a follower, wait before returning None."""
        lease_ms = int(self.config.lease * 1000)
        sent = time.monotonic()
        taken, value = await self._script(
            client, _ACQUIRE, [self._keys.lease, self._keys.epoch], [self.instance, lease_ms]
        )
        if taken:
            epoch = int(value)
            logger.info("scheduler %s is the leader (epoch %d)", self.instance, epoch)
            return _Lease(
                token=f"{epoch}:{self.instance}",
                epoch=epoch,
                trusted_until=sent + self.config.trusted_for,
                renew_at=sent + self.config.renew_interval,
                since=app.clock.now(),
            )
        # Sleep until the lease runs out, but retry at least every renew_interval (a lease
        # without a TTL, -1, was set by hand: keep trying at the usual pace).
        ttl = int(value) / 1000
        wait = self.config.renew_interval if ttl < 0 else min(self.config.renew_interval, ttl)
        await anyio.sleep(max(wait, 0.01))
        return None

    async def _renew(self, client: redis.asyncio.Redis, lease: _Lease) -> None:
        sent = time.monotonic()
        lease_ms = int(self.config.lease * 1000)
        if not await self._script(client, _RENEW, [self._keys.lease], [lease.token, lease_ms]):
            raise _LostLeadership("another instance holds the lease")
        lease.trusted_until = sent + self.config.trusted_for
        lease.renew_at = sent + self.config.renew_interval

    def _check(self, lease: _Lease) -> None:
        if time.monotonic() >= lease.trusted_until:
            raise _LostLeadership("the lease could not be renewed in time")

    # -- leading ---------------------------------------------------------------------------

    async def _lead(self, client: redis.asyncio.Redis, app: TaskForge, lease: _Lease) -> None:
        """Fire due ticks until the lease is lost (raises) or the task is cancelled."""
        retry_at = 0.0
        retry_delay = 0.0
        while True:
            if time.monotonic() >= lease.renew_at:
                await self._renew(client, lease)
            self._check(lease)
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys.entries)
                pipe.hgetall(self._keys.last)
                raw_entries, raw_last = await self._timed(pipe.execute())
            entries = _parse_entries(raw_entries, self._cache)
            last = {_text(k): _from_micros(v) for k, v in raw_last.items()}
            now = app.clock.now()
            plans = {name: self._plan(entry, last, now, lease) for name, entry in entries.items()}
            due = {name: plan for name, plan in plans.items() if plan.handled is not None}
            if due and time.monotonic() >= retry_at:
                if time.monotonic() >= lease.renew_at:  # planning took a while: renew first
                    await self._renew(client, lease)
                self._check(lease)
                handled, failed = await _fire(app, entries, due)
                if handled:  # the script checks the token: no local deadline needed to record
                    args: list[Any] = [lease.token]
                    for name, tick in handled.items():
                        args += [name, _micros(tick)]
                    recorded = await self._script(
                        client,
                        _RECORD,
                        [self._keys.lease, self._keys.last, self._keys.entries],
                        args,
                    )
                    if not recorded:
                        raise _LostLeadership("another instance holds the lease")
                if failed:
                    retry_delay = (
                        ENQUEUE_RETRY_FIRST
                        if not retry_delay
                        else min(retry_delay * 2, ENQUEUE_RETRY_MAX)
                    )
                    retry_at = time.monotonic() + retry_delay
                    logger.warning(
                        "periodic jobs of %s not stored; retrying in %.0f s",
                        ", ".join(sorted(failed)),
                        retry_delay,
                    )
                else:
                    retry_delay = 0.0
                continue  # recompute from what Redis now holds
            # Sleep until the next tick (by app.clock), the next renewal or the next retry.
            wake = min([p.next for p in plans.values() if p.next is not None], default=None)
            real = max(0.0, lease.renew_at - time.monotonic())
            if due:
                real = min(real, max(0.0, retry_at - time.monotonic()))
            with anyio.move_on_after(real):
                if wake is None:
                    await anyio.sleep_forever()
                else:
                    await app.clock.sleep((wake - app.clock.now()).total_seconds())

    def _plan(
        self, entry: PeriodicEntry, last: Mapping[str, dt.datetime], now: dt.datetime, lease: _Lease
    ) -> _Plan:
        """The ticks of ``entry`` to fire now, by the missed-tick policy."""
        after = last.get(entry.name)
        if after is None:  # published by an older version, or its anchor was lost: start now
            after = lease.since
        try:
            ticks, truncated, nxt = _due(entry, after, now, self.config.max_catch_up)
        except InvalidCronError:
            if (entry.name, entry.cron) not in self._exhausted:
                self._exhausted.add((entry.name, entry.cron))
                logger.exception("periodic %r will not fire again", entry.name)
            return _Plan(fire=(), handled=None, next=None)
        if not ticks:
            return _Plan(fire=(), handled=None, next=nxt)
        policy = self.config.missed_ticks
        fire = ticks
        if policy is MissedTicks.LATEST:
            fire = ticks[-1:]
        elif policy is MissedTicks.SKIP:
            fire = [t for t in ticks if t > lease.since]
        if truncated or len(fire) < len(ticks):
            logger.warning(
                "periodic %r missed ticks after %s (policy %s); firing %s",
                entry.name,
                after.isoformat(),
                policy.value,
                _describe(fire),
            )
        return _Plan(fire=tuple(fire), handled=ticks[-1], next=nxt)


def _describe(ticks: list[dt.datetime]) -> str:
    if not ticks:
        return "none of them"
    if len(ticks) <= 3:
        return ", ".join(t.isoformat() for t in ticks)
    return f"{len(ticks)} ticks from {ticks[0].isoformat()} to {ticks[-1].isoformat()}"


@attrs.frozen
class _Plan:
    #: Ticks to enqueue, oldest first.
    fire: tuple[dt.datetime, ...]
    #: The tick recorded as last once ``fire`` is stored; None when nothing is due.
    handled: dt.datetime | None
    #: The first tick after now (to sleep until); None when the entry never fires again.
    next: dt.datetime | None


def _due(
    entry: PeriodicEntry, after: dt.datetime, now: dt.datetime, limit: int
) -> tuple[list[dt.datetime], bool, dt.datetime]:
    """The ticks in ``(after, now]`` (only the latest ``limit``), whether older ones were left
    out, and the first tick after ``now``.

    Walks forward from ``after`` at most ``limit + 1`` steps; after a longer gap it looks back
    from ``now`` in doubling windows, so a day-long outage of a per-second entry does not walk
    through 86,400 ticks.
    """
    ticks: list[dt.datetime] = []
    tick = after
    for _ in range(limit + 1):
        tick = entry.next_tick(tick)
        if tick > now:
            return ticks, False, tick
        ticks.append(tick)
    back = dt.timedelta(seconds=1)
    while True:
        low = max(after, now - back)
        window: collections.deque[dt.datetime] = collections.deque(maxlen=limit)
        count = 0
        tick = entry.next_tick(low)
        while tick <= now:
            window.append(tick)
            count += 1
            tick = entry.next_tick(tick)
        if count >= limit or low == after:
            return list(window), True, tick
        back *= 2


async def _fire(
    app: TaskForge, entries: Mapping[str, PeriodicEntry], plans: Mapping[str, _Plan]
) -> tuple[dict[str, dt.datetime], set[str]]:
    """Enqueue the planned ticks; return the last tick handled per entry (stored, or dropped
    because the job can never be stored) and the names of entries to retry."""
    jobs: list[tuple[str, dt.datetime, NewJob]] = []
    broken: set[str] = set()
    for name, plan in plans.items():
        entry = entries[name]
        for tick in plan.fire:
            try:
                task = app.get_task(entry.task).options(key=entry.job_key(tick))
                jobs.append((name, tick, task.build(entry.args, entry.kwargs)))
            except Exception as exc:
                logger.error(
                    "periodic %r: cannot build its job for tick %s (%s: %s); skipped",
                    name,
                    tick.isoformat(),
                    type(exc).__name__,
                    exc,
                )
                broken.add(name)
                break
    failed = await _store(app, jobs)
    handled: dict[str, dt.datetime] = {}
    for name, plan in plans.items():
        if name in failed:
            # Keep what was stored before the first failure of this entry: nothing of it is
            # recorded, so it is all fired again (a no-op for the stored ones) on retry.
            continue
        assert plan.handled is not None
        handled[name] = plan.handled
    return handled, failed


async def _store(app: TaskForge, jobs: list[tuple[str, dt.datetime, NewJob]]) -> set[str]:
    """Store the jobs in one call; the names of entries whose jobs could not be stored."""
    if not jobs:
        return set()
    try:
        await app.enqueue_jobs([job for _, _, job in jobs])
    except InvalidJobError as exc:
        if len(jobs) == 1:
            name, tick, _ = jobs[0]
            logger.error("periodic %r: its job for %s was rejected (%s); skipped", name, tick, exc)
            return set()
        failed: set[str] = set()
        for item in jobs:  # all or nothing: store one by one so the good ones still fire
            failed |= await _store(app, [item])
        return failed
    except Exception:
        logger.exception(
            "could not enqueue periodic jobs of %s; will retry",
            ", ".join(sorted({name for name, _, _ in jobs})),
        )
        return {name for name, _, _ in jobs}
    for name, tick, job in jobs:
        logger.debug("periodic %r fired tick %s (key %s)", name, tick.isoformat(), job.key)
    return set()
