"""The ``taskforge`` command line.

Exit codes: 0 success, 1 the operation failed (a job not found, storage unreachable),
2 bad usage (unknown flag, malformed value, an app that cannot be imported).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import anyio

from taskforge_core.app import DEFAULT_URL, TaskForge
from taskforge_core.errors import (
    ConfigurationError,
    InvalidJobError,
    TaskForgeError,
    WorkerNotFoundError,
)
from taskforge_core.models import Job, WorkerStatus
from taskforge_core.retention import RetentionPolicy, describe
from taskforge_core.serialization import converter
from taskforge_core.states import JobStatus

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line value that does not make sense; exits with code 2."""


# -- argument types ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def _queue_weight(text: str) -> tuple[str, int]:
    name, _, weight = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected QUEUE or QUEUE:WEIGHT, got {text!r}")
    return name, _positive_int(weight) if weight else 1


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def _status(text: str) -> JobStatus:
    try:
        return JobStatus(text)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of: {known})") from None


_AGE_UNITS = {"m": 60, "h": 3600, "d": 86400}


def _age(text: str) -> dt.timedelta | None:
    """``never`` -> None (keep forever); ``90m``, ``36h``, ``7d`` -> a timedelta."""
    if text.strip().lower() == "never":
        return None
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _AGE_UNITS or not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected an age such as 90m, 36h or 7d, or 'never', got {text!r}"
        )
    return dt.timedelta(seconds=value * _AGE_UNITS[unit])


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id: {text!r}") from None


def _worker_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a worker id: {text!r}") from None


