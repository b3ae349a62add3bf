"""A worker process for the crash and drain tests (tests/core/test_worker_processes.py).

    python tests/core/worker_process.py sqlite:///jobs.db asyncio [--stop-when-idle]

It registers the tasks the tests enqueue by name, runs one :class:`Worker` with short leases
and ``handle_signals=True``, and prints its final stats as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import anyio
import attrs

from taskforge_core import Retry, TaskForge
from taskforge_core.worker import Worker

#: Short leases so a killed worker's jobs come back within a second or two.
LEASE = 1.0


def make_app(url: str) -> TaskForge:
    app = TaskForge(url)

    @app.task(name="sleepy", retry=Retry(max_attempts=5, base_delay=0.01))
    async def sleepy(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    @app.task(name="sleepy_sync", retry=Retry(max_attempts=5, base_delay=0.01))
    def sleepy_sync(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


async def main(url: str, stop_when_idle: bool) -> None:
    async with make_app(url) as app:
        worker = Worker(
            app,
            concurrency=4,
            lease=LEASE,
            heartbeat_interval=LEASE / 5,
            reclaim_interval=LEASE / 5,
            poll_interval=0.05,
            grace_period=20.0,
        )
        stats = await worker.run(handle_signals=True, stop_when_idle=stop_when_idle)
    print(json.dumps(attrs.asdict(stats)), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    anyio.run(main, sys.argv[1], "--stop-when-idle" in sys.argv, backend=sys.argv[2])
