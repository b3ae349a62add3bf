"""Celery on Redis, in its own venv (``benchmarks/requirements/celery.txt``).

Celery has no async tasks: the no-op is a plain function. One worker process with the
``threads`` pool of 10 (a single process, like the other systems' workers; the default
``prefork`` pool would fork a child per CPU), no result backend (``task_ignore_result``),
the Redis broker, ``--without-gossip --without-mingle --without-heartbeat`` as Celery's
optimizing guide suggests for a lone worker, the default prefetch multiplier (4). Jobs are
sent with ``task.delay``; Celery has no bulk-enqueue call (a ``group`` publishes one message
per task), so its bulk column is n/a.
"""

from __future__ import annotations

from typing import Any

from _common import URL, Library, main, record
from celery import Celery

CONCURRENCY = 10

app = Celery("bench", broker=URL or "redis://")
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    import celery

    return {
        "system": "Celery",
        "version": celery.__version__,
        "backend": "Redis broker, no result backend",
        "task": "@app.task def noop(n) (Celery has no async tasks)",
        "worker": f"worker --pool=threads --concurrency={CONCURRENCY} --loglevel=WARNING "
        "--without-gossip --without-mingle --without-heartbeat (prefetch multiplier 4)",
        "wake-ups": "BRPOP on the Redis list",
        "enqueue": "noop.delay(n); no bulk API",
    }


def worker(concurrency: int | None) -> None:
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency or CONCURRENCY}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--queues=celery",
        ]
    )


def enqueue(n: int) -> None:
    noop.delay(n)


if __name__ == "__main__":
    main(Library(name="Celery", config=config, worker=worker, enqueue=enqueue), __doc__ or "")
