"""The scheduler conformance suite: :class:`SchedulerConformance`, a base class of pytest tests.

A :class:`~taskforge_core.scheduler.Scheduler` must fire every tick of every cron entry once
and only once, however many instances of it run and whichever of them stop. Subclass the suite
with a factory for your scheduler::

    class TestMyScheduler(SchedulerConformance):
        def make_scheduler(self, fleet):
            return MyScheduler(namespace=fleet)

Each test builds a *fleet*: several instances of the scheduler (each with its own
:class:`~taskforge_core.TaskForge` app, as separate processes would have) sharing one SQLite
file and one :class:`~taskforge_core.clock.FakeClock`. The test moves the clock tick by tick,
starts and stops instances between ticks, and checks the jobs in the storage: exactly one job
per tick of each entry, keyed :meth:`PeriodicEntry.job_key`, and no job for any other moment.
Stopping an instance cancels its ``run``, as a worker shutting down does.

What every scheduler must do, and is tested here: fire each tick once while at least one
instance runs, with instances stopping and starting at random (a hypothesis test) and the
oldest instance -- the likely leader of a leader-elected scheduler -- replaced again and
again; follow :meth:`PeriodicEntry.next_tick` across daylight-saving changes; fire nothing
before the fleet started. A scheduler that also fires the ticks missed while *no* instance ran
sets :attr:`SchedulerConformance.catches_up` and gets the tests of that promise too.

The clock only moves when the test moves it, but schedulers may keep their own real-time
leases (a leader election): the suite waits up to
:attr:`SchedulerConformance.tick_timeout` real seconds for each tick's job.
"""

from __future__ import annotations

import collections
import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import anyio.abc
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskforge_core.app import TaskForge
from taskforge_core.clock import FakeClock
from taskforge_core.models import Job
from taskforge_core.scheduler import PeriodicEntry, Scheduler

__all__ = ["Fleet", "SchedulerConformance"]

#: Where the fake clock of a fleet starts unless a test says otherwise.
CLOCK_START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


async def _periodic_task(*args: Any, **kwargs: Any) -> None:
    """The task every test entry enqueues (the suite never runs it)."""


@attrs.frozen(kw_only=True)
class _Spec:
    name: str
    cron: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)

    def entry(self) -> PeriodicEntry:
        return PeriodicEntry(
            name=self.name,
            cron=self.cron,
            task=self.name,
            timezone=self.timezone,
            args=self.args,
            kwargs=self.kwargs,
        )


#: The entries of most tests: one every second, one every third second, with arguments.
DEFAULT_SPECS = (
    _Spec(name="every_second", cron="* * * * * *"),
    _Spec(name="every_third", cron="* * * * * */3", args=(1, "two"), kwargs={"three": 3}),
)


@attrs.define
class _Instance:
    app: TaskForge
    scheduler: Scheduler
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    done: anyio.Event = attrs.field(factory=anyio.Event)


