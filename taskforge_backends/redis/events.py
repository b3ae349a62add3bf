"""Events between instances over Redis pub/sub (see :mod:`taskforge_core.events`).

Channels, per project (``P``), under the plugin's key prefix:

* ``{prefix}:events:{P}:control`` — :class:`CancelJobs` and :class:`DrainWorker`; every worker
  of the project subscribes, and ignores what does not concern it. Control events are rare.
* ``{prefix}:events:{P}:finished:{job_id}`` — :class:`JobFinished`, one channel per job, so a
  ``JobHandle.wait`` receives only its own job's event and Redis does the routing; a worker
  publishes the events of one batch of reports in one round trip: one call of a small Lua
  script that PUBLISHes each. Measured on batches of 1000 (``benchmarks/redis_events.py``):
  about 3 µs of the worker's CPU per event, encoding included, where a pipeline of PUBLISH
  commands cost about 20 µs in redis-py alone.

Messages are the core's compact versioned JSON (:func:`~taskforge_core.events.encode_event`);
a message that does not decode is logged and dropped, never raised into a worker.

When Redis goes away:

* **publishing** fails fast (no driver retries, short connect timeout); after a failure the bus
  drops further events without trying for a back-off that doubles from
  :data:`RECONNECT_MIN` to :data:`RECONNECT_MAX`, so a Redis outage adds no latency to
  ``app.cancel`` or to a worker's reports. Nothing is lost: the changes are stored, and
  receivers fall back to heartbeats and polling.
* **a subscription** keeps trying to reconnect with the same back-off (with jitter, so a fleet
  does not reconnect in lock step) and subscribes again once Redis is back; events published
  in between are missed, which costs a heartbeat interval (cancel, drain) or a poll interval
  (wait). A connection that silently dies is found by a PING every :data:`HEALTH_CHECK`
  seconds.

redis.asyncio runs on asyncio only; under trio the plugin provides no bus (one warning) and
TaskForge works from storage alone.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskforge_core.events import CancelJobs, Event, JobFinished, decode_event, encode_event

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream
    from redis.commands.core import AsyncScript

    from taskforge_backends.redis._settings import RedisSettings

__all__ = ["HEALTH_CHECK", "RECONNECT_MAX", "RECONNECT_MIN", "RedisEventBus", "RedisHealth"]

logger = logging.getLogger("taskforge.redis.events")

#: First pause before reconnecting (or publishing again) after Redis failed; doubles each time.
RECONNECT_MIN = 0.1
#: Longest pause between two attempts to reach Redis.
RECONNECT_MAX = 5.0
#: Seconds to wait for a TCP connection to Redis before calling it down.
CONNECT_TIMEOUT = 2.0
#: A subscription PINGs Redis when it has heard nothing for this many seconds.
HEALTH_CHECK = 10
#: How long entering a subscription waits for it to be in place (a Redis that neither answers
#: nor refuses must not hold a worker's start or a wait up for longer).
SUBSCRIBE_WAIT = 2.0
#: Events a subscriber may fall behind by before the excess is dropped (logged).
SUBSCRIBER_BUFFER = 1000
#: Most job ids in one CancelJobs message (a cancel of a huge dependency tree is split).
MAX_IDS_PER_MESSAGE = 1000
#: Most events in one call of the publishing script (a larger batch takes several calls).
MAX_EVENTS_PER_CALL = 1000
#: PUBLISH every (channel, message) pair of ARGV. Channels go in ARGV, not KEYS: they are not
#: keys, and a script's keys must share one hash slot on Redis Cluster.
_PUBLISH_MANY = """
for i = 1, #ARGV, 2 do
    redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""
#: Redis errors and the socket errors redis-py lets through.
_REDIS_DOWN = (redis.exceptions.RedisError, OSError)


class RedisHealth:
    """Whether Redis answered lately, shared by every bus of one plugin.

    Buses are made per use (each ``cancel``, each ``wait``), so this is what lets them agree
    that Redis is down: one warning when it goes, one when it is back, no connection attempt
    per call in between, and pauses doubling from :data:`RECONNECT_MIN` to
    :data:`RECONNECT_MAX` (with jitter, so a fleet does not reconnect in lock step).
    """

    def __init__(self) -> None:
        #: Monotonic time Redis was first found down, None while it answers.
        self.down_since: float | None = None
        self._delay = RECONNECT_MIN
        self._retry_at = 0.0

    def pause(self) -> float:
        """Seconds before the next attempt to reach Redis (0: go ahead)."""
        return max(0.0, self._retry_at - time.monotonic())

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns the pause before trying again."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            logger.warning(
                "Redis is unreachable (%s): events are off until it is back; cancels and "
                "drains take effect at the next heartbeat, waits at the next poll",
                exc,
            )
        pause = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, RECONNECT_MAX)
        self._retry_at = max(self._retry_at, now + pause)
        return pause

    def ok(self) -> None:
        """Record a success."""
        if self.down_since is not None:
            logger.warning(
                "Redis is reachable again after %.1f s: events are back",
                time.monotonic() - self.down_since,
            )
        self.down_since = None
        self._delay = RECONNECT_MIN
        self._retry_at = 0.0


