# mypy: disable-error-code="empty-body"
"""Every hook a TaskForge plugin can implement, in one place.

A plugin is any object or module with functions named like these, marked with
``taskforge_core.hookimpl``. Plugins are found through the ``taskforge`` entry-point group or
registered by hand with ``app.plugins.register(obj)``. TaskForge's own SQLite backend and its
in-process scheduler and rate limiter are plugins of exactly this kind.

Hooks are synchronous (pluggy calls them in turn). Anything that must wrap an ``await`` —
timing or tracing a job — is middleware returned by :func:`taskforge_execution_middleware`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from taskforge_core.app import TaskForge
    from taskforge_core.backends import BackendSpec
    from taskforge_core.events import EventBus
    from taskforge_core.middleware import ExecutionMiddleware
    from taskforge_core.models import Job
    from taskforge_core.ratelimit import RateLimiter
    from taskforge_core.scheduler import Scheduler
    from taskforge_core.states import ExecutionStatus
    from taskforge_core.worker import Worker

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name, and the entry-point group plugins register under.
PROJECT_NAME = "taskforge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# Storage backends
# ---------------------------------------------------------------------------------------------


@hookspec
def taskforge_backends() -> Sequence[BackendSpec]:
    """Declare the storage backends this plugin provides.

    Return :class:`~taskforge_core.backends.BackendSpec` objects, each naming its URL schemes,
    the ``"module:factory"`` that builds it, and the optional dependencies (and the extra that
    installs them). The factory module is imported only when a URL with its scheme is used, so
    declaring a backend costs nothing and a missing driver becomes a clear error.
    """


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------


@hookspec
def taskforge_app_created(app: TaskForge) -> None:
    """Called once when a :class:`~taskforge_core.TaskForge` is built, after plugins load.

    :param app: the new application; a plugin may register tasks or read its settings.
    """


@hookspec
def taskforge_enqueue_headers(app: TaskForge, task: str) -> Mapping[str, str] | None:
    """Return headers to attach to every job of ``task`` being enqueued, or None.

    Used to carry context with a job — an OpenTelemetry trace context, a correlation id — from
    the process that enqueues to the worker that runs it. Results of all plugins are merged;
    headers given explicitly by the caller win.
    """


@hookspec
def taskforge_jobs_enqueued(app: TaskForge, jobs: Sequence[Job]) -> None:
    """Called after a batch was stored (the jobs as stored, in request order)."""


# ---------------------------------------------------------------------------------------------
# Workers and execution
# ---------------------------------------------------------------------------------------------


@hookspec
def taskforge_execution_middleware(app: TaskForge) -> ExecutionMiddleware | None:
    """Return middleware that wraps every job a worker runs, or None.

    Middleware is ``async def mw(ctx, call_next)``: it must ``return await call_next()`` (or
    raise). The first plugin registered is the outermost layer.
    """


@hookspec
def taskforge_job_finished(
    app: TaskForge, job: Job, outcome: ExecutionStatus, run_seconds: float
) -> None:
    """Called by a worker after an attempt ended and its report was accepted.

    :param job: the job as it was claimed (status processing).
    :param outcome: succeeded, retrying, deferred, failed or cancelled.
    :param run_seconds: how long the handler ran.
    """


@hookspec
def taskforge_worker_started(worker: Worker) -> None:
    """Called when a worker has registered and is about to claim its first jobs."""


@hookspec
def taskforge_worker_stopped(worker: Worker) -> None:
    """Called after a worker stopped claiming and its running jobs finished or were given back."""


# ---------------------------------------------------------------------------------------------
# Scheduling and rate limiting
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def taskforge_scheduler(app: TaskForge) -> Scheduler | None:
    """Return the scheduler that fires ``@app.periodic`` entries, or None to let another plugin
    decide. The first non-None answer wins; the core's in-process scheduler answers last."""


@hookspec(firstresult=True)
def taskforge_rate_limiter(app: TaskForge) -> RateLimiter | None:
    """Return the rate limiter workers consult before running a rate-limited task, or None.
    The first non-None answer wins; the core's in-process limiter answers last."""


# ---------------------------------------------------------------------------------------------
# Events between instances
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def taskforge_event_bus(app: TaskForge) -> EventBus | None:
    """Return an :class:`~taskforge_core.events.EventBus` connecting ``app`` to the other
    instances of its project, or None to let another plugin decide.

    Called for each use — once per worker run, per ``app.cancel`` / ``app.drain_worker``, per
    ``JobHandle.wait`` — on the event loop that will use the bus; the caller closes it with
    ``aclose()`` afterwards, so return a new object unless the bus holds no connections. It
    must be cheap: open connections on first use, not here. The first non-None answer wins;
    with none, TaskForge publishes nothing and relies on storage alone (heartbeats, polling),
    exactly as without events.
    """
