"""Cron scheduling for ``@app.periodic``, and the in-process scheduler used without Redis.

A :class:`Scheduler` fires the app's :class:`PeriodicEntry` objects: on every tick of an entry's
cron expression it enqueues one job of the entry's task. The scheduler in use comes from the
``taskforge_scheduler`` hook; the core answers last with :class:`InProcessScheduler`, so an
embedded SQLite setup needs no Redis, and a plugin (the Redis scheduler) can take over.

Policies of :class:`InProcessScheduler`:

* **Once per tick, across processes.** Each tick's job carries the idempotency key
  :meth:`PeriodicEntry.job_key` (entry name + tick time). Storage treats a second enqueue with
  that key as a no-op, so several processes sharing one store (e.g. one SQLite file), each
  running this scheduler, still enqueue each tick once.
* **No catch-up at start.** Ticks at or before the moment :meth:`InProcessScheduler.run`
  starts are not fired; the first fired tick of an entry is its first tick after start. (The
  Redis scheduler will add catch-up.)
* **Coalesce.** If time jumps past several ticks of an entry (a stalled process, a suspended
  machine, ``FakeClock.advance``), only the latest missed tick is fired.
* **Enqueue errors never stop the loop.** A tick whose enqueue fails with a
  :class:`~taskforge_core.errors.StorageError` (or any other unexpected error) is logged on
  the ``taskforge.scheduler`` logger and retried with back-off (1 s doubling up to 60 s) until
  it is stored or the entry's next tick supersedes it; the next tick is tried as usual. A job
  that can never be built or stored (:class:`~taskforge_core.errors.InvalidJobError`) is
  logged and dropped for that tick without holding back the other entries.
* **Time zones and DST.** Ticks come from :meth:`PeriodicEntry.next_tick`: the expression is
  read in the entry's IANA zone. A wall time skipped by a spring-forward change fires once,
  right after the gap; a wall time repeated by a fall-back change fires once (its first
  occurrence) unless the hour field is ``*``, in which case both real-time occurrences fire
  (an hourly entry keeps firing hourly) — the behaviour of Vixie cron.
* Entries are read when ``run`` starts; entries added to ``app.periodic_entries`` later are
  picked up by the next ``run``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import zoneinfo
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import attrs
from croniter import CroniterError, croniter

from taskforge_core.errors import InvalidCronError, InvalidJobError
from taskforge_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import anyio.abc

    from taskforge_core.app import TaskForge
    from taskforge_core.models import NewJob

__all__ = ["InProcessScheduler", "PeriodicEntry", "Scheduler", "taskforge_scheduler"]

logger = logging.getLogger("taskforge.scheduler")

#: The longest single sleep of :class:`InProcessScheduler`: a step of the wall clock (NTP,
#: suspend and resume) is noticed within this many seconds.
MAX_SLEEP = 60.0
#: Back-off of a tick whose enqueue failed: first retry after this many seconds, doubling...
RETRY_FIRST = 1.0
#: ...up to this many seconds.
RETRY_MAX = 60.0


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidCronError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
        ) from exc


@functools.lru_cache(maxsize=512)
def _every_hour(cron: str) -> bool:
    """True when the hour field of ``cron`` matches every hour."""
    hours: list[Any] = croniter(cron).expanded[1]
    return hours == ["*"]


@attrs.frozen(kw_only=True)
class PeriodicEntry:
    """A task to enqueue on every tick of a cron expression."""

    #: Unique name of the entry; with the tick time it forms the job's idempotency key.
    name: str
    #: Five-field cron expression (``"*/5 * * * *"``); six fields add seconds.
    cron: str
    #: The registered task to enqueue.
    task: str
    #: IANA time zone the expression is read in.
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _zone(self.timezone)
        if not croniter.is_valid(self.cron):
            raise InvalidCronError(
                f"bad cron expression {self.cron!r} for {self.name!r}: expected 5 fields "
                "(minute hour day month weekday) or 6 with seconds, e.g. '*/5 * * * *'"
            )
        self.next_tick(dt.datetime.now(dt.UTC))  # "0 0 30 2 *" parses but never comes

    def next_tick(self, after: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``after``, in UTC.

        The expression is read in :attr:`timezone`. On a fall-back DST change the repeated wall
        times fire once (their first occurrence) unless the hour field is ``*``. Raises
        :class:`InvalidCronError` when the expression has no tick after ``after``.
        """
        zone = _zone(self.timezone)
        skip_repeated = not _every_hour(self.cron)
        after_utc = after.astimezone(dt.UTC)
        start = after_utc
        while True:
            try:
                nxt: dt.datetime = croniter(self.cron, start.astimezone(zone)).get_next(dt.datetime)
            except CroniterError as exc:
                raise InvalidCronError(
                    f"cron expression {self.cron!r} of {self.name!r} has no tick after "
                    f"{after_utc.isoformat()}"
                ) from exc
            tick = nxt.astimezone(dt.UTC)
            if tick <= start:  # never go back (a start in a repeated hour misread as the first)
                start += dt.timedelta(seconds=1)
                continue
            if tick > after_utc and not (skip_repeated and tick.astimezone(zone).fold == 1):
                return tick
            start = tick

    def job_key(self, tick: dt.datetime) -> str:
        """The idempotency key of this entry's job for ``tick``: firing twice is a no-op."""
        return f"periodic:{self.name}:{tick.astimezone(dt.UTC).isoformat()}"


