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

import time
from typing import Any

from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent
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


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
    elif args.command == "setup":
        pass
    elif args.command == "worker":
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={args.concurrency or CONCURRENCY}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--queues=celery",
            ]
        )
    elif args.command == "enqueue-single":
        started = time.perf_counter()
        for n in range(args.jobs):
            noop.delay(n)
        emit({"seconds": time.perf_counter() - started})
    elif args.command == "fill":
        for n in range(args.first, args.first + args.jobs):
            noop.delay(n)
    elif args.command == "wakeup":
        noop.delay(WARMUP)
        wait_for_warmup()
        time.sleep(1.0)
        sent: dict[int, float] = {}
        delay = pace(args.jobs, args.interval)
        for n in range(args.jobs):
            time.sleep(delay(n))
            sent[n] = time.time()
            noop.delay(n)
        _write_sent(sent)
    else:
        raise SystemExit(f"{args.command}: not supported by Celery")


if __name__ == "__main__":
    main()
