"""How fast events between instances are, and what they cost (docs/redis.md).

    .venv/bin/python benchmarks/redis_events.py --redis redis://127.0.0.1:6379/0

Two apps in one process stand for two machines: each has its own connection to one SQLite
file and its own Redis connections. It measures:

* **cancel via events**: app A cancels a job that app B's worker runs; the time until B's
  worker counted it cancelled. B's heartbeat is 20 s, so only the event explains a quick stop.
* **cancel via heartbeat**: the same with the plugin pointed at a closed port (Redis
  unreachable): B learns of the cancel at its next heartbeat (here every 2 s).
* **publish cost**: the time to publish a batch of JobFinished events (one per finished job),
  per event, encoding included: wall-clock (with Redis on the same machine, its work shows
  here too) and the CPU time of the publishing process (what a worker pays).
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import anyio

from taskforge_backends.redis import RedisPlugin
from taskforge_backends.redis._settings import RedisSettings
from taskforge_backends.redis.events import RedisEventBus
from taskforge_core import JobStatus, TaskForge, Worker
from taskforge_core.events import JobFinished


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await anyio.sleep(0.0005)


def make_app(url: str, redis_url: str, prefix: str, started: set[str]) -> TaskForge:
    app = TaskForge(url, plugins=[RedisPlugin(redis_url, prefix=prefix)])

    @app.task(name="block")
    async def block(key: str) -> None:
        started.add(key)
        await anyio.sleep(3600)

    return app


async def cancel_latencies(redis_url: str, heartbeat: float, count: int) -> list[float]:
    """Seconds from calling ``app.cancel`` to the job being interrupted, ``count`` times."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/jobs.db"
        started: set[str] = set()
        a, b = make_app(url, redis_url, prefix, started), make_app(url, redis_url, prefix, started)
        latencies = []
        async with a, b:
            worker = Worker(
                b,
                ["default"],
                lease=3 * heartbeat,
                heartbeat_interval=heartbeat,
                poll_interval=0.01,
            )
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                for n in range(count):
                    key = str(n)
                    job = await a.enqueue("block", [key])
                    await until(lambda key=key: key in started)  # type: ignore[misc]
                    before = worker.stats.cancelled
                    began = time.monotonic()
                    await a.cancel(job.id)
                    await until(lambda before=before: worker.stats.cancelled > before)  # type: ignore[misc]
                    latencies.append(time.monotonic() - began)
                worker.drain()
    return latencies


async def publish_cost(redis_url: str, batch: int, repeat: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of this process: the worker's share; Redis' own work is
    not counted) per JobFinished event, published ``batch`` at a time."""
    settings = RedisSettings(url=redis_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    bus = RedisEventBus(settings, "default")
    events = [JobFinished(job_id=uuid.uuid4(), status=JobStatus.SUCCEEDED) for _ in range(batch)]
    try:
        await bus.publish(events[:1])  # connect, load the script
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            await bus.publish(events)
        count = repeat * batch
        return (time.perf_counter() - began) / count, (time.process_time() - cpu) / count
    finally:
        await bus.aclose()


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{name:<28} median {statistics.median(ms):8.1f} ms   max {ms[-1]:8.1f} ms   "
        f"({len(ms)} cancels)"
    )


async def main(args: argparse.Namespace) -> None:
    events = await cancel_latencies(args.redis, 20.0, args.cancels)
    print(summary("cancel via events", events))
    down = f"redis://127.0.0.1:{closed_port()}/0"
    heartbeats = await cancel_latencies(down, 2.0, max(3, args.cancels // 5))
    print(summary("cancel via heartbeat (2 s)", heartbeats))
    wall, cpu = await publish_cost(args.redis, args.batch, 20)
    print(
        f"{'publish JobFinished':<28} {wall * 1e6:8.1f} us/event wall-clock, {cpu * 1e6:.1f} us "
        f"CPU of the publishing process (batches of {args.batch})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cancels", type=int, default=30, help="cancels timed via events")
    parser.add_argument("--batch", type=int, default=1000, help="events per publish")
    logging.basicConfig(level=logging.ERROR)
    anyio.run(main, parser.parse_args())