@attrs.define
class Fleet:
    """Scheduler instances on one store and one fake clock; what a test drives."""

    make_scheduler: Callable[[], Scheduler]
    url: str
    clock: FakeClock
    specs: Sequence[_Spec]
    observer: TaskForge
    group: anyio.abc.TaskGroup
    tick_timeout: float
    #: The moment the first instance started: no tick at or before it may fire.
    started_at: dt.datetime
    instances: list[_Instance] = attrs.field(factory=list)

    @property
    def alive(self) -> int:
        return len(self.instances)

    async def start(self) -> None:
        """Start one more instance (its ``run`` has called ``task_status.started()``)."""
        app = TaskForge(self.url, clock=self.clock)
        for spec in self.specs:
            app.periodic(
                spec.cron,
                name=spec.name,
                timezone=spec.timezone,
                args=spec.args,
                kwargs=spec.kwargs,
            )(_periodic_task)
        instance = _Instance(app=app, scheduler=self.make_scheduler())
        await self.group.start(self._run, instance)
        self.instances.append(instance)

    async def _run(self, instance: _Instance, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with instance.scope:
                async with instance.app:
                    await instance.scheduler.run(instance.app, task_status=task_status)
                raise AssertionError(f"{instance.scheduler!r}.run() returned before cancelled")
        finally:
            instance.done.set()

    async def stop(self, index: int) -> None:
        """Stop the instance at ``index`` (0 is the oldest running) and wait until it ended."""
        instance = self.instances.pop(index)
        instance.scope.cancel()
        with anyio.fail_after(self.tick_timeout):
            await instance.done.wait()

    def expected(self) -> dict[str, int]:
        """Every tick key that must exist by now, with the count each must have (one)."""
        now = self.clock.now()
        keys: dict[str, int] = {}
        for spec in self.specs:
            entry = spec.entry()
            tick = entry.next_tick(self.started_at)
            while tick <= now:
                keys[entry.job_key(tick)] = 1
                tick = entry.next_tick(tick)
        return keys

    def next_tick(self) -> dt.datetime:
        """The next moment any entry ticks."""
        now = self.clock.now()
        return min(spec.entry().next_tick(now) for spec in self.specs)

    async def advance(self, seconds: float | None = None) -> None:
        """Move the clock by ``seconds`` (default: to the next tick), then wait until every
        tick due so far has its job."""
        delta = (
            (self.next_tick() - self.clock.now()).total_seconds() if seconds is None else seconds
        )
        self.clock.advance(delta)
        await self.wait_for_ticks()

    async def jobs(self) -> list[Job]:
        """Every job of the entries' tasks in the store."""
        found: list[Job] = []
        for spec in self.specs:
            cursor: str | None = None
            while True:
                page = await self.observer.list_jobs(task=spec.name, limit=500, cursor=cursor)
                found.extend(page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return found

    async def key_counts(self) -> dict[str, int]:
        return dict(
            collections.Counter(job.key or f"<no key: {job.id}>" for job in await self.jobs())
        )

    async def wait_for_ticks(self) -> None:
        """Wait until every due tick has a job; fail if one never comes or extras appear."""
        expected = self.expected()
        counts: dict[str, int] = {}
        with anyio.move_on_after(self.tick_timeout):
            while True:
                counts = await self.key_counts()
                if all(key in counts for key in expected):
                    break
                await anyio.sleep(0.02)
        self._check(expected, counts, f"{self.alive} instance(s) running")

    async def settle_and_check(self) -> None:
        """Wait a little for late duplicates or stray ticks, then check the whole history."""
        await anyio.sleep(0.3)
        expected = self.expected()
        counts = await self.key_counts()
        self._check(expected, counts, "at the end")
        by_key = {job.key: job for job in await self.jobs()}
        for spec in self.specs:
            entry = spec.entry()
            first = entry.job_key(entry.next_tick(self.started_at))
            if first in by_key:
                job = by_key[first]
                assert (job.task, tuple(job.args), dict(job.kwargs)) == (
                    spec.name,
                    spec.args,
                    spec.kwargs,
                ), f"the job of {first} has the wrong task or arguments: {job}"

    def _check(self, expected: dict[str, int], counts: dict[str, int], when: str) -> None:
        at = self.clock.now().isoformat()
        missing = sorted(set(expected) - set(counts))
        assert not missing, (
            f"ticks never fired (clock at {at}, {when}): {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
        extra = sorted(set(counts) - set(expected))
        assert not extra, f"jobs for moments that are not due ticks (clock at {at}): {extra[:5]}"
        doubled = sorted(key for key, n in counts.items() if n > 1)
        assert not doubled, f"ticks fired more than once (clock at {at}): {doubled[:5]}"


def _only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single exception inside nested one-member groups, or None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


class SchedulerConformance:
    """Tests the promises of :class:`~taskforge_core.scheduler.Scheduler` across several
    instances. Subclass it and implement :meth:`make_scheduler`."""

    #: True when ticks missed while no instance ran are fired once an instance is back (a
    #: scheduler keeping its progress somewhere shared). Enables the catch-up tests.
    catches_up: ClassVar[bool] = False
    #: The longest real time to wait for a tick's job, a leader handover included.
    tick_timeout: ClassVar[float] = 20.0
    #: How many random histories the hypothesis test tries.
    max_examples: ClassVar[int] = 8

    def make_scheduler(self, fleet: str) -> Scheduler:
        """Return a new, not yet running scheduler instance of the fleet named ``fleet``.

        Instances made with the same ``fleet`` must coordinate as the instances of one
        deployment do (for a leader-elected scheduler: the same keys or tables); a new name
        must start from nothing (a fresh key prefix, say). ``fleet`` is a short string of
        letters, digits and dashes.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_scheduler()")

    # -- running a fleet -------------------------------------------------------------------

    @asynccontextmanager
    async def fleet(
        self,
        directory: pathlib.Path,
        *,
        instances: int = 3,
        start: dt.datetime = CLOCK_START,
        specs: Sequence[_Spec] = DEFAULT_SPECS,
    ) -> AsyncIterator[Fleet]:
        """A fleet of ``instances`` running schedulers on a new store in ``directory``."""
        await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
        name = f"fleet-{uuid.uuid4().hex[:10]}"
        url = f"sqlite:///{directory}/jobs.db"
        clock = FakeClock(start)
        async with TaskForge(url, clock=clock) as observer, anyio.create_task_group() as group:
            fleet = Fleet(
                make_scheduler=lambda: self.make_scheduler(name),
                url=url,
                clock=clock,
                specs=specs,
                observer=observer,
                group=group,
                tick_timeout=self.tick_timeout,
                started_at=clock.now(),
            )
            try:
                for _ in range(instances):
                    await fleet.start()
                yield fleet
            finally:
                while fleet.instances:
                    await fleet.stop(0)

    def run(self, body: Callable[[], Any]) -> None:
        """Run ``body`` on an asyncio event loop; a failure inside the fleet's task group is
        raised as itself, not wrapped in an exception group."""
        try:
            anyio.run(body, backend="asyncio")
        except BaseExceptionGroup as group:
            leaf = _only_leaf(group)
            if leaf is None:
                raise
            raise leaf from None

    # =====================================================================================
    # Once per tick
    # =====================================================================================

    def test_each_tick_fires_once_with_three_instances(self, tmp_path: pathlib.Path) -> None:
        """Three instances, twelve ticks: each has one job, with the entry's arguments."""

        async def main() -> None:
            async with self.fleet(tmp_path) as fleet:
                for _ in range(12):
                    await fleet.advance()
                await fleet.settle_and_check()

        self.run(main)

    def test_no_tick_fires_before_the_fleet_started(self, tmp_path: pathlib.Path) -> None:
        """Between ticks nothing fires; started mid-second, the first job is the next tick."""

        async def main() -> None:
            start = CLOCK_START + dt.timedelta(seconds=30.5)
            async with self.fleet(tmp_path, start=start) as fleet:
                await fleet.advance(0.25)
                await anyio.sleep(0.3)
                assert await fleet.key_counts() == {}, "a tick fired before it was due"
                for _ in range(4):
                    await fleet.advance()
                await fleet.settle_and_check()

        self.run(main)

    def test_ticks_fire_once_while_the_oldest_instance_is_replaced(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Stop the oldest instance (a leader-elected scheduler's likely leader) and start a
        new one, five times over: no tick is lost or doubled across the handovers."""

        async def main() -> None:
            async with self.fleet(tmp_path) as fleet:
                for _ in range(5):
                    await fleet.advance()
                    await fleet.stop(0)
                    await fleet.advance()
                    await fleet.start()
                await fleet.advance()
                await fleet.settle_and_check()

        self.run(main)

    def test_ticks_fire_once_while_instances_come_and_go(self, tmp_path: pathlib.Path) -> None:
        """Random histories of ticks, stops (oldest, newest) and starts, one instance always
        running: every tick has exactly one job."""
        examples = self.max_examples

        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(
            steps=st.lists(
                st.sampled_from(["tick", "tick", "stop_oldest", "stop_newest", "start"]),
                min_size=1,
                max_size=14,
            ),
            instances=st.integers(min_value=1, max_value=3),
        )
        def history(steps: list[str], instances: int) -> None:
            directory = tmp_path / uuid.uuid4().hex[:8]

            async def main() -> None:
                async with self.fleet(directory, instances=instances) as fleet:
                    for step in steps:
                        if step == "tick":
                            await fleet.advance()
                        elif step == "start" and fleet.alive < 4:
                            await fleet.start()
                        elif step.startswith("stop") and fleet.alive > 1:
                            await fleet.stop(0 if step == "stop_oldest" else -1)
                    await fleet.advance()
                    await fleet.settle_and_check()

            self.run(main)

        history()

    # =====================================================================================
    # Time zones
    # =====================================================================================

    @pytest.mark.parametrize(
        "start",
        [
            pytest.param(dt.datetime(2030, 10, 26, 21, 0, tzinfo=dt.UTC), id="fall-back"),
            pytest.param(dt.datetime(2030, 3, 30, 21, 0, tzinfo=dt.UTC), id="spring-forward"),
        ],
    )
    def test_ticks_follow_the_time_zone_across_daylight_saving_changes(
        self, tmp_path: pathlib.Path, start: dt.datetime
    ) -> None:
        """Hourly and nightly entries in Europe/Paris over a night when the clocks change:
        each tick of :meth:`PeriodicEntry.next_tick` fires once, with an instance replaced on
        the way."""
        specs = (
            _Spec(name="hourly_paris", cron="30 * * * *", timezone="Europe/Paris"),
            _Spec(name="nightly_paris", cron="30 2 * * *", timezone="Europe/Paris"),
        )

        async def main() -> None:
            async with self.fleet(tmp_path, instances=2, start=start, specs=specs) as fleet:
                for step in range(8):
                    await fleet.advance()
                    if step == 3:
                        await fleet.stop(0)
                        await fleet.start()
                nightly = [key for key in fleet.expected() if key.startswith("periodic:nightly")]
                assert len(nightly) == 1, f"the night's 02:30 Paris tick was not reached: {nightly}"
                await fleet.settle_and_check()

        self.run(main)

    # =====================================================================================
    # Catch-up (schedulers that keep their progress in a shared place)
    # =====================================================================================

    def _needs_catch_up(self) -> None:
        if not self.catches_up:
            pytest.skip(f"{type(self).__name__} does not catch up missed ticks (catches_up)")

    def test_ticks_missed_while_no_instance_ran_fire_once_when_one_is_back(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Every instance stops, five seconds pass, two start again: the five missed seconds
        (and the missed every-third-second ticks) fire once each, then ticking goes on."""
        self._needs_catch_up()

        async def main() -> None:
            async with self.fleet(tmp_path, instances=2) as fleet:
                await fleet.advance()
                await fleet.stop(0)
                await fleet.stop(0)
                fleet.clock.advance(5)
                await fleet.start()
                await fleet.start()
                await fleet.wait_for_ticks()
                for _ in range(3):
                    await fleet.advance()
                await fleet.settle_and_check()

        self.run(main)

    def test_a_jump_of_the_clock_fires_every_tick_it_skipped(self, tmp_path: pathlib.Path) -> None:
        """The clock jumps seven seconds at once while instances run: all seven fire."""
        self._needs_catch_up()

        async def main() -> None:
            async with self.fleet(tmp_path) as fleet:
                await fleet.advance()
                await fleet.advance(7)
                await fleet.advance()
                await fleet.settle_and_check()

        self.run(main)
