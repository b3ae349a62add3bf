"""The PostgreSQL storage backend: :class:`PostgresStorage` and its factory :func:`create`.

How it runs
    A pool of asyncpg connections (``_pool``; sizes from the URL) and one more connection
    that LISTENs for wake-ups. Every storage verb is one SQL statement from
    ``sql/queries.sql`` over a whole batch: one round trip to enqueue a thousand jobs, to
    claim a batch, to report a batch.
    asyncpg runs on asyncio only, so this backend does too: ``open()`` under trio raises a
    :class:`~taskforge_core.errors.ConfigurationError`.

Concurrency
    Claims lock the best runnable jobs with ``FOR NO KEY UPDATE SKIP LOCKED``: workers never
    wait for each other and never claim one job twice. Reports are fenced by the execution id
    (``WHERE status = 'processing' AND execution_id = …``). Statements that lock several jobs
    lock them in id order, so they cannot deadlock each other. Enqueue locks the stored parents
    of its jobs and reads their latest status; ``complete`` and ``fail`` notice a child added
    behind their snapshot and run again (see ``jobs.children_version`` in the migration).
    ``reclaim_expired``, ``cancel``, ``replay`` and ``purge`` run in REPEATABLE READ and are
    retried when they collide with another writer. Deadlocks and serialization failures are
    retried a few times before they surface as
    :class:`~taskforge_core.errors.StorageUnavailableError`.

Failures
    Driver errors never escape: a lost connection, a server restarting or shutting down, a
    full connection table or a timeout become :class:`StorageUnavailableError` (retry later;
    the worker does), anything else :class:`~taskforge_core.errors.StorageError`, with the
    asyncpg exception as ``__cause__``. The pool replaces broken connections on the next call,
    so a worker survives a server restart without being restarted itself. A call whose
    connection broke while it committed may have committed: enqueue with an idempotency key
    when retrying must not duplicate a job.

Durability
    An enqueue that returned was committed with the session's ``synchronous_commit`` (the
    server's default, ``on``, unless the URL sets it): it survives a crash of the server.
    ``synchronous_commit=off`` trades the last few hundred milliseconds of commits in a server
    crash for throughput; ``docs/postgres.md`` explains the choices.

Time
    With the default :class:`~taskforge_core.clock.SystemClock`, every time decision (due
    dates, leases, expiry, created/updated stamps) uses the database server's clock, so the
    clocks of worker machines do not matter. Absolute times an application passes
    (``scheduled_for``, ``run_at``, ``updated_before``) are turned into offsets from the
    application's clock and applied to the server's. Any other clock (a test's FakeClock) is
    used instead of the server's, and the backend then declares ``INJECTABLE_CLOCK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import anyio
import anyio.lowlevel
import asyncpg
import attrs

from taskforge_backends.postgres import _sql
from taskforge_backends.postgres._migrations import apply_migrations
from taskforge_backends.postgres._pool import ConnectionPool
from taskforge_backends.postgres._url import PostgresSettings, parse_url
from taskforge_backends.postgres._wakeup import Listener, Waiter
from taskforge_core.backends import BackendConfig
from taskforge_core.clock import SystemClock
from taskforge_core.errors import (
    ConfigurationError,
    DependencyError,
    InvalidJobError,
    QueueError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
)
from taskforge_core.ids import uuid7
from taskforge_core.models import (
    AckResult,
    ClaimedJob,
    ClaimRequest,
    Completion,
    Execution,
    ExecutionLog,
    Failure,
    Job,
    JobFilter,
    NewJob,
    Page,
    Queue,
    QueueStats,
    QueueWorkerAssignment,
    ReplayResult,
    RetryRequest,
    WorkerInfo,
    WorkerStatus,
)
from taskforge_core.protocols import Capability
from taskforge_core.retention import PruneReport, RetentionPolicy
from taskforge_core.serialization import (
    decode,
    decode_error,
    encode,
    encode_error,
    job_payload,
    read_back,
)
from taskforge_core.states import ExecutionStatus, JobStatus, check_transition

__all__ = ["PostgresStorage", "create"]

T = TypeVar("T")
Connection = Any  # asyncpg.Connection (asyncpg ships no type information)

logger = logging.getLogger("taskforge.postgres")

_P, _S, _B, _R = (JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.PROCESSING)
_OK, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
_STATUS = {s.value: s for s in JobStatus}
_INT64 = (-(2**63), 2**63 - 1)
_ZERO = dt.timedelta(0)

#: Times a statement is run again after a serialization failure or a deadlock.
RETRIES = 10
#: Seconds to wait for a pooled connection before the call fails as unavailable.
ACQUIRE_TIMEOUT = 30.0
#: Rows one purge statement deletes; a bigger purge takes several (short) transactions.
PURGE_BATCH = 5_000
#: How long partition maintenance waits for a lock before it skips a partition.
MAINTENANCE_LOCK_TIMEOUT = "2s"

# SQLSTATE classes that mean "try again later" rather than "this is broken": connection
# exception, insufficient resources, operator intervention (shutdown, restart, cancel),
# transaction rollback (serialization failure, deadlock).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "40")

_Q = _sql.queries()


async def _in_transaction(
    fn: Callable[[Connection], Awaitable[T]], isolation: str, conn: Connection
) -> T:
    async with conn.transaction(isolation=isolation):
        return await fn(conn)


def create(url: str, config: BackendConfig) -> PostgresStorage:
    """The backend factory named by the plugin: build (do not open) a storage for ``url``."""
    return PostgresStorage(url, config)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def _aware(value: object, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value


def _encode_fields(fields: Mapping[str, Any]) -> str:
    """Log fields are written by task code; a value JSON cannot hold is stored as its repr
    rather than failing the worker's whole log batch."""
    try:
        return encode(dict(fields), what="log fields")
    except SerializationError:
        return json.dumps(dict(fields), default=repr, ensure_ascii=False, separators=(",", ":"))


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters; a log line shows them as U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json(text: str | None) -> Any:
    """Decode stored JSON, without the parser for the values most rows hold."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text is None or text == "null":
        return None
    return decode(text)


def _job(row: Mapping[str, Any]) -> Job:
    args = _json(row["args"])
    return Job(
        id=row["id"],
        project=row["project"],
        queue=row["queue"],
        task=row["task"],
        status=_STATUS[row["status"]],
        args=tuple(args) if args else (),
        kwargs=_json(row["kwargs"]),
        priority=row["priority"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
        scheduled_for=row["scheduled_for"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        depends_on=tuple(row["depends_on"]),
        key=row["key"],
        headers=_json(row["headers"]),
        execution_id=row["execution_id"],
        worker_id=row["worker_id"],
        lease_expires_at=row["lease_expires_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=_json(row["result"]),
        error=decode_error(row["error"]),
    )


def _is_int64(value: object) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
    )


def _ack(rows: Iterable[Mapping[str, Any]]) -> AckResult:
    accepted: list[uuid.UUID] = []
    rejected: list[uuid.UUID] = []
    for row in rows:
        (accepted if row["accepted"] else rejected).append(row["job_id"])
    return AckResult(accepted=tuple(accepted), rejected=tuple(rejected))


# ---------------------------------------------------------------------------------------------
# Enqueue planning (pure Python: validation, aliases, dependency order)
# ---------------------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    request: NewJob
    id: uuid.UUID
    #: ``(project, key)`` for a job with an idempotency key.
    key: tuple[str, str] | None
    args: str
    kwargs: str
    headers: str
    #: ``scheduled_for`` as an offset from the application's clock; None means now.
    shift: dt.timedelta | None
    depends_on: tuple[uuid.UUID, ...]
    timeout: float | None


def _wake_payload(queue: str) -> str:
    """What a NOTIFY on ``taskforge_jobs`` carries for ``queue``: its name, or ``*`` (wake
    every listener) for a name beyond the 1,000 bytes the statements allow a payload."""
    return queue if len(queue.encode()) <= 1000 else "*"


def _bad_job(job_id: uuid.UUID, message: str) -> InvalidJobError:
    return InvalidJobError(f"job {job_id}: {message}")


def _prepare(jobs: Sequence[NewJob], app_now: dt.datetime) -> list[_Prepared]:
    """Validate and encode a batch before any database work; raises for the first bad job."""
    prepared: list[_Prepared] = []
    seen: set[uuid.UUID] = set()
    for job in jobs:
        job_id = job.id
        if not isinstance(job_id, uuid.UUID):
            raise InvalidJobError(f"a job id must be a UUID, got {job_id!r}")
        if job_id in seen:
            raise InvalidJobError(f"job id {job_id} appears twice in one enqueue batch")
        seen.add(job_id)
        for value, field in ((job.task, "task"), (job.project, "project"), (job.queue, "queue")):
            if not value or not isinstance(value, str):
                raise _bad_job(job_id, f"{field} must be a non-empty string, got {value!r}")
            if "\x00" in value:
                raise _bad_job(job_id, f"{field} must not contain NUL characters")
        if not _is_int64(job.max_attempts) or job.max_attempts < 1:
            raise _bad_job(
                job_id, f"max_attempts must be an integer >= 1, not {job.max_attempts!r}"
            )
        if not _is_int64(job.priority):
            raise _bad_job(job_id, f"priority must be a 64-bit integer, not {job.priority!r}")
        timeout = job.timeout
        if timeout is not None and (
            type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
        ):
            raise _bad_job(job_id, f"timeout must be a positive number of seconds, not {timeout!r}")
        if job.key is not None and (not isinstance(job.key, str) or "\x00" in job.key):
            raise _bad_job(job_id, f"key must be a string without NUL or None, not {job.key!r}")
        shift: dt.timedelta | None = None
        if job.scheduled_for is not None:
            try:
                shift = _aware(job.scheduled_for, "scheduled_for") - app_now
            except (ValueError, TypeError, OverflowError) as exc:
                raise _bad_job(job_id, str(exc)) from exc
        args_json, kwargs_json = job_payload(job)
        if job.headers:
            headers = dict(job.headers)
            if not all(type(k) is str and type(v) is str for k, v in headers.items()):
                raise _bad_job(job_id, "headers must map strings to strings")
            if any("\x00" in k or "\x00" in v for k, v in headers.items()):
                raise _bad_job(job_id, "headers must not contain NUL characters")
            headers_json = encode(headers, what=f"the headers of job {job_id}")
        else:
            headers_json = "{}"
        prepared.append(
            _Prepared(
                request=job,
                id=job_id,
                key=None if job.key is None else (job.project, job.key),
                args=args_json,
                kwargs=kwargs_json,
                headers=headers_json,
                shift=shift,
                depends_on=tuple(dict.fromkeys(job.depends_on)),
                timeout=None if timeout is None else float(timeout),
            )
        )
    return prepared


@attrs.define
class _Plan:
    """The jobs of a batch to store and how they depend on each other."""

    #: Members to store, in batch order.
    new: list[_Prepared]
    #: Member id -> the id standing for it (itself, an earlier member with its key, or the
    #: stored job holding its key).
    alias: dict[uuid.UUID, uuid.UUID]
    #: New member id -> its parents after aliasing, in depends_on order.
    parents_of: dict[uuid.UUID, list[uuid.UUID]]
    by_id: dict[uuid.UUID, _Prepared]


def _plan(batch: list[_Prepared], known: Mapping[tuple[str, str], uuid.UUID]) -> _Plan:
    """Resolve keys (``known``: keys already stored) and dependencies, exactly as the SQLite
    backend does; raises :class:`DependencyError` for a job depending on itself, on a member
    of another project, or for a cycle."""
    if not any(p.key is not None or p.depends_on for p in batch):  # the common batch
        ids = [p.id for p in batch]
        return _Plan(
            new=list(batch),
            alias=dict(zip(ids, ids, strict=True)),
            parents_of={job_id: [] for job_id in ids},
            by_id=dict(zip(ids, batch, strict=True)),
        )
    alias: dict[uuid.UUID, uuid.UUID] = {}
    first: dict[tuple[str, str], uuid.UUID] = {}
    new: list[_Prepared] = []
    for p in batch:
        if p.key is not None:
            stored = known.get(p.key)
            if stored is not None:
                alias[p.id] = stored
                continue
            earlier = first.get(p.key)
            if earlier is not None:
                alias[p.id] = earlier
                continue
            first[p.key] = p.id
        alias[p.id] = p.id
        new.append(p)
    by_id = {p.id: p for p in new}
    parents_of: dict[uuid.UUID, list[uuid.UUID]] = {}
    for p in new:
        parents: list[uuid.UUID] = []
        for given in p.depends_on:
            parent = alias.get(given, given)
            if parent == p.id:
                raise DependencyError(f"job {p.id} depends on itself")
            if parent not in parents:
                parents.append(parent)
        parents_of[p.id] = parents
    for p in new:
        for parent in parents_of[p.id]:
            member = by_id.get(parent)
            if member is not None and member.request.project != p.request.project:
                raise DependencyError(
                    f"job {p.id} depends on job {parent}, which does not exist in project "
                    f"{p.request.project!r}"
                )
    if any(parents_of.values()):
        _check_acyclic(new, parents_of, by_id)
    return _Plan(new=new, alias=alias, parents_of=parents_of, by_id=by_id)


def _check_acyclic(
    new: list[_Prepared], parents_of: Mapping[uuid.UUID, list[uuid.UUID]], by_id: Mapping[Any, Any]
) -> None:
    """Raise :class:`DependencyError` naming the jobs on (or behind) a cycle, if any."""
    waiting = {p.id: sum(1 for q in parents_of[p.id] if q in by_id) for p in new}
    children: dict[uuid.UUID, list[uuid.UUID]] = {}
    for p in new:
        for parent in parents_of[p.id]:
            if parent in by_id:
                children.setdefault(parent, []).append(p.id)
    ready = deque(job_id for job_id, count in waiting.items() if count == 0)
    done = 0
    while ready:
        job_id = ready.popleft()
        done += 1
        for child in children.get(job_id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if done < len(new):
        cycle = sorted(str(job_id) for job_id, count in waiting.items() if count > 0)
        raise DependencyError(f"the dependencies of jobs {', '.join(cycle)} form a cycle")


def _needs_known_keys(batch: Sequence[_Prepared]) -> bool:
    """Whether planning depends on which keys are already stored: a keyed job that has
    parents or is a parent. (Otherwise the statement resolves keys by itself.)"""
    keyed = [p for p in batch if p.key is not None]
    if not keyed:
        return False
    referenced = {parent for p in batch for parent in p.depends_on}
    return any(p.depends_on or p.id in referenced for p in keyed)


@contextlib.contextmanager
def _ids_must_be_new() -> Iterator[None]:
    """Report the primary key's violation as what it means: a job id of the batch exists."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "jobs_pkey":
            raise InvalidJobError(
                "a job with one of the batch's ids already exists (ids must be new)"
            ) from exc
        raise


