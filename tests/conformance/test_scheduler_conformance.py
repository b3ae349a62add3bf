"""The core's in-process scheduler passes the scheduler conformance suite.

Every instance fires every tick and the storage keeps one job per idempotency key; it does not
catch up ticks missed while no instance ran (``catches_up`` stays False).
"""

from __future__ import annotations

from taskforge_conformance import SchedulerConformance

from taskforge_core.scheduler import InProcessScheduler, Scheduler


class TestInProcessScheduler(SchedulerConformance):
    def make_scheduler(self, fleet: str) -> Scheduler:
        return InProcessScheduler()
