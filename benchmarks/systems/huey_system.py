"""Huey on SQLite, in its own venv (``benchmarks/requirements/huey.txt``).

Huey's tasks are plain functions. ``SqliteHuey`` with its defaults (WAL, no fsync), one
consumer process with 4 worker threads (``-w 4 -k thread``, the docs' suggestion for
I/O-bound work), the default polling schedule (0.1 s, backing off by 1.15x to 10 s while
idle), ``results=False`` since nothing reads them. Jobs are enqueued by calling the task;
the bulk row uses ``task.map``, Huey's many-jobs call (it enqueues them one by one).
"""

from __future__ import annotations

import time
from typing import Any

from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent
from huey import SqliteHuey

WORKERS = 4

huey = SqliteHuey("bench", filename=URL or "huey.db", results=False)


@huey.task(name="noop")
def noop(n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "system": "Huey",
        "version": version("huey"),
        "backend": "SQLite (SqliteHuey: WAL, fsync off, the defaults)",
        "task": "@huey.task() def noop(n) (Huey has no async tasks)",
        "worker": f"consumer with {WORKERS} thread workers, periodic off, results=False",
        "wake-ups": "polling: 0.1 s, x1.15 per empty poll up to 10 s (the defaults)",
        "enqueue": "noop(n); bulk: noop.map(range) (one enqueue per job underneath)",
    }


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
    elif args.command == "setup":
        huey.storage.flush_queue()
    elif args.command == "worker":
        huey.create_consumer(
            workers=args.concurrency or WORKERS, worker_type="thread", periodic=False
        ).run()
    elif args.command == "enqueue-single":
        started = time.perf_counter()
        for n in range(args.jobs):
            noop(n)
        emit({"seconds": time.perf_counter() - started})
    elif args.command in ("enqueue-bulk", "fill"):
        batch = args.batch if args.command == "enqueue-bulk" else 1000
        first = getattr(args, "first", 0)
        started = time.perf_counter()
        for start in range(first, first + args.jobs, batch):
            noop.map(range(start, min(first + args.jobs, start + batch)))
        emit({"seconds": time.perf_counter() - started, "batch": batch})
    elif args.command == "wakeup":
        noop(WARMUP)
        wait_for_warmup()
        time.sleep(1.0)
        sent: dict[int, float] = {}
        delay = pace(args.jobs, args.interval)
        for n in range(args.jobs):
            time.sleep(delay(n))
            sent[n] = time.time()
            noop(n)
        _write_sent(sent)


if __name__ == "__main__":
    main()
