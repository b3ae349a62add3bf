"""Tasks: a function registered with ``@app.task``, and the ways to enqueue it."""

from __future__ import annotations

import datetime as dt
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

import attrs

from taskforge_core.errors import InvalidJobError
from taskforge_core.ids import uuid7
from taskforge_core.models import NewJob
from taskforge_core.ratelimit import RateLimit
from taskforge_core.retry import Retry
from taskforge_core.serialization import encode_payload

if TYPE_CHECKING:
    from taskforge_core.app import TaskForge
    from taskforge_core.handle import JobHandle

__all__ = ["Call", "Task", "TaskOptions"]

P = ParamSpec("P")
R = TypeVar("R")


@attrs.frozen
class Call:
    """One call of a task inside ``enqueue_many``: ``Call(args=(...), kwargs={...})``."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)


def _job_id(ref: object) -> uuid.UUID:
    if isinstance(ref, uuid.UUID):
        return ref
    if isinstance(ref, str):
        try:
            return uuid.UUID(ref)
        except ValueError:
            raise InvalidJobError(f"depends_on: {ref!r} is not a job id") from None
    job_id = getattr(ref, "id", None)
    if isinstance(job_id, uuid.UUID):
        return job_id
    raise InvalidJobError(f"depends_on takes job handles or job ids, got {ref!r}")


@attrs.frozen(kw_only=True)
class TaskOptions:
    """Per-enqueue settings, layered over the task's own (``task.options(...)``)."""

    queue: str | None = None
    priority: int | None = None
    #: Seconds from now before the job may run.
    delay: float | dt.timedelta | None = None
    #: The earliest time the job may run (timezone-aware).
    at: dt.datetime | None = None
    depends_on: tuple[Any, ...] = ()
    key: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    max_attempts: int | None = None
    timeout: float | None = None
    #: The application's own connection/transaction to enqueue in (backends declaring
    #: ``Capability.TRANSACTIONAL_ENQUEUE``, e.g. an asyncpg connection for PostgreSQL).
    transaction: Any = attrs.field(default=None, eq=False)

    def scheduled_for(self, now: dt.datetime) -> dt.datetime | None:
        """When the job becomes runnable, validated; None means now."""
        if self.delay is not None and self.at is not None:
            raise InvalidJobError("give either delay or at, not both")
        if self.delay is not None:
            seconds = (
                self.delay.total_seconds()
                if isinstance(self.delay, dt.timedelta)
                else float(self.delay)
            )
            if not seconds >= 0:  # also rejects NaN
                raise InvalidJobError(f"delay must be >= 0 seconds, got {self.delay!r}")
            return now + dt.timedelta(seconds=seconds) if seconds else None
        if self.at is not None:
            if not isinstance(self.at, dt.datetime) or self.at.tzinfo is None:
                raise InvalidJobError(
                    f"at must be a timezone-aware datetime, got {self.at!r} "
                    "(use datetime.now(UTC) + timedelta(...))"
                )
            return self.at.astimezone(dt.UTC)
        return None


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function directly (handy in unit tests);
    ``enqueue`` stores a job that a worker runs."""

    def __init__(
        self,
        app: TaskForge,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        name: str,
        queue: str,
        priority: int,
        retry: Retry,
        timeout: float | None,
        rate_limit: RateLimit | None,
        options: TaskOptions | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"task {name!r}: timeout must be > 0 seconds, got {timeout!r}")
        self.app = app
        self.fn = fn
        #: The name jobs refer to the task by (``module.qualname`` unless given).
        self.name = name
        self.queue = queue
        self.priority = priority
        self.retry = retry
        self.timeout = timeout
        self.rate_limit = rate_limit
        #: True for ``async def`` functions; plain functions run in a worker thread.
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        self._shape = _plain_shape(self._signature)
        self._options = options or TaskOptions()

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R] | R:
        return self.fn(*args, **kwargs)

    def options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task whose enqueues use ``changes`` (queue, priority, delay, at,
        depends_on, key, headers, max_attempts, timeout)."""
        try:
            merged = attrs.evolve(self._options, **changes)
        except TypeError as exc:
            raise InvalidJobError(f"{self.name}.options(): {exc}") from None
        copy = Task.__new__(Task)
        copy.__dict__.update(self.__dict__)
        copy._options = merged
        return copy

    # -- building jobs -------------------------------------------------------------------

    def build(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> NewJob:
        """Validate one call against the function's signature and make its enqueue request."""
        if self._shape is None or not _fits(self._shape, args, kwargs):
            try:  # the general check, and the one whose messages the errors carry
                self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidJobError(f"bad arguments for task {self.name!r}: {exc}") from None
        encoded = encode_payload(args, kwargs, task=self.name, limit=self.app.max_payload_bytes)
        opts = self._options
        priority = self.priority if opts.priority is None else opts.priority
        max_attempts = self.retry.max_attempts if opts.max_attempts is None else opts.max_attempts
        if not isinstance(priority, int):
            raise InvalidJobError(f"priority must be an integer, got {priority!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidJobError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        timeout = self.timeout if opts.timeout is None else opts.timeout
        if timeout is not None and not timeout > 0:
            raise InvalidJobError(f"timeout must be > 0 seconds, got {timeout!r}")
        headers = {**self.app.enqueue_headers(self.name), **opts.headers}
        return NewJob(
            id=uuid7(),
            task=self.name,
            project=self.app.project,
            queue=opts.queue or self.queue,
            args=tuple(args),
            kwargs=dict(kwargs),
            priority=priority,
            scheduled_for=(
                None
                if opts.delay is None and opts.at is None
                else opts.scheduled_for(self.app.clock.now())
            ),
            max_attempts=max_attempts,
            timeout=timeout,
            depends_on=tuple(_job_id(ref) for ref in opts.depends_on) if opts.depends_on else (),
            key=opts.key,
            headers=headers,
            encoded=encoded,
        )

    # -- enqueueing ----------------------------------------------------------------------

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Store one job and return its handle once it is durable."""
        (handle,) = await self.app.enqueue_jobs(
            [self.build(args, kwargs)], transaction=self._options.transaction
        )
        return handle

    async def enqueue_many(
        self, calls: Iterable[Call | tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[JobHandle]:
        """Store many jobs in one round trip; all or none are stored.

        Each item is a tuple of positional arguments, a dict of keyword arguments, or a
        :class:`Call` with both.
        """
        return await self.app.enqueue_jobs(
            [self.build(*_split(call)) for call in calls], transaction=self._options.transaction
        )

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """:meth:`enqueue` for synchronous code (Django views, Flask handlers, scripts)."""
        job = self.build(args, kwargs)
        (handle,) = self.app.run_sync(self.app.enqueue_jobs, [job])
        return handle


class _Shape(NamedTuple):
    """A signature of named parameters only, as sets: what a call must and may pass."""

    #: Parameters that may be passed by position, in order.
    positional: tuple[str, ...]
    #: Every parameter name.
    names: frozenset[str]
    #: Parameters without a default.
    required: frozenset[str]


def _plain_shape(signature: inspect.Signature) -> _Shape | None:
    """The shape of a signature made only of ordinary and keyword-only parameters (most task
    functions); None for one with ``*args``, ``**kwargs`` or positional-only parameters."""
    kinds = {p.kind for p in signature.parameters.values()}
    if not kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}:
        return None
    params = signature.parameters.values()
    return _Shape(
        positional=tuple(
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ),
        names=frozenset(signature.parameters),
        required=frozenset(p.name for p in params if p.default is inspect.Parameter.empty),
    )


def _fits(shape: _Shape, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether ``Signature.bind(*args, **kwargs)`` succeeds for a signature of this shape: no
    more positional arguments than positional parameters, only known keywords and none that a
    positional argument already filled, and every parameter without a default given."""
    if len(args) > len(shape.positional):
        return False
    filled = shape.positional[: len(args)]
    if kwargs:
        if not shape.names.issuperset(kwargs) or any(name in kwargs for name in filled):
            return False
        return shape.required.issubset((*filled, *kwargs))
    return shape.required.issubset(filled)


def _split(call: object) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
    if isinstance(call, Call):
        return tuple(call.args), call.kwargs
    if isinstance(call, tuple):
        return call, {}
    if isinstance(call, Mapping):
        return (), call
    raise InvalidJobError(
        f"enqueue_many items are tuples (args), dicts (kwargs) or Call(args, kwargs); got {call!r}"
    )


def task_name(fn: Callable[..., Any]) -> str:
    """The default name of a task: ``module.qualname``."""
    return f"{fn.__module__}.{fn.__qualname__}"
