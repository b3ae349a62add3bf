"""The application object: task registry, plugins, storage, and the operations users call."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

import anyio
import anyio.from_thread
import attrs

from taskforge_core.backends import BackendConfig, create_storage, url_scheme
from taskforge_core.clock import Clock, SystemClock
from taskforge_core.errors import (
    ConfigurationError,
    JobNotFoundError,
    UnknownTaskError,
    WorkerNotFoundError,
)
from taskforge_core.events import (
    CancelJobs,
    DrainWorker,
    Event,
    EventBus,
    JobFinished,
    close_quietly,
    publish_quietly,
)
from taskforge_core.handle import JobHandle
from taskforge_core.middleware import ExecutionMiddleware
from taskforge_core.models import (
    DEFAULT_PROJECT,
    DEFAULT_QUEUE,
    Job,
    JobFilter,
    NewJob,
    Page,
    WorkerInfo,
    WorkerStatus,
)
from taskforge_core.plugins import create_plugin_manager
from taskforge_core.protocols import Capability
from taskforge_core.ratelimit import RateLimit, RateLimits
from taskforge_core.retention import PruneReport, RetentionPolicy, as_prunable
from taskforge_core.retry import Retry
from taskforge_core.scheduler import PeriodicEntry
from taskforge_core.states import JobStatus
from taskforge_core.task import Task, task_name

if TYPE_CHECKING:
    import pluggy

    from taskforge_core.models import QueueStats, ReplayResult
    from taskforge_core.protocols import Storage

__all__ = ["DEFAULT_URL", "TaskForge"]

logger = logging.getLogger("taskforge")

P = ParamSpec("P")
R = TypeVar("R")

#: Where jobs live when neither an argument nor ``TASKFORGE_URL`` says otherwise.
DEFAULT_URL = "sqlite:///taskforge.db"
#: Arguments of one job may encode to at most this many bytes unless configured otherwise.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


class TaskForge:
    """A TaskForge application: ``app = TaskForge("sqlite:///jobs.db")``.

    Settings come from the arguments, then ``TASKFORGE_*`` environment variables, then the
    defaults. The URL is checked at once (an unknown scheme or a missing extra raises here);
    the connection is opened on first use.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        project: str = DEFAULT_PROJECT,
        clock: Clock | None = None,
        plugins: Sequence[object] = (),
        load_entry_points: bool = True,
        max_payload_bytes: int | None = None,
        auto_migrate: bool = True,
        create_queues: bool = True,
        rate_limits: RateLimits | None = None,
    ) -> None:
        if rate_limits is not None and not isinstance(rate_limits, RateLimits):
            raise ConfigurationError(
                f"rate_limits must be a RateLimits(queues=..., projects=..., tiers=..., "
                f"project_tiers=...), got {rate_limits!r}"
            )
        #: Limits per queue, project and subscription tier, checked by workers together with
        #: each task's own ``rate_limit`` (see :class:`~taskforge_core.ratelimit.RateLimits`).
        self.rate_limits = rate_limits or RateLimits()
        self.url = url or os.environ.get("TASKFORGE_URL") or DEFAULT_URL
        self.project = project
        self.clock = clock or SystemClock()
        self.max_payload_bytes = max_payload_bytes or _env_int(
            "TASKFORGE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES
        )
        #: Registered tasks by name.
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: Cron entries declared with :meth:`periodic`.
        self.periodic_entries: dict[str, PeriodicEntry] = {}
        #: The pluggy plugin manager; ``app.plugins.register(obj)`` adds a plugin.
        self.plugins: pluggy.PluginManager = create_plugin_manager(
            load_entry_points=load_entry_points
        )
        for plugin in plugins:
            self.plugins.register(plugin)
        self._backend_config = BackendConfig(
            clock=self.clock, auto_migrate=auto_migrate, create_queues=create_queues
        )
        # Storage connections belong to the event loop that opened them: one per thread.
        self._storages: dict[int, Storage] = {}
        self._storages[threading.get_ident()] = self._new_storage()
        self._opened: set[int] = set()
        self._portal_stack: ExitStack | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._portal_lock = threading.Lock()
        self.plugins.hook.taskforge_app_created(app=self)

    def __repr__(self) -> str:
        return f"<TaskForge {self.url} tasks={len(self.tasks)}>"

    # -- registration --------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        retry: Retry | None = None,
        timeout: float | None = None,
        rate_limit: str | RateLimit | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        retry: Retry | None = None,
        timeout: float | None = None,
        rate_limit: str | RateLimit | None = None,
    ) -> Any:
        """Register a function as a task; usable as ``@app.task`` or ``@app.task(queue=...)``.

        ``async def`` functions run on the worker's event loop; plain functions run in the
        worker's bounded thread pool.
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name_ = name or task_name(func)
            if task_name_ in self.tasks:
                raise ConfigurationError(f"a task named {task_name_!r} is already registered")
            limit = RateLimit.parse(rate_limit) if isinstance(rate_limit, str) else rate_limit
            task: Task[Any, Any] = Task(
                self,
                func,
                name=task_name_,
                queue=queue,
                priority=priority,
                retry=retry or Retry(),
                timeout=timeout,
                rate_limit=limit,
            )
            self.tasks[task_name_] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str = DEFAULT_QUEUE,
        retry: Retry | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Register a task and enqueue it on every tick of ``cron`` (read in ``timezone``).

        Each tick is enqueued once: its job carries a key made of the entry name and the tick
        time, so schedulers in several processes never double a tick.
        """

        def register(func: Callable[P, R]) -> Task[P, R]:
            entry = PeriodicEntry(  # validated before anything is registered
                name=name or task_name(func),
                cron=cron,
                task=name or task_name(func),
                timezone=timezone,
                args=tuple(args),
                kwargs=dict(kwargs or {}),
            )
            registered: Task[P, R] = self.task(name=entry.task, queue=queue, retry=retry)(func)
            try:
                registered.build(entry.args, entry.kwargs)  # bad arguments fail now, not at 3 a.m.
            except Exception:
                del self.tasks[registered.name]
                raise
            self.periodic_entries[entry.name] = entry
            return registered

        return register

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``; :class:`UnknownTaskError` lists the known ones."""
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTaskError(f"no task named {name!r} (registered: {known})") from None

    # -- plugin helpers ------------------------------------------------------------------

    def enqueue_headers(self, task: str) -> dict[str, str]:
        """Headers every plugin wants attached to a new job of ``task``."""
        merged: dict[str, str] = {}
        hook = self.plugins.hook.taskforge_enqueue_headers
        if not hook.get_hookimpls():  # the common case: calling a hook with none costs µs
            return merged
        for headers in hook(app=self, task=task):
            merged.update(headers or {})
        return merged

    def execution_middleware(self) -> list[ExecutionMiddleware]:
        """Middleware from every plugin, outermost first (first registered, first)."""
        found = self.plugins.hook.taskforge_execution_middleware(app=self)
        return [mw for mw in reversed(found) if mw is not None]

    # -- storage -------------------------------------------------------------------------

    def _new_storage(self) -> Storage:
        return create_storage(self.plugins, self.url, self._backend_config)

    async def storage(self) -> Storage:
        """The storage of the current thread's event loop, opened on first use."""
        ident = threading.get_ident()
        if ident in self._opened:
            return self._storages[ident]
        return await self._open_storage(self._backend_config)

    async def _open_storage(self, config: BackendConfig) -> Storage:
        ident = threading.get_ident()
        storage = self._storages.get(ident)
        if storage is None or config is not self._backend_config:
            storage = self._storages[ident] = create_storage(self.plugins, self.url, config)
        await storage.open()
        self._opened.add(ident)
        return storage

    async def open(self) -> TaskForge:
        """Connect now instead of on first use (and apply migrations when configured)."""
        await self.storage()
        return self

    async def close(self) -> None:
        """Close this thread's storage connection and the sync bridge, if one was started."""
        ident = threading.get_ident()
        storage = self._storages.get(ident)
        if storage is not None and ident in self._opened:
            self._opened.discard(ident)
            await storage.close()
        self._close_portal()

    async def __aenter__(self) -> TaskForge:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns their names (empty when up to date)."""
        ident = threading.get_ident()
        if ident in self._opened:
            storage = self._storages[ident]
        else:  # open without the automatic migration, so what gets applied is reported
            storage = await self._open_storage(
                attrs.evolve(self._backend_config, auto_migrate=False)
            )
        return await storage.migrate()

    async def prune(self, policy: RetentionPolicy | None = None) -> PruneReport:
        """Delete old finished jobs and history by ``policy`` (default :class:`RetentionPolicy`),
        in every project of the store. Workers do this every hour by themselves.

        Raises :class:`ConfigurationError` when the backend cannot prune.
        """
        storage = as_prunable(await self.storage())
        if storage is None:
            raise ConfigurationError(f"the storage behind {self.url} cannot prune old jobs")
        return await storage.prune(policy)

    # -- calling from synchronous code ---------------------------------------------------

    def run_sync(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run ``await fn(*args)`` from synchronous code, on a background event loop thread
        that this app keeps (with its own storage connection) until :meth:`close_sync`."""
        with self._portal_lock:
            if self._portal is None:
                self._portal_stack = ExitStack()
                self._portal = self._portal_stack.enter_context(
                    anyio.from_thread.start_blocking_portal()
                )
            portal = self._portal
        return portal.call(fn, *args)

    def close_sync(self) -> None:
        """Close the background loop used by ``enqueue_sync`` and :meth:`run_sync`."""
        self._close_portal()

    def _close_portal(self) -> None:
        with self._portal_lock:
            portal, stack = self._portal, self._portal_stack
            self._portal = self._portal_stack = None
        if portal is not None and stack is not None:
            portal.call(self.close)
            stack.close()

    # -- jobs ----------------------------------------------------------------------------

    async def enqueue_jobs(
        self, jobs: Sequence[NewJob], *, transaction: object | None = None
    ) -> list[JobHandle]:
        """Store prepared requests in one round trip (all or nothing) and return handles.

        ``transaction``: the application's own connection to write in, so the jobs exist only
        if its transaction commits (backends with ``Capability.TRANSACTIONAL_ENQUEUE``).
        """
        if not jobs:
            return []
        storage = await self.storage()
        if transaction is None:
            stored = await storage.enqueue(jobs)
        elif Capability.TRANSACTIONAL_ENQUEUE in storage.capabilities:
            enqueue_in = cast("Callable[..., Awaitable[list[Job]]]", storage.enqueue)
            stored = await enqueue_in(jobs, transaction=transaction)
        else:
            raise ConfigurationError(
                f"the {url_scheme(self.url)}:// backend cannot enqueue inside your own "
                "transaction; drop transaction= (PostgreSQL supports it)"
            )
        hook = self.plugins.hook.taskforge_jobs_enqueued
        if hook.get_hookimpls():  # calling a hook without implementations still costs µs
            try:
                hook(app=self, jobs=stored)
            except Exception:  # the jobs are stored: a caller retrying would double them
                logger.exception("a taskforge_jobs_enqueued hook failed (the jobs are stored)")
        return [JobHandle(self, job) for job in stored]

    async def enqueue(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle:
        """Enqueue a task by name (for tools and other services that do not import it).

        ``options`` are those of :meth:`Task.options` (queue, priority, delay, at, ...).
        """
        registered = self.get_task(task)
        if options:
            registered = registered.options(**options)
        (handle,) = await self.enqueue_jobs([registered.build(tuple(args), kwargs or {})])
        return handle

    async def get_job(self, job_id: uuid.UUID | str) -> Job:
        """The stored job, or :class:`JobNotFoundError`."""
        uid = _as_uuid(job_id)
        jobs = await (await self.storage()).get_jobs([uid], self.project)
        if not jobs:
            raise JobNotFoundError(f"no job with id {uid}")
        return jobs[0]

    def handle(self, job: Job) -> JobHandle:
        return JobHandle(self, job)

    async def list_jobs(
        self,
        *,
        statuses: Sequence[JobStatus | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """A page of jobs, newest first; pass the page's ``next_cursor`` to go on."""
        selection = self.job_filter(statuses=statuses, queue=queue, task=task)
        return await (await self.storage()).list_jobs(selection, limit=limit, cursor=cursor)

    async def cancel(self, *job_ids: uuid.UUID | str) -> list[uuid.UUID]:
        """Cancel jobs (a running one is interrupted) and their descendants; returns every id
        that was cancelled.

        The cancel is stored first; a worker running one of the jobs interrupts it at its next
        heartbeat (``heartbeat_interval``, ``lease / 3`` by default). With an event bus (the
        Redis plugin), a :class:`~taskforge_core.events.CancelJobs` event then reaches that
        worker at once, and :class:`~taskforge_core.events.JobFinished` events wake
        ``JobHandle.wait`` on every instance. The event names every cancelled id, not only the
        running ones: telling them apart would need a read before the write, and a job claimed
        in between would then be missed; a worker ignores ids it does not run.
        """
        ids = [_as_uuid(j) for j in job_ids]
        cancelled = await (await self.storage()).cancel(ids, self.project)
        if cancelled:
            events: list[Event] = [CancelJobs(job_ids=tuple(cancelled))]
            events += [JobFinished(job_id=i, status=JobStatus.CANCELLED) for i in cancelled]
            await self._publish(events)
        return cancelled

    # -- workers -------------------------------------------------------------------------

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers registered in this project (stopped ones too), as storage records them."""
        return await (await self.storage()).list_workers(self.project)

    async def drain_worker(self, worker_id: uuid.UUID | str) -> WorkerInfo:
        """Ask a worker — in this process or any other — to drain: claim nothing more, let its
        running jobs finish within its grace period, then exit. Returns the worker as it is
        now (status ``draining``, or ``stopped`` if it had already stopped: nothing to do).

        The request is stored first (the worker's status becomes ``draining``); the worker
        sees it at its next heartbeat, or at once through a
        :class:`~taskforge_core.events.DrainWorker` event when an event bus is configured.
        Raises :class:`WorkerNotFoundError` for an id this project does not know.
        """
        uid = _as_worker_id(worker_id)
        storage = await self.storage()
        found = [w for w in await storage.list_workers(self.project) if w.id == uid]
        if not found:
            raise WorkerNotFoundError(f"no worker with id {uid} in project {self.project!r}")
        worker = found[0]
        if worker.status is WorkerStatus.STOPPED:
            return worker
        if worker.status is not WorkerStatus.DRAINING:
            await storage.set_worker_status(uid, WorkerStatus.DRAINING)
        await self._publish([DrainWorker(worker_id=uid)])  # again if draining: harmless
        return attrs.evolve(worker, status=WorkerStatus.DRAINING)

    # -- events --------------------------------------------------------------------------

    def event_bus(self) -> EventBus | None:
        """A new :class:`~taskforge_core.events.EventBus` from the ``taskforge_event_bus``
        hook (close it with ``aclose()``), or None when no plugin provides one."""
        bus: EventBus | None = self.plugins.hook.taskforge_event_bus(app=self)
        return bus

    async def _publish(self, events: Sequence[Event]) -> None:
        """Tell the other instances, best effort: the change is stored already."""
        bus = self.event_bus()
        if bus is None:
            return
        try:
            await publish_quietly(bus, events)
        finally:
            await close_quietly(bus)

    # -- dead-letter queue ---------------------------------------------------------------

    async def dead_letters(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Failed jobs, newest first, each with its last error in ``job.error``."""
        return await self.list_jobs(
            statuses=[JobStatus.FAILED], queue=queue, task=task, limit=limit, cursor=cursor
        )

    async def replay(
        self,
        *job_ids: uuid.UUID | str,
        queue: str | None = None,
        task: str | None = None,
        include_cancelled: bool = False,
    ) -> ReplayResult:
        """Put failed jobs (and cancelled ones if asked) back to run, attempts reset: the given
        ids, or every one matching ``queue``/``task``. Given ids that were not replayed are in
        ``skipped`` with the reason (not found, or not failed)."""
        statuses = [JobStatus.FAILED]
        if include_cancelled:
            statuses.append(JobStatus.CANCELLED)
        selection = self.job_filter(statuses=statuses, queue=queue, task=task, ids=job_ids)
        storage = await self.storage()
        result = await storage.replay(selection)
        unexplained = (selection.ids or frozenset()) - set(result.replayed)
        unexplained -= {job_id for job_id, _ in result.skipped}
        if not unexplained:
            return result
        found = {job.id: job for job in await storage.get_jobs(sorted(unexplained), self.project)}
        wanted = " or ".join(s.value for s in statuses)
        reasons = tuple(
            (job_id, f"it is {found[job_id].status.value}, not {wanted}")
            if job_id in found
            else (job_id, "no such job")
            for job_id in sorted(unexplained)
        )
        return attrs.evolve(result, skipped=result.skipped + reasons)

    async def purge(
        self,
        *job_ids: uuid.UUID | str,
        statuses: Sequence[JobStatus | str] = (JobStatus.FAILED,),
        queue: str | None = None,
        task: str | None = None,
    ) -> int:
        """Delete final jobs (by default: the dead-letter queue) matching the filter."""
        selection = self.job_filter(statuses=statuses, queue=queue, task=task, ids=job_ids)
        return await (await self.storage()).purge(selection)

    # -- queues --------------------------------------------------------------------------

    async def queue_stats(self) -> list[QueueStats]:
        """How many jobs each queue holds in each status."""
        return await (await self.storage()).queue_stats(self.project)

    async def pause_queue(self, queue: str, paused: bool = True) -> None:
        """Stop (or with ``paused=False`` resume) claims from ``queue``."""
        await (await self.storage()).set_queue_paused(self.project, queue, paused)

    def job_filter(
        self,
        *,
        statuses: Sequence[JobStatus | str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        ids: Sequence[uuid.UUID | str] = (),
    ) -> JobFilter:
        """A :class:`JobFilter` for this app's project, with statuses and ids checked."""
        return JobFilter(
            project=self.project,
            statuses=frozenset(_as_status(s) for s in statuses) if statuses else None,
            queue=queue,
            task=task,
            ids=frozenset(_as_uuid(i) for i in ids) if ids else None,
        )


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise JobNotFoundError(f"{value!r} is not a job id (expected a UUID)") from None


def _as_worker_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise WorkerNotFoundError(f"{value!r} is not a worker id (expected a UUID)") from None


def _as_status(value: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise ConfigurationError(f"unknown job status {value!r} (one of: {known})") from None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigurationError(f"{name} must be >= 1, got {value}")
    return value
