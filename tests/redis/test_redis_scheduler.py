"""The Redis scheduler: the hook, runtime entries, fencing, missed-tick policies, Redis going away.

Ticks are driven by a :class:`FakeClock`; leases are real time (short ones, 1 s). Redis is the
real server; "Redis goes away" is a TCP proxy in front of it that the test cuts.
"""

from __future__ import annotations

import datetime as dt
import logging
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import pytest
import redis.asyncio
from anyio.abc import SocketAttribute, SocketStream

from taskforge_backends.redis import RedisPlugin
from taskforge_backends.redis.scheduler import (
    MissedTicks,
    RedisScheduler,
    SchedulerConfig,
    Schedules,
    _due,
)
from taskforge_core import FakeClock, Job, TaskForge, Worker, hookimpl
from taskforge_core.errors import (
    ConfigurationError,
    InvalidCronError,
    InvalidJobError,
    UnknownTaskError,
)
from taskforge_core.scheduler import PeriodicEntry

pytestmark = pytest.mark.anyio

START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
LEASE = 1.0


def key(name: str, seconds: int) -> str:
    return f"periodic:{name}:{(START + dt.timedelta(seconds=seconds)).isoformat()}"


def make_app(tmp_path: pathlib.Path, clock: FakeClock, plugin: RedisPlugin) -> TaskForge:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", clock=clock, plugins=[plugin])

    @app.periodic("* * * * * *", name="every_second")
    async def every_second() -> None:
        pass

    @app.task(name="extra")
    async def extra(n: int) -> int:
        return n

    return app


async def keys(app: TaskForge) -> list[str]:
    page = await app.list_jobs(limit=1000)
    assert page.next_cursor is None
    return sorted(job.key or "" for job in page.items)


async def wait_for_keys(app: TaskForge, expected: list[str], timeout: float = 10) -> None:
    found: list[str] = []
    with anyio.move_on_after(timeout):
        while True:
            if (found := await keys(app)) == sorted(expected):
                break
            await anyio.sleep(0.02)
    assert found == sorted(expected)


@asynccontextmanager
async def running(app: TaskForge, scheduler: RedisScheduler) -> AsyncIterator[None]:
    """Run ``scheduler`` for ``app`` until the block ends."""
    async with app, anyio.create_task_group() as group:
        await group.start(scheduler.run, app)
        yield
        group.cancel_scope.cancel()


def scheduler_of(plugin: RedisPlugin, **config: object) -> RedisScheduler:
    return RedisScheduler(plugin.settings, SchedulerConfig(lease=LEASE, **config))  # type: ignore[arg-type]


async def wait_for_last_tick(
    schedules: Schedules, entry: str, tick: dt.datetime, timeout: float = 10
) -> None:
    """Until the leader has handled ``entry``'s ticks up to ``tick`` (its first pass done)."""
    with anyio.fail_after(timeout):
        while True:
            if (await schedules.last_ticks()).get(entry) == tick:
                return
            await anyio.sleep(0.02)


async def wait_for_leader(schedules: Schedules, timeout: float = 10) -> int:
    with anyio.fail_after(timeout):
        while True:
            if (leader := await schedules.leader()) is not None:
                return leader.epoch
            await anyio.sleep(0.02)


# -- the plugin --------------------------------------------------------------------------------


