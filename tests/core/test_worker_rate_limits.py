"""The worker's admission path: limits per queue, project and tier, a limiter that breaks
(fail open / fail closed), older limiters with only ``acquire``, and closing the limiter."""

from __future__ import annotations

import datetime as dt
import itertools
import pathlib
import time
from collections.abc import Sequence

import anyio
import pytest

from taskforge_core import RateLimit, RateLimits, TaskForge, hookimpl
from taskforge_core.clock import FakeClock
from taskforge_core.ratelimit import Admission, KeyedLimit, RateLimiter
from taskforge_core.states import ExecutionStatus
from taskforge_core.worker import DEFERRED_KEYS_KEPT, Worker, WorkerStats

pytestmark = pytest.mark.anyio


def db_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


async def run_until_idle(app: TaskForge, **options: float) -> WorkerStats:
    worker = Worker(app, poll_interval=0.05, lease=2.0, concurrency=4, **options)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        return await worker.run(stop_when_idle=True)


def gaps(starts: list[float]) -> list[float]:
    ordered = sorted(starts)
    return [later - earlier for earlier, later in itertools.pairwise(ordered)]


async def test_a_queue_limit_spaces_the_jobs_of_a_task_without_a_limit_of_its_own(
    tmp_path: pathlib.Path,
) -> None:
    starts: list[float] = []
    async with TaskForge(
        db_url(tmp_path), rate_limits=RateLimits(queues={"default": "20/s"})
    ) as app:

        @app.task(name="plain")
        async def plain(n: int) -> int:
            starts.append(time.monotonic())
            return n

        handles = await plain.enqueue_many([(n,) for n in range(6)])
        stats = await run_until_idle(app)
        assert [await h.wait(5) for h in handles] == list(range(6))
        assert [(await h.refresh()).attempt for h in handles] == [1] * 6  # deferrals are free
    assert stats.failed == 0
    assert stats.deferred > 0
    assert min(gaps(starts)) >= 0.045  # one job every 50 ms


async def test_the_tighter_of_the_task_and_tier_limits_binds(tmp_path: pathlib.Path) -> None:
    starts: list[float] = []
    limits = RateLimits(
        tiers={"starter": "10/s", "pro": "1000/s"}, project_tiers={"acme": "starter"}
    )
    async with TaskForge(db_url(tmp_path), project="acme", rate_limits=limits) as app:

        @app.task(name="fast", rate_limit="100/s")
        async def fast() -> None:
            starts.append(time.monotonic())

        handles = await fast.enqueue_many([()] * 4)
        stats = await run_until_idle(app)
        for handle in handles:
            await handle.wait(5)
    assert stats.succeeded == 4
    assert min(gaps(starts)) >= 0.095  # the starter tier's 10/s, not the task's 100/s


class Broken:
    """A limiter that raises for its first ``failures`` calls, then admits everything."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[str]] = []
        self.closed = False

    async def acquire(self, key: str, limit: RateLimit) -> Admission:
        return await self.acquire_all([(key, limit)])

    async def acquire_all(self, limits: Sequence[KeyedLimit]) -> Admission:
        self.calls.append([key for key, _ in limits])
        if len(self.calls) <= self.failures:
            raise ConnectionError("limiter down")
        return Admission(True, 0.0)

    async def aclose(self) -> None:
        self.closed = True


class Provides:
    def __init__(self, limiter: object) -> None:
        self.limiter = limiter

    @hookimpl
    def taskforge_rate_limiter(self, app: TaskForge) -> RateLimiter:
        return self.limiter  # type: ignore[return-value]


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_broken_limiter_admits_fail_open_limits_and_defers_fail_closed_ones(
    tmp_path: pathlib.Path, fail_open: bool
) -> None:
    broken = Broken(failures=3)
    async with TaskForge(db_url(tmp_path), plugins=[Provides(broken)]) as app:

        @app.task(name="limited", rate_limit=RateLimit.parse("1000/s", fail_open=fail_open))
        async def limited(n: int) -> int:
            return n

        handles = await limited.enqueue_many([(n,) for n in range(3)])
        stats = await run_until_idle(app)
        assert [await h.wait(5) for h in handles] == [0, 1, 2]  # no job lost either way
        storage = await app.storage()
        statuses = [e.status for h in handles for e in await storage.list_executions(h.id)]
    assert stats.failed == 0
    if fail_open:
        assert stats.deferred == 0
        assert len(broken.calls) == 3
    else:
        assert stats.deferred == 3  # each job waited out the outage, then ran
        assert statuses.count(ExecutionStatus.DEFERRED) == 3
        assert len(broken.calls) == 6
    assert broken.closed  # the worker closed the limiter when it stopped


async def test_a_limiter_with_only_acquire_still_limits(tmp_path: pathlib.Path) -> None:
    class Legacy:
        def __init__(self) -> None:
            self.keys: list[str] = []

        async def acquire(self, key: str, limit: RateLimit) -> Admission:
            self.keys.append(key)
            return Admission(len(self.keys) > 1, 0.0 if len(self.keys) > 1 else 0.05)

    legacy = Legacy()
    limits = RateLimits(queues={"default": "1000/s"})
    async with TaskForge(db_url(tmp_path), plugins=[Provides(legacy)], rate_limits=limits) as app:

        @app.task(name="job", rate_limit="1000/s")
        async def job() -> str:
            return "ok"

        handle = await job.enqueue()
        stats = await run_until_idle(app)
        assert await handle.wait(5) == "ok"
    assert stats.deferred == 1
    # Refused by the first key: the second was not asked; then both were, one by one.
    assert legacy.keys == [
        "task:default:default:job",
        "task:default:default:job",
        "queue:default:default",
    ]


def test_deferral_slots_space_jobs_per_key_and_forget_past_keys(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    app = TaskForge(db_url(tmp_path), clock=clock)
    worker = Worker(app, ["default"])
    first = worker._deferral_slot("project:a", 1.0, 0.5)
    second = worker._deferral_slot("project:a", 1.0, 0.5)
    assert (first - clock.now(), second - first) == (
        dt.timedelta(seconds=1),
        dt.timedelta(seconds=0.5),
    )
    for n in range(DEFERRED_KEYS_KEPT):  # many projects, each with a slot still ahead
        worker._deferral_slot(f"project:{n}", 1.0, 0.5)
    assert len(worker._deferred_until) == DEFERRED_KEYS_KEPT + 1  # nothing past to forget
    clock.advance(10)
    worker._deferral_slot("project:fresh", 1.0, 0.5)
    assert set(worker._deferred_until) == {"project:fresh"}
