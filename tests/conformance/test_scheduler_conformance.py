"""The core's in-process scheduler passes the scheduler conformance suite, and broken
schedulers fail it.

Every instance fires every tick and the storage keeps one job per idempotency key; it does not
catch up ticks missed while no instance ran (``catches_up`` stays False).
"""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import Callable
from typing import ClassVar

import anyio
import attrs
import pytest
from anyio.abc import TaskStatus
from taskforge_conformance import SchedulerConformance

from taskforge_core import TaskForge
from taskforge_core.scheduler import InProcessScheduler, PeriodicEntry, Scheduler


class TestInProcessScheduler(SchedulerConformance):
    def make_scheduler(self, fleet: str) -> Scheduler:
        return InProcessScheduler()


# -- the suite has teeth: broken schedulers fail it ------------------------------------------


class NaiveScheduler:
    """Fires every tick of every entry as its clock passes it; the broken variants below each
    change one thing."""

    def __init__(self, fleet: str, *, suffix: str = "", early: float = 0.0) -> None:
        self.fleet = fleet
        self.suffix = suffix
        self.early = dt.timedelta(seconds=early)

    def fires(self) -> bool:
        return True

    def tick_of(self, entry: PeriodicEntry, after: dt.datetime) -> dt.datetime:
        return entry.next_tick(after)

    async def run(
        self, app: TaskForge, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        entries = list(app.periodic_entries.values())
        due = {entry.name: self.tick_of(entry, app.clock.now()) for entry in entries}
        task_status.started()
        if not self.fires():
            await anyio.sleep_forever()
        while True:
            now = app.clock.now()
            for entry in entries:
                while due[entry.name] - self.early <= now:
                    key = entry.job_key(due[entry.name]) + self.suffix
                    job = app.get_task(entry.task).options(key=key).build(entry.args, entry.kwargs)
                    await app.enqueue_jobs([job])
                    due[entry.name] = self.tick_of(entry, due[entry.name])
            wake = min(due.values()) - self.early
            await app.clock.sleep(max(0.001, (wake - app.clock.now()).total_seconds()))


class NoFailover(NaiveScheduler):
    """Only the first instance of a fleet ever fires: nobody takes over when it stops."""

    firsts: ClassVar[set[str]] = set()

    def __init__(self, fleet: str) -> None:
        super().__init__(fleet)
        self.first = fleet not in self.firsts
        self.firsts.add(fleet)

    def fires(self) -> bool:
        return self.first


class InUTC(NaiveScheduler):
    """Reads every cron expression in UTC, whatever the entry's time zone."""

    def tick_of(self, entry: PeriodicEntry, after: dt.datetime) -> dt.datetime:
        return attrs.evolve(entry, timezone="UTC").next_tick(after)


class Broken(SchedulerConformance):
    """Not collected (no Test prefix): each test below runs one of its tests on purpose."""

    tick_timeout = 3.0

    def __init__(self, make: Callable[[str], Scheduler], *, catches_up: bool = False) -> None:
        self.make = make
        self.catches_up = catches_up  # type: ignore[misc]

    def make_scheduler(self, fleet: str) -> Scheduler:
        return self.make(fleet)


@pytest.mark.parametrize(
    ("make", "test", "message"),
    [
        (NaiveScheduler, "test_each_tick_fires_once_with_three_instances", None),
        (
            lambda fleet: NaiveScheduler(fleet, suffix=f":{uuid.uuid4().hex[:6]}"),
            "test_each_tick_fires_once_with_three_instances",
            "ticks never fired",  # each instance's job has a key of its own
        ),
        (
            lambda fleet: NaiveScheduler(fleet, early=0.5),
            "test_no_tick_fires_before_the_fleet_started",
            "jobs for moments that are not due ticks|a tick fired before it was due",
        ),
        (
            NoFailover,
            "test_ticks_fire_once_while_the_oldest_instance_is_replaced",
            "ticks never fired",
        ),
        (
            InUTC,
            "test_ticks_follow_the_time_zone_across_daylight_saving_changes",
            "ticks never fired",
        ),
        (  # claims to catch up, but keeps no progress: a restarted fleet starts afresh
            NaiveScheduler,
            "test_ticks_missed_while_no_instance_ran_fire_once_when_one_is_back",
            "ticks never fired",
        ),
    ],
    ids=["correct", "doubles", "early", "no-failover", "ignores-time-zone", "no-catch-up"],
)
def test_the_suite_fails_broken_schedulers(
    tmp_path: pathlib.Path,
    make: Callable[[str], Scheduler],
    test: str,
    message: str | None,
) -> None:
    suite = Broken(make, catches_up="missed" in test)
    run: Callable[..., None] = getattr(suite, test)
    args: dict[str, object] = {"tmp_path": tmp_path}
    if "daylight" in test:
        args["start"] = dt.datetime(2030, 10, 26, 21, 0, tzinfo=dt.UTC)
    if message is None:
        run(**args)  # the naive scheduler is correct for this test
        return
    with pytest.raises(AssertionError, match=message):
        run(**args)