# -- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskforge", description="TaskForge: run workers and manage jobs."
    )
    parser.add_argument(
        "--url",
        help=f"storage URL (default: $TASKFORGE_URL or {DEFAULT_URL}); ignored when an APP "
        "is given, which has its own",
    )
    parser.add_argument(
        "--app",
        dest="app_path",
        metavar="MODULE:ATTR",
        help="the application to use for commands that do not take APP (default: $TASKFORGE_APP)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("TASKFORGE_LOOP", "auto"),
        help="the event loop: uvloop (faster database round trips; pip install "
        "'taskforge[uvloop]'), asyncio, or auto: uvloop when installed (default: "
        "$TASKFORGE_LOOP or auto)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a worker for APP")
    worker.add_argument("app", metavar="APP", help="the application, as module:attribute")
    worker.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        type=_queue_weight,
        metavar="QUEUE[:WEIGHT]",
        help="a queue to serve, with a weight (repeatable; default: every queue of APP's tasks)",
    )
    worker.add_argument("-c", "--concurrency", type=_positive_int, default=10)
    worker.add_argument("--batch-size", type=_positive_int, help="jobs per claim")
    worker.add_argument(
        "--grace-period",
        type=_seconds,
        default=30.0,
        help="seconds running jobs get to finish on SIGTERM (default 30)",
    )
    worker.add_argument("--lease", type=_seconds, default=30.0, help="lease length in seconds")
    worker.add_argument("--poll-interval", type=_seconds, default=1.0)
    worker.add_argument("--name", help="a name for this worker (default: host:pid)")
    worker.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of the worker's messages on stderr (default INFO)",
    )
    worker.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not fire @app.periodic entries from this worker",
    )
    worker.add_argument(
        "--burst", action="store_true", help="exit when no work is left instead of waiting for more"
    )

    enqueue = commands.add_parser("enqueue", help="enqueue a job of APP's task TASK")
    enqueue.add_argument("app", metavar="APP")
    enqueue.add_argument("task", metavar="TASK")
    enqueue.add_argument("--args", type=_json, default=[], help="JSON list of positional args")
    enqueue.add_argument("--kwargs", type=_json, default={}, help="JSON object of keyword args")
    enqueue.add_argument("--queue")
    enqueue.add_argument("--priority", type=int)
    enqueue.add_argument("--delay", type=_seconds)
    enqueue.add_argument("--key", help="idempotency key")

    jobs = commands.add_parser("jobs", help="list, show and cancel jobs")
    jobs_cmd = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_list = jobs_cmd.add_parser("list", help="jobs, newest first")
    _add_listing_flags(jobs_list)
    jobs_list.add_argument("--status", type=_status, action="append", dest="statuses")
    jobs_show = jobs_cmd.add_parser("show", help="one job with its executions and logs")
    jobs_show.add_argument("id", type=_job_id)
    jobs_show.add_argument("--json", action="store_true")
    jobs_cancel = jobs_cmd.add_parser("cancel", help="cancel jobs and their descendants")
    jobs_cancel.add_argument("ids", type=_job_id, nargs="+", metavar="ID")

    dlq = commands.add_parser("dlq", help="the dead-letter queue (failed jobs)")
    dlq_cmd = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    _add_listing_flags(dlq_cmd.add_parser("list", help="failed jobs with their last error"))
    for action, help_text in (
        ("replay", "run failed jobs again, attempts reset"),
        ("purge", "delete failed jobs"),
    ):
        sub = dlq_cmd.add_parser(action, help=help_text)
        sub.add_argument("ids", type=_job_id, nargs="*", metavar="ID")
        sub.add_argument("--queue")
        sub.add_argument("--task")
        sub.add_argument("--all", action="store_true", help="every failed job matching the filters")
        if action == "replay":
            sub.add_argument(
                "--include-cancelled",
                action="store_true",
                help="replay cancelled jobs too (the rest of a failed dependency chain)",
            )

    workers = commands.add_parser("workers", help="list workers, and drain one from anywhere")
    workers_cmd = workers.add_subparsers(dest="workers_command", required=True, metavar="ACTION")
    workers_list = workers_cmd.add_parser("list", help="registered workers, with their status")
    workers_list.add_argument("--all", action="store_true", help="stopped workers too")
    workers_list.add_argument("--json", action="store_true", help="one JSON object per line")
    workers_drain = workers_cmd.add_parser(
        "drain",
        help="ask workers to stop claiming, finish their running jobs (grace period) and exit",
    )
    workers_drain.add_argument("ids", type=_worker_id, nargs="+", metavar="WORKER_ID")

    queues = commands.add_parser("queues", help="job counts per queue and status")
    queues.add_argument("--pause", metavar="QUEUE", help="stop workers claiming from QUEUE")
    queues.add_argument("--resume", metavar="QUEUE", help="let workers claim from QUEUE again")
    queues.add_argument("--json", action="store_true")

    commands.add_parser("migrate", help="apply pending schema migrations")

    prune = commands.add_parser(
        "prune", help="delete old finished jobs and history now (workers also do it hourly)"
    )
    defaults = RetentionPolicy()
    for field, help_text in (
        ("succeeded", "delete succeeded jobs older than this"),
        ("failed", "delete failed jobs (the dead-letter queue) older than this"),
        ("cancelled", "delete cancelled jobs older than this"),
        ("history", "delete attempts and log lines older than this"),
    ):
        default = getattr(defaults, field)
        shown = "never" if default is None else f"{default.days}d"
        prune.add_argument(
            f"--{field}",
            type=_age,
            default=default,
            metavar="AGE",
            help=f"{help_text}: 36h, 7d, or 'never' (default {shown})",
        )

    demo = commands.add_parser("demo", help="run the demo on a fresh SQLite database")
    demo.add_argument("--jobs", type=_positive_int, default=10_000, help="jobs to enqueue")
    demo.add_argument("--concurrency", type=_positive_int, default=100)
    demo.add_argument("--db", default="taskforge-demo.db", help="SQLite file (recreated)")
    return parser


def _add_listing_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--queue")
    sub.add_argument("--task")
    sub.add_argument("--limit", type=_positive_int, default=50)
    sub.add_argument("--cursor")
    sub.add_argument("--json", action="store_true", help="one JSON object per line")


# -- loading the app --------------------------------------------------------------------------


