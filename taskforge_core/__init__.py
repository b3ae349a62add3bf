"""TaskForge: an async-native background job queue that never loses a job.

>>> from taskforge_core import TaskForge, Retry
>>> app = TaskForge("sqlite:///jobs.db")                       # doctest: +SKIP
>>> @app.task(retry=Retry(max_attempts=5))                     # doctest: +SKIP
... async def send_email(to: str) -> None: ...
"""

from taskforge_core.app import TaskForge
from taskforge_core.backends import BackendConfig, BackendSpec
from taskforge_core.clock import Clock, FakeClock, SystemClock
from taskforge_core.context import JobContext, current_job
from taskforge_core.errors import (
    ConfigurationError,
    DependencyError,
    InvalidCronError,
    InvalidJobError,
    InvalidTransitionError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    MissingExtraError,
    PayloadTooLargeError,
    QueueError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
    TaskForgeError,
    UnknownSchemeError,
    UnknownTaskError,
    WaitTimeoutError,
    WorkerNotFoundError,
)
from taskforge_core.events import EventBus, LocalEventBus
from taskforge_core.handle import JobHandle
from taskforge_core.hookspecs import hookimpl
from taskforge_core.models import ErrorInfo, Job, NewJob
from taskforge_core.protocols import Capability, Storage
from taskforge_core.ratelimit import RateLimit, RateLimits
from taskforge_core.retention import PruneReport, RetentionPolicy
from taskforge_core.retry import NO_RETRY, Retry, RetryLater
from taskforge_core.states import JobStatus
from taskforge_core.task import Call, Task
from taskforge_core.worker import Worker, WorkerStats

__all__ = [
    "NO_RETRY",
    "BackendConfig",
    "BackendSpec",
    "Call",
    "Capability",
    "Clock",
    "ConfigurationError",
    "DependencyError",
    "ErrorInfo",
    "EventBus",
    "FakeClock",
    "InvalidCronError",
    "InvalidJobError",
    "InvalidTransitionError",
    "Job",
    "JobCancelledError",
    "JobContext",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobStatus",
    "JobTimeoutError",
    "LocalEventBus",
    "MissingExtraError",
    "NewJob",
    "PayloadTooLargeError",
    "PruneReport",
    "QueueError",
    "RateLimit",
    "RateLimits",
    "RetentionPolicy",
    "Retry",
    "RetryLater",
    "SerializationError",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "SystemClock",
    "Task",
    "TaskForge",
    "TaskForgeError",
    "UnknownSchemeError",
    "UnknownTaskError",
    "WaitTimeoutError",
    "Worker",
    "WorkerNotFoundError",
    "WorkerStats",
    "current_job",
    "hookimpl",
]
