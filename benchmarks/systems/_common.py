"""What every system adapter shares: the command line, the start log, timing helpers.

Each adapter (``benchmarks/systems/<system>.py``) runs inside its own virtual environment,
where TaskForge may not be installed, so this module uses the standard library only.

An adapter is a script with these commands; the harness runs each in a fresh process, with
the settings in environment variables (``BENCH_URL``, ``BENCH_WORKDIR``)::

    python <system>.py config                       # print the configuration, as JSON
    python <system>.py setup                        # create the schema; leave an empty queue
    python <system>.py enqueue-single --jobs N      # time N single enqueues
    python <system>.py enqueue-bulk --jobs N --batch B
    python <system>.py fill --jobs N [--first K]    # enqueue jobs K..K+N-1, untimed
    python <system>.py worker --concurrency C       # run one worker until SIGTERM
    python <system>.py wakeup --jobs N --interval S # enqueue one at a time, S seconds apart

Timed commands print one JSON object on their last line of output. Every job is a no-op that
takes an integer ``n`` and appends ``"<n> <time.time()>"`` to ``starts-<pid>.log`` in the work
folder with a single unbuffered ``write`` (about 2 µs): the harness reads those files after
the timed section to check that each job ran exactly once and when each one started.

An adapter describes its library's calls in a :class:`Library` and hands it to :func:`main`,
which runs the command: the timed loops, the pacing and the warm-up are the same for every
system, so they live here once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

URL = os.environ.get("BENCH_URL", "")
WORKDIR = pathlib.Path(os.environ.get("BENCH_WORKDIR", "."))
#: Job number of the warm-up job that tells the wake-up run that the worker is listening.
WARMUP = -1

_log_fd: int | None = None


def record(n: int) -> None:
    """Note that job ``n`` started now (called first thing by every no-op job)."""
    global _log_fd
    if _log_fd is None:
        path = WORKDIR / f"starts-{os.getpid()}.log"
        _log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_log_fd, f"{n} {time.time()!r}\n".encode())


def started_ids() -> set[int]:
    """Every job number recorded so far by any worker process (for the warm-up wait)."""
    seen: set[int] = set()
    for path in WORKDIR.glob("starts-*.log"):
        for line in path.read_text().splitlines():
            if line.strip():
                seen.add(int(line.split()[0]))
    return seen


def quiet_logging() -> None:
    """Every system logs at WARNING, as the benchmark asks."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.WARNING)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def pace(jobs: int, interval: float) -> Callable[[int], float]:
    """Seconds to sleep before sending job ``i``, keeping a steady ``interval`` cadence."""
    t0 = time.monotonic()

    def delay(i: int) -> float:
        return max(0.0, t0 + i * interval - time.monotonic())

    return delay


def wait_for_warmup(timeout: float = 60.0) -> None:
    """Block until the warm-up job has run: the worker is up and idle-listening."""
    deadline = time.monotonic() + timeout
    while WARMUP not in started_ids():
        if time.monotonic() > deadline:
            raise SystemExit("the worker never ran the warm-up job")
        time.sleep(0.02)


def write_sent(sent: dict[int, float]) -> None:
    """The wall-clock time at which each wake-up job's enqueue call began."""
    (WORKDIR / "sent.json").write_text(json.dumps(sent))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("config")
    sub.add_parser("setup")
    single = sub.add_parser("enqueue-single")
    single.add_argument("--jobs", type=int, required=True)
    bulk = sub.add_parser("enqueue-bulk")
    bulk.add_argument("--jobs", type=int, required=True)
    bulk.add_argument("--batch", type=int, default=1000)
    fill = sub.add_parser("fill")
    fill.add_argument("--jobs", type=int, required=True)
    fill.add_argument("--first", type=int, default=0)
    worker = sub.add_parser("worker")
    worker.add_argument("--concurrency", type=int, default=None, help="(the adapter's own)")
    wakeup = sub.add_parser("wakeup")
    wakeup.add_argument("--jobs", type=int, required=True)
    wakeup.add_argument("--interval", type=float, default=0.01)
    return p


# -- running an adapter's commands ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _no_session() -> AsyncIterator[None]:
    yield


