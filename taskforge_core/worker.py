"""The worker: claims jobs in batches, runs them, and reports their outcomes in batches.

::

    worker = Worker(app, {"emails": 3, "reports": 1}, concurrency=50)
    stats = await worker.run(handle_signals=True)     # until SIGTERM / SIGINT / worker.drain()

One task group owns everything a worker does:

* the **claimer** (the body of :meth:`Worker.run`) claims ``min(free slots, batch_size)`` jobs
  in one ``storage.claim`` whenever slots are free, splitting each claim across the queues by
  a smooth weighted round-robin; when nothing is runnable it waits for the backend's wake-up
  (or ``poll_interval``), and wakes at once when a slot frees;
* ``concurrency`` long-lived **runners** take claimed jobs from an in-memory queue and run
  each: rate limit, :class:`~taskforge_core.context.JobContext`, middleware, timeout, then the
  handler (``async def`` on the loop, plain functions in a bounded thread pool). A fixed pool
  costs nothing per job, where spawning a task per job costs tens of microseconds; a runner
  that finishes a job takes the next queued one at once, and an idle runner is woken only
  when a job is queued for it;
* the **acknowledger** reports outcomes: whatever finished since the last report goes out as
  one ``complete``, one ``retry`` and one ``fail`` call (and one ``add_logs``);
* the **heartbeater** extends the leases of held jobs, interrupts jobs the storage says this
  worker lost (lease expired, job cancelled), and starts a drain asked for through storage;
* with an event bus (``taskforge_event_bus`` hook, e.g. the Redis plugin), a **listener** that
  sends a heartbeat at once when a ``CancelJobs`` event names a job this worker runs or a
  ``DrainWorker`` event names this worker, and an **announcer** that publishes ``JobFinished``
  for the final outcomes storage accepted (see :mod:`taskforge_core.events`);
* the **reclaimer** takes back jobs whose lease expired (this is how jobs of a worker killed
  with SIGKILL come back);
* the **notifier** waits for the backend's wake-up on behalf of the idle claimer;
* the **scheduler** (``run_scheduler=True``): ``@app.periodic`` entries, and with a plugin
  such as the Redis scheduler, entries added at run time;
* a **signal watcher** with ``run(handle_signals=True)``.

Shutdown is cancellation: a drain stops claiming, lets running jobs finish within
``grace_period``, interrupts the rest and gives their jobs back unrun; then the task group is
cancelled and the cleanup that must happen (last reports, ``STOPPED`` status) runs shielded with
a deadline. A job is never lost: an outcome that cannot be reported leaves its job processing
until its lease expires, and then another worker runs it again.

Python cannot interrupt a thread: when a plain-function job times out, is cancelled or is
given back, the worker stops waiting for it at once, but its thread runs on until the function
returns (and holds one of the ``threads`` slots until then).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import inspect
import logging
import math
import os
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from taskforge_core import context
from taskforge_core.context import JobContext, JobLogger
from taskforge_core.errors import (
    ConfigurationError,
    JobTimeoutError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
    UnknownTaskError,
)
from taskforge_core.events import (
    CancelJobs,
    DrainWorker,
    JobFinished,
    close_quietly,
    publish_quietly,
)
from taskforge_core.ids import uuid7
from taskforge_core.middleware import run_with_middleware
from taskforge_core.models import (
    DEFAULT_QUEUE,
    AckResult,
    ClaimedJob,
    ClaimRequest,
    Completion,
    ErrorInfo,
    ExecutionLog,
    Failure,
    Job,
    JobFilter,
    QueueShare,
    QueueWorkerAssignment,
    RetryRequest,
    WorkerInfo,
    WorkerStatus,
)
from taskforge_core.ratelimit import acquire_all
from taskforge_core.retention import RetentionPolicy, as_prunable, prune_periodically
from taskforge_core.serialization import encode
from taskforge_core.states import ExecutionStatus, JobStatus

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from taskforge_core.app import TaskForge
    from taskforge_core.events import EventBus
    from taskforge_core.middleware import ExecutionMiddleware
    from taskforge_core.protocols import Storage
    from taskforge_core.ratelimit import RateLimiter
    from taskforge_core.scheduler import Scheduler
    from taskforge_core.task import Task

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger("taskforge.worker")

#: Longest time the shielded cleanup (last reports, STOPPED status) may take at shutdown.
CLEANUP_TIMEOUT = 10.0
#: Longest time one batch of reports may take before it is put back and tried again.
ACK_TIMEOUT = 30.0
#: Rate-limit keys whose last deferral a worker remembers before it forgets those already past.
DEFERRED_KEYS_KEPT = 1_000
#: Pause after a failed report before the next try.
ACK_RETRY_DELAY = 0.5
#: Log lines kept for a later try while storage refuses them; older ones are dropped.
MAX_BUFFERED_LOGS = 100_000
#: Default seconds between two runs of the retention policy by one worker.
DEFAULT_PRUNE_EVERY = 3600.0
#: How many scheduled jobs ``stop_when_idle`` inspects per queue before assuming one is due.
IDLE_SCAN_LIMIT = 10_000
#: ``stop_when_idle`` waits for scheduled jobs (retries, deferrals, short delays) due within
#: this many seconds, or ``poll_interval`` if longer; later ones are left for another run.
IDLE_HORIZON = 5.0
_IDLE_SCAN_PAGE = 500
#: JobFinished events kept while the event bus refuses them; older ones are dropped (waiters
#: then see the outcome at their next read of storage).
MAX_BUFFERED_EVENTS = 10_000
#: Final outcomes announced with a JobFinished event.
_FINAL_OUTCOMES = {
    ExecutionStatus.SUCCEEDED: JobStatus.SUCCEEDED,
    ExecutionStatus.FAILED: JobStatus.FAILED,
}


@attrs.define(kw_only=True)
class WorkerStats:
    """What a worker did: attempts by outcome, and time spent in handlers.

    ``succeeded``, ``retried``, ``failed`` and ``deferred`` count reports the storage accepted;
    ``lost`` counts jobs this worker ran but no longer held (lease expired: the report was
    rejected or the job was interrupted); ``cancelled`` counts jobs interrupted because they
    were cancelled while running.
    """

    #: Jobs claimed.
    claimed: int = 0
    #: Attempts that returned a result.
    succeeded: int = 0
    #: Attempts that raised and will be retried.
    retried: int = 0
    #: Attempts that raised and dead-lettered the job.
    failed: int = 0
    #: Jobs given back unrun (rate limited, or interrupted by a drain).
    deferred: int = 0
    #: Jobs interrupted because they were cancelled while running.
    cancelled: int = 0
    #: Jobs whose lease this worker lost before it could report on them.
    lost: int = 0
    #: Seconds spent in handlers, summed over every attempt this worker ran.
    run_seconds: float = 0.0
    #: Seconds since the worker started (until it stopped).
    elapsed_seconds: float = 0.0


@attrs.define(eq=False)
class _Running:
    """A job being run: its claim, the scope that interrupts it, and its log."""

    claimed: ClaimedJob
    scope: anyio.CancelScope
    log: JobLogger
    started: float = 0.0
    #: The storage says this worker no longer holds the job: drop the outcome.
    lost: bool = False


@attrs.define(eq=False)
class _Outcome:
    """A report waiting for the acknowledger."""

    report: Completion | RetryRequest | Failure
    job: Job
    status: ExecutionStatus
    run_seconds: float


class _WeightedRoundRobin:
    """Smooth weighted round-robin (as in nginx) over queues, its state kept across calls.

    Each pick adds every queue's weight to its credit, picks the queue with the most credit and
    takes the total weight from it; with weights 3:1 the picks go ``a a b a a a b a ...``.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self._weights = tuple(weights.items())
        self._total = sum(weights.values())
        self._credit = dict.fromkeys(weights, 0)

    def split(self, limit: int) -> tuple[QueueShare, ...]:
        """Quotas for a claim of ``limit`` jobs, one share per queue (some may be 0)."""
        if len(self._weights) == 1:
            return (QueueShare(name=self._weights[0][0], limit=limit),)
        counts = dict.fromkeys(self._credit, 0)
        credit = self._credit
        for _ in range(limit):
            best = ""
            for name, weight in self._weights:
                credit[name] += weight
                if not best or credit[name] > credit[best]:
                    best = name
            credit[best] -= self._total
            counts[best] += 1
        return tuple(QueueShare(name=name, limit=count) for name, count in counts.items())


