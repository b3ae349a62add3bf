"""SAQ on PostgreSQL or Redis (whichever ``BENCH_URL`` names), in its own venv
(``benchmarks/requirements/saq.txt``).

Configured as its README recommends: an ``async def`` function taking ``ctx``, a
``Queue.from_url`` queue, one ``Worker(queue, functions=[noop])`` with its default
``concurrency=10``, jobs enqueued with ``queue.enqueue``. SAQ has no bulk-enqueue call
(``Queue.map`` enqueues one by one, then waits for the results), so its bulk column is n/a.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import URL, WARMUP, emit, pace, parser, quiet_logging, record, wait_for_warmup
from _common import write_sent as _write_sent
from saq import Queue, Worker

CONCURRENCY = 10


async def noop(ctx: dict[str, Any], *, n: int) -> None:
    record(n)


def config() -> dict[str, Any]:
    from importlib.metadata import version

    store = "PostgreSQL (psycopg 3, binary)" if URL.startswith("postgres") else "Redis"
    return {
        "system": "SAQ",
        "version": version("saq"),
        "backend": store,
        "task": "async def noop(ctx, *, n)",
        "worker": f"Worker(queue, functions=[noop], concurrency={CONCURRENCY}) (defaults)",
        "wake-ups": "LISTEN/NOTIFY" if URL.startswith("postgres") else "BLMOVE on a Redis list",
        "enqueue": "queue.enqueue('noop', n=...); no bulk API",
    }


async def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quiet_logging()
    if args.command == "config":
        emit(config())
        return
    queue = Queue.from_url(URL)
    if args.command == "worker":
        worker = Worker(queue, functions=[noop], concurrency=args.concurrency or CONCURRENCY)
        await queue.connect()  # as the `saq` command does before it starts a worker
        await worker.start()
        return
    await queue.connect()
    try:
        if args.command == "setup":
            pass  # connect() creates what it needs
        elif args.command == "enqueue-single":
            started = time.perf_counter()
            for n in range(args.jobs):
                await queue.enqueue("noop", n=n)
            emit({"seconds": time.perf_counter() - started})
        elif args.command == "fill":
            # Untimed: many enqueues in flight at once, which is what Queue.map does.
            for start in range(args.first, args.first + args.jobs, 100):
                numbers = range(start, min(args.first + args.jobs, start + 100))
                await asyncio.gather(*(queue.enqueue("noop", n=n) for n in numbers))
        elif args.command == "wakeup":
            await queue.enqueue("noop", n=WARMUP)
            await asyncio.to_thread(wait_for_warmup)
            await asyncio.sleep(1.0)
            sent: dict[int, float] = {}
            delay = pace(args.jobs, args.interval)
            for n in range(args.jobs):
                await asyncio.sleep(delay(n))
                sent[n] = time.time()
                await queue.enqueue("noop", n=n)
            _write_sent(sent)
        else:
            raise SystemExit(f"{args.command}: not supported by SAQ")
    finally:
        await queue.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
