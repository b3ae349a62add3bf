"""What a running task can learn about itself, and the structured log it writes to.

Inside a task, :func:`current_job` returns the :class:`JobContext` of the job being run::

    @app.task
    async def charge(order_id: str) -> None:
        ctx = current_job()
        ctx.log.info("charging", order_id=order_id, attempt=ctx.attempt)

Log lines are stored with the execution (``taskforge jobs show ID`` prints them) and also go to
the standard ``logging`` module under the ``taskforge.task`` logger.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from typing import TYPE_CHECKING, Any

import attrs

from taskforge_core.errors import TaskForgeError
from taskforge_core.models import ExecutionLog, Job

if TYPE_CHECKING:
    from taskforge_core.clock import Clock

__all__ = ["JobContext", "JobLogger", "current_job"]

_logger = logging.getLogger("taskforge.task")
_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("taskforge_job")


class JobLogger:
    """Writes structured lines for one execution; the worker stores them in batches."""

    def __init__(self, job: Job, execution_id: uuid.UUID, clock: Clock) -> None:
        self._job = job
        self._execution_id = execution_id
        self._clock = clock
        #: Lines written and not yet stored.
        self.pending: list[ExecutionLog] = []

    def log(self, level: str, message: str, **fields: Any) -> None:
        """Record ``message`` at ``level`` with JSON-compatible ``fields``."""
        self.pending.append(
            ExecutionLog(
                execution_id=self._execution_id,
                job_id=self._job.id,
                at=self._clock.now(),
                level=level,
                message=message,
                fields=fields,
            )
        )
        if _logger.isEnabledFor(logging.getLevelName(level.upper())):
            _logger.log(
                logging.getLevelName(level.upper()),
                "%s",
                message,
                extra={"job_id": str(self._job.id), "task": self._job.task, "fields": fields},
            )

    def debug(self, message: str, **fields: Any) -> None:
        self.log("debug", message, **fields)

    def info(self, message: str, **fields: Any) -> None:
        self.log("info", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log("warning", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("error", message, **fields)


@attrs.define(kw_only=True)
class JobContext:
    """The job being run, the attempt, and its logger."""

    #: The job as claimed (status processing).
    job: Job
    #: This attempt's id: the fencing token of the claim.
    execution_id: uuid.UUID
    log: JobLogger

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.job.attempt

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.id


def current_job() -> JobContext:
    """The context of the job running in this task; raises outside of a job."""
    try:
        return _current.get()
    except LookupError:
        raise TaskForgeError("current_job() was called outside of a running job") from None


def bind(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` the current job (the worker calls this around each execution)."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
