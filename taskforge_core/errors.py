"""The one exception tree of TaskForge.

Every error TaskForge raises on purpose is a :class:`TaskForgeError`. Where an error is also
one of Python's own kinds (a bad value, a missing key, a time-out), it subclasses that too, so
``except ValueError`` keeps working for callers who do not know TaskForge.

::

    TaskForgeError
    ├── ConfigurationError (ValueError)
    │   ├── UnknownSchemeError         no backend claims the URL's scheme
    │   ├── MissingExtraError (ImportError)  the backend's optional dependency is absent
    │   └── InvalidCronError           a cron expression or time zone that does not parse
    ├── InvalidJobError (ValueError)
    │   ├── UnknownTaskError (LookupError)   no task is registered under that name
    │   ├── SerializationError (TypeError)   arguments or result are not JSON-serializable
    │   ├── PayloadTooLargeError       the encoded payload exceeds the configured limit
    │   ├── DependencyError            a parent that does not exist, or a cycle
    │   └── QueueError                 an unknown queue in strict mode
    ├── JobNotFoundError (LookupError)
    ├── WorkerNotFoundError (LookupError)  no worker has that id (``app.drain_worker``)
    ├── InvalidTransitionError         a state change the transition table does not allow
    ├── JobFailedError                 ``JobHandle.wait`` on a job that failed
    ├── JobCancelledError              ``JobHandle.wait`` on a job that was cancelled
    ├── WaitTimeoutError (TimeoutError)
    ├── JobTimeoutError (TimeoutError)   an attempt ran longer than the job's ``timeout``
    ├── StorageError                   a backend's driver failed; the driver error is ``__cause__``
    │   └── StorageUnavailableError (ConnectionError)
    └── RetryLater                     a task asks for another attempt (``taskforge_core.retry``)

Backends translate their driver's exceptions into :class:`StorageError` at their boundary and
keep the original as ``__cause__``; no driver exception reaches the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid

    from taskforge_core.models import ErrorInfo

__all__ = [
    "ConfigurationError",
    "DependencyError",
    "InvalidCronError",
    "InvalidJobError",
    "InvalidTransitionError",
    "JobCancelledError",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "MissingExtraError",
    "PayloadTooLargeError",
    "QueueError",
    "SerializationError",
    "StorageError",
    "StorageUnavailableError",
    "TaskForgeError",
    "UnknownSchemeError",
    "UnknownTaskError",
    "WaitTimeoutError",
    "WorkerNotFoundError",
]


class TaskForgeError(Exception):
    """Root of every error TaskForge raises on purpose."""


class ConfigurationError(TaskForgeError, ValueError):
    """The application, URL or a setting is wrong; nothing was changed."""


class UnknownSchemeError(ConfigurationError):
    """No installed backend handles the URL's scheme."""


class MissingExtraError(ConfigurationError, ImportError):
    """A backend needs an optional dependency that is not installed; the message names the extra."""


class InvalidCronError(ConfigurationError):
    """A cron expression or time zone that cannot be parsed."""


class InvalidJobError(TaskForgeError, ValueError):
    """An enqueue request is malformed; nothing of the batch was written."""


class UnknownTaskError(InvalidJobError, LookupError):
    """No task is registered under the given name."""


class SerializationError(InvalidJobError, TypeError):
    """A value cannot be encoded as JSON (arguments) or decoded back."""


class PayloadTooLargeError(InvalidJobError):
    """The encoded arguments exceed ``max_payload_bytes``."""


class DependencyError(InvalidJobError):
    """A job depends on a job that does not exist, or the dependencies form a cycle."""


class QueueError(InvalidJobError):
    """The queue does not exist and queues are not created on demand."""


class JobNotFoundError(TaskForgeError, LookupError):
    """No job has the given id (in this project)."""


class WorkerNotFoundError(TaskForgeError, LookupError):
    """No worker with the given id is registered (in this project)."""


class InvalidTransitionError(TaskForgeError):
    """A job was asked to move between two states the transition table does not connect."""


class JobFailedError(TaskForgeError):
    """The awaited job ended in the ``failed`` state; ``error`` holds its last error."""

    def __init__(self, job_id: uuid.UUID, error: ErrorInfo | None) -> None:
        detail = f"{error.type}: {error.message}" if error else "no error recorded"
        super().__init__(f"job {job_id} failed: {detail}")
        #: The id of the failed job.
        self.job_id = job_id
        #: The error of its last attempt, with the traceback as text.
        self.error = error


class JobCancelledError(TaskForgeError):
    """The awaited job was cancelled."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class WaitTimeoutError(TaskForgeError, TimeoutError):
    """``JobHandle.wait`` gave up before the job finished; the job itself is untouched."""


class JobTimeoutError(TaskForgeError, TimeoutError):
    """An attempt ran longer than its job's ``timeout`` and was interrupted by the worker.

    It is recorded as the attempt's error and retried like any other exception (unless the
    task's :class:`~taskforge_core.retry.Retry` policy says otherwise).
    """


class StorageError(TaskForgeError):
    """The storage backend failed; the driver's exception is kept as ``__cause__``."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The storage server cannot be reached (yet); retrying later may succeed."""