@dataclasses.dataclass(frozen=True)
class Library:
    """One system's own calls, which :func:`main` runs the commands with.

    ``enqueue``, ``enqueue_batch`` and ``setup`` may be plain functions or ``async def``
    ones.
    """

    #: The system's name, for error messages.
    name: str
    #: What the system runs with, written beside its figures (the ``config`` command).
    config: Callable[[], dict[str, Any]]
    #: Runs one worker until SIGTERM; called outside any event loop (it starts its own).
    worker: Callable[[int | None], None]
    #: Enqueues job ``n`` with the system's one-job call.
    enqueue: Callable[[int], Any]
    #: Enqueues the jobs of a range with the system's bulk call; None when it has none.
    enqueue_batch: Callable[[range], Any] | None = None
    #: How an untimed fill enqueues without ``enqueue_batch``: ``fill_size`` ``enqueue`` calls
    #: in flight at once (what the docs of a system without a bulk call suggest), else one
    #: after the other.
    fill_concurrently: bool = False
    #: Jobs per fill call (or per group of calls in flight).
    fill_size: int = 1000
    #: Creates the schema, or empties the queue.
    setup: Callable[[], Any] = lambda: None
    #: Held around every command but ``config`` and ``worker`` (opens the connections).
    session: Callable[[], contextlib.AbstractAsyncContextManager[Any]] = _no_session
    #: Runs the commands' coroutine: ``asyncio.run``, or the loop the system's docs use.
    run: Callable[[Callable[[], Coroutine[Any, Any, None]]], Any] = lambda main: asyncio.run(main())


def main(library: Library, description: str) -> None:
    """Parse the command line and run the command with ``library``."""
    args = parser(description).parse_args()
    quiet_logging()
    if args.command == "config":
        emit(library.config())
    elif args.command == "worker":
        library.worker(args.concurrency)
    else:
        library.run(lambda: _command(library, args))


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


async def _each(fn: Callable[[Any], Any], items: Any) -> float:
    """Seconds taken to call ``fn`` on each item in turn (awaiting it if it is async)."""
    started = time.perf_counter()
    if inspect.iscoroutinefunction(fn):
        for item in items:
            await fn(item)
    else:
        for item in items:
            fn(item)
    return time.perf_counter() - started


def _batches(first: int, jobs: int, size: int) -> list[range]:
    return [
        range(start, min(first + jobs, start + size)) for start in range(first, first + jobs, size)
    ]


async def _command(library: Library, args: argparse.Namespace) -> None:
    async with library.session():
        if args.command == "setup":
            await _call(library.setup)
        elif args.command == "enqueue-single":
            emit({"seconds": await _each(library.enqueue, range(args.jobs))})
        elif args.command == "enqueue-bulk":
            if library.enqueue_batch is None:
                raise SystemExit(f"enqueue-bulk: {library.name} has no bulk-enqueue call")
            seconds = await _each(library.enqueue_batch, _batches(0, args.jobs, args.batch))
            emit({"seconds": seconds, "batch": args.batch})
        elif args.command == "fill":
            batches = _batches(args.first, args.jobs, library.fill_size)
            if library.enqueue_batch is not None:
                await _each(library.enqueue_batch, batches)
            elif library.fill_concurrently:
                for numbers in batches:
                    await asyncio.gather(*(_call(library.enqueue, n) for n in numbers))
            else:
                await _each(library.enqueue, range(args.first, args.first + args.jobs))
        elif args.command == "wakeup":
            await _wakeup(library, args.jobs, args.interval)


async def _wakeup(library: Library, jobs: int, interval: float) -> None:
    """The warm-up job, a second of idleness, then ``jobs`` enqueues ``interval`` apart, each
    one's start time written down for the harness."""
    await _call(library.enqueue, WARMUP)
    await asyncio.to_thread(wait_for_warmup)
    await asyncio.sleep(1.0)  # let the worker go idle
    sent: dict[int, float] = {}
    delay = pace(jobs, interval)
    for n in range(jobs):
        await asyncio.sleep(delay(n))
        sent[n] = time.time()
        await _call(library.enqueue, n)
    write_sent(sent)
