"""Events between TaskForge instances: a faster path next to the storage, never instead of it.

Three events travel between the processes of one deployment:

* :class:`JobFinished` — a job reached a final status (a worker stored its outcome, or it was
  cancelled); :meth:`JobHandle.wait <taskforge_core.handle.JobHandle.wait>` on any instance
  wakes at once instead of at its next poll;
* :class:`CancelJobs` — jobs were cancelled in storage; the worker running one of them
  interrupts it now instead of at its next heartbeat;
* :class:`DrainWorker` — a worker was asked to drain in storage; it starts now instead of at
  its next heartbeat.

**Storage stays the source of truth.** Every event is sent *after* the change it announces is
stored, and a receiver acts by asking storage, not by believing the event: a worker that hears
``CancelJobs`` for a job it runs sends a heartbeat at once, and the heartbeat's answer (the
leases it lost, its status) decides exactly as a scheduled heartbeat would; ``JobHandle.wait``
reloads the job. So a lost, late, duplicated or forged event costs at most a storage round
trip, and an event bus that is down costs only latency: a heartbeat interval for a cancel or a
drain, a poll interval for a wait.

An :class:`EventBus` comes from the ``taskforge_event_bus`` hook (the Redis plugin answers it).
With no plugin answering, nothing is published or subscribed and TaskForge behaves exactly as
without events. :class:`LocalEventBus` is an in-process bus for tests and single-process
set-ups; it is also a plugin (register it with several apps to connect them).

The wire format (:func:`encode_event`, :func:`decode_event`) is compact JSON with a version
field, shared by every transport; bytes that do not decode are logged and dropped.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
import attrs

from taskforge_core.hookspecs import hookimpl
from taskforge_core.states import FINAL_STATUSES, JobStatus

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from taskforge_core.app import TaskForge

__all__ = [
    "PUBLISH_TIMEOUT",
    "WIRE_VERSION",
    "CancelJobs",
    "DrainWorker",
    "Event",
    "EventBus",
    "JobFinished",
    "LocalEventBus",
    "close_quietly",
    "decode_event",
    "encode_event",
    "publish_quietly",
]

logger = logging.getLogger("taskforge.events")

#: Version of the wire format; a message of another version is logged and ignored, so old and
#: new processes can share a bus during a rolling upgrade without crashing each other.
WIRE_VERSION = 1
#: Longest time a caller (``app.cancel``, a worker's acknowledgements) waits for a publish; the
#: change is already stored, so giving up only costs latency.
PUBLISH_TIMEOUT = 2.0


@attrs.frozen(kw_only=True)
class JobFinished:
    """A job reached a final status (succeeded, failed or cancelled) in storage."""

    #: The job.
    job_id: uuid.UUID
    #: Its final status; receivers re-read the job from storage before acting.
    status: JobStatus


@attrs.frozen(kw_only=True)
class CancelJobs:
    """These jobs were cancelled in storage; whoever runs one of them should stop it."""

    #: Every id the cancel reached (running or not: a worker ignores ids it does not run).
    job_ids: tuple[uuid.UUID, ...]


@attrs.frozen(kw_only=True)
class DrainWorker:
    """This worker was asked (in storage) to drain."""

    #: The worker's registry id.
    worker_id: uuid.UUID


#: Any event a bus carries.
Event = JobFinished | CancelJobs | DrainWorker


@runtime_checkable
class EventBus(Protocol):
    """Publishes events to, and receives events from, every instance of one project.

    A bus is handed out by the ``taskforge_event_bus`` hook for one use (a worker's run, one
    ``cancel``, one ``wait``) and closed with :meth:`aclose` after it; it belongs to the event
    loop that uses it. Delivery is best effort, at most once: callers never depend on it.
    """

    async def publish(self, events: Sequence[Event]) -> None:
        """Send ``events`` to every subscriber of the project, in one round trip if the
        transport allows. It may drop them when the transport is down (and say so in the log);
        callers also bound it with :data:`PUBLISH_TIMEOUT` and catch its errors."""

    def subscribe(
        self, *, control: bool = False, finished: Collection[uuid.UUID] = ()
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``async with bus.subscribe(...) as events: async for event in events: ...``

        :param control: receive :class:`CancelJobs` and :class:`DrainWorker` events.
        :param finished: receive :class:`JobFinished` events of these jobs.

        Entering returns once the subscription is in place or its first attempt failed (a bus
        that is down must not hold its caller up); the bus keeps trying to (re)subscribe in the
        background for as long as the block runs. Events sent while it is not subscribed are
        missed. The iterator ends only when the block exits.
        """

    async def aclose(self) -> None:
        """Release the bus's connections. Subscriptions close with their ``async with``."""


# -- the wire format ------------------------------------------------------------------------


_FINISHED = b'{"v":%d,"t":"finished","job":"%%s","status":"%%s"}' % WIRE_VERSION