def load_app(path: str) -> TaskForge:
    """Import ``module:attribute`` and check that it is a :class:`TaskForge`."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"APP must look like module:attribute, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, TaskForge):
        raise UsageError(f"{path} is {app!r}, not a TaskForge application")
    return app


def _app_for(args: argparse.Namespace) -> TaskForge:
    path = getattr(args, "app", None) or args.app_path or os.environ.get("TASKFORGE_APP")
    if path:
        return load_app(path)
    return TaskForge(args.url)


# -- commands ---------------------------------------------------------------------------------


def _print_job_line(job: Job) -> None:
    error = f"  {job.error.type}: {job.error.message}" if job.error else ""
    print(
        f"{job.id}  {job.status.value:<10} {job.queue:<12} {job.task}  "
        f"attempt {job.attempt}/{job.max_attempts}{error}"
    )


def _print_page(items: Sequence[Job], next_cursor: str | None, as_json: bool) -> None:
    for job in items:
        if as_json:
            print(json.dumps(converter.unstructure(job)))
        else:
            _print_job_line(job)
    if next_cursor and not as_json:
        print(f"-- more: --cursor {next_cursor}")


async def cmd_worker(args: argparse.Namespace) -> int:
    from taskforge_core.worker import Worker

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    app = load_app(args.app)
    queues = dict(args.queues) if args.queues else None  # None: every queue of APP's tasks
    worker = Worker(
        app,
        queues,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        lease=args.lease,
        poll_interval=args.poll_interval,
        grace_period=args.grace_period,
        name=args.name,
        run_scheduler=not args.no_scheduler,
    )
    await worker.run(handle_signals=True, stop_when_idle=args.burst)
    await app.close()
    return 0


async def cmd_enqueue(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    if not isinstance(args.args, list):
        raise UsageError("--args must be a JSON list")
    if not isinstance(args.kwargs, dict):
        raise UsageError("--kwargs must be a JSON object")
    options = {
        name: value
        for name in ("queue", "priority", "delay", "key")
        if (value := getattr(args, name)) is not None
    }
    handle = await app.enqueue(args.task, args.args, args.kwargs, **options)
    print(handle.id)
    await app.close()
    return 0


async def cmd_jobs(args: argparse.Namespace) -> int:
    app = _app_for(args)
    try:
        if args.jobs_command == "list":
            page = await app.list_jobs(
                statuses=args.statuses,
                queue=args.queue,
                task=args.task,
                limit=args.limit,
                cursor=args.cursor,
            )
            _print_page(page.items, page.next_cursor, args.json)
        elif args.jobs_command == "show":
            await _show_job(app, args.id, args.json)
        else:
            cancelled = await app.cancel(*args.ids)
            for job_id in cancelled:
                print(f"cancelled {job_id}")
            missing = set(args.ids) - set(cancelled)
            for job_id in sorted(missing):
                print(f"not cancelled (unknown or already final): {job_id}", file=sys.stderr)
            return EXIT_FAILED if missing else 0
    finally:
        await app.close()
    return 0


async def _show_job(app: TaskForge, job_id: uuid.UUID, as_json: bool) -> None:
    job = await app.get_job(job_id)
    storage = await app.storage()
    executions = await storage.list_executions(job_id)
    logs = await storage.list_logs(job_id)
    if as_json:
        print(
            json.dumps(
                {
                    "job": converter.unstructure(job),
                    "executions": converter.unstructure(executions),
                    "logs": converter.unstructure(logs),
                },
                indent=2,
            )
        )
        return
    print(f"job        {job.id}")
    print(f"task       {job.task}")
    print(f"queue      {job.queue}   priority {job.priority}")
    print(f"status     {job.status.value}   attempt {job.attempt}/{job.max_attempts}")
    print(f"args       {json.dumps(list(job.args))}  kwargs {json.dumps(dict(job.kwargs))}")
    print(f"created    {job.created_at.isoformat()}   due {job.scheduled_for.isoformat()}")
    if job.depends_on:
        print(f"depends on {', '.join(str(p) for p in job.depends_on)}")
    if job.status is JobStatus.SUCCEEDED:
        print(f"result     {json.dumps(job.result)}")
    for execution in executions:
        print(
            f"\nattempt {execution.attempt}: {execution.status.value} "
            f"(started {execution.started_at.isoformat()})"
        )
        if execution.error:
            print(f"  {execution.error.type}: {execution.error.message}")
            if execution.error.traceback:
                print("  " + execution.error.traceback.rstrip().replace("\n", "\n  "))
    if logs:
        print("\nlogs")
        for line in logs:
            fields = f" {json.dumps(dict(line.fields))}" if line.fields else ""
            print(f"  {line.at.isoformat()} {line.level:<7} {line.message}{fields}")


async def cmd_dlq(args: argparse.Namespace) -> int:
    app = _app_for(args)
    try:
        if args.dlq_command == "list":
            page = await app.dead_letters(
                queue=args.queue, task=args.task, limit=args.limit, cursor=args.cursor
            )
            _print_page(page.items, page.next_cursor, args.json)
            return 0
        if not args.ids and not args.all:
            raise UsageError(f"dlq {args.dlq_command}: give job ids, or --all (with filters)")
        if args.ids and args.all:
            raise UsageError(f"dlq {args.dlq_command}: give job ids or --all, not both")
        if args.dlq_command == "replay":
            result = await app.replay(
                *args.ids,
                queue=args.queue,
                task=args.task,
                include_cancelled=args.include_cancelled,
            )
            print(f"replayed {len(result.replayed)} job(s)")
            for job_id, reason in result.skipped:
                print(f"skipped {job_id}: {reason}", file=sys.stderr)
        else:
            count = await app.purge(*args.ids, queue=args.queue, task=args.task)
            print(f"purged {count} job(s)")
    finally:
        await app.close()
    return 0


async def cmd_workers(args: argparse.Namespace) -> int:
    app = _app_for(args)
    try:
        if args.workers_command == "list":
            found = await app.list_workers()
            if not args.all:
                found = [w for w in found if w.status is not WorkerStatus.STOPPED]
            for worker in found:
                if args.json:
                    print(json.dumps(converter.unstructure(worker)))
                    continue
                queues = ",".join(f"{a.queue}:{a.weight}" for a in worker.queues)
                beat = worker.last_heartbeat_at.isoformat() if worker.last_heartbeat_at else "-"
                print(
                    f"{worker.id}  {worker.status.value:<9} {worker.name:<24} "
                    f"c={worker.concurrency} queues={queues} heartbeat={beat}"
                )
            return 0
        failed = False
        for worker_id in args.ids:
            try:
                worker = await app.drain_worker(worker_id)
            except WorkerNotFoundError as exc:
                print(f"not drained: {exc}", file=sys.stderr)
                failed = True
                continue
            if worker.status is WorkerStatus.STOPPED:
                print(f"already stopped {worker_id} ({worker.name})")
            else:
                print(f"draining {worker_id} ({worker.name})")
        return EXIT_FAILED if failed else 0
    finally:
        await app.close()


async def cmd_queues(args: argparse.Namespace) -> int:
    app = _app_for(args)
    try:
        if args.pause:
            await app.pause_queue(args.pause)
            print(f"paused {args.pause}")
        if args.resume:
            await app.pause_queue(args.resume, paused=False)
            print(f"resumed {args.resume}")
        stats = await app.queue_stats()
    finally:
        await app.close()
    if args.json:
        print(json.dumps(converter.unstructure(stats)))
        return 0
    columns = [s.value for s in JobStatus]
    print(f"{'queue':<20}" + "".join(f"{c:>12}" for c in columns))
    for row in stats:
        name = row.queue + (" (paused)" if row.paused else "")
        print(f"{name:<20}" + "".join(f"{row.counts.get(JobStatus(c), 0):>12}" for c in columns))
    return 0


async def cmd_migrate(args: argparse.Namespace) -> int:
    app = _app_for(args)
    try:
        applied = await app.migrate()
    finally:
        await app.close()
    print("\n".join(f"applied {name}" for name in applied) or "schema is up to date")
    return 0


async def cmd_prune(args: argparse.Namespace) -> int:
    policy = RetentionPolicy(
        succeeded=args.succeeded, failed=args.failed, cancelled=args.cancelled, history=args.history
    )
    app = _app_for(args)
    try:
        report = await app.prune(policy)
    finally:
        await app.close()
    print(f"pruned: {describe(report)}")
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from taskforge_core.demo import run_demo

    await run_demo(jobs=args.jobs, concurrency=args.concurrency, path=args.db)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "worker": cmd_worker,
    "enqueue": cmd_enqueue,
    "jobs": cmd_jobs,
    "dlq": cmd_dlq,
    "workers": cmd_workers,
    "queues": cmd_queues,
    "migrate": cmd_migrate,
    "prune": cmd_prune,
    "demo": cmd_demo,
}


def _fail(parser: argparse.ArgumentParser, message: str, code: int) -> NoReturn:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


#: Values of ``--loop``.
LOOPS = ("auto", "asyncio", "uvloop")


def _uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_options(loop: str) -> dict[str, Any]:
    """``anyio.run`` backend options for a ``--loop`` value."""
    if loop not in LOOPS:
        raise UsageError(
            f"--loop (or $TASKFORGE_LOOP) must be one of {', '.join(LOOPS)}, not {loop!r}"
        )
    if loop == "uvloop" and not _uvloop_installed():
        raise UsageError("--loop uvloop: uvloop is not installed (pip install 'taskforge[uvloop]')")
    use_uvloop = loop == "uvloop" or (loop == "auto" and _uvloop_installed())
    return {"use_uvloop": use_uvloop}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used as the console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = loop_options(args.loop)
        return anyio.run(COMMANDS[args.command], args, backend_options=options)
    except (UsageError, ConfigurationError, InvalidJobError) as exc:
        _fail(parser, str(exc), EXIT_USAGE)
    except TaskForgeError as exc:
        _fail(parser, str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
