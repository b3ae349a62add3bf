"""Events between instances, without Redis: the wire format, the in-process bus, and what the
worker, ``app.cancel``, ``app.drain_worker`` and ``JobHandle.wait`` do with and without a bus.

Two apps on one SQLite file stand for two instances. They share a :class:`FakeClock`, so a
worker's heartbeat happens only when a test advances the clock: whatever happens before that
was done by an event.
"""

from __future__ import annotations

import logging
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

from taskforge_core import (
    EventBus,
    FakeClock,
    JobStatus,
    LocalEventBus,
    TaskForge,
    Worker,
    WorkerNotFoundError,
    hookimpl,
)
from taskforge_core.events import (
    WIRE_VERSION,
    CancelJobs,
    DrainWorker,
    Event,
    JobFinished,
    decode_event,
    encode_event,
)
from taskforge_core.models import WorkerStatus

pytestmark = pytest.mark.anyio

HEARTBEAT = 5.0


class Instance:
    """An app with tasks whose progress the test can watch and steer."""

    def __init__(self, url: str, clock: FakeClock, plugins: Sequence[object]) -> None:
        self.app = TaskForge(url, clock=clock, plugins=plugins)
        self.started: set[str] = set()
        self.interrupted: set[str] = set()
        self.release = anyio.Event()
        started, interrupted = self.started, self.interrupted

        @self.app.task(name="block")
        async def block(key: str) -> str:
            started.add(key)
            try:
                await self.release.wait()
            except BaseException:
                interrupted.add(key)
                raise
            return key


@asynccontextmanager
async def two_instances(
    tmp_path: pathlib.Path, plugins: Sequence[object] = ()
) -> AsyncIterator[tuple[Instance, Instance, FakeClock]]:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path}/jobs.db"
    a, b = Instance(url, clock, plugins), Instance(url, clock, plugins)
    async with a.app, b.app:
        yield a, b, clock


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            try:
                yield worker
            finally:
                worker.drain()


def worker_of(instance: Instance) -> Worker:
    return Worker(
        instance.app,
        ["default"],
        lease=3 * HEARTBEAT,
        heartbeat_interval=HEARTBEAT,
        reclaim_interval=100 * HEARTBEAT,
        poll_interval=0.02,
        grace_period=5.0,
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.005)


# -- the wire format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        JobFinished(job_id=uuid.uuid4(), status=JobStatus.SUCCEEDED),
        JobFinished(job_id=uuid.uuid4(), status=JobStatus.CANCELLED),
        CancelJobs(job_ids=(uuid.uuid4(), uuid.uuid4())),
        CancelJobs(job_ids=()),
        DrainWorker(worker_id=uuid.uuid4()),
    ],
)
def test_every_event_survives_the_wire(event: Event) -> None:
    data = encode_event(event)
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event
    assert b" " not in data  # compact
    assert data.startswith(b'{"v":%d,' % WIRE_VERSION)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"null",
        b"[1, 2]",
        b'{"t":"drain","worker":"00000000-0000-0000-0000-000000000000"}',  # no version
        b'{"v":2,"t":"drain","worker":"00000000-0000-0000-0000-000000000000"}',
        b'{"v":1,"t":"explode"}',
        b'{"v":1,"t":"drain","worker":"not-a-uuid"}',
        b'{"v":1,"t":"cancel","ids":"00000000-0000-0000-0000-000000000000"}',
        b'{"v":1,"t":"finished","job":"00000000-0000-0000-0000-000000000000","status":"pending"}',
    ],
)
def test_garbage_and_unknown_versions_decode_to_nothing_with_a_warning(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="taskforge.events"):
        assert decode_event(data) is None
    assert len(caplog.records) == 1


def test_the_local_bus_is_an_event_bus() -> None:
    assert isinstance(LocalEventBus(), EventBus)


# -- without a bus: storage only, as before ---------------------------------------------------


async def test_without_a_bus_a_cancel_takes_effect_at_the_next_heartbeat(
    tmp_path: pathlib.Path,
) -> None:
    async with two_instances(tmp_path) as (a, b, clock):
        assert a.app.event_bus() is None
        worker = worker_of(b)
        async with running(worker):
            job = await a.app.enqueue("block", ["x"])
            await wait_until(lambda: "x" in b.started)
            assert await a.app.cancel(job.id) == [job.id]
            await anyio.sleep(0.3)
            assert worker.running_jobs == 1, "nothing but the heartbeat may stop it"
            clock.advance(HEARTBEAT)
            await wait_until(lambda: worker.running_jobs == 0)
        assert b.interrupted == {"x"}
        assert worker.stats.cancelled == 1


async def test_without_a_bus_a_drain_from_another_app_waits_for_the_heartbeat(
    tmp_path: pathlib.Path,
) -> None:
    async with two_instances(tmp_path) as (a, b, clock):
        worker = worker_of(b)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            info = await a.app.drain_worker(worker.id)
            assert info.status is WorkerStatus.DRAINING
            await anyio.sleep(0.3)
            assert not worker.draining
            clock.advance(HEARTBEAT)
            await wait_until(lambda: worker.draining)
        (seen,) = await a.app.list_workers()
        assert seen.status is WorkerStatus.STOPPED


# -- with the in-process bus ------------------------------------------------------------------