def test_the_plugin_answers_the_scheduler_hook_before_the_core(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    config = SchedulerConfig(lease=2.0, missed_ticks="latest")
    plugin = RedisPlugin(redis_plugin.settings.url, prefix="p", scheduler=config)
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", plugins=[plugin])
    scheduler = app.plugins.hook.taskforge_scheduler(app=app)
    assert isinstance(scheduler, RedisScheduler)
    assert scheduler.settings == plugin.settings
    assert scheduler.config.missed_ticks is MissedTicks.LATEST


def test_bad_scheduler_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lease"):
        SchedulerConfig(lease=0)
    with pytest.raises(ValueError, match="max_catch_up"):
        SchedulerConfig(max_catch_up=0)
    with pytest.raises(ValueError, match="'sometimes' is not a valid MissedTicks"):
        SchedulerConfig(missed_ticks="sometimes")


def test_under_trio_the_scheduler_refuses_to_run(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db")

    async def main() -> None:
        await RedisScheduler(redis_plugin.settings).run(app)

    with pytest.raises(ConfigurationError, match="asyncio only"):
        anyio.run(main, backend="trio")


# -- leadership --------------------------------------------------------------------------------


async def test_one_leader_fires_and_a_clean_stop_hands_over_at_once(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    clock = FakeClock(START)
    apps = [make_app(tmp_path, clock, redis_plugin) for _ in range(2)]
    first, second = scheduler_of(redis_plugin), scheduler_of(redis_plugin)
    schedules = redis_plugin.schedules
    async with running(apps[0], first):
        epoch = await wait_for_leader(schedules)
        async with running(apps[1], second):
            leader = await schedules.leader()
            assert leader is not None
            assert leader.instance == first.instance
            assert 0 < leader.expires_in_ms <= LEASE * 1000
            clock.advance(1)
            await wait_for_keys(apps[1], [key("every_second", 1)])
        # the second stopped; the first, the leader, is stopped next
    assert await schedules.leader() is None, "a clean stop must release the lease"
    async with running(apps[1], second):
        assert await wait_for_leader(schedules) == epoch + 1, "each leadership, a new epoch"
        clock.advance(1)
        await wait_for_keys(apps[1], [key("every_second", 1), key("every_second", 2)])
    assert (await schedules.last_ticks())["every_second"] == START + dt.timedelta(seconds=2)


async def test_a_leader_that_lost_its_lease_writes_nothing_and_the_next_catches_up(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin, redis_url: str
) -> None:
    """Another instance holds the lease (the first one paused past its lease, say): the old
    leader's fenced writes are refused, it fires nothing more; once the lease is free again
    the ticks missed meanwhile fire once each."""
    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    scheduler = scheduler_of(redis_plugin)
    lease_key = redis_plugin.settings.key("scheduler", "lease")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with running(app, scheduler):
            await wait_for_leader(redis_plugin.schedules)
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", 1)])
            # Another instance took over (as if this one had paused past its lease):
            await client.set(redis_plugin.settings.key("scheduler", "epoch"), 999)
            await client.set(lease_key, "999:ghost", px=60_000)
            await anyio.sleep(LEASE)  # past the next renewal: the scheduler knows
            for _ in range(3):
                clock.advance(1)
                await anyio.sleep(0.1)
            assert await keys(app) == [key("every_second", 1)], "a non-leader fired"
            last = await redis_plugin.schedules.last_ticks()
            assert last["every_second"] == START + dt.timedelta(seconds=1)
            await client.delete(lease_key)
            assert await wait_for_leader(redis_plugin.schedules) == 1000
            await wait_for_keys(app, [key("every_second", n) for n in range(1, 5)])
    finally:
        await client.aclose()


# -- runtime entries ---------------------------------------------------------------------------


async def test_entries_added_and_removed_at_run_time_apply_without_a_restart(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    schedules = redis_plugin.schedules
    async with running(app, scheduler_of(redis_plugin)):
        await wait_for_leader(schedules)
        entry = PeriodicEntry(name="extra_every_2s", cron="* * * * * */2", task="extra", args=(7,))
        await schedules.add(entry, app=app)
        assert [e.name for e in await schedules.list()] == ["every_second", "extra_every_2s"]
        assert (await schedules.list())[1] == entry
        clock.advance(1)
        await wait_for_keys(app, [key("every_second", 1)])
        clock.advance(1)
        await wait_for_keys(
            app, [key("every_second", 1), key("every_second", 2), key("extra_every_2s", 2)]
        )
        page = await app.list_jobs(task="extra")
        assert [job.args for job in page.items] == [(7,)]
        assert await schedules.remove("extra_every_2s") is True
        assert await schedules.remove("extra_every_2s") is False
        await anyio.sleep(LEASE)  # the leader re-reads the entries at least this often
        clock.advance(2)
        expected = [key("every_second", n) for n in range(1, 5)] + [key("extra_every_2s", 2)]
        await wait_for_keys(app, expected)
        await anyio.sleep(0.2)
        assert await keys(app) == sorted(expected), "a removed entry fired"


async def test_a_worker_of_an_app_without_periodic_entries_fires_runtime_entries(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", plugins=[redis_plugin])

    @app.task(name="extra")
    async def extra(n: int) -> int:
        return n

    entry = PeriodicEntry(name="runtime_only", cron="* * * * * *", task="extra", args=(3,))
    await redis_plugin.schedules.add(entry, app=app)
    async with app:
        worker = Worker(app, poll_interval=0.05)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                await group.start(worker.run)
                while True:
                    page = await app.list_jobs(task="extra", statuses=["succeeded"])
                    if page.items:
                        break
                    await anyio.sleep(0.05)
                worker.drain()
    (job, *_) = page.items
    assert job.args == (3,)
    assert (job.key or "").startswith("periodic:runtime_only:")


async def test_adding_an_entry_checks_it(tmp_path: pathlib.Path, redis_plugin: RedisPlugin) -> None:
    app = make_app(tmp_path, FakeClock(START), redis_plugin)
    with pytest.raises(InvalidCronError, match="bad cron expression"):
        PeriodicEntry(name="bad", cron="61 * * * *", task="extra")
    with pytest.raises(UnknownTaskError, match="nope"):
        await redis_plugin.schedules.add(
            PeriodicEntry(name="unknown", cron="* * * * *", task="nope"), app=app
        )
    with pytest.raises(InvalidJobError, match="bad arguments"):
        await redis_plugin.schedules.add(
            PeriodicEntry(name="bad_args", cron="* * * * *", task="extra"), app=app
        )
    assert await redis_plugin.schedules.list() == []


async def test_an_unknown_task_at_fire_time_is_logged_and_holds_nothing_back(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    async with running(app, scheduler_of(redis_plugin)):
        await wait_for_leader(redis_plugin.schedules)
        schedules = Schedules(redis_plugin.settings, clock=clock)
        await schedules.add(  # no app given: not checked until it fires
            PeriodicEntry(name="elsewhere", cron="* * * * * *", task="not_here")
        )
        await anyio.sleep(LEASE)
        clock.advance(2)
        await wait_for_keys(app, [key("every_second", 1), key("every_second", 2)])
    assert "UnknownTaskError" in caplog.text
    assert "periodic 'elsewhere': cannot build its job" in caplog.text
    last = await redis_plugin.schedules.last_ticks()
    assert last["elsewhere"] == START + dt.timedelta(seconds=2), "its ticks count as handled"


# -- missed ticks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "max_catch_up", "fired_after_gap"),
    [
        ("catch_up", 100, [2, 3, 4, 5, 6, 7]),
        ("catch_up", 3, [5, 6, 7]),
        ("latest", 100, [7]),
        ("skip", 100, []),
    ],
)
async def test_the_missed_tick_policy_decides_what_fires_after_a_gap(
    tmp_path: pathlib.Path,
    redis_plugin: RedisPlugin,
    policy: str,
    max_catch_up: int,
    fired_after_gap: list[int],
) -> None:
    """Tick 1 fires, the only instance stops, six seconds pass, an instance starts again."""
    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    config = {"missed_ticks": policy, "max_catch_up": max_catch_up}
    async with running(app, scheduler_of(redis_plugin, **config)):
        await wait_for_leader(redis_plugin.schedules)
        clock.advance(1)
        await wait_for_keys(app, [key("every_second", 1)])
    clock.advance(6)
    async with running(app, scheduler_of(redis_plugin, **config)):
        await wait_for_leader(redis_plugin.schedules)
        # The gap is judged at 00:00:07: advancing before the leader's first pass would move
        # it (catch_up with a cap of 3 would then fire 6, 7, 8 instead of 5, 6, 7, 8).
        await wait_for_last_tick(
            redis_plugin.schedules, "every_second", START + dt.timedelta(seconds=7)
        )
        clock.advance(1)
        fired = [1, *fired_after_gap, 8]
        await wait_for_keys(app, [key("every_second", n) for n in fired])


def test_catching_up_after_a_long_outage_stays_cheap() -> None:
    """A per-second entry down for a day: the latest ticks are found without walking all."""
    entry = PeriodicEntry(name="e", cron="* * * * * *", task="e")
    now = START + dt.timedelta(days=1)
    began = time.perf_counter()
    ticks, truncated, nxt = _due(entry, START, now, 100)
    assert time.perf_counter() - began < 2
    assert truncated
    assert ticks == [now - dt.timedelta(seconds=n) for n in range(99, -1, -1)]
    assert nxt == now + dt.timedelta(seconds=1)
    assert _due(entry, START, START + dt.timedelta(seconds=3), 100) == (
        [START + dt.timedelta(seconds=n) for n in (1, 2, 3)],
        False,
        START + dt.timedelta(seconds=4),
    )


# -- Redis going away --------------------------------------------------------------------------


class RedisProxy:
    """A TCP proxy to the real Redis that the test can cut (every connection dropped, new
    ones refused) or stall (nothing goes through, nothing is closed), then restore."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cut = False
        self.listen_port = 0
        self._scopes: set[anyio.CancelScope] = set()
        self._flowing = anyio.Event()
        self._flowing.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.listen_port = listener.extra(SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    def sever(self) -> None:
        self.cut = True
        for scope in self._scopes:
            scope.cancel()

    def stall(self) -> None:
        self._flowing = anyio.Event()

    def restore(self) -> None:
        self.cut = False
        self._flowing.set()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self.cut:
                return
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await anyio.connect_tcp(self.host, self.port)
                    async with upstream, anyio.create_task_group() as group:
                        group.start_soon(self._pump, client, upstream, scope)
                        group.start_soon(self._pump, upstream, client, scope)
                finally:
                    self._scopes.discard(scope)

    async def _pump(
        self, source: SocketStream, sink: SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for data in source:
                await self._flowing.wait()
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()


@pytest.fixture
def quiet_redis_logs() -> Iterator[None]:
    logging.getLogger("redis").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("redis").setLevel(logging.NOTSET)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX sockets")
@pytest.mark.usefixtures("quiet_redis_logs")
@pytest.mark.parametrize("failure", ["cut", "stall"])
async def test_while_redis_is_away_nothing_fires_and_nothing_is_lost(
    tmp_path: pathlib.Path,
    redis_url: str,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    """Redis is cut off (connections refused) or stalls (no answer) mid-run: the scheduler
    stops firing, logs, keeps retrying, never crashes; when Redis is back the ticks missed
    meanwhile fire once each."""
    caplog.set_level(logging.INFO, logger="taskforge.scheduler")
    parts = urlsplit(redis_url)
    proxy = RedisProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    clock = FakeClock(START)
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        proxied = parts._replace(netloc=f"127.0.0.1:{proxy.listen_port}").geturl()
        plugin = RedisPlugin(proxied, prefix=redis_prefix)
        direct = RedisPlugin(redis_url, prefix=redis_prefix)
        app = make_app(tmp_path, clock, plugin)
        async with running(app, scheduler_of(plugin)):
            await wait_for_leader(direct.schedules)
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", 1)])
            if failure == "cut":
                proxy.sever()
            else:
                proxy.stall()
            for _ in range(4):
                clock.advance(1)
                await anyio.sleep(0.25)
            assert await keys(app) == [key("every_second", 1)], "fired without Redis"
            with anyio.fail_after(LEASE * 3):  # unrenewed, the lease runs out in Redis
                while True:
                    if await direct.schedules.leader() is None:
                        break
                    await anyio.sleep(0.05)
            assert await keys(app) == [key("every_second", 1)], "fired without Redis"
            assert "cannot reach Redis" in caplog.text
            if failure == "stall":
                assert "TimeoutError: no answer within" in caplog.text
            proxy.restore()
            await wait_for_keys(app, [key("every_second", n) for n in range(1, 6)], timeout=15)
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", n) for n in range(1, 7)])
        group.cancel_scope.cancel()


async def test_a_changed_entry_starts_afresh_while_an_unchanged_one_catches_up(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin
) -> None:
    """The fleet is down for five seconds, during which one entry is changed: the unchanged
    entry catches up its missed ticks, the changed one fires only from the change on."""
    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    schedules = Schedules(redis_plugin.settings, clock=clock)
    extra = PeriodicEntry(name="extra_each_second", cron="* * * * * *", task="extra", args=(1,))
    await schedules.add(extra)
    async with running(app, scheduler_of(redis_plugin)):
        await wait_for_leader(schedules)
        clock.advance(1)
        await wait_for_keys(app, [key("every_second", 1), key("extra_each_second", 1)])
    clock.advance(5)
    await schedules.add(attrs.evolve(extra, args=(2,)))
    async with running(app, scheduler_of(redis_plugin)):
        await wait_for_leader(schedules)
        clock.advance(1)
        expected = [key("every_second", n) for n in range(1, 8)]
        expected += [key("extra_each_second", 1), key("extra_each_second", 7)]
        await wait_for_keys(app, expected)


async def test_a_leader_replaced_between_storing_a_tick_and_recording_it(
    tmp_path: pathlib.Path, redis_plugin: RedisPlugin, redis_url: str
) -> None:
    """Right after the storage took tick 2, and before the leader recorded it, another
    instance takes the lease (as if the leader had paused past its lease): the fenced record
    is refused, and the next leader fires tick 2 again -- a no-op thanks to its key."""
    import redis as sync_redis

    clock = FakeClock(START)
    app = make_app(tmp_path, clock, redis_plugin)
    lease_key = redis_plugin.settings.key("scheduler", "lease")
    sync_client = sync_redis.Redis.from_url(redis_url)

    class TakeTheLeaseAfterStoring:
        done = False

        @hookimpl
        def taskforge_jobs_enqueued(self, app: TaskForge, jobs: list[Job]) -> None:
            if not self.done and any(job.key == key("every_second", 2) for job in jobs):
                self.done = True
                sync_client.set(redis_plugin.settings.key("scheduler", "epoch"), 999)
                sync_client.set(lease_key, "999:ghost", px=60_000)

    app.plugins.register(TakeTheLeaseAfterStoring())
    try:
        async with running(app, scheduler_of(redis_plugin)):
            await wait_for_leader(redis_plugin.schedules)
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", 1)])
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", 1), key("every_second", 2)])
            await anyio.sleep(0.3)
            last = await redis_plugin.schedules.last_ticks()
            assert last["every_second"] == START + dt.timedelta(seconds=1), "recorded unfenced"
            sync_client.delete(lease_key)
            assert await wait_for_leader(redis_plugin.schedules) == 1000
            with anyio.fail_after(10):
                while True:  # the new leadership fires tick 2 again and records it
                    last = await redis_plugin.schedules.last_ticks()
                    if last["every_second"] == START + dt.timedelta(seconds=2):
                        break
                    await anyio.sleep(0.02)
            clock.advance(1)
            await wait_for_keys(app, [key("every_second", n) for n in (1, 2, 3)])
    finally:
        sync_client.close()