def encode_event(event: Event) -> bytes:
    """Compact JSON: ``{"v":1,"t":"cancel","ids":[...]}``, ``{"v":1,"t":"drain","worker":...}``
    or ``{"v":1,"t":"finished","job":...,"status":...}``."""
    if isinstance(event, JobFinished):  # one per finished job: the fast path, no json.dumps
        return _FINISHED % (str(event.job_id).encode(), event.status.value.encode())
    body: dict[str, object]
    if isinstance(event, CancelJobs):
        body = {"t": "cancel", "ids": [str(i) for i in event.job_ids]}
    else:
        body = {"t": "drain", "worker": str(event.worker_id)}
    return json.dumps({"v": WIRE_VERSION, **body}, separators=(",", ":")).encode()


def decode_event(data: bytes | str) -> Event | None:
    """The event in ``data``; None (logged) for garbage or a version this process does not
    speak. Never raises: one bad message must not stop a worker."""
    try:
        body = json.loads(data)
        version = body.get("v") if isinstance(body, dict) else None
        if version != WIRE_VERSION:
            logger.warning("ignored an event of unknown version %r: %.200r", version, data)
            return None
        kind = body["t"]
        if kind == "finished":
            status = JobStatus(body["status"])
            if status not in FINAL_STATUSES:
                raise ValueError(f"{status.value} is not a final status")
            return JobFinished(job_id=uuid.UUID(body["job"]), status=status)
        if kind == "cancel":
            ids = body["ids"]
            if not isinstance(ids, list):
                raise TypeError("ids is not a list")
            return CancelJobs(job_ids=tuple(uuid.UUID(i) for i in ids))
        if kind == "drain":
            return DrainWorker(worker_id=uuid.UUID(body["worker"]))
        raise ValueError(f"unknown event type {kind!r}")
    except Exception as exc:  # anything at all: the sender is not trusted to be well-formed
        logger.warning("ignored a malformed event (%s): %.200r", exc, data)
        return None


# -- helpers for the callers ----------------------------------------------------------------


async def publish_quietly(bus: EventBus, events: Sequence[Event]) -> bool:
    """Publish within :data:`PUBLISH_TIMEOUT`; True if the bus took the events.

    Shielded: the change the events announce is already stored, and an interrupted caller
    (a cancelled ``app.cancel``) should still tell the others. Errors are logged, not raised.
    """
    if not events:
        return True
    try:
        with anyio.move_on_after(PUBLISH_TIMEOUT, shield=True) as scope:
            await bus.publish(events)
    except Exception as exc:
        logger.warning("could not publish %d event(s): %s", len(events), exc)
        return False
    if scope.cancelled_caught:
        logger.warning(
            "publishing %d event(s) took over %g s: gave up", len(events), PUBLISH_TIMEOUT
        )
        return False
    return True


async def close_quietly(bus: EventBus) -> None:
    """Close ``bus`` shielded, logging (not raising) what goes wrong."""
    try:
        with anyio.move_on_after(PUBLISH_TIMEOUT, shield=True):
            await bus.aclose()
    except Exception as exc:
        logger.warning("closing the event bus failed: %s", exc)


# -- in-process bus ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _LocalSubscriber:
    control: bool
    finished: frozenset[uuid.UUID]
    send: MemoryObjectSendStream[Event]

    def wants(self, event: Event) -> bool:
        if isinstance(event, JobFinished):
            return event.job_id in self.finished
        return self.control


class LocalEventBus:
    """An :class:`EventBus` inside one process and one event loop (asyncio or trio).

    It is its own plugin: ``bus = LocalEventBus()``, then ``TaskForge(url, plugins=[bus])`` for
    each app that should hear the others (a test with two "instances" in one process, or an
    app whose workers run in the same process as its web handlers). Nothing crosses a process
    boundary; use the Redis plugin for that.

    A subscriber that falls more than ``buffer`` events behind misses the excess (logged), the
    same way a network bus drops events: receivers fall back to storage.
    """

    def __init__(self, *, buffer: int = 1000) -> None:
        self.buffer = buffer
        self._subscribers: set[_LocalSubscriber] = set()

    def __repr__(self) -> str:
        return f"<LocalEventBus subscribers={len(self._subscribers)}>"

    @hookimpl
    def taskforge_event_bus(self, app: TaskForge) -> EventBus:
        """Hand the same bus to every app it is registered with."""
        return self

    async def publish(self, events: Sequence[Event]) -> None:
        for subscriber in list(self._subscribers):
            for event in events:
                if subscriber.wants(event):
                    try:
                        subscriber.send.send_nowait(event)
                    except anyio.WouldBlock:
                        logger.warning("a slow event subscriber missed %r", event)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break

    @asynccontextmanager
    async def subscribe(
        self, *, control: bool = False, finished: Collection[uuid.UUID] = ()
    ) -> AsyncIterator[AsyncIterator[Event]]:
        send, receive = anyio.create_memory_object_stream[Event](
            math.inf if self.buffer <= 0 else self.buffer
        )
        subscriber = _LocalSubscriber(control, frozenset(finished), send)
        self._subscribers.add(subscriber)
        try:
            with send, receive:
                yield receive
        finally:
            self._subscribers.discard(subscriber)

    async def aclose(self) -> None:
        """Nothing to release: the bus is shared by the apps it is registered with."""
