"""Events between instances over a real Redis: cancel, drain and wait across two apps, and
what happens when Redis is unreachable or drops the connection.

Each test runs two TaskForge apps in one process, "instance A" and "instance B", each with its
own storage connection to one SQLite file or PostgreSQL database and its own Redis
connections: everything between them goes through storage and Redis, as between two machines
(the last test uses two processes). Heartbeats are set long (20 s)
where a test proves the event path, so only an event can explain a prompt reaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import pytest
import redis
import redis.asyncio

from taskforge_backends.redis import RedisPlugin
from taskforge_backends.redis.events import RedisEventBus
from taskforge_core import FakeClock, JobCancelledError, JobStatus, TaskForge, Worker
from taskforge_core.events import CancelJobs, DrainWorker, JobFinished
from taskforge_core.ids import uuid7
from taskforge_core.models import NewJob, WorkerStatus

pytestmark = pytest.mark.anyio

#: Long enough that a reaction within EVENT_LATENCY cannot come from a heartbeat.
SLOW_HEARTBEAT = 20.0
#: What "at once" means in these tests (measured: a few milliseconds).
EVENT_LATENCY = 1.0


#: What "at once" means for a wait: polling alone would answer over 1 s late (slow_polling).
WAIT_LATENCY = 0.5


def slow_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let JobHandle.wait's reads back off without a cap: they happen 1.275 s and 2.555 s
    after it starts, so a wait returning soon after 1.5 s was woken by the event."""
    monkeypatch.setattr("taskforge_core.handle._MAX_POLL", 60.0)
    monkeypatch.setattr("taskforge_core.handle._MAX_POLL_WITH_EVENTS", 60.0)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_app(
    where: pathlib.Path | str, plugin: RedisPlugin, clock: FakeClock | None = None
) -> TaskForge:
    """One instance: its own storage connection to the shared database (a storage URL, or a
    folder for a SQLite file), with the given plugin."""
    url = where if isinstance(where, str) else f"sqlite:///{where}/jobs.db"
    app = TaskForge(url, plugins=[plugin], clock=clock)
    started: dict[str, float] = {}
    app.started = started  # type: ignore[attr-defined]

    @app.task(name="block")
    async def block(key: str) -> str:
        started[key] = time.monotonic()
        await anyio.sleep(3600)
        return "never"

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="nap")
    async def nap(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "rested"

    return app


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """A database both instances share: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db"
        return
    import asyncpg

    server = request.getfixturevalue("postgres_url")
    name = f"taskforge_test_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
async def instances(
    storage_url: str, redis_plugin: RedisPlugin
) -> AsyncIterator[tuple[TaskForge, TaskForge]]:
    a = make_app(storage_url, redis_plugin)
    b = make_app(
        storage_url,
        RedisPlugin(redis_plugin.settings.url, prefix=redis_plugin.settings.prefix),
    )
    async with a, b:
        yield a, b


@asynccontextmanager
async def running(worker: Worker, timeout: float = 30.0) -> AsyncIterator[Worker]:
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            try:
                yield worker
            finally:
                worker.drain()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.005)


def slow_worker(app: TaskForge, **options: Any) -> Worker:
    settings: dict[str, Any] = {
        "lease": 3 * SLOW_HEARTBEAT,
        "heartbeat_interval": SLOW_HEARTBEAT,
        "poll_interval": 0.05,
        "grace_period": 5.0,
    }
    return Worker(app, ["default"], **{**settings, **options})


# -- the bus itself ---------------------------------------------------------------------------


async def test_every_event_kind_travels_through_redis(redis_plugin: RedisPlugin) -> None:
    job, other, worker = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    many = tuple(uuid.uuid4() for _ in range(2500))  # split into 3 messages on the wire
    publisher = RedisEventBus(redis_plugin.settings, "proj")
    listener = RedisEventBus(redis_plugin.settings, "proj")
    try:
        async with listener.subscribe(control=True, finished=[job]) as events:
            await publisher.publish(
                [
                    JobFinished(job_id=other, status=JobStatus.SUCCEEDED),  # not subscribed
                    JobFinished(job_id=job, status=JobStatus.FAILED),
                    CancelJobs(job_ids=many),
                    DrainWorker(worker_id=worker),
                ]
            )
            received = []
            with anyio.fail_after(5):
                async for event in events:
                    received.append(event)
                    if isinstance(event, DrainWorker):
                        break
    finally:
        await publisher.aclose()
        await listener.aclose()
    assert received[0] == JobFinished(job_id=job, status=JobStatus.FAILED)
    cancelled = [i for e in received if isinstance(e, CancelJobs) for i in e.job_ids]
    assert cancelled == list(many)
    assert received[-1] == DrainWorker(worker_id=worker)


async def test_a_batch_larger_than_one_script_call_arrives_whole(
    redis_plugin: RedisPlugin,
) -> None:
    events = [JobFinished(job_id=uuid.uuid4(), status=JobStatus.SUCCEEDED) for _ in range(2500)]
    watched = [events[0], events[1000], events[1999], events[2000], events[-1]]
    publisher = RedisEventBus(redis_plugin.settings, "proj")
    listener = RedisEventBus(redis_plugin.settings, "proj")
    try:
        async with listener.subscribe(finished=[e.job_id for e in watched]) as received:
            await publisher.publish(events)
            heard = []
            with anyio.fail_after(5):
                async for event in received:
                    heard.append(event)
                    if len(heard) == len(watched):
                        break
    finally:
        await publisher.aclose()
        await listener.aclose()
    assert heard == watched


async def test_projects_do_not_hear_each_other(redis_plugin: RedisPlugin) -> None:
    ours = RedisEventBus(redis_plugin.settings, "ours")
    theirs = RedisEventBus(redis_plugin.settings, "theirs")
    try:
        async with ours.subscribe(control=True) as events:
            await theirs.publish([DrainWorker(worker_id=uuid.uuid4())])
            mine = DrainWorker(worker_id=uuid.uuid4())
            await ours.publish([mine])
            with anyio.fail_after(5):
                first = await anext(aiter(events))
    finally:
        await ours.aclose()
        await theirs.aclose()
    assert first == mine


async def test_garbage_on_the_channel_is_logged_and_skipped(
    redis_plugin: RedisPlugin, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskforge")  # whatever other tests set
    bus = RedisEventBus(redis_plugin.settings, "proj")
    raw = redis.asyncio.Redis.from_url(redis_url)
    good = DrainWorker(worker_id=uuid.uuid4())
    try:
        async with bus.subscribe(control=True) as events:
            for junk in (b"\xff not json", b'{"v":99,"t":"drain"}', b'{"v":1,"t":"cancel"}', b"[]"):
                await raw.publish(bus.control_channel, junk)
            await bus.publish([good])
            with anyio.fail_after(5):
                first = await anext(aiter(events))
    finally:
        await raw.aclose()
        await bus.aclose()
    assert first == good
    warnings = [r.getMessage() for r in caplog.records if r.name == "taskforge.events"]
    assert len(warnings) == 4
    assert any("unknown version 99" in w for w in warnings)


# -- two instances ----------------------------------------------------------------------------


async def test_a_cancel_on_one_instance_stops_the_job_on_another_at_once(
    instances: tuple[TaskForge, TaskForge],
) -> None:
    a, b = instances
    worker = slow_worker(b)
    async with running(worker):
        job = await a.enqueue("block", ["x"])
        await wait_until(lambda: "x" in b.started)  # type: ignore[attr-defined]
        began = time.monotonic()
        assert await a.cancel(job.id) == [job.id]
        await wait_until(lambda: worker.running_jobs == 0, timeout=SLOW_HEARTBEAT / 2)
        latency = time.monotonic() - began
    assert latency < EVENT_LATENCY, f"took {latency:.3f} s: the heartbeat, not the event"
    assert worker.stats.cancelled == 1
    assert worker.stats.succeeded == worker.stats.lost == 0
    assert (await a.get_job(job.id)).status is JobStatus.CANCELLED


async def test_a_drain_from_one_instance_drains_a_worker_of_another(
    instances: tuple[TaskForge, TaskForge],
) -> None:
    a, b = instances
    worker = slow_worker(b)
    with anyio.fail_after(SLOW_HEARTBEAT / 2):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            job = await a.enqueue("nap", [0.3])  # running while the drain begins: finishes
            await wait_until(lambda: worker.running_jobs == 1)
            began = time.monotonic()
            info = await a.drain_worker(worker.id)
            assert info.status is WorkerStatus.DRAINING
            await wait_until(lambda: worker.draining)
            latency = time.monotonic() - began
        # worker.run returned: it drained and stopped
    assert latency < EVENT_LATENCY, f"took {latency:.3f} s: the heartbeat, not the event"
    assert (await a.get_job(job.id)).status is JobStatus.SUCCEEDED
    (seen,) = [w for w in await a.list_workers() if w.id == worker.id]
    assert seen.status is WorkerStatus.STOPPED


async def test_wait_on_one_instance_wakes_when_another_finishes_the_job(
    instances: tuple[TaskForge, TaskForge], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_polling(monkeypatch)
    a, b = instances
    job = await a.enqueue("nap", [1.5])
    async with running(slow_worker(b)):
        began = time.monotonic()
        assert await job.wait(timeout=10) == "rested"
        waited = time.monotonic() - began
    assert 1.5 <= waited < 1.5 + WAIT_LATENCY, f"wait returned after {waited:.3f} s"


async def test_wait_on_one_instance_wakes_when_another_cancels_the_job(
    instances: tuple[TaskForge, TaskForge], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_polling(monkeypatch)
    a, b = instances
    job = await a.enqueue("block", ["never run"])  # no worker: it stays pending
    async with anyio.create_task_group() as tg:

        async def cancel_later() -> None:
            await anyio.sleep(1.5)
            await b.cancel(job.id)

        tg.start_soon(cancel_later)
        began = time.monotonic()
        with pytest.raises(JobCancelledError):
            await job.wait(timeout=10)
        waited = time.monotonic() - began
    assert 1.5 <= waited < 1.5 + WAIT_LATENCY, f"wait returned after {waited:.3f} s"


# -- when Redis goes away ---------------------------------------------------------------------


async def test_with_redis_unreachable_jobs_run_and_cancel_works_by_heartbeat(
    tmp_path: pathlib.Path,
) -> None:
    down = RedisPlugin(f"redis://127.0.0.1:{closed_port()}/0", prefix="unreachable")
    a, b = make_app(tmp_path, down), make_app(tmp_path, down)
    heartbeat = 0.5
    async with a, b:
        worker = Worker(b, ["default"], lease=3.0, heartbeat_interval=heartbeat, poll_interval=0.05)
        async with running(worker):
            jobs = [await a.enqueue("add", [n, n]) for n in range(20)]
            results = [await job.wait(timeout=10) for job in jobs]
            blocked = await a.enqueue("block", ["y"])
            await wait_until(lambda: "y" in b.started)  # type: ignore[attr-defined]
            began = time.monotonic()
            assert await a.cancel(blocked.id) == [blocked.id]
            cancel_took = time.monotonic() - began
            await wait_until(lambda: worker.running_jobs == 0, timeout=5 * heartbeat)
            stopped_after = time.monotonic() - began
    assert results == [2 * n for n in range(20)]
    # Generous margins: the machine may be busy. A cancel waiting on Redis would take the
    # connect timeout (2 s); a job missed by the heartbeat would run on until the 5 s limit.
    assert cancel_took < 1.0, f"cancel took {cancel_took:.3f} s with Redis unreachable"
    assert stopped_after < heartbeat + 1.5, f"stopped {stopped_after:.3f} s after the cancel"
    assert worker.stats.succeeded == 20
    assert worker.stats.cancelled == 1
    (stats,) = await a.queue_stats()
    counts = {status: n for status, n in stats.counts.items() if n}
    assert counts == {JobStatus.SUCCEEDED: 20, JobStatus.CANCELLED: 1}


async def test_a_subscription_comes_back_after_redis_drops_it(
    instances: tuple[TaskForge, TaskForge], redis_url: str, redis_prefix: str
) -> None:
    a, b = instances
    worker = slow_worker(b)
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with running(worker):
            name = f"{redis_prefix}:events"
            killed = 0
            for client in await admin.client_list():
                if client.get("name") == name and int(client.get("sub", 0)):  # this test's
                    killed += await admin.client_kill_filter(_id=client["id"])
            assert killed == 1  # the worker's subscription
            channel = f"{redis_prefix}:events:default:control"

            async def resubscribed() -> bool:
                counts = await admin.pubsub_numsub(channel)
                return bool(counts and counts[0][1] == 1)

            with anyio.fail_after(5):
                while True:
                    if await resubscribed():
                        break
                    await anyio.sleep(0.02)
            job = await a.enqueue("block", ["z"])
            await wait_until(lambda: "z" in b.started)  # type: ignore[attr-defined]
            began = time.monotonic()
            await a.cancel(job.id)
            await wait_until(lambda: worker.running_jobs == 0, timeout=SLOW_HEARTBEAT / 2)
            latency = time.monotonic() - began
    finally:
        await admin.aclose()
    assert latency < EVENT_LATENCY
    assert worker.stats.cancelled == 1


def test_under_trio_the_plugin_offers_no_bus_and_cancel_still_works(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[uuid.UUID]:
        async with make_app(tmp_path, redis_plugin) as app:
            assert app.event_bus() is None
            job = await app.enqueue("add", [1, 2])
            return await app.cancel(job.id)

    with caplog.at_level(logging.WARNING, logger="taskforge"):
        cancelled = anyio.run(main, backend="trio")
    assert len(cancelled) == 1
    assert "Redis events need asyncio" in caplog.text


# -- two processes: the command-line worker, configured through the environment --------------

APP_MODULE = """
import pathlib, time
import anyio
from taskforge_core import TaskForge

app = TaskForge("sqlite:///{db}")

@app.task(name="block")
async def block(key: str) -> None:
    pathlib.Path(key + ".started").write_text(str(time.time()))
    try:
        await anyio.sleep(3600)
    finally:
        pathlib.Path(key + ".stopped").write_text(str(time.time()))

@app.task(name="nap")
async def nap(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "rested"
"""


@pytest.mark.slow
async def test_a_worker_process_obeys_cancel_and_drain_from_another_process(
    tmp_path: pathlib.Path,
    redis_plugin: RedisPlugin,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "jobs.db"
    (tmp_path / "evapp.py").write_text(APP_MODULE.format(db=db))
    env = {
        **os.environ,
        "TASKFORGE_REDIS_URL": redis_url,
        "TASKFORGE_REDIS_PREFIX": redis_prefix,
        "PYTHONPATH": str(tmp_path),
    }
    # --lease 60: heartbeats every 20 s, so only events explain a reaction within a second.
    command = [sys.executable, "-m", "taskforge_core.cli", "worker", "evapp:app", "--lease", "60"]
    command += ["--poll-interval", "0.05", "--grace-period", "5"]
    slow_polling(monkeypatch)
    async with (
        TaskForge(f"sqlite:///{db}", plugins=[redis_plugin]) as a,
        await anyio.open_process(command, cwd=tmp_path, env=env, stderr=None) as b,
    ):
        try:
            # This app does not register the tasks: it enqueues them by name, as a web app
            # would for tasks that only its workers import.
            (job,) = await a.enqueue_jobs([NewJob(id=uuid7(), task="block", args=("x",))])
            # The process starts, imports, registers, claims:
            await wait_until((tmp_path / "x.started").exists, timeout=15)
            cancelled_at = time.time()
            await a.cancel(job.id)
            await wait_until((tmp_path / "x.stopped").exists, timeout=SLOW_HEARTBEAT / 2)
            cancel_latency = float((tmp_path / "x.stopped").read_text()) - cancelled_at

            (nap,) = await a.enqueue_jobs([NewJob(id=uuid7(), task="nap", args=(1.5,))])
            began = time.monotonic()
            assert await nap.wait(timeout=10) == "rested"
            waited = time.monotonic() - began

            (worker,) = [w for w in await a.list_workers() if w.status is WorkerStatus.RUNNING]
            began = time.monotonic()
            await a.drain_worker(worker.id)
            with anyio.fail_after(SLOW_HEARTBEAT / 2):
                await b.wait()
            drain_took = time.monotonic() - began
        finally:
            if b.returncode is None:
                b.kill()
                with anyio.move_on_after(5, shield=True):
                    await b.wait()
    assert cancel_latency < EVENT_LATENCY, f"the job stopped {cancel_latency:.3f} s after"
    assert 1.5 <= waited < 1.5 + WAIT_LATENCY, f"wait returned after {waited:.3f} s"
    assert b.returncode == 0
    assert drain_took < EVENT_LATENCY + 1.0, f"the worker exited {drain_took:.3f} s after"
    assert (await a.get_job(job.id)).status is JobStatus.CANCELLED


# -- Redis goes away, then comes back ---------------------------------------------------------


class Outage:
    """A TCP relay in front of the shared Redis that the test can take down and bring back:
    an outage as the clients see it (connections cut, then refused), without stopping the
    Redis server other tests use."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.db = parts.path or "/0"
        self.port = 0
        self._scope: anyio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def up(self, tg: anyio.abc.TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._scope = scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                async with listener:
                    await listener.serve(self._relay)

        tg.start_soon(serve)

    def down(self) -> None:
        """Close the listening socket and every relayed connection."""
        assert self._scope is not None
        self._scope.cancel()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp(*self.target) as server:

            async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
                try:
                    async for chunk in source:
                        await sink.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                await sink.send_eof()

            async with anyio.create_task_group() as pumps:
                pumps.start_soon(pump, client, server)
                pumps.start_soon(pump, server, client)


async def test_events_missed_in_an_outage_cost_a_heartbeat_and_come_back_with_redis(
    tmp_path: pathlib.Path, redis_url: str, redis_prefix: str
) -> None:
    outage = Outage(redis_url)
    clock = FakeClock()  # heartbeats happen only when the test moves this clock
    admin = redis.asyncio.Redis.from_url(redis_url)
    channel = f"{redis_prefix}:events:default:control"

    async def listeners() -> int:
        ((_, count),) = await admin.pubsub_numsub(channel)
        return int(count)

    async def until_listeners(count: int) -> None:
        with anyio.fail_after(10):  # back-off tops out at 5 s
            while True:
                if await listeners() == count:
                    return
                await anyio.sleep(0.02)

    try:
        async with anyio.create_task_group() as relay:
            await outage.up(relay)
            a = make_app(tmp_path, RedisPlugin(outage.url, prefix=redis_prefix), clock)
            b = make_app(tmp_path, RedisPlugin(outage.url, prefix=redis_prefix), clock)
            async with a, b:
                worker = Worker(b, ["default"], lease=60, heartbeat_interval=20, poll_interval=0.05)
                async with running(worker):
                    assert await listeners() == 1

                    outage.down()
                    await until_listeners(0)
                    first = await a.enqueue("block", ["first"])
                    await wait_until(lambda: "first" in b.started)  # type: ignore[attr-defined]
                    assert await a.cancel(first.id) == [first.id]  # stored; the event is lost
                    await anyio.sleep(0.5)
                    assert worker.running_jobs == 1, "no event can arrive during the outage"
                    clock.advance(20)  # the heartbeat stops it
                    await wait_until(lambda: worker.running_jobs == 0)

                    await outage.up(relay)  # same port: Redis is back
                    await until_listeners(1)  # the worker subscribed again by itself
                    second = await a.enqueue("block", ["second"])
                    await wait_until(lambda: "second" in b.started)  # type: ignore[attr-defined]
                    await a.cancel(second.id)
                    await wait_until(lambda: worker.running_jobs == 0, timeout=EVENT_LATENCY)
                assert worker.stats.cancelled == 2
                for job in (first, second):
                    assert (await job.refresh()).status is JobStatus.CANCELLED
            outage.down()
    finally:
        await admin.aclose()