class RedisEventBus:
    """:class:`~taskforge_core.events.EventBus` over Redis pub/sub, for one project.

    Made by :meth:`RedisPlugin.taskforge_event_bus` for one use and closed with
    :meth:`aclose`; it opens no connection until it publishes or subscribes. Each subscription
    holds one pub/sub connection of its own; publishing uses one more, opened on first use.
    """

    def __init__(
        self, settings: RedisSettings, project: str, health: RedisHealth | None = None
    ) -> None:
        self.settings = settings
        self.project = project
        #: Shared with the plugin's other buses.
        self.health = health or RedisHealth()
        #: The channel of control events (cancel, drain).
        self.control_channel = settings.key("events", project, "control")
        self._finished_prefix = settings.key("events", project, "finished", "")
        self._client: redis.asyncio.Redis | None = None
        self._publish_many: AsyncScript | None = None

    def __repr__(self) -> str:
        return f"<RedisEventBus {self.settings.url} {self.control_channel}>"

    def finished_channel(self, job_id: uuid.UUID) -> str:
        """The channel of ``job_id``'s JobFinished event."""
        return self._finished_prefix + str(job_id)

    def _channel(self, event: Event) -> str:
        if isinstance(event, JobFinished):
            return self.finished_channel(event.job_id)
        return self.control_channel

    def _new_client(self) -> redis.asyncio.Redis:
        # Our own back-off decides when to try again: redis-py's retries would only make a
        # down Redis slower to notice.
        return self.settings.client(
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=HEALTH_CHECK,
            client_name=self.settings.key("events"),  # for CLIENT LIST when debugging
        )

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish every event in one pipelined round trip; when Redis is down, log and drop
        them (and do not try again for a while), never raise."""
        if not events:
            return
        if self.health.pause():
            logger.debug("Redis is down: dropped %d event(s)", len(events))
            return
        if self._client is None or self._publish_many is None:
            self._client = self._new_client()
            self._publish_many = self._client.register_script(_PUBLISH_MANY)
        pairs: list[str | bytes] = []
        for event in _split(events):
            pairs += (self._channel(event), encode_event(event))
        step = 2 * MAX_EVENTS_PER_CALL
        try:
            for start in range(0, len(pairs), step):
                await self._publish_many(args=pairs[start : start + step])
        except _REDIS_DOWN as exc:
            self.health.failed(exc)
            logger.debug("dropped %d event(s): %s", len(events), exc)
            return
        self.health.ok()

    async def aclose(self) -> None:
        client, self._client, self._publish_many = self._client, None, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # -- subscribing ----------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, *, control: bool = False, finished: Collection[uuid.UUID] = ()
    ) -> AsyncIterator[AsyncIterator[Event]]:
        channels = [self.control_channel] if control else []
        channels += [self.finished_channel(job_id) for job_id in finished]
        send, receive = anyio.create_memory_object_stream[Event](SUBSCRIBER_BUFFER)
        if not channels:  # nothing to hear: an iterator that ends with the block
            with send, receive:
                yield receive
            return
        tried = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read, channels, send, tried, name="taskforge redis events")
            if not self.health.pause():  # known to be down: do not even wait for the attempt
                with anyio.move_on_after(SUBSCRIBE_WAIT):
                    await tried.wait()
            try:
                with receive:
                    yield receive
            finally:
                tg.cancel_scope.cancel()

    async def _read(
        self, channels: list[str], send: MemoryObjectSendStream[Event], tried: anyio.Event
    ) -> None:
        """Subscribe, forward decoded events, and start over (after a back-off) whenever the
        connection breaks. ``tried`` is set once the first attempt subscribed or failed."""
        with send:
            while True:
                pause = self.health.pause()
                if pause:
                    tried.set()
                    await anyio.sleep(pause)
                client = self._new_client()
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(*channels)
                    confirmed = 0
                    while True:
                        message = await pubsub.get_message(timeout=HEALTH_CHECK / 2)
                        if message is None:
                            continue
                        kind = message.get("type")
                        if kind == "subscribe":
                            confirmed += 1
                            if confirmed == len(channels):  # in place
                                tried.set()
                                self.health.ok()
                        elif kind == "message":
                            _forward(send, message)
                except _REDIS_DOWN as exc:
                    self.health.failed(exc)
                    logger.debug("a Redis subscription broke: %s", exc)
                finally:
                    with anyio.CancelScope(shield=True):
                        await _close(pubsub, client)
                tried.set()


def _forward(send: MemoryObjectSendStream[Event], message: dict[str, Any]) -> None:
    event = decode_event(message.get("data", b""))
    if event is None:
        return
    try:
        send.send_nowait(event)
    except anyio.WouldBlock:
        logger.warning("a slow subscriber missed an event: %r", event)


async def _close(pubsub: Any, client: redis.asyncio.Redis) -> None:
    """Close a subscription's connection, even a broken one."""
    try:
        await pubsub.aclose()
    except _REDIS_DOWN as exc:
        logger.debug("closing a Redis subscription: %s", exc)
    try:
        await client.aclose()
    except _REDIS_DOWN as exc:
        logger.debug("closing a Redis client: %s", exc)


def _split(events: Sequence[Event]) -> list[Event]:
    """CancelJobs events of more than MAX_IDS_PER_MESSAGE ids, split up."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, CancelJobs) and len(event.job_ids) > MAX_IDS_PER_MESSAGE:
            ids = event.job_ids
            chunks = math.ceil(len(ids) / MAX_IDS_PER_MESSAGE)
            out += [
                CancelJobs(job_ids=ids[i * MAX_IDS_PER_MESSAGE : (i + 1) * MAX_IDS_PER_MESSAGE])
                for i in range(chunks)
            ]
        else:
            out.append(event)
    return out
