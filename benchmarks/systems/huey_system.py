"""Huey on SQLite, in its own venv (``benchmarks/requirements/huey.txt``).

Huey's tasks are plain functions. ``SqliteHuey`` with its defaults (WAL, no fsync), one
consumer process with 4 worker threads (``-w 4 -k thread``, the docs' suggestion for
I/O-bound work), the default polling schedule (0.1 s, backing off by 1.15x to 10 s while
idle), ``results=False`` since nothing reads them. Jobs are enqueued by calling the task;
the bulk row uses ``task.map``, Huey's many-jobs call (it enqueues them one by one).
"""

from __future__ import annotations

from typing import Any

from _common import URL, Library, main, record
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


def worker(concurrency: int | None) -> None:
    huey.create_consumer(workers=concurrency or WORKERS, worker_type="thread", periodic=False).run()


def enqueue(n: int) -> None:
    noop(n)


def enqueue_batch(numbers: range) -> None:
    noop.map(numbers)


if __name__ == "__main__":
    main(
        Library(
            name="Huey",
            config=config,
            worker=worker,
            enqueue=enqueue,
            enqueue_batch=enqueue_batch,
            setup=huey.storage.flush_queue,
        ),
        __doc__ or "",
    )