class Worker:
    """Runs the jobs of ``queues`` with at most ``concurrency`` at a time.

    :param queues: queue names (equal weights), or ``{name: weight}``: when several queues
        have work, a queue of weight 3 gets three claims for each one of a queue of weight 1.
        Default: every queue used by the app's tasks (``default`` if it has none).
    :param concurrency: jobs run at once (async and sync together).
    :param batch_size: most jobs taken in one claim (default: ``concurrency``).
    :param lease: seconds a claim holds a job without a heartbeat; a worker that dies releases
        its jobs this long after its last heartbeat.
    :param heartbeat_interval: seconds between lease extensions (default ``lease / 3``).
    :param reclaim_interval: seconds between sweeps for expired leases (default ``lease / 2``).
    :param poll_interval: longest idle wait before claiming again when the backend cannot
        push wake-ups.
    :param grace_period: seconds running jobs get to finish when draining; the rest are
        interrupted and given back.
    :param threads: size of the thread pool for plain (non-async) tasks (default:
        ``concurrency``).
    :param name: a readable name for the worker registry (default ``host:pid``).
    :param run_scheduler: also fire the app's ``@app.periodic`` entries.
    :param prune_every: seconds between runs of the retention policy on backends that can
        prune (:class:`~taskforge_core.protocols.Capability` ``PRUNE``); None never prunes.
    :param retention: what pruning deletes (default: :class:`RetentionPolicy` ()).

    A worker runs once: after :meth:`run` returns, make a new one.
    """

    def __init__(
        self,
        app: TaskForge,
        queues: Mapping[str, int] | Sequence[str] | None = None,
        *,
        concurrency: int = 10,
        batch_size: int | None = None,
        lease: float = 30.0,
        heartbeat_interval: float | None = None,
        reclaim_interval: float | None = None,
        poll_interval: float = 1.0,
        grace_period: float = 30.0,
        threads: int | None = None,
        name: str | None = None,
        run_scheduler: bool = True,
        prune_every: float | None = DEFAULT_PRUNE_EVERY,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.app = app
        #: Queue name -> weight.
        if queues is None:  # every queue the app's tasks use, equally weighted
            queues = sorted({task.queue for task in app.tasks.values()} or {DEFAULT_QUEUE})
        self.queues: dict[str, int] = _queue_weights(queues)
        self.concurrency = _count("concurrency", concurrency)
        self.batch_size = _count("batch_size", concurrency if batch_size is None else batch_size)
        self.lease = _seconds("lease", lease)
        self.heartbeat_interval = _seconds(
            "heartbeat_interval",
            self.lease / 3 if heartbeat_interval is None else heartbeat_interval,
        )
        if self.heartbeat_interval >= self.lease:
            raise ConfigurationError(
                f"heartbeat_interval ({self.heartbeat_interval:g} s) must be shorter than the "
                f"lease ({self.lease:g} s), or leases expire between heartbeats"
            )
        self.reclaim_interval = _seconds(
            "reclaim_interval", self.lease / 2 if reclaim_interval is None else reclaim_interval
        )
        self.poll_interval = _seconds("poll_interval", poll_interval)
        self.grace_period = _seconds("grace_period", grace_period, zero_ok=True)
        self.threads = _count("threads", self.concurrency if threads is None else threads)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        #: This worker's id in the worker registry.
        self.id: uuid.UUID = uuid7()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.run_scheduler = bool(run_scheduler)
        self.prune_every = None if prune_every is None else _seconds("prune_every", prune_every)
        if retention is not None and not isinstance(retention, RetentionPolicy):
            raise ConfigurationError(f"retention must be a RetentionPolicy, got {retention!r}")
        self.retention = retention or RetentionPolicy()

        self._wrr = _WeightedRoundRobin(self.queues)
        self._stats = WorkerStats()
        self._ran = False
        self._draining = False
        self._skip_grace = False
        self._stop_when_idle = False
        self._start_time: float | None = None
        self._stop_time: float | None = None
        self._running: dict[uuid.UUID, _Running] = {}
        self._acks: list[_Outcome] = []
        self._inflight: list[_Outcome] = []
        self._logs: list[ExecutionLog] = []
        # Made in run(): they belong to the event loop.
        self._wake: anyio.Event | None = None
        self._runner_done: anyio.Event | None = None
        self._ack_ready: anyio.Event | None = None
        self._want_notify: anyio.Event | None = None
        self._grace_scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        # Claimed jobs no runner has taken yet, and the wake-up events of idle runners.
        self._ready: deque[_Running] = deque()
        self._idle_runners: deque[anyio.Event] = deque()
        self._storage: Storage | None = None
        self._limiter: RateLimiter | None = None
        self._middleware: list[ExecutionMiddleware] = []
        #: Rate-limit key -> the latest time a refused job of that key was given back for.
        self._deferred_until: dict[str, dt.datetime] = {}
        self._thread_limiter: anyio.CapacityLimiter | None = None
        # Events between instances (None: no plugin provides a bus).
        self._events: EventBus | None = None
        self._finished: list[JobFinished] = []
        self._finished_ready: anyio.Event | None = None

    def __repr__(self) -> str:
        state = "draining" if self._draining else "running" if self._tg else "idle"
        return f"<Worker {self.name} {state} running={len(self._running)}>"

    # -- public ----------------------------------------------------------------------------

    @property
    def stats(self) -> WorkerStats:
        """A snapshot of the counters."""
        end = self._stop_time or time.monotonic()
        elapsed = end - self._start_time if self._start_time is not None else 0.0
        return attrs.evolve(self._stats, elapsed_seconds=elapsed)

    @property
    def draining(self) -> bool:
        """True once a drain was asked for (no new claims)."""
        return self._draining

    @property
    def running_jobs(self) -> int:
        """How many jobs are being run right now."""
        return len(self._running)

    def drain(self) -> None:
        """Stop gracefully: claim nothing more, let running jobs finish within
        ``grace_period``, give back what is still running after that, then return from
        :meth:`run`. Call it from any task of the worker's event loop (for another thread, use
        ``anyio.from_thread.run_sync(worker.drain)``). Calling it again does nothing."""
        if self._draining:
            return
        self._draining = True
        logger.info(
            "worker %s draining: no new claims; %d running job(s) get %g s to finish",
            self.name,
            len(self._running),
            self.grace_period,
        )
        if self._wake is not None:
            self._wake.set()

    def stop_now(self) -> None:
        """Like :meth:`drain`, without the grace period: running jobs are interrupted and given
        back at once (what a second SIGTERM does)."""
        self._skip_grace = True
        if self._grace_scope is not None:
            self._grace_scope.cancel()
        self.drain()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        stop_when_idle: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> WorkerStats:
        """Register, run jobs until drained, and return the final :class:`WorkerStats`.

        :param handle_signals: drain on SIGTERM or SIGINT; a second signal skips the grace
            period.
        :param stop_when_idle: return once the work is done: a claim found nothing, nothing
            runs or waits to be reported, and none of this worker's (unpaused) queues holds a
            pending, processing or blocked job, nor a scheduled one due within
            ``max(poll_interval, IDLE_HORIZON)`` (5 s: retries with backoff and rate-limit
            deferrals still run). Jobs scheduled later than that are left for another run.
        :param task_status: for ``await task_group.start(worker.run)``: started once the worker
            is registered and about to claim.
        """
        if self._ran:
            raise RuntimeError("a Worker runs once; make a new Worker to run again")
        self._ran = True
        if not handle_signals:
            return await self._run(stop_when_idle, task_status)
        # Signals are watched from the very start: a SIGTERM while the storage opens or the
        # worker registers (a deploy that stops a worker just started) drains it cleanly
        # instead of killing the process.
        async with anyio.create_task_group() as signals:
            await signals.start(self._watch_signals, name="taskforge signals")
            try:
                stats = await self._run(stop_when_idle, task_status)
            finally:
                signals.cancel_scope.cancel()
        return stats

    async def _run(self, stop_when_idle: bool, task_status: TaskStatus[None]) -> WorkerStats:
        self._stop_when_idle = stop_when_idle
        self._wake = anyio.Event()
        self._runner_done = anyio.Event()
        self._ack_ready = anyio.Event()
        self._want_notify = anyio.Event()
        self._thread_limiter = anyio.CapacityLimiter(self.threads)
        storage = self._storage = await self.app.storage()
        self._limiter = self.app.plugins.hook.taskforge_rate_limiter(app=self.app)
        self._middleware = self.app.execution_middleware()
        self._events = self.app.event_bus()
        self._start_time = time.monotonic()
        await self._register(storage)
        logger.info(
            "worker %s (%s) started: queues %s, concurrency %d, lease %g s",
            self.name,
            self.id,
            ", ".join(f"{q}={w}" for q, w in self.queues.items()),
            self.concurrency,
            self.lease,
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for number in range(self.concurrency):
                    tg.start_soon(self._runner, name=f"taskforge runner {number}")
                tg.start_soon(self._acknowledger, name="taskforge acknowledger")
                tg.start_soon(self._heartbeater, name="taskforge heartbeater")
                tg.start_soon(self._reclaimer, name="taskforge reclaimer")
                tg.start_soon(self._notifier, name="taskforge notifier")
                if self._events is not None:
                    await tg.start(self._listen, self._events, name="taskforge event listener")
                    tg.start_soon(self._announce, self._events, name="taskforge announcer")
                if self.run_scheduler:
                    self._start_scheduler(tg)
                prunable = as_prunable(storage)
                if self.prune_every is not None and prunable is not None:
                    tg.start_soon(
                        prune_periodically,
                        prunable,
                        self.retention,
                        self.prune_every,
                        self.app.clock,
                        name="taskforge pruner",
                    )
                _call_hook(self.app.plugins.hook.taskforge_worker_started, worker=self)
                task_status.started()
                await self._claim_loop(stop_when_idle)
                await self._finish_running()
                tg.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self._shutdown()
                await self._close_limiter()
            self._stop_time = time.monotonic()
            self._tg = None
            _call_hook(self.app.plugins.hook.taskforge_worker_stopped, worker=self)
        stats = self.stats
        logger.info("worker %s stopped: %s", self.name, stats)
        return stats

    async def _register(self, storage: Storage) -> None:
        """Record this worker; while the store is unreachable (a database restarting), try
        again every ``poll_interval`` instead of exiting."""
        while not self._draining:
            try:
                await storage.register_worker(self._info())
                return
            except StorageUnavailableError as exc:
                logger.warning(
                    "worker %s cannot register yet, trying again in %g s: %s",
                    self.name,
                    self.poll_interval,
                    exc,
                )
                await anyio.sleep(self.poll_interval)

    # -- claiming --------------------------------------------------------------------------

    async def _claim_loop(self, stop_when_idle: bool) -> None:
        storage = self._require_storage()
        lease = dt.timedelta(seconds=self.lease)
        while not self._draining:
            self._wake = wake = anyio.Event()
            free = self.concurrency - len(self._running)
            if free <= 0:
                await wake.wait()
                continue
            limit = min(free, self.batch_size)
            request = ClaimRequest(
                worker_id=self.id,
                shares=self._wrr.split(limit),
                limit=limit,
                lease=lease,
                project=self.app.project,
            )
            try:
                claimed = await storage.claim(request)
            except StorageError as exc:
                logger.warning("claim failed, trying again in %g s: %s", self.poll_interval, exc)
                with anyio.move_on_after(self.poll_interval):
                    await wake.wait()
                continue
            if claimed:
                self._start(claimed)
                if len(claimed) >= limit:
                    continue
            elif stop_when_idle and await self._idle():
                logger.info("worker %s: no work left, stopping (stop_when_idle)", self.name)
                self.drain()
                break
            # Nothing (more) is runnable: sleep until the backend signals new work, the poll
            # interval passes, or a slot frees (a finished job may have released others).
            self._notify_me()
            await wake.wait()

    def _notify_me(self) -> None:
        assert self._want_notify is not None
        self._want_notify.set()

    async def _notifier(self) -> None:
        """Waits for the backend's wake-up while the claimer is idle, then wakes it."""
        storage = self._require_storage()
        names = tuple(self.queues)
        while True:
            assert self._want_notify is not None
            await self._want_notify.wait()
            self._want_notify = anyio.Event()
            try:
                await storage.wait_for_jobs(names, self.poll_interval)
            except Exception as exc:  # a broken wake-up degrades to polling; never crash
                logger.warning("waiting for new jobs failed: %s", exc)
                await anyio.sleep(self.poll_interval)
            self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _idle(self) -> bool:
        """True when nothing is left to do soon (see ``run(stop_when_idle=True)``)."""
        if self._running or self._acks or self._inflight:
            return False
        storage = self._require_storage()
        try:
            stats = await storage.queue_stats(self.app.project)
            ahead = max(self.poll_interval, IDLE_HORIZON)
            horizon = self.app.clock.now() + dt.timedelta(seconds=ahead)
            for queue in stats:
                if queue.queue not in self.queues or queue.paused:
                    continue
                counts = queue.counts
                if any(
                    counts.get(s, 0)
                    for s in (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.BLOCKED)
                ):
                    return False
                if counts.get(JobStatus.SCHEDULED, 0) and await self._due_before(
                    queue.queue, horizon
                ):
                    return False
        except StorageError as exc:
            logger.warning("could not check for remaining work: %s", exc)
            return False
        return True

    async def _due_before(self, queue: str, horizon: dt.datetime) -> bool:
        """Whether a scheduled job of ``queue`` is due by ``horizon`` (True when unsure)."""
        storage = self._require_storage()
        selection = JobFilter(
            project=self.app.project, statuses=frozenset({JobStatus.SCHEDULED}), queue=queue
        )
        cursor: str | None = None
        for _ in range(IDLE_SCAN_LIMIT // _IDLE_SCAN_PAGE):
            page = await storage.list_jobs(selection, limit=_IDLE_SCAN_PAGE, cursor=cursor)
            if any(job.scheduled_for <= horizon for job in page.items):
                return True
            cursor = page.next_cursor
            if cursor is None:
                return False
        return True

    def _start(self, claimed: list[ClaimedJob]) -> None:
        self._stats.claimed += len(claimed)
        for claim in claimed:
            entry = _Running(
                claim,
                anyio.CancelScope(),
                JobLogger(claim.job, claim.execution_id, self.app.clock),
            )
            if self._draining:  # claimed while a drain began: hand it straight back
                self._give_back(entry)
                continue
            self._running[claim.execution_id] = entry
            self._ready.append(entry)
            if self._idle_runners:
                self._idle_runners.popleft().set()

    # -- running ---------------------------------------------------------------------------

    async def _runner(self) -> None:
        """Runs queued jobs one after another until the worker stops; waits while none is
        queued. A job appended to the queue wakes at most one idle runner, and a runner that
        finishes a job looks at the queue before it waits, so no queued job is left behind."""
        ready, idle = self._ready, self._idle_runners
        while True:
            if ready:
                await self._run_job(ready.popleft())
            else:
                wake = anyio.Event()
                idle.append(wake)
                await wake.wait()

    async def _run_job(self, entry: _Running) -> None:
        """One claimed job, start to report. Never raises (but lets cancellation through)."""
        outcome: _Outcome | None = None
        entry.started = time.perf_counter()
        try:
            with entry.scope:
                try:
                    outcome = await self._execute(entry)
                except Exception as exc:  # a fault outside the handler: fail, keep the worker
                    job = entry.claimed.job
                    logger.exception("job %s (%s): the worker could not run it", job.id, job.task)
                    outcome = self._failed(entry, exc, 0.0, retry=None)
        finally:
            # Synchronous on purpose: this also runs when the whole worker is cancelled.
            execution_id = entry.claimed.execution_id
            del self._running[execution_id]
            self._stats.run_seconds += time.perf_counter() - entry.started
            if entry.log.pending:
                self._buffer_logs(entry.log.pending)
                entry.log.pending = []
            if entry.lost:
                pass  # the heartbeater counted it; any report would be rejected anyway
            elif outcome is None:  # interrupted: drain past its grace period, or shutdown
                self._give_back(entry)
            else:
                self._push(outcome)
            assert self._runner_done is not None
            self._runner_done.set()
            self._wakeup()

    async def _execute(self, entry: _Running) -> _Outcome:
        job = entry.claimed.job
        task = self.app.tasks.get(job.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            error = UnknownTaskError(
                f"no task named {job.task!r} is registered in this worker (registered: {known})"
            )
            logger.error("job %s (%s): %s", job.id, job.task, error)
            return self._failed(entry, error, 0.0, retry=None)
        if self._limiter is not None and (task.rate_limit is not None or self.app.rate_limits):
            deferred = await self._admit(entry, task)
            if deferred is not None:
                return deferred
        ctx = JobContext(job=job, execution_id=entry.claimed.execution_id, log=entry.log)
        token = context.bind(ctx)
        started = time.perf_counter()
        try:
            result = await self._call(task, ctx)
        except Exception as exc:
            return self._failed(entry, exc, time.perf_counter() - started, retry=task)
        finally:
            context.unbind(token)
        run_seconds = time.perf_counter() - started
        if not (result is None or type(result) in (str, int, bool)):
            try:
                encode(result, what=f"the result of {job.task!r}")
            except SerializationError as exc:
                return self._failed(entry, exc, run_seconds, retry=None)
        logger.debug("job %s (%s) succeeded in %.3f s", job.id, job.task, run_seconds)
        report = Completion(job_id=job.id, execution_id=entry.claimed.execution_id, result=result)
        return _Outcome(report, job, ExecutionStatus.SUCCEEDED, run_seconds)

    async def _admit(self, entry: _Running, task: Task[Any, Any]) -> _Outcome | None:
        """Ask the rate limiter about every limit of the job at once (task, queue, project,
        tier); a refused job is given back for later (not a failure, no attempt used)."""
        assert self._limiter is not None
        job = entry.claimed.job
        limits = self.app.rate_limits.applicable(job.project, job.queue, job.task, task.rate_limit)
        if not limits:
            return None
        key, limit = limits[0]
        try:
            admission = await acquire_all(self._limiter, limits)
        except Exception as exc:
            # A broken limiter: each limit's own choice decides (fail open admits, fail closed
            # defers); by default limits fail closed, so jobs never get past their limit.
            if all(lim.fail_open for _, lim in limits):
                logger.warning(
                    "job %s (%s): rate limiter failed, running it anyway (its limits fail "
                    "open): %s",
                    job.id,
                    job.task,
                    exc,
                )
                return None
            logger.warning(
                "job %s (%s): rate limiter failed, trying again in %g s: %s",
                job.id,
                job.task,
                self.poll_interval,
                exc,
            )
            retry_after = self.poll_interval
        else:
            if admission.allowed:
                return None
            retry_after = max(0.0, admission.retry_after)
            key, limit = next(((k, lim) for k, lim in limits if k == admission.key), (key, limit))
        # Jobs refused together would all come back at the same instant and all but one be
        # refused again: give each its own slot, one emission interval after the last one.
        run_at = self._deferral_slot(key, retry_after, limit.period / limit.count)
        logger.debug("job %s (%s) rate limited by %s, again at %s", job.id, job.task, key, run_at)
        report = RetryRequest(
            job_id=job.id,
            execution_id=entry.claimed.execution_id,
            run_at=run_at,
            error=None,
            consume_attempt=False,
        )
        return _Outcome(report, job, ExecutionStatus.DEFERRED, 0.0)

    def _deferral_slot(self, key: str, retry_after: float, spacing: float) -> dt.datetime:
        """When to run a job refused by the limit ``key``: after ``retry_after`` seconds, and
        ``spacing`` seconds after the last job deferred for the same key. Slots already past
        are forgotten once many keys were seen (per-project limits make keys unbounded)."""
        now = self.app.clock.now()
        run_at = now + dt.timedelta(seconds=retry_after)
        last = self._deferred_until.get(key)
        if last is not None and last >= run_at:
            run_at = last + dt.timedelta(seconds=spacing)
        self._deferred_until[key] = run_at
        if len(self._deferred_until) > DEFERRED_KEYS_KEPT:
            self._deferred_until = {k: t for k, t in self._deferred_until.items() if t > now}
        return run_at

    async def _close_limiter(self) -> None:
        """Close the rate limiter's connections, if it has any (``aclose()``)."""
        aclose = getattr(self._limiter, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                logger.exception("worker %s: closing the rate limiter failed", self.name)

    async def _call(self, task: Task[Any, Any], ctx: JobContext) -> Any:
        """The handler through the middleware, within the job's timeout."""
        job = ctx.job
        fn = cast("Callable[..., Any]", task.fn)
        if task.is_async and job.timeout is None and not self._middleware:
            return await fn(*job.args, **job.kwargs)  # the common case, without the wrappers
        if task.is_async:

            async def handler() -> Any:
                return await fn(*job.args, **job.kwargs)

        else:
            assert self._thread_limiter is not None
            limiter = self._thread_limiter

            async def handler() -> Any:
                run = functools.partial(contextvars.copy_context().run, fn, *job.args, **job.kwargs)
                result = await anyio.to_thread.run_sync(
                    run, limiter=limiter, abandon_on_cancel=True
                )
                if inspect.isawaitable(result):  # a plain function that returned a coroutine
                    result = await result
                return result

        def invoke() -> Awaitable[Any]:
            if self._middleware:
                return run_with_middleware(self._middleware, ctx, handler)
            return handler()

        if job.timeout is None:
            return await invoke()
        with anyio.move_on_after(job.timeout):
            return await invoke()
        raise JobTimeoutError(
            f"job {job.id} ({job.task}) ran longer than its timeout of {job.timeout:g} s"
        )

    def _failed(
        self,
        entry: _Running,
        exc: BaseException,
        run_seconds: float,
        *,
        retry: Task[Any, Any] | None,
    ) -> _Outcome:
        """The report for an attempt that raised ``exc``; ``retry`` is the task whose policy
        decides, None for errors that are never retried."""
        job = entry.claimed.job
        error = ErrorInfo(
            type=_qualified_name(type(exc)),
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        delay = (
            retry.retry.next_delay(exc, job.attempt, max_attempts=job.max_attempts)
            if retry is not None
            else None
        )
        execution_id = entry.claimed.execution_id
        if delay is None:
            logger.warning(
                "job %s (%s) failed on attempt %d of %d: %s: %s",
                job.id,
                job.task,
                job.attempt,
                job.max_attempts,
                error.type,
                error.message,
            )
            report: Failure | RetryRequest = Failure(
                job_id=job.id, execution_id=execution_id, error=error
            )
            return _Outcome(report, job, ExecutionStatus.FAILED, run_seconds)
        logger.info(
            "job %s (%s) attempt %d of %d raised %s: %s; retrying in %.3g s",
            job.id,
            job.task,
            job.attempt,
            job.max_attempts,
            error.type,
            error.message,
            delay,
        )
        report = RetryRequest(
            job_id=job.id,
            execution_id=execution_id,
            run_at=self.app.clock.now() + dt.timedelta(seconds=delay),
            error=error,
        )
        return _Outcome(report, job, ExecutionStatus.RETRYING, run_seconds)

    def _give_back(self, entry: _Running) -> None:
        """Return a claimed job unrun (its attempt is not used up), to run again now."""
        job = entry.claimed.job
        logger.info("job %s (%s) given back unfinished", job.id, job.task)
        report = RetryRequest(
            job_id=job.id,
            execution_id=entry.claimed.execution_id,
            run_at=self.app.clock.now(),
            error=None,
            consume_attempt=False,
        )
        run_seconds = time.perf_counter() - entry.started if entry.started else 0.0
        self._push(_Outcome(report, job, ExecutionStatus.DEFERRED, run_seconds))

    # -- reporting -------------------------------------------------------------------------

    def _push(self, outcome: _Outcome) -> None:
        self._acks.append(outcome)
        if self._ack_ready is not None:
            self._ack_ready.set()

    def _buffer_logs(self, lines: list[ExecutionLog]) -> None:
        self._logs.extend(lines)
        overflow = len(self._logs) - MAX_BUFFERED_LOGS
        if overflow > 0:
            del self._logs[:overflow]
            logger.warning("storage refuses log lines: dropped the %d oldest", overflow)

    async def _acknowledger(self) -> None:
        """Reports outcomes as soon as there are any, together with all that came meanwhile."""
        while True:
            assert self._ack_ready is not None
            await self._ack_ready.wait()
            self._ack_ready = anyio.Event()
            await anyio.lowlevel.checkpoint()  # let runners finishing this tick join the batch
            if not await self._flush():
                await anyio.sleep(ACK_RETRY_DELAY)
                self._ack_ready.set()
            elif self._stop_when_idle:
                self._wakeup()  # the claimer may be waiting for these reports to look idle

    async def _flush(self) -> bool:
        """Report every buffered outcome and log line; False (all put back) if storage failed.

        One ``add_logs``, ``complete``, ``retry`` and ``fail`` call at most. The calls are
        shielded: a report that has begun finishes even when the worker is being cancelled.
        """
        logs, self._logs = self._logs, []
        batch, self._acks = self._acks, []
        if not logs and not batch:
            return True
        self._inflight = batch
        storage = self._require_storage()
        groups: dict[type, list[_Outcome]] = {Completion: [], RetryRequest: [], Failure: []}
        for outcome in batch:
            groups[type(outcome.report)].append(outcome)
        remaining = [group for group in groups.values() if group]
        try:
            with anyio.move_on_after(ACK_TIMEOUT, shield=True):
                if logs:  # first, so a job's lines are readable once it is final
                    await storage.add_logs(logs)
                    logs = []
                while remaining:
                    result = await _report(storage, remaining[0])
                    self._settle(remaining.pop(0), result)
        except StorageError as exc:
            logger.warning("reporting %d job outcome(s) failed, will retry: %s", len(batch), exc)
        finally:
            self._inflight = []
            if logs:
                self._buffer_logs(logs)
            if remaining:
                self._acks[:0] = [outcome for group in remaining for outcome in group]
        if remaining:
            logger.warning("%d job outcome(s) not reported yet", sum(map(len, remaining)))
        return not remaining and not logs

    def _settle(self, outcomes: list[_Outcome], result: AckResult) -> None:
        rejected = set(result.rejected)
        stats = self._stats
        hook = self.app.plugins.hook.taskforge_job_finished
        notify = bool(hook.get_hookimpls())  # calling a hook no plugin implements costs µs
        for outcome in outcomes:
            job = outcome.job
            if job.id in rejected:
                stats.lost += 1
                logger.warning(
                    "report on job %s (%s) rejected: this worker no longer held it (lease "
                    "expired or job cancelled); its %s outcome is dropped",
                    job.id,
                    job.task,
                    outcome.status.value,
                )
                continue
            status = outcome.status
            if status is ExecutionStatus.SUCCEEDED:
                stats.succeeded += 1
            elif status is ExecutionStatus.RETRYING:
                stats.retried += 1
            elif status is ExecutionStatus.FAILED:
                stats.failed += 1
            else:
                stats.deferred += 1
            if notify:
                _call_hook(
                    hook, app=self.app, job=job, outcome=status, run_seconds=outcome.run_seconds
                )
            if self._events is not None and status in _FINAL_OUTCOMES:
                self._finished.append(JobFinished(job_id=job.id, status=_FINAL_OUTCOMES[status]))
        if self._finished and self._finished_ready is not None:
            self._finished_ready.set()

    # -- leases ----------------------------------------------------------------------------

    def _held(self) -> list[uuid.UUID]:
        """Execution ids this worker holds: running, or finished but not yet reported."""
        held = list(self._running)
        held.extend(o.report.execution_id for o in self._acks)
        held.extend(o.report.execution_id for o in self._inflight)
        return held

    async def _heartbeater(self) -> None:
        while True:
            await self.app.clock.sleep(self.heartbeat_interval)
            await self._beat()

    async def _beat(self) -> None:
        """One heartbeat: extend leases, interrupt lost jobs, drain if storage says so."""
        storage = self._require_storage()
        lease = dt.timedelta(seconds=self.lease)
        try:
            status, lost = await storage.heartbeat(self.id, self._held(), lease)
        except Exception as exc:  # StorageError, or a backend bug: never crash the worker
            logger.warning(
                "heartbeat failed, trying again in %g s: %s", self.heartbeat_interval, exc
            )
            return
        if lost:
            await self._abandon(lost)
        if status is not WorkerStatus.RUNNING and not self._draining:
            logger.info("worker %s is %s in storage", self.name, status.value)
            self.drain()

    async def _abandon(self, lost: Sequence[uuid.UUID]) -> None:
        """Interrupt the jobs storage says this worker no longer holds; report nothing."""
        # Not those already interrupted: an event-driven heartbeat may overlap a scheduled one.
        entries = [self._running[i] for i in lost if i in self._running]
        entries = [entry for entry in entries if not entry.lost]
        for entry in entries:
            entry.lost = True
            entry.scope.cancel()
        if not entries:
            return
        statuses: dict[uuid.UUID, JobStatus] = {}
        try:
            jobs = await self._require_storage().get_jobs(
                [e.claimed.job.id for e in entries], self.app.project
            )
            statuses = {job.id: job.status for job in jobs}
        except Exception as exc:
            logger.warning("could not look up interrupted jobs: %s", exc)
        for entry in entries:
            job = entry.claimed.job
            if statuses.get(job.id) is JobStatus.CANCELLED:
                self._stats.cancelled += 1
                logger.info(
                    "job %s (%s) was cancelled while running: interrupted", job.id, job.task
                )
                _call_hook(
                    self.app.plugins.hook.taskforge_job_finished,
                    app=self.app,
                    job=job,
                    outcome=ExecutionStatus.CANCELLED,
                    run_seconds=time.perf_counter() - entry.started if entry.started else 0.0,
                )
            else:
                self._stats.lost += 1
                logger.warning(
                    "lost the lease on job %s (%s): interrupted; another worker may run it",
                    job.id,
                    job.task,
                )

    # -- events between instances ----------------------------------------------------------

    async def _listen(self, bus: EventBus, *, task_status: TaskStatus[None]) -> None:
        """Act on control events by asking storage at once (a heartbeat), never by trusting
        the event: a stale, duplicated or forged event costs one heartbeat, and the heartbeat's
        answer fences the job exactly as a scheduled one would. While it runs, later events
        wait in the subscription, and those it already settled no longer concern this worker.
        Started (``task_status``) once subscribed, so a cancel issued after ``run`` reported
        started reaches it."""
        started = False
        while True:
            try:
                async with bus.subscribe(control=True) as events:
                    if not started:
                        started = True
                        task_status.started()
                    async for event in events:
                        if self._concerns_me(event):
                            await self._beat()
            except Exception:  # a broken bus costs latency, never the worker
                logger.exception("the event listener failed; restarting it")
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(max(1.0, self.poll_interval))

    def _concerns_me(self, event: object) -> bool:
        if isinstance(event, CancelJobs):
            ids = set(event.job_ids)
            return any(
                entry.claimed.job.id in ids and not entry.lost for entry in self._running.values()
            )
        if isinstance(event, DrainWorker):
            return event.worker_id == self.id and not self._draining
        return False

    async def _announce(self, bus: EventBus) -> None:
        """Publish JobFinished for the outcomes the acknowledger got accepted, in batches."""
        self._finished_ready = ready = anyio.Event()
        while True:
            await ready.wait()
            self._finished_ready = ready = anyio.Event()
            batch, self._finished = self._finished, []
            if len(batch) > MAX_BUFFERED_EVENTS:
                del batch[:-MAX_BUFFERED_EVENTS]
            await publish_quietly(bus, batch)

    async def _close_events(self) -> None:
        """Announce the outcomes of the last reports, and close the bus (runs shielded)."""
        bus, self._events = self._events, None
        if bus is None:
            return
        batch, self._finished = self._finished, []
        await publish_quietly(bus, batch[-MAX_BUFFERED_EVENTS:])
        await close_quietly(bus)

    async def _reclaimer(self) -> None:
        storage = self._require_storage()
        while True:
            try:
                reclaimed = await storage.reclaim_expired()
            except Exception as exc:
                logger.warning("reclaiming expired leases failed: %s", exc)
            else:
                if reclaimed:
                    logger.info("took back %d job(s) whose lease expired", len(reclaimed))
                    self._wakeup()
            await self.app.clock.sleep(self.reclaim_interval)

    # -- scheduler, signals, shutdown ------------------------------------------------------

    def _start_scheduler(self, tg: TaskGroup) -> None:
        scheduler = self.app.plugins.hook.taskforge_scheduler(app=self.app)
        if scheduler is None:
            logger.warning("no scheduler plugin answered: @app.periodic entries will not fire")
            return
        tg.start_soon(self._supervise_scheduler, scheduler, name="taskforge scheduler")

    async def _supervise_scheduler(self, scheduler: Scheduler) -> None:
        while True:
            try:
                await scheduler.run(self.app)
                return
            except ConfigurationError as exc:  # restarting cannot help: say so once
                logger.error("the scheduler cannot run, no periodic job will fire here: %s", exc)
                return
            except Exception:
                delay = max(1.0, self.poll_interval)
                logger.exception("the scheduler crashed; restarting it in %g s", delay)
                await anyio.sleep(delay)

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._draining:
                    logger.warning("%s: draining (send it again to stop at once)", name)
                    self.drain()
                else:
                    logger.warning("%s again: interrupting running jobs", name)
                    self.stop_now()

    async def _wait_for_runners(self) -> None:
        while self._running:
            self._runner_done = anyio.Event()
            await self._runner_done.wait()

    async def _finish_running(self) -> None:
        """Let running jobs finish within the grace period, then interrupt the rest."""
        if self._running and not self._skip_grace:
            with anyio.move_on_after(self.grace_period) as self._grace_scope:
                await self._wait_for_runners()
            self._grace_scope = None
        if self._running:
            logger.warning(
                "worker %s: interrupting %d running job(s) and giving them back",
                self.name,
                len(self._running),
            )
            for entry in list(self._running.values()):
                entry.scope.cancel()
            with anyio.move_on_after(CLEANUP_TIMEOUT):
                await self._wait_for_runners()

    async def _shutdown(self) -> None:
        """Report everything left and record that the worker stopped (runs shielded)."""
        if self._storage is None:
            return
        # Jobs claimed but never picked up by a runner (the worker was cancelled): give back.
        for execution_id, entry in list(self._running.items()):
            if not entry.started:
                del self._running[execution_id]
                self._give_back(entry)
        self._ready.clear()
        for _ in range(3):
            if await self._flush():
                break
            await anyio.sleep(ACK_RETRY_DELAY)
        if self._acks:
            logger.error(
                "worker %s could not report %d job outcome(s); those jobs run again once "
                "their leases expire",
                self.name,
                len(self._acks),
            )
        try:
            await self._storage.set_worker_status(self.id, WorkerStatus.STOPPED)
        except StorageError as exc:
            logger.warning("could not record that worker %s stopped: %s", self.name, exc)
        await self._close_events()

    # -- helpers ---------------------------------------------------------------------------

    def _require_storage(self) -> Storage:
        assert self._storage is not None, "the worker is not running"
        return self._storage

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            name=self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.concurrency,
            project=self.app.project,
            status=WorkerStatus.RUNNING,
            queues=tuple(
                QueueWorkerAssignment(worker_id=self.id, queue=queue, weight=weight)
                for queue, weight in self.queues.items()
            ),
            started_at=self.app.clock.now(),
        )


async def _report(storage: Storage, outcomes: list[_Outcome]) -> AckResult:
    """One storage call for a group of reports of the same kind."""
    reports = [outcome.report for outcome in outcomes]
    first = reports[0]
    if isinstance(first, Completion):
        return await storage.complete(cast("list[Completion]", reports))
    if isinstance(first, RetryRequest):
        return await storage.retry(cast("list[RetryRequest]", reports))
    return await storage.fail(cast("list[Failure]", reports))


def _call_hook(hook: Callable[..., object], **kwargs: Any) -> None:
    """Call a notification hook; a failing plugin is logged, never fatal to the worker."""
    try:
        hook(**kwargs)
    except Exception:
        logger.exception("a taskforge plugin hook failed")


def _qualified_name(kind: type[BaseException]) -> str:
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


# -- argument checks -------------------------------------------------------------------------


def _queue_weights(queues: object) -> dict[str, int]:
    if isinstance(queues, str):
        queues = (queues,)
    if isinstance(queues, Mapping):
        items = list(queues.items())
    elif isinstance(queues, Sequence | set | frozenset):
        items = [(name, 1) for name in queues]
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"queues lists a queue twice: {names!r}")
    else:
        raise ConfigurationError(
            f"queues must be a list of names or a {{name: weight}} mapping, got {queues!r}"
        )
    if not items:
        raise ConfigurationError("a worker needs at least one queue")
    weights: dict[str, int] = {}
    for name, weight in items:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"queue names must be non-empty strings, got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigurationError(
                f"the weight of queue {name!r} must be a positive integer, got {weight!r}"
            )
        weights[name] = weight
    return weights


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return seconds