@runtime_checkable
class Scheduler(Protocol):
    """Fires an app's ``@app.periodic`` entries; provided by the ``taskforge_scheduler`` hook.

    An implementation enqueues, for every tick of every entry in ``app.periodic_entries``, one
    job keyed with :meth:`PeriodicEntry.job_key`, built as
    ``app.get_task(entry.task).options(key=...).build(entry.args, entry.kwargs)``.
    """

    async def run(
        self,
        app: TaskForge,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fire ``app.periodic_entries`` forever, until cancelled.

        Calls ``task_status.started()`` once running, so ``await tg.start(scheduler.run, app)``
        returns when the scheduler is in place. Errors of a single tick (storage down, a job
        that cannot be built) are logged and never end the loop.
        """
        ...


@attrs.define
class _Retry:
    """A tick whose enqueue failed, waiting to be tried again."""

    tick: dt.datetime
    at: dt.datetime
    delay: float


class InProcessScheduler:
    """The core's scheduler: one loop in this process, timed by ``app.clock``.

    See the module documentation for its policies (once per tick across processes through
    idempotency keys, no catch-up at start, coalescing of missed ticks, retries of failed
    enqueues).
    """

    def __repr__(self) -> str:
        return "<InProcessScheduler>"

    async def run(
        self,
        app: TaskForge,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        clock = app.clock
        entries = list(app.periodic_entries.values())
        start = clock.now()
        due = {entry.name: _next_tick(entry, start) for entry in entries}
        retries: dict[str, _Retry] = {}
        logger.log(
            logging.INFO if entries else logging.DEBUG,
            "scheduler started with %d periodic entries: %s",
            len(entries),
            ", ".join(f"{e.name} ({e.cron!r} {e.timezone})" for e in entries) or "none",
        )
        task_status.started()
        if not entries:
            await anyio.sleep_forever()
        while True:
            now = clock.now()
            wake = min([*due.values(), *(r.at for r in retries.values())])
            if wake > now:
                await clock.sleep(min((wake - now).total_seconds(), MAX_SLEEP))
                continue
            batch: list[tuple[PeriodicEntry, dt.datetime]] = []
            for entry in entries:
                tick = due[entry.name]
                if tick <= now:
                    try:
                        latest, due[entry.name] = _coalesce(entry, tick, now)
                    except InvalidCronError:
                        latest, due[entry.name] = tick, _next_tick(entry, now)
                    if latest != tick:
                        logger.warning(
                            "periodic %r missed its ticks from %s; firing only the latest, %s",
                            entry.name,
                            tick.isoformat(),
                            latest.isoformat(),
                        )
                    superseded = retries.pop(entry.name, None)
                    if superseded is not None:
                        logger.error(
                            "periodic %r: tick %s was never stored and is superseded by %s",
                            entry.name,
                            superseded.tick.isoformat(),
                            latest.isoformat(),
                        )
                    batch.append((entry, latest))
                elif (retry := retries.get(entry.name)) is not None and retry.at <= now:
                    batch.append((entry, retry.tick))
            failed = await _fire(app, batch)
            for entry, tick in batch:
                if entry.name not in failed:
                    retries.pop(entry.name, None)
                    continue
                previous = retries.get(entry.name)
                delay = RETRY_FIRST if previous is None else min(previous.delay * 2, RETRY_MAX)
                retries[entry.name] = _Retry(
                    tick=tick, at=now + dt.timedelta(seconds=delay), delay=delay
                )
                logger.warning(
                    "periodic %r: tick %s not stored; retrying in %.0f s",
                    entry.name,
                    tick.isoformat(),
                    delay,
                )


#: The "next tick" of an entry whose expression has no more ticks.
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _next_tick(entry: PeriodicEntry, after: dt.datetime) -> dt.datetime:
    """``entry.next_tick(after)``, or ``_NEVER`` (logged) when the expression is exhausted."""
    try:
        return entry.next_tick(after)
    except InvalidCronError:
        logger.exception("periodic %r will not fire again", entry.name)
        return _NEVER


def _coalesce(
    entry: PeriodicEntry, tick: dt.datetime, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """Given a due ``tick <= now``: the latest tick ``<= now`` and the first tick ``> now``.

    Costs one cron step when nothing was missed; after a long jump it searches backwards from
    ``now`` in doubling windows instead of stepping through every missed tick.
    """
    nxt = entry.next_tick(tick)
    if nxt > now:
        return tick, nxt
    latest = nxt
    back = dt.timedelta(seconds=1)
    while True:
        low = now - back
        if low <= latest:
            low = latest
        candidate = entry.next_tick(low)
        if candidate <= now or low == latest:
            while candidate <= now:
                latest, candidate = candidate, entry.next_tick(candidate)
            return latest, candidate
        back *= 2


async def _fire(app: TaskForge, batch: list[tuple[PeriodicEntry, dt.datetime]]) -> set[str]:
    """Enqueue the jobs of ``batch`` in one call; return the names of the entries to retry."""
    jobs: list[tuple[str, NewJob]] = []
    for entry, tick in batch:
        try:
            task = app.get_task(entry.task).options(key=entry.job_key(tick))
            jobs.append((entry.name, task.build(entry.args, entry.kwargs)))
        except Exception:
            logger.exception(
                "periodic %r: cannot build its job for tick %s; skipped",
                entry.name,
                tick.isoformat(),
            )
    return await _store(app, jobs)


async def _store(app: TaskForge, jobs: list[tuple[str, NewJob]]) -> set[str]:
    if not jobs:
        return set()
    try:
        await app.enqueue_jobs([job for _, job in jobs])
    except InvalidJobError as exc:
        if len(jobs) == 1:
            logger.error("periodic %r: its job was rejected (%s); skipped", jobs[0][0], exc)
            return set()
        # The batch is all-or-nothing: store the jobs one by one so the good ones still run.
        failed: set[str] = set()
        for item in jobs:
            failed |= await _store(app, [item])
        return failed
    except Exception:
        logger.exception(
            "could not enqueue periodic jobs of %s; will retry", ", ".join(n for n, _ in jobs)
        )
        return {name for name, _ in jobs}
    for name, job in jobs:
        logger.debug("periodic %r fired (key %s)", name, job.key)
    return set()


@hookimpl(trylast=True)
def taskforge_scheduler(app: TaskForge) -> Scheduler:
    """The core's fallback: an :class:`InProcessScheduler` when no plugin offers a scheduler."""
    return InProcessScheduler()
