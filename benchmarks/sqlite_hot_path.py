"""The hot path of the embedded SQLite backend, measured on a fresh database file.

::

    .venv/bin/python benchmarks/sqlite_hot_path.py --jobs 10000 --batch 100 --json out.json

Three phases, one file:

1. **enqueue** — ``task.enqueue_many`` of ``--jobs`` no-op jobs, ``--batch`` per call;
2. **claim + complete** — those jobs claimed ``--batch`` at a time through ``Storage.claim``
   and reported with one ``Storage.complete`` per batch (the two verbs are timed apart);
3. **drain** — another ``--jobs`` no-op ``async def`` jobs (enqueued untimed) run end to end by
   ``Worker(app, concurrency=100, poll_interval=0.05).run(stop_when_idle=True)``.

Each phase reports wall-clock throughput and the CPU time of the whole process per job (both
threads: the event loop and SQLite's), which shifts much less than wall-clock time when the
machine is shared. ``--repeat R`` runs everything R times on fresh files and keeps the best
figure of each. See ``benchmarks/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import pathlib
import platform
import resource
import sqlite3
import sys
import tempfile
import time
from typing import Any

import anyio

from taskforge_core.app import TaskForge
from taskforge_core.ids import uuid7
from taskforge_core.models import ClaimRequest, Completion, QueueShare
from taskforge_core.worker import Worker

API_QUEUE = "bench-api"
WORKER_QUEUE = "bench-worker"


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _remove_database(db: pathlib.Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)


async def _bench(db: pathlib.Path, jobs: int, batch: int, concurrency: int) -> dict[str, Any]:
    app = TaskForge(f"sqlite:///{db}")

    @app.task(name="bench.noop", queue=API_QUEUE)
    async def noop(n: int) -> None:
        return None

    results: dict[str, Any] = {}
    try:
        storage = await app.storage()

        # 1. enqueue_many, `batch` jobs per call.
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, jobs, batch):
            await noop.enqueue_many([(i,) for i in range(start, min(jobs, start + batch))])
        seconds = time.perf_counter() - started
        results["enqueue"] = {
            "jobs": jobs,
            "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "cpu_us_per_job": (time.process_time() - cpu) / jobs * 1e6,
        }

        # 2. claim + complete through the Storage API, `batch` jobs per call.
        worker_id = uuid7()
        request = ClaimRequest(
            worker_id=worker_id,
            shares=(QueueShare(name=API_QUEUE, limit=batch),),
            limit=batch,
            lease=dt.timedelta(seconds=60),
        )
        claim_s = complete_s = claim_cpu = complete_cpu = 0.0
        done = 0
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            claimed = await storage.claim(request)
            t1, c1 = time.perf_counter(), time.process_time()
            if not claimed:
                break
            ack = await storage.complete(
                [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in claimed]
            )
            t2, c2 = time.perf_counter(), time.process_time()
            if ack.rejected or len(ack.accepted) != len(claimed):
                raise RuntimeError(f"complete rejected {len(ack.rejected)} report(s)")
            claim_s += t1 - t0
            complete_s += t2 - t1
            claim_cpu += c1 - c0
            complete_cpu += c2 - c1
            done += len(claimed)
        if done != jobs:
            raise RuntimeError(f"claimed {done} jobs, expected {jobs}")
        results["claim"] = {
            "jobs": done,
            "seconds": claim_s,
            "us_per_job": claim_s / done * 1e6,
            "jobs_per_s": done / claim_s,
            "cpu_us_per_job": claim_cpu / done * 1e6,
        }
        results["complete"] = {
            "jobs": done,
            "seconds": complete_s,
            "us_per_job": complete_s / done * 1e6,
            "jobs_per_s": done / complete_s,
            "cpu_us_per_job": complete_cpu / done * 1e6,
        }
        both = claim_s + complete_s
        results["claim_complete"] = {
            "jobs": done,
            "seconds": both,
            "jobs_per_s": done / both,
            "cpu_us_per_job": (claim_cpu + complete_cpu) / done * 1e6,
        }

        # 3. end-to-end drain by a worker.
        worker_task = noop.options(queue=WORKER_QUEUE)
        for start in range(0, jobs, 1000):
            await worker_task.enqueue_many([(i,) for i in range(start, min(jobs, start + 1000))])
        worker = Worker(app, [WORKER_QUEUE], concurrency=concurrency, poll_interval=0.05)
        started, cpu = time.perf_counter(), time.process_time()
        stats = await worker.run(stop_when_idle=True)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if stats.succeeded != jobs:
            raise RuntimeError(f"the worker ran {stats.succeeded} jobs, expected {jobs}")
        results["drain"] = {
            "jobs": jobs,
            "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "cpu_us_per_job": cpu / jobs * 1e6,
            "concurrency": concurrency,
        }
        results["peak_rss_mib"] = _peak_rss_mib()
    finally:
        await app.close()
    return results


_PHASES = (
    ("enqueue", "enqueue_many"),
    ("claim", "claim"),
    ("complete", "complete"),
    ("claim_complete", "claim+complete"),
    ("drain", "worker drain"),
)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each phase from the run where it went fastest (wall-clock); the peak RSS of them all."""
    best = {
        key: max((run[key] for run in runs), key=lambda p: p["jobs_per_s"]) for key, _ in _PHASES
    }
    best["peak_rss_mib"] = max(run["peak_rss_mib"] for run in runs)
    best["runs"] = runs
    return best


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'phase':<16}{'jobs/s':>10}{'us/job':>9}{'cpu us/job':>12}"]
    for key, name in _PHASES:
        phase = results[key]
        rate = phase["jobs_per_s"]
        lines.append(f"{name:<16}{rate:10,.0f}{1e6 / rate:9.1f}{phase['cpu_us_per_job']:12.1f}")
    lines.append(f"peak RSS {results['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per phase (10000)")
    parser.add_argument(
        "--batch", type=int, default=100, help="jobs per enqueue_many / claim / complete (100)"
    )
    parser.add_argument(
        "--db",
        type=pathlib.Path,
        help="database file to create (must not exist; default: a temporary directory)",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="worker concurrency (100)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs, each on a fresh file; the best counts (1)"
    )
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.batch, args.concurrency, args.repeat) < 1:
        parser.error("--jobs, --batch, --concurrency and --repeat must be >= 1")
    logging.getLogger("taskforge").setLevel(logging.WARNING)

    runs = []
    with tempfile.TemporaryDirectory(prefix="taskforge-bench-") as tmp:
        db = args.db if args.db is not None else pathlib.Path(tmp) / "bench.db"
        if db.exists():
            parser.error(f"{db} exists; the benchmark needs a fresh file")
        for _ in range(args.repeat):
            try:
                runs.append(anyio.run(_bench, db, args.jobs, args.batch, args.concurrency))
            finally:
                _remove_database(db)
    results = _best(runs)
    results["config"] = {
        "jobs": args.jobs,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
    }
    print(
        f"{args.jobs:,} jobs, batch {args.batch}, best of {args.repeat}, "
        f"SQLite {sqlite3.sqlite_version}"
    )
    print(_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
