"""A handle on an enqueued job: its id, its last known status, and a way to await its result."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio

from taskforge_core.errors import (
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    WaitTimeoutError,
)
from taskforge_core.events import JobFinished, close_quietly
from taskforge_core.states import FINAL_STATUSES, JobStatus

if TYPE_CHECKING:
    from taskforge_core.app import TaskForge
    from taskforge_core.events import Event, EventBus
    from taskforge_core.models import Job

__all__ = ["JobHandle"]

logger = logging.getLogger("taskforge")

_FIRST_POLL = 0.005
#: Longest pause between two reads of the job while waiting without an event bus.
_MAX_POLL = 0.5
#: The same with an event bus: the event wakes the waiter, so storage is read less often; a
#: missed event (the bus was down) costs at most this long.
_MAX_POLL_WITH_EVENTS = 2.0


class JobHandle:
    """Returned by every enqueue. ``status`` is what was known last; ``refresh`` reloads it."""

    def __init__(self, app: TaskForge, job: Job) -> None:
        self.app = app
        #: The job as last loaded.
        self.job = job

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.status.value}>"

    @property
    def id(self) -> uuid.UUID:
        return self.job.id

    @property
    def status(self) -> JobStatus:
        return self.job.status

    async def refresh(self) -> Job:
        """Reload the job from storage."""
        jobs = await (await self.app.storage()).get_jobs([self.id], self.app.project)
        if not jobs:
            raise JobNotFoundError(f"job {self.id} no longer exists (purged?)")
        self.job = jobs[0]
        return self.job

    async def wait(self, timeout: float | None = None) -> Any:
        """Wait until the job is final and return its result.

        Raises :class:`JobFailedError` (with the last error) or :class:`JobCancelledError`, and
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first; the job itself is never
        touched by waiting.

        Storage is read at growing intervals (5 ms doubling up to 0.5 s). With an event bus
        (the Redis plugin), the wait also subscribes to the job's
        :class:`~taskforge_core.events.JobFinished` event (unless the job is final already),
        reads the job once subscribed, so a job finishing in between is not missed, and again
        as soon as the event arrives; the reads then back off to every 2 s. The event only
        says *when* to look: the result always comes from storage.
        """
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            bus = self.app.event_bus()
            if bus is None:
                job = await self._until_final(None)
            else:
                async with AsyncExitStack() as stack:
                    stack.push_async_callback(close_quietly, bus)
                    job = await self.refresh()
                    if job.status not in FINAL_STATUSES:  # else no need to subscribe
                        job = await self._until_final(await self._subscribe(stack, bus))
            if job.status is JobStatus.SUCCEEDED:
                return job.result
            if job.status is JobStatus.FAILED:
                raise JobFailedError(job.id, job.error)
            raise JobCancelledError(job.id)
        raise WaitTimeoutError(
            f"job {self.id} was still {self.status.value} after {timeout} s of waiting"
        )

    async def _subscribe(self, stack: AsyncExitStack, bus: EventBus) -> AsyncIterator[Event] | None:
        """This job's finished events, or None if subscribing failed (poll instead)."""
        try:
            return await stack.enter_async_context(bus.subscribe(finished=(self.id,)))
        except Exception as exc:
            logger.warning("waiting for job %s by polling: could not subscribe: %s", self.id, exc)
            return None

    async def _until_final(self, events: AsyncIterator[Event] | None) -> Job:
        delay = _FIRST_POLL
        longest = _MAX_POLL if events is None else _MAX_POLL_WITH_EVENTS
        while True:
            job = await self.refresh()
            if job.status in FINAL_STATUSES:
                return job
            if events is None:
                await anyio.sleep(delay)
            else:
                with anyio.move_on_after(delay):
                    async for event in events:
                        if isinstance(event, JobFinished) and event.job_id == self.id:
                            break
                    else:  # the subscription ended: fall back to polling
                        events, longest = None, _MAX_POLL
            delay = min(delay * 2, longest)