async def test_with_a_bus_a_cancel_stops_the_job_before_any_heartbeat(
    tmp_path: pathlib.Path,
) -> None:
    async with two_instances(tmp_path, [LocalEventBus()]) as (a, b, _):
        worker = worker_of(b)
        async with running(worker):
            jobs = [await a.app.enqueue("block", [key]) for key in ("x", "y")]
            await wait_until(lambda: b.started == {"x", "y"})
            await a.app.cancel(jobs[0].id)
            await wait_until(lambda: worker.running_jobs == 1)
            assert b.interrupted == {"x"}, "only the cancelled job stops"
            b.release.set()
            assert await jobs[1].wait(timeout=5) == "y"
        assert worker.stats.cancelled == 1
        assert worker.stats.succeeded == 1
        assert (await a.app.get_job(jobs[0].id)).status is JobStatus.CANCELLED


async def test_a_cancel_event_storage_does_not_confirm_interrupts_nothing(
    tmp_path: pathlib.Path,
) -> None:
    bus = LocalEventBus()
    async with two_instances(tmp_path, [bus]) as (a, b, _):
        worker = worker_of(b)
        async with running(worker):
            job = await a.app.enqueue("block", ["x"])
            await wait_until(lambda: "x" in b.started)
            # A forged or stale event: the job is not cancelled in storage.
            await bus.publish([CancelJobs(job_ids=(job.id,)), DrainWorker(worker_id=uuid.uuid4())])
            await anyio.sleep(0.3)
            assert worker.running_jobs == 1
            assert not worker.draining
            b.release.set()
            assert await job.wait(timeout=5) == "x"
        assert b.interrupted == set()
        assert worker.stats.cancelled == worker.stats.lost == 0


async def test_with_a_bus_a_drain_from_another_app_starts_at_once(
    tmp_path: pathlib.Path,
) -> None:
    async with two_instances(tmp_path, [LocalEventBus()]) as (a, b, _):
        worker = worker_of(b)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            job = await a.app.enqueue("block", ["x"])
            await wait_until(lambda: "x" in b.started)
            await a.app.drain_worker(str(worker.id))
            await wait_until(lambda: worker.draining)
            b.release.set()  # the running job finishes within the grace period
        assert (await a.app.get_job(job.id)).status is JobStatus.SUCCEEDED
        (seen,) = await a.app.list_workers()
        assert seen.status is WorkerStatus.STOPPED
        # Draining a stopped worker does nothing and says so.
        assert (await a.app.drain_worker(worker.id)).status is WorkerStatus.STOPPED


async def test_draining_an_unknown_worker_raises(tmp_path: pathlib.Path) -> None:
    async with two_instances(tmp_path) as (a, _, _):
        with pytest.raises(WorkerNotFoundError, match="no worker with id"):
            await a.app.drain_worker(uuid.uuid4())
        with pytest.raises(WorkerNotFoundError, match="not a worker id"):
            await a.app.drain_worker("bogus")


async def test_wait_is_woken_by_the_finished_event(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reads at 0, 5, 15, ... 1275 ms then 2555 ms: a wait ending near 1.5 s heard the event.
    monkeypatch.setattr("taskforge_core.handle._MAX_POLL", 60.0)
    monkeypatch.setattr("taskforge_core.handle._MAX_POLL_WITH_EVENTS", 60.0)
    async with two_instances(tmp_path, [LocalEventBus()]) as (a, b, _):
        job = await a.app.enqueue("block", ["x"])
        async with running(worker_of(b)), anyio.create_task_group() as tg:

            async def release_later() -> None:
                await anyio.sleep(1.5)
                b.release.set()

            tg.start_soon(release_later)
            began = time.monotonic()
            assert await job.wait(timeout=10) == "x"
            waited = time.monotonic() - began
        assert 1.5 <= waited < 2.0


# -- a broken bus costs latency, never jobs ---------------------------------------------------


class BrokenBus:
    """A bus whose every operation fails, as a buggy third-party plugin might."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def taskforge_event_bus(self, app: TaskForge) -> EventBus:
        return self

    async def publish(self, events: Sequence[Event]) -> None:
        self.calls.append("publish")
        raise RuntimeError("publish is broken")

    @asynccontextmanager
    async def subscribe(
        self, *, control: bool = False, finished: Collection[uuid.UUID] = ()
    ) -> AsyncIterator[AsyncIterator[Event]]:
        self.calls.append("subscribe")
        raise RuntimeError("subscribe is broken")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        self.calls.append("aclose")
        raise RuntimeError("aclose is broken")


async def test_a_broken_bus_costs_latency_never_a_job(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BrokenBus()
    caplog.set_level(logging.WARNING, logger="taskforge")  # whatever other tests set
    async with two_instances(tmp_path, [broken]) as (a, b, clock):
        worker = worker_of(b)
        async with running(worker):
            job = await a.app.enqueue("block", ["x"])
            await wait_until(lambda: "x" in b.started)
            assert await a.app.cancel(job.id) == [job.id]
            clock.advance(HEARTBEAT)
            await wait_until(lambda: worker.running_jobs == 0)
            other = await a.app.enqueue("block", ["y"])
            b.release.set()
            assert await other.wait(timeout=5) == "y"
        assert worker.stats.cancelled == 1
        assert worker.stats.succeeded == 1
    assert {"publish", "subscribe", "aclose"} <= set(broken.calls)
    assert "could not publish" in caplog.text


async def test_a_worker_announces_the_jobs_it_finished(tmp_path: pathlib.Path) -> None:
    bus = LocalEventBus()
    async with two_instances(tmp_path, [bus]) as (a, b, _):
        job = await a.app.enqueue("block", ["x"])
        seen: list[Event] = []
        async with bus.subscribe(finished=[job.id]) as events, running(worker_of(b)):
            await wait_until(lambda: "x" in b.started)
            b.release.set()
            with anyio.fail_after(5):
                seen.append(await anext(aiter(events)))
        assert seen == [JobFinished(job_id=job.id, status=JobStatus.SUCCEEDED)]
