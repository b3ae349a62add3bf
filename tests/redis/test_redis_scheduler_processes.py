"""Three worker processes share the Redis scheduler; the leader is SIGKILLed twice.

Every tick of a one-second cron, from the first to the last, must have exactly one job: no
gap while a new leader is elected (missed ticks are caught up), no double when a killed
leader had stored a tick but not yet recorded it.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.abc
import pytest

from taskforge_backends.redis._settings import RedisSettings
from taskforge_backends.redis.scheduler import Leader, Schedules
from taskforge_core import TaskForge

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SCRIPT = pathlib.Path(__file__).with_name("redis_scheduler_process.py")
#: Seconds each leader is left to fire before it is killed, and after the last kill.
RUN = 4.0
#: The longest a hand-over may take (lease 3 s + a follower's retry of 1 s, plus slack for a
#: loaded CI machine).
HANDOVER_LIMIT = 12.0


@asynccontextmanager
async def scheduler_process(
    url: str, redis_url: str, prefix: str
) -> AsyncIterator[anyio.abc.Process]:
    command = [sys.executable, str(SCRIPT), url, redis_url, prefix]
    async with await anyio.open_process(command, stdout=None, stderr=None) as process:
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()


def pid_of(leader: Leader) -> int:
    return int(leader.instance.split(":")[-2])


async def new_leader(schedules: Schedules, not_pid: int | None, timeout: float) -> Leader:
    """Wait for a leader whose process is not ``not_pid``."""
    with anyio.fail_after(timeout):
        while True:
            leader = await schedules.leader()
            if leader is not None and pid_of(leader) != not_pid:
                return leader
            await anyio.sleep(0.05)


async def ticks(app: TaskForge) -> list[dt.datetime]:
    found: list[dt.datetime] = []
    cursor: str | None = None
    while True:
        page = await app.list_jobs(task="every_second", limit=500, cursor=cursor)
        for job in page.items:
            assert job.key is not None
            found.append(dt.datetime.fromisoformat(job.key.removeprefix("periodic:every_second:")))
        if page.next_cursor is None:
            return sorted(found)
        cursor = page.next_cursor


async def test_three_instances_fire_each_tick_once_with_the_leader_killed_twice(
    tmp_path: pathlib.Path, redis_url: str, redis_prefix: str
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    schedules = Schedules(RedisSettings(url=redis_url, prefix=redis_prefix))
    kills: list[dt.datetime] = []
    handovers: list[float] = []
    async with TaskForge(url) as app, AsyncExitStack() as stack:  # the schema exists first
        processes = {}
        for _ in range(3):
            process = await stack.enter_async_context(
                scheduler_process(url, redis_url, redis_prefix)
            )
            processes[process.pid] = process
        leader = await new_leader(schedules, None, timeout=60)
        with anyio.fail_after(30):
            while True:
                if await ticks(app):
                    break
                await anyio.sleep(0.1)
        for _ in range(2):
            await anyio.sleep(RUN)
            victim = processes.pop(pid_of(leader))
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            kills.append(dt.datetime.now(dt.UTC))
            leader = await new_leader(schedules, victim.pid, timeout=HANDOVER_LIMIT)
            handovers.append(time.monotonic() - killed)
            assert pid_of(leader) in processes
            await victim.wait()
            assert victim.returncode == -signal.SIGKILL
        await anyio.sleep(RUN)
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            for process in processes.values():
                await process.wait()
        assert await schedules.leader() is None, "the last leader released its lease"
        fired = await ticks(app)

    assert len(fired) == len(set(fired)), "a tick has two jobs"
    first, last = fired[0], fired[-1]
    every = [
        first + dt.timedelta(seconds=n) for n in range(int((last - first).total_seconds()) + 1)
    ]
    missing = sorted(set(every) - set(fired))
    assert not missing, f"ticks never fired: {[t.isoformat() for t in missing]}"
    assert fired == every, "a job for a moment that is not a tick of the entry"
    assert first < kills[0]
    assert last > kills[1] + dt.timedelta(seconds=RUN - 1), "ticks after the second kill"
    print(
        f"\n{len(fired)} ticks from {first.isoformat()} to {last.isoformat()}, each fired once; "
        f"leader killed at {', '.join(k.time().isoformat('milliseconds') for k in kills)}; "
        f"hand-overs took {', '.join(f'{h:.2f} s' for h in handovers)}"
    )