class _Conflict(Exception):
    """A race with another session that running the verb again resolves."""


def _queue_error(project: str, queue: str) -> QueueError:
    return QueueError(
        f"queue {queue!r} does not exist in project {project!r} (queues are not created on demand)"
    )


# ---------------------------------------------------------------------------------------------
# The storage
# ---------------------------------------------------------------------------------------------


class PostgresStorage:
    """The :class:`~taskforge_core.protocols.Storage` protocol on PostgreSQL (asyncpg).

    Build it with a ``postgresql://`` URL (see :func:`~taskforge_backends.postgres._url.
    parse_url` for the query parameters), then ``await open()``; ``async with`` does both ends.
    """

    capabilities: frozenset[Capability]

    def __init__(self, url: str, config: BackendConfig | None = None) -> None:
        self._settings: PostgresSettings = parse_url(url)
        self._config = config if config is not None else BackendConfig()
        self._clock = self._config.clock
        #: True when time comes from the database server (the application's clock is real).
        self._server_clock = isinstance(self._clock, SystemClock)
        self._pool: Any = None
        self._listener: Listener | None = None
        #: (project, queue) -> (project id, queue id) of queues known to exist (never deleted).
        self._queue_ids: dict[tuple[str, str], tuple[uuid.UUID, int]] = {}
        self._where = self._describe(url)
        capabilities = {
            Capability.LOCAL_WAKEUP,
            Capability.CROSS_PROCESS_WAKEUP,
            Capability.MULTI_PROCESS,
            Capability.DURABLE,
            Capability.TRANSACTIONAL_ENQUEUE,
            Capability.PRUNE,
        }
        if not self._server_clock:
            capabilities.add(Capability.INJECTABLE_CLOCK)
        self.capabilities = frozenset(capabilities)

    @staticmethod
    def _describe(url: str) -> str:
        """``host:port/database`` for messages (never the password)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"PostgreSQL {host}{port}{parts.path or '/'}"

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<PostgresStorage {self._where} ({state})>"

    async def __aenter__(self) -> PostgresStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self) -> dt.datetime | None:
        """The ``now`` parameter of every statement: None for the server's clock."""
        return None if self._server_clock else self._clock.now()

    def _times(self) -> tuple[dt.datetime | None, dt.datetime]:
        """``(now parameter, the application's now)`` read once, so offsets computed from the
        second and applied to the first give back exactly the times the application named."""
        app_now = self._clock.now()
        return (None if self._server_clock else app_now), app_now

    def _error(self, exc: BaseException) -> StorageError:
        sqlstate = getattr(exc, "sqlstate", None)
        text = str(exc) or type(exc).__name__
        if isinstance(
            exc,
            OSError
            | TimeoutError
            | asyncpg.InterfaceError
            | asyncpg.exceptions.InternalClientError,
        ) or (isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_CLASSES):
            return StorageUnavailableError(f"{self._where} is unavailable: {text}")
        return StorageError(f"{self._where} failed: {text}")

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise StorageError(f"the storage on {self._where} is not open; call open()")
        return self._pool

    async def _run(
        self,
        fn: Callable[[Connection], Awaitable[T]],
        *,
        isolation: str | None = None,
        connection: Connection | None = None,
    ) -> T:
        """Run ``fn`` on a pooled connection (or ``connection``), in a transaction of
        ``isolation`` when given; run it again after a serialization failure or deadlock;
        translate driver errors."""
        pool: Any = None if connection is not None else self._require_pool()
        for attempt in range(RETRIES + 1):
            try:
                if connection is not None:
                    return await self._in_savepoint(connection, fn)
                if isolation is None:
                    return cast("T", await pool.run(fn))
                return cast("T", await pool.run(functools.partial(_in_transaction, fn, isolation)))
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError, _Conflict) as exc:
                if attempt == RETRIES:
                    if isinstance(exc, _Conflict):
                        raise StorageUnavailableError(f"{self._where}: {exc}") from exc
                    raise self._error(exc) from exc
                logger.debug("retrying after %s", exc)
                await anyio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 8)))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                raise self._error(exc) from exc
            except asyncpg.exceptions.InternalClientError as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _in_savepoint(conn: Connection, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on the caller's connection: inside its transaction (however it was
        started) within a savepoint, so that a failure or a retry leaves that transaction as
        it was; in a transaction of its own when the connection is not in one."""
        if not conn.is_in_transaction():
            async with conn.transaction():
                return await fn(conn)
        await conn.execute("SAVEPOINT taskforge_enqueue")
        try:
            result = await fn(conn)
        except BaseException:
            if not conn.is_closed():
                await conn.execute("ROLLBACK TO SAVEPOINT taskforge_enqueue")
                await conn.execute("RELEASE SAVEPOINT taskforge_enqueue")
            raise
        await conn.execute("RELEASE SAVEPOINT taskforge_enqueue")
        return result

    async def _fetch(self, name: str, *args: Any, isolation: str | None = None) -> list[Any]:
        query = _Q[name]

        async def run(conn: Connection) -> list[Any]:
            return cast("list[Any]", await conn.fetch(query, *args))

        return await self._run(run, isolation=isolation)

    def _server_settings(self) -> dict[str, str]:
        settings = {
            "application_name": self._settings.application_name,
            # Times are exchanged in UTC; taskforge.later() does not depend on it, but
            # anything printed by the server (partition bounds, logs) then reads the same.
            "timezone": "UTC",
            # The claim statement is planned fast and runs in well under a millisecond;
            # compiling it with LLVM (JIT, on by default for expensive-looking plans over big
            # tables) would cost tens of milliseconds per claim.
            "jit": "off",
        }
        if self._settings.synchronous_commit is not None:
            settings["synchronous_commit"] = self._settings.synchronous_commit
        return settings

    async def _connect(self, statement_cache_size: int = 0) -> Any:
        """A connection outside the pool (for LISTEN, and for migrations)."""
        return await asyncpg.connect(
            self._settings.dsn,
            timeout=self._settings.connect_timeout,
            command_timeout=self._settings.command_timeout,
            statement_cache_size=statement_cache_size,
            server_settings=self._server_settings(),
        )

    async def _connect_pooled(self) -> Any:
        """A connection of the pool. It never takes session state (no LISTEN, no session
        advisory lock: those use connections of their own), so it is reused without a reset."""
        return await self._connect(self._settings.statement_cache_size)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (and migrate when ``config.auto_migrate`` is set). Opening an open
        storage does nothing. Raises :class:`ConfigurationError` outside asyncio."""
        if self._pool is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "the PostgreSQL backend needs asyncio; asyncpg does not run under trio "
                "(run with anyio.run(..., backend='asyncio'))"
            ) from None
        settings = self._settings
        try:
            pool = ConnectionPool(
                self._connect_pooled,
                min_size=settings.min_size,
                max_size=settings.max_size,
                acquire_timeout=ACQUIRE_TIMEOUT,
            )
            await pool.open()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc
        self._pool = pool
        # LISTEN starts at the first wait_for_jobs: a process that only enqueues (a web app)
        # never receives the notifications of every enqueue in the cluster.
        self._listener = Listener(self._connect, settings.poll_interval)
        if self._config.auto_migrate:
            try:
                await self.migrate()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.close()
                raise

    async def close(self) -> None:
        """Close the listener and the pool (after calls in flight). Safe to call twice."""
        pool, listener = self._pool, self._listener
        self._pool = self._listener = None
        with anyio.CancelScope(shield=True):
            if listener is not None:
                await listener.close()
            if pool is not None:
                with anyio.move_on_after(10) as scope:
                    try:
                        await pool.close()
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                        logger.warning("closing the pool of %s: %s", self._where, exc)
                        pool.terminate()
                if scope.cancelled_caught:
                    pool.terminate()

    async def migrate(self) -> list[str]:
        """Apply pending migrations (``migrations/*.sql``), then create the coming days'
        history partitions (old ones are only dropped by :meth:`prune`). Returns the names of
        the migrations applied."""
        now = self._now()
        self._require_pool()
        # A connection of its own: the migration lock is a session-level advisory lock, and
        # pooled connections must carry no session state (see _connect_pooled).
        try:
            conn = await self._connect()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc
        try:
            applied = await apply_migrations(conn, timeout=None)
            await self._maintain(conn, now, RetentionPolicy().partitions_ahead, None)
            return applied
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _maintain(
        self, conn: Connection, now: dt.datetime | None, ahead: int, retain: dt.timedelta | None
    ) -> list[tuple[str, str]]:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{MAINTENANCE_LOCK_TIMEOUT}'")
            rows = await conn.fetch(_Q["maintain_partitions"], now, ahead, retain, timeout=None)
        return [(row["action"], row["table_name"]) for row in rows]

    async def prune(self, policy: RetentionPolicy | None = None) -> PruneReport:
        """Apply a retention policy: create the coming days' history partitions, drop those
        older than ``policy.history``, and purge finished jobs older than their status's age
        (succeeded and cancelled after 7 days, failed never, by default). Safe to run from
        several processes at once and while workers run; meant to run every hour or so."""
        policy = policy if policy is not None else RetentionPolicy()
        now = self._now()

        async def maintain(conn: Connection) -> list[tuple[str, str]]:
            return await self._maintain(conn, now, policy.partitions_ahead, policy.history)

        actions = await self._run(maintain)
        purged: dict[JobStatus, int] = {}
        for status, age in policy.ages().items():
            total = 0
            while True:
                (row,) = await self._fetch(
                    "purge_finished",
                    now,
                    status.value,
                    age,
                    PURGE_BATCH,
                    isolation="repeatable_read",
                )
                total += row[0]
                if row[0] < PURGE_BATCH:
                    break
            purged[status] = total
        return PruneReport(
            created=tuple(name for action, name in actions if action == "created"),
            dropped=tuple(name for action, name in actions if action == "dropped"),
            skipped=tuple(name for action, name in actions if action == "skipped"),
            purged=purged,
        )

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], *, transaction: asyncpg.Connection | None = None
    ) -> list[Job]:
        """Store a batch atomically, in one statement, and return the stored jobs in request
        order (see :meth:`Storage.enqueue <taskforge_core.protocols.Storage.enqueue>`).

        :param transaction: an asyncpg connection of the application's, usually inside a
            transaction: the jobs are written in it and exist only if it commits (workers are
            woken at that commit). Its database must hold TaskForge's schema.
        """
        if not jobs:
            return []
        if transaction is None:
            self._require_pool()
        now, app_now = self._times()
        batch = _prepare(jobs, app_now)
        if len(batch) == 1 and batch[0].key is None and not batch[0].depends_on:
            stored, runnable = await self._run(
                lambda conn: self._store_one(conn, batch, now), connection=transaction
            )
        else:
            stored, runnable = await self._store_batch(batch, now, transaction)
        if runnable and transaction is None and self._listener is not None:
            self._listener.wake(runnable)
        return stored

    async def _store_batch(
        self,
        batch: list[_Prepared],
        now: dt.datetime | None,
        transaction: Connection | None,
    ) -> tuple[list[Job], set[str]]:
        """Store a batch of any shape: resolve keys and dependencies, then one statement."""
        # Planning depends on which keys are stored only when a keyed job is part of the
        # dependency graph; then the statement also checks that they still are.
        with_keys = _needs_known_keys(batch)
        fixed: _Plan | None = None
        if not with_keys:
            try:
                fixed = _plan(batch, {})
            except DependencyError:
                await self._run(lambda c: self._check_queues(c, batch), connection=transaction)
                raise
        simple = fixed is not None and not any(fixed.parents_of.values())

        async def attempt(conn: Connection) -> tuple[list[Job], set[str]]:
            if fixed is not None:
                if simple and all(self._queue_key(p) in self._queue_ids for p in fixed.new):
                    return await self._store_simple(conn, batch, fixed, now)
                return await self._store(conn, batch, fixed, {}, None, now)
            known = await self._jobs_by_key(conn, batch)
            try:
                plan = _plan(batch, {key: job.id for key, job in known.items()})
            except DependencyError:
                await self._check_queues(conn, batch)
                raise
            expected = {
                p.key: (known[p.key].id if p.key in known else None)
                for p in batch
                if p.key is not None
            }
            return await self._store(conn, batch, plan, known, expected, now)

        return await self._run(attempt, connection=transaction)

    @staticmethod
    def _queue_key(p: _Prepared) -> tuple[str, str]:
        return (p.request.project, p.request.queue)

    async def _store_one(
        self, conn: Connection, batch: list[_Prepared], now: dt.datetime | None
    ) -> tuple[list[Job], set[str]]:
        """The fastest path, for the most common call (``task.enqueue(...)``): one job without
        key or dependencies. Its values go as scalars when its queue's ids are cached: encoding
        thirteen one-element arrays costs the client more than the rest of it."""
        (p,) = batch
        job = p.request
        ids = self._queue_ids.get(self._queue_key(p))
        if ids is None:  # a queue not seen yet: the general statement creates it
            return await self._store(conn, batch, _plan(batch, {}), {}, None, now)
        with _ids_must_be_new():
            row = await conn.fetchrow(
                _Q["enqueue_one"],
                now,
                p.id,
                ids[0],
                ids[1],
                job.task,
                p.args,
                p.kwargs,
                job.priority,
                job.max_attempts,
                p.timeout,
                p.shift,
                p.headers,
                _wake_payload(job.queue),
            )
        if row is None:  # the cached queue is gone (the database was emptied under us)
            self._queue_ids.clear()
            raise _Conflict("a cached queue no longer exists")
        status = _STATUS[row["status"]]
        check_transition(None, status)
        return [self._made_job(p, [], status, row)], {job.queue}

    async def _store_simple(
        self, conn: Connection, batch: list[_Prepared], plan: _Plan, now: dt.datetime | None
    ) -> tuple[list[Job], set[str]]:
        """The fast path: no dependencies, and every queue in the cache of queue ids."""
        new = plan.new
        ids = [self._queue_ids[self._queue_key(p)] for p in new]
        with _ids_must_be_new():
            rows = await conn.fetch(
                _Q["enqueue_simple"],
                now,
                [p.id for p in new],
                [i[0] for i in ids],
                [i[1] for i in ids],
                [p.request.task for p in new],
                [p.args for p in new],
                [p.kwargs for p in new],
                [p.request.priority for p in new],
                [p.request.max_attempts for p in new],
                [p.timeout for p in new],
                [p.shift for p in new],
                [p.request.key for p in new],
                [p.headers for p in new],
            )
        made = {row["id"]: row for row in rows}
        jobs: dict[uuid.UUID, Job] = {}
        runnable: set[str] = set()
        taken: list[_Prepared] = []
        for p in new:
            row = made.get(p.id)
            if row is None:
                taken.append(p)
                continue
            status = _STATUS[row["status"]]
            check_transition(None, status)
            runnable.add(p.request.queue)
            jobs[p.id] = self._made_job(p, [], status, row)
        if taken:  # their keys were stored meanwhile (or before): return the jobs holding them
            holders = await self._jobs_by_key(conn, taken)
            for p in taken:
                holder = holders.get(p.key) if p.key is not None else None
                if holder is None:
                    # Not a key taken but a cached queue gone (the database was emptied under
                    # us), or the key's holder vanished: forget the cache and start again.
                    self._queue_ids.clear()
                    raise _Conflict("a cached queue or a key's holder no longer exists")
                jobs[p.id] = holder
        return [jobs[plan.alias[p.id]] for p in batch], runnable

    async def _check_queues(self, conn: Connection, batch: list[_Prepared]) -> None:
        if self._config.create_queues:
            return
        pairs = list(dict.fromkeys((p.request.project, p.request.queue) for p in batch))
        rows = await conn.fetch(
            _Q["missing_queues"], [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        )
        if rows:
            raise _queue_error(rows[0]["project"], rows[0]["queue"])

    async def _jobs_by_key(
        self, conn: Connection, batch: list[_Prepared]
    ) -> dict[tuple[str, str], Job]:
        keys = list(dict.fromkeys(p.key for p in batch if p.key is not None))
        rows = await conn.fetch(_Q["jobs_by_key"], [k[0] for k in keys], [k[1] for k in keys])
        return {(row["project"], row["key"]): _job(row) for row in rows}

    async def _store(
        self,
        conn: Connection,
        batch: list[_Prepared],
        plan: _Plan,
        known: Mapping[tuple[str, str], Job],
        expected: Mapping[tuple[str, str], uuid.UUID | None] | None,
        now: dt.datetime | None,
    ) -> tuple[list[Job], set[str]]:
        new = plan.new
        edges: list[tuple[uuid.UUID, uuid.UUID, int, bool]] = [
            (p.id, parent, position, parent in plan.by_id)
            for p in new
            for position, parent in enumerate(plan.parents_of[p.id])
        ]
        projects = list(dict.fromkeys(p.request.project for p in new))
        expected = expected or {}
        with _ids_must_be_new():
            rows = await conn.fetch(
                _Q["enqueue"],
                now,
                [p.id for p in new],
                [p.request.project for p in new],
                [p.request.queue for p in new],
                [p.request.task for p in new],
                [p.args for p in new],
                [p.kwargs for p in new],
                [p.request.priority for p in new],
                [p.request.max_attempts for p in new],
                [p.timeout for p in new],
                [p.shift for p in new],
                [p.request.key for p in new],
                [p.headers for p in new],
                [e[0] for e in edges],
                [e[1] for e in edges],
                [e[2] for e in edges],
                [e[3] for e in edges],
                projects,
                [uuid7() for _ in projects],
                self._config.create_queues,
                [k[0] for k in expected],
                [k[1] for k in expected],
                list(expected.values()),
            )

        problems = sorted(
            (row["rank"], row["ord"], row["position"], row["detail"], row["project"])
            for row in rows
            if row["kind"] == "problem"
        )
        if problems:
            rank, ord_, _, detail, project = problems[0]
            if rank == 0:
                raise _queue_error(project, detail)
            raise DependencyError(
                f"job {new[ord_ - 1].id} depends on job {detail}, which does not exist in "
                f"project {project!r}"
            )

        made: dict[uuid.UUID, Job] = {}
        existing: dict[uuid.UUID, uuid.UUID] = {}
        runnable: set[str] = set()
        for row in rows:
            p = new[row["ord"] - 1]
            if row["kind"] == "existing":
                existing[p.id] = row["id"]
                continue
            status = _STATUS[row["status"]]
            check_transition(None, status)
            if status in (_P, _S):
                runnable.add(p.request.queue)
            made[p.id] = self._made_job(p, plan.parents_of[p.id], status, row)
            self._queue_ids[self._queue_key(p)] = (row["project_id"], row["queue_id"])
        if existing:
            stored = await conn.fetch(_Q["jobs_by_id"], list(set(existing.values())))
            found = {row["id"]: _job(row) for row in stored}
            for member, job_id in existing.items():
                made[member] = found[job_id]
        for job in known.values():
            made[job.id] = job
        return [made[plan.alias[p.id]] for p in batch], runnable

    @staticmethod
    def _made_job(
        p: _Prepared, parents: list[uuid.UUID], status: JobStatus, row: Mapping[str, Any]
    ) -> Job:
        job = p.request
        at: dt.datetime = row["created_at"]
        args, kwargs = read_back(job, p.args, p.kwargs)
        return Job(
            id=job.id,
            project=job.project,
            queue=job.queue,
            task=job.task,
            status=status,
            args=args,
            kwargs=kwargs,
            priority=job.priority,
            attempt=0,
            max_attempts=job.max_attempts,
            timeout=p.timeout,
            scheduled_for=row["scheduled_for"],
            created_at=at,
            updated_at=at,
            depends_on=tuple(parents),
            key=job.key,
            headers=dict(job.headers),
            finished_at=at if status is _C else None,
        )

    # -- claim -------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        self._require_pool()
        if request.limit <= 0 or not request.shares:
            return []
        if request.lease < _ZERO:
            raise ValueError(f"a lease cannot be negative, got {request.lease}")
        shares = request.shares
        if len(shares) == 1:  # one queue: its best jobs, whatever its quota
            rows = await self._fetch(
                "claim_one_queue",
                self._now(),
                request.project,
                request.worker_id,
                request.lease,
                request.limit,
                shares[0].name,
            )
        else:
            rows = await self._fetch(
                "claim",
                self._now(),
                request.project,
                request.worker_id,
                request.lease,
                request.limit,
                [share.name for share in shares],
                [share.limit for share in shares],
            )
        claimed = []
        for row in rows:
            check_transition(_P, _R)
            job = _job(row)
            claimed.append(
                ClaimedJob(
                    job=job,
                    execution_id=row["execution_id"],
                    lease_expires_at=row["lease_expires_at"],
                )
            )
        return claimed

    # -- reports -----------------------------------------------------------------------------

    async def complete(self, completions: Sequence[Completion]) -> AckResult:
        if not completions:
            return AckResult()
        results = [encode(c.result, what=f"the result of job {c.job_id}") for c in completions]
        check_transition(_R, _OK)
        rows = await self._fetch(
            "complete",
            self._now(),
            [c.job_id for c in completions],
            [c.execution_id for c in completions],
            results,
        )
        return _ack(rows)

    async def retry(self, retries: Sequence[RetryRequest]) -> AckResult:
        if not retries:
            return AckResult()
        now, app_now = self._times()
        shifts = [_aware(r.run_at, "RetryRequest.run_at") - app_now for r in retries]
        check_transition(_R, _S)
        rows = await self._fetch(
            "retry",
            now,
            [r.job_id for r in retries],
            [r.execution_id for r in retries],
            shifts,
            [encode_error(r.error) for r in retries],
            [bool(r.consume_attempt) for r in retries],
        )
        return _ack(rows)

    async def fail(self, failures: Sequence[Failure]) -> AckResult:
        if not failures:
            return AckResult()
        check_transition(_R, _F)
        rows = await self._fetch(
            "fail",
            self._now(),
            [f.job_id for f in failures],
            [f.execution_id for f in failures],
            [encode_error(f.error) for f in failures],
        )
        return _ack(rows)

    # -- leases ------------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: uuid.UUID, execution_ids: Sequence[uuid.UUID], lease: dt.timedelta
    ) -> tuple[WorkerStatus, list[uuid.UUID]]:
        if lease < _ZERO:
            raise ValueError(f"a lease cannot be negative, got {lease}")
        (row,) = await self._fetch("heartbeat", self._now(), worker_id, list(execution_ids), lease)
        status = WorkerStatus.RUNNING if row["status"] is None else WorkerStatus(row["status"])
        held = set(row["held"])
        return status, [e for e in execution_ids if e not in held]

    async def reclaim_expired(self) -> list[uuid.UUID]:
        check_transition(_R, _P)
        check_transition(_R, _F)
        rows = await self._fetch("reclaim", self._now(), isolation="repeatable_read")
        return [row["id"] for row in rows]

    # -- cancel, replay, purge ---------------------------------------------------------------

    async def cancel(self, job_ids: Sequence[uuid.UUID], project: str) -> list[uuid.UUID]:
        if not job_ids:
            return []
        rows = await self._fetch(
            "cancel", self._now(), list(job_ids), project, isolation="repeatable_read"
        )
        return [row["id"] for row in rows]

    def _filter(self, selection: JobFilter, app_now: dt.datetime) -> tuple[Any, ...]:
        """The ``$2..$7`` parameters of the filtered queries."""
        statuses = (
            None
            if selection.statuses is None
            else sorted(JobStatus(s).value for s in selection.statuses)
        )
        shift = None
        if selection.updated_before is not None:
            shift = _aware(selection.updated_before, "JobFilter.updated_before") - app_now
        return (
            selection.project,
            statuses,
            selection.queue,
            selection.task,
            None if selection.ids is None else list(selection.ids),
            shift,
        )

    async def replay(self, selection: JobFilter) -> ReplayResult:
        now, app_now = self._times()
        params = self._filter(selection, app_now)

        async def run(conn: Connection) -> ReplayResult:
            rows = await conn.fetch(_Q["replay_candidates"], now, *params)
            skipped: dict[uuid.UUID, str] = {}
            current: dict[uuid.UUID, JobStatus] = {}
            parents: dict[uuid.UUID, list[tuple[uuid.UUID, JobStatus]]] = {}
            for row in rows:
                job_id, status = row["id"], row["status"]
                if status in (_F.value, _C.value):
                    current[job_id] = JobStatus(status)
                    parents[job_id] = [
                        (parent, JobStatus(parent_status))
                        for parent, parent_status in zip(
                            row["parent_ids"], row["parent_statuses"], strict=True
                        )
                    ]
                else:
                    skipped[job_id] = f"it is {status}; only failed or cancelled jobs are replayed"
            # A job whose failed or cancelled parent stays dead cannot be replayed; and then
            # neither can its own children in this replay.
            chosen = set(current)
            changed = True
            while changed:
                changed = False
                for job_id in sorted(chosen):
                    for parent_id, status in parents.get(job_id, ()):
                        if status in (_F, _C) and parent_id not in chosen:
                            chosen.discard(job_id)
                            skipped[job_id] = (
                                f"its parent {parent_id} is {status.value} and is not replayed "
                                "with it"
                            )
                            changed = True
                            break
            replayed = sorted(chosen)
            targets: list[str] = []
            for job_id in replayed:
                waits = any(status is not _OK for _, status in parents.get(job_id, ()))
                target = _B if waits else _P
                check_transition(current[job_id], target)
                targets.append(target.value)
            if replayed:
                await conn.fetchval(_Q["replay_apply"], now, replayed, targets)
            return ReplayResult(
                replayed=tuple(replayed),
                skipped=tuple(sorted(skipped.items())),
            )

        return await self._run(run, isolation="repeatable_read")

    async def purge(self, selection: JobFilter) -> int:
        now, app_now = self._times()
        params = self._filter(selection, app_now)
        total = 0
        while True:
            (row,) = await self._fetch(
                "purge", now, *params, PURGE_BATCH, isolation="repeatable_read"
            )
            deleted = int(row[0])
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    # -- reading jobs ------------------------------------------------------------------------

    async def get_jobs(self, job_ids: Sequence[uuid.UUID], project: str) -> list[Job]:
        if not job_ids:
            return []
        rows = await self._fetch("get_jobs", list(set(job_ids)), project)
        found = {row["id"]: _job(row) for row in rows}
        return [found[i] for i in job_ids if i in found]

    async def list_jobs(self, selection: JobFilter, *, limit: int, cursor: str | None) -> Page:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        after: uuid.UUID | None = None
        if cursor is not None:
            try:
                after = uuid.UUID(cursor)
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{cursor!r} is not a cursor returned by list_jobs") from exc
        now, app_now = self._times()
        rows = await self._fetch(
            "list_jobs", now, *self._filter(selection, app_now), after, limit + 1
        )
        more = len(rows) > limit
        jobs = [_job(row) for row in rows[:limit]]
        return Page(items=tuple(jobs), next_cursor=str(jobs[-1].id) if more else None)

    # -- queues ------------------------------------------------------------------------------

    async def queue_stats(self, project: str) -> list[QueueStats]:
        rows = await self._fetch("queue_stats", project)
        stats: dict[str, tuple[bool, dict[JobStatus, int]]] = {}
        for row in rows:
            entry = stats.setdefault(row["name"], (row["paused"], dict.fromkeys(JobStatus, 0)))
            if row["status"] is not None:
                entry[1][_STATUS[row["status"]]] = int(row["n"])
        return [
            QueueStats(project=project, queue=name, paused=paused, counts=counts)
            for name, (paused, counts) in sorted(stats.items())
        ]

    async def _ensure_project(self, conn: Connection, slug: str, now: dt.datetime | None) -> Any:
        """The project's id, creating the project (in the default organization) if missing.
        Two statements, so the second sees a project another process just created."""
        if not isinstance(slug, str) or not slug or "\x00" in slug:
            raise ConfigurationError(f"a project needs a non-empty name, got {slug!r}")
        await conn.execute(_Q["ensure_project"], now, slug, uuid7())
        return await conn.fetchval(_Q["project_id"], slug)

    async def set_queue_paused(self, project: str, queue: str, paused: bool) -> Queue:
        if not isinstance(queue, str) or not queue or "\x00" in queue:
            raise ConfigurationError(f"a queue needs a non-empty name, got {queue!r}")
        now = self._now()

        async def run(conn: Connection) -> Queue:
            project_id = await self._ensure_project(conn, project, now)
            await conn.fetchval(_Q["set_queue_paused"], now, project_id, queue, bool(paused))
            return Queue(project=project, name=queue, paused=bool(paused))

        result = await self._run(run, isolation="read_committed")
        if not paused and self._listener is not None:
            self._listener.wake([queue])
        return result

    async def list_queues(self, project: str) -> list[Queue]:
        rows = await self._fetch("list_queues", project)
        return [Queue(project=project, name=row["name"], paused=row["paused"]) for row in rows]

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        for assignment in worker.queues:
            if not _is_int64(assignment.weight) or assignment.weight < 0:
                raise ConfigurationError(
                    f"queue weight must be an integer >= 0, got {assignment.weight!r} "
                    f"for queue {assignment.queue!r}"
                )
            if not isinstance(assignment.queue, str) or not assignment.queue:
                raise ConfigurationError("a queue needs a non-empty name")
        now, app_now = self._times()
        started = (
            None if worker.started_at is None else _aware(worker.started_at, "started_at") - app_now
        )
        beat = (
            None
            if worker.last_heartbeat_at is None
            else _aware(worker.last_heartbeat_at, "last_heartbeat_at") - app_now
        )
        weights = {a.queue: a.weight for a in worker.queues}  # the last weight of a queue wins

        async def run(conn: Connection) -> None:
            project_id = await self._ensure_project(conn, worker.project, now)
            await conn.execute(_Q["ensure_queues"], now, project_id, list(weights))
            await conn.execute(
                _Q["register_worker"],
                now,
                worker.id,
                project_id,
                _text(worker.name),
                _text(worker.hostname),
                worker.pid,
                worker.concurrency,
                WorkerStatus(worker.status).value,
                started,
                beat,
                list(weights),
                list(weights.values()),
            )

        await self._run(run, isolation="read_committed")

    async def set_worker_status(self, worker_id: uuid.UUID, status: WorkerStatus) -> None:
        value = WorkerStatus(status).value

        async def run(conn: Connection) -> None:
            await conn.execute(_Q["set_worker_status"], worker_id, value)

        await self._run(run)

    async def list_workers(self, project: str) -> list[WorkerInfo]:
        rows = await self._fetch("list_workers", project)
        return [
            WorkerInfo(
                id=row["id"],
                name=row["name"],
                hostname=row["hostname"],
                pid=row["pid"],
                concurrency=row["concurrency"],
                project=project,
                status=WorkerStatus(row["status"]),
                queues=tuple(
                    QueueWorkerAssignment(worker_id=row["id"], queue=queue, weight=weight)
                    for queue, weight in zip(row["queues"], row["weights"], strict=True)
                ),
                started_at=row["started_at"],
                last_heartbeat_at=row["last_heartbeat_at"],
            )
            for row in rows
        ]

    # -- history -----------------------------------------------------------------------------

    async def list_executions(self, job_id: uuid.UUID) -> list[Execution]:
        rows = await self._fetch("list_executions", job_id)
        return [
            Execution(
                id=row["id"],
                job_id=job_id,
                attempt=row["attempt"],
                worker_id=row["worker_id"],
                status=ExecutionStatus(row["status"]),
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                error=decode_error(row["error"]),
            )
            for row in rows
        ]

    async def add_logs(self, entries: Sequence[ExecutionLog]) -> None:
        if not entries:
            return
        times = [_aware(e.at, "ExecutionLog.at") for e in entries]

        async def run(conn: Connection) -> None:
            await conn.execute(
                _Q["add_logs"],
                [e.job_id for e in entries],
                [e.execution_id for e in entries],
                times,
                [_text(str(e.level)) for e in entries],
                [_text(str(e.message)) for e in entries],
                [_encode_fields(e.fields) for e in entries],
            )

        await self._run(run)

    async def list_logs(self, job_id: uuid.UUID) -> list[ExecutionLog]:
        rows = await self._fetch("list_logs", job_id)
        return [
            ExecutionLog(
                execution_id=row["execution_id"],
                job_id=job_id,
                at=row["at"],
                level=row["level"],
                message=row["message"],
                fields=decode(row["fields"]),
            )
            for row in rows
        ]

    # -- wake-ups ----------------------------------------------------------------------------

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when jobs may have become runnable in ``queues`` (any queue if empty): when a
        notification for one of them arrives (from any process, at its commit), else after
        ``timeout`` seconds. While the LISTEN connection is down, waits at most
        ``poll_interval`` (the caller then polls by claiming). May return spuriously."""
        listener = self._listener
        if self._pool is None or listener is None:
            raise StorageError(f"the storage on {self._where} is not open; call open()")
        if not timeout > 0:
            await anyio.lowlevel.checkpoint()
            return
        waiter = Waiter(queues)
        listener.add(waiter)
        try:
            listener.ensure()
            if not listener.listening:
                timeout = min(timeout, self._settings.poll_interval)
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        finally:
            listener.remove(waiter)
