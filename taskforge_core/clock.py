"""Where TaskForge gets the time from, so tests of delays, leases and cron need not sleep.

Every component that asks "what time is it?" or "wake me at ..." takes a :class:`Clock`.
Production uses :class:`SystemClock`; tests use :class:`FakeClock` and move time by hand.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "FakeClock", "SystemClock", "utc"]

utc = dt.UTC


@runtime_checkable
class Clock(Protocol):
    """A source of the current time and of sleeps measured against it."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real wall clock; sleeps are anyio sleeps."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(utc)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to; ``sleep`` waits until :meth:`advance` passes it.

    ``FakeClock()`` starts at 2030-01-01 UTC so tests never depend on today's date.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2030, 1, 1, tzinfo=utc)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._sleepers: list[tuple[dt.datetime, anyio.Event]] = []

    def now(self) -> dt.datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or math.isnan(seconds):
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        self._sleepers.append((self._now + dt.timedelta(seconds=seconds), wake))
        await wake.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += dt.timedelta(seconds=seconds)
        due = [s for s in self._sleepers if s[0] <= self._now]
        self._sleepers = [s for s in self._sleepers if s[0] > self._now]
        for _, wake in due:
            wake.set()
