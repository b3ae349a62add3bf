"""The SQLite storage backend: :class:`SQLiteStorage` and its factory :func:`create`.

How it runs
    One stdlib :mod:`sqlite3` connection per storage, driven from worker threads through anyio
    (so it works under asyncio and trio alike). A capacity limiter of one serialises access to
    the connection, and every storage verb is one synchronous function run in one thread hop,
    inside one transaction: a batch of a thousand jobs costs one hop and one commit.

Concurrency
    Every write transaction starts with ``BEGIN IMMEDIATE``, which takes SQLite's write lock
    before reading anything. Claims read the runnable jobs and mark them processing under that
    lock, so several processes sharing one file never claim the same job twice. A process that
    finds the lock taken waits up to ``busy_timeout`` seconds (default 30) before the verb fails
    with :class:`~taskforge_core.errors.StorageUnavailableError`.

Durability
    The database runs in WAL mode with ``synchronous=NORMAL``: a committed verb survives a crash
    of the process (or of every process), but a power loss or OS crash can lose the last commits
    before the next WAL checkpoint. Add ``?synchronous=full`` to the URL to survive power loss
    too, at the cost of an fsync per commit. ``sqlite:///:memory:`` keeps everything in a single
    private connection: fast for tests, gone when closed, and not shared between processes.

Time
    Every time decision (due dates, leases, expiry, created/updated stamps) uses the injected
    clock (``BackendConfig.clock``). Times are stored as integer microseconds since the epoch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import anyio
import anyio.to_thread

from taskforge_backends.sqlite._checkpoint import FALLBACK_PAGES, Checkpointer
from taskforge_backends.sqlite._inotify import WalWatch, open_wal_watch
from taskforge_backends.sqlite._migrations import apply_migrations
from taskforge_backends.sqlite._url import SQLiteSettings, parse_url
from taskforge_backends.sqlite._wakeup import Waiter, hub_for
from taskforge_core.backends import BackendConfig
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
    ErrorInfo,
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

__all__ = ["SQLiteStorage", "create"]

T = TypeVar("T")

#: The organization that projects created on demand belong to (made by migration 0001).
DEFAULT_ORGANIZATION_ID = "00000000-0000-0000-0000-000000000000"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_INT64 = (-(2**63), 2**63 - 1)

_P, _S, _B, _R = (JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED, JobStatus.PROCESSING)
_OK, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
_ACTIVE_SQL = "('pending', 'scheduled', 'blocked', 'processing')"
_FINAL_SQL = "('succeeded', 'failed', 'cancelled')"

#: Oldest SQLite library this backend runs on: claims and fenced reports are one
#: ``UPDATE ... RETURNING`` each, and RETURNING arrived in 3.35 (2021).
MIN_SQLITE_VERSION = (3, 35, 0)

# SQLite primary result codes that mean "try again later" rather than "this is broken".
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CANTOPEN = 5, 6, 14


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds the file (worth retrying later)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    lowered = str(exc).lower()
    return "locked" in lowered or "busy" in lowered


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL mode, retrying while other connections hold it.

    Switching needs the file to itself for a moment, and SQLite answers "database is locked"
    at once, without the busy handler, when another process is opening the same new file at
    the same time: several workers started together would otherwise fail to open.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


#: With an inotify watch on the WAL, the data version is still read this often (seconds).
WATCHED_POLL = 1.0
#: After a write to the WAL, the data version is read at once, then after these pauses: the
#: commit's last write lands a few microseconds before the WAL index shows it, so first a few
#: bare turns of the event loop, then a millisecond or five. The next write to the WAL ends a
#: pause early: a write that committed nothing new (this process's own commit, seen late) must
#: not delay noticing another process's commit that follows it.
_SETTLE_DELAYS = (0.0,) * 8 + (0.001, 0.005)
#: Rows :meth:`SQLiteStorage.prune` deletes per write transaction.
PRUNE_BATCH = 2000

_Mode = Literal["write", "read", "none"]


def create(url: str, config: BackendConfig) -> SQLiteStorage:
    """The backend factory named by the plugin: build (do not open) a storage for ``url``."""
    return SQLiteStorage(url, config)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def _micros(value: dt.datetime, what: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return (value - _EPOCH) // _MICROSECOND


def _time(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def _opt_time(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def _opt_uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _json_list(values: Iterable[str]) -> str:
    return json.dumps(list(values))


def _encode_fields(fields: Mapping[str, Any]) -> str:
    """Log fields are written by task code; a value JSON cannot hold is stored as its repr
    rather than failing the worker's whole log batch."""
    try:
        return encode(dict(fields), what="log fields")
    except SerializationError:
        return json.dumps(dict(fields), default=repr, ensure_ascii=False, separators=(",", ":"))


def _is_int64(value: object) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
    )


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------

_JOB_COLUMNS = """
    j.id, p.slug, q.name, j.task, j.status, j.args, j.kwargs, j.priority, j.attempt,
    j.max_attempts, j.timeout, j.scheduled_for, j.created_at, j.updated_at, j.key, j.headers,
    j.execution_id, j.worker_id, j.lease_expires_at, j.started_at, j.finished_at, j.result,
    j.error
"""
_JOB_FROM = """
    FROM jobs j
    JOIN job_queues q ON q.id = j.queue_id
    JOIN projects p ON p.id = j.project_id
"""
_IN_IDS = "IN (SELECT value FROM json_each(?))"


_STATUS = {s.value: s for s in JobStatus}


#: The C scanner that ``json.loads`` ends in, called without the layers around it.
_scan_json: Callable[[str, int], tuple[Any, int]]
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json(text: str | None) -> Any:
    """Decode stored JSON, without the parser for the values most rows hold."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text is None or text == "null":
        return None
    # The C scanner alone: stored JSON is compact, so the value ends where the text does. What
    # does not (corrupt text) goes through decode, for its error.
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return decode(text)
    return value if end == len(text) else decode(text)


class _Reader:
    """Builds models from rows, reusing the ids and times that repeat within one batch (the
    worker id, "now"), since constructing those is most of the cost of reading a row."""

    __slots__ = ("_times", "_uuids")

    def __init__(self, known: Mapping[str, uuid.UUID] | None = None) -> None:
        self._uuids: dict[str, uuid.UUID] = dict(known or {})
        self._times: dict[int, dt.datetime] = {}

    def uid(self, text: str) -> uuid.UUID:
        found = self._uuids.get(text)
        if found is None:
            found = self._uuids[text] = uuid.UUID(text)
        return found

    def opt_uuid(self, text: str | None) -> uuid.UUID | None:
        return None if text is None else self.uid(text)

    def time(self, micros: int) -> dt.datetime:
        found = self._times.get(micros)
        if found is None:
            found = self._times[micros] = _EPOCH + dt.timedelta(microseconds=micros)
        return found

    def opt_time(self, micros: int | None) -> dt.datetime | None:
        return None if micros is None else self.time(micros)

    def job(self, row: Sequence[Any], parents: Mapping[str, list[str]]) -> Job:
        args = _json(row[5])
        return Job(
            id=uuid.UUID(row[0]),
            project=row[1],
            queue=row[2],
            task=row[3],
            status=_STATUS[row[4]],
            args=tuple(args) if args else (),
            kwargs=_json(row[6]),
            priority=row[7],
            attempt=row[8],
            max_attempts=row[9],
            timeout=row[10],
            scheduled_for=self.time(row[11]),
            created_at=self.time(row[12]),
            updated_at=self.time(row[13]),
            depends_on=tuple(self.uid(p) for p in parents.get(row[0], ())),
            key=row[14],
            headers=_json(row[15]),
            execution_id=self.opt_uuid(row[16]),
            worker_id=self.opt_uuid(row[17]),
            lease_expires_at=self.opt_time(row[18]),
            started_at=self.opt_time(row[19]),
            finished_at=self.opt_time(row[20]),
            result=_json(row[21]),
            error=decode_error(row[22]),
        )

    def claimed(
        self,
        row: Sequence[Any],
        request: ClaimRequest,
        queue: str,
        parents: Mapping[str, list[str]],
        minted: Mapping[str, uuid.UUID],
        now: int,
        expires: int,
    ) -> ClaimedJob:
        """A row returned by ``_CLAIM``. What the claim itself set (status, worker, times,
        execution id) comes from the caller rather than being parsed back."""
        job_id = row[0]
        execution_id = minted[row[13]]
        started = self.time(now)
        lease_end = self.time(expires)
        args = _json(row[3])
        depends_on = parents.get(job_id)
        job = Job(
            id=uuid.UUID(job_id),
            project=request.project,
            queue=queue,
            task=row[2],
            status=_R,
            args=tuple(args) if args else (),
            kwargs=_json(row[4]),
            priority=row[5],
            attempt=row[6],
            max_attempts=row[7],
            timeout=row[8],
            scheduled_for=self.time(row[9]),
            created_at=self.time(row[10]),
            updated_at=started,
            depends_on=tuple(self.uid(p) for p in depends_on) if depends_on else (),
            key=row[11],
            headers=_json(row[12]),
            execution_id=execution_id,
            worker_id=request.worker_id,
            lease_expires_at=lease_end,
            started_at=started,
            finished_at=self.opt_time(row[14]),
            result=_json(row[15]),
            error=decode_error(row[16]),
        )
        return ClaimedJob(job=job, execution_id=execution_id, lease_expires_at=lease_end)


def _parents_of(conn: sqlite3.Connection, ids_json: str) -> dict[str, list[str]]:
    parents: dict[str, list[str]] = {}
    for job_id, parent_id in conn.execute(
        f"SELECT job_id, parent_id FROM job_dependencies WHERE job_id {_IN_IDS} "
        "ORDER BY job_id, position",
        (ids_json,),
    ):
        parents.setdefault(job_id, []).append(parent_id)
    return parents


def _jobs_from_rows(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[Job]:
    if not rows:
        return []
    parents = _parents_of(conn, _json_list(row[0] for row in rows))
    reader = _Reader()
    return [reader.job(row, parents) for row in rows]


def _load_jobs(
    conn: sqlite3.Connection, ids: Collection[str], project_id: str | None = None
) -> dict[str, Job]:
    """The jobs among ``ids`` (in ``project_id`` when given), by id."""
    if not ids:
        return {}
    sql = f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id {_IN_IDS}"
    params: list[Any] = [_json_list(ids)]
    if project_id is not None:
        sql += " AND j.project_id = ?"
        params.append(project_id)
    rows = conn.execute(sql, params).fetchall()
    return {str(job.id): job for job in _jobs_from_rows(conn, rows)}


def _project_id(conn: sqlite3.Connection, slug: str) -> str | None:
    row = conn.execute("SELECT id FROM projects WHERE slug = ?", (slug,)).fetchone()
    return None if row is None else str(row[0])


def _ensure_project(conn: sqlite3.Connection, slug: str, now: int) -> str:
    """The project's id, creating the project (in the default organization) if missing."""
    found = _project_id(conn, slug)
    if found is not None:
        return found
    if not isinstance(slug, str) or not slug:
        raise ConfigurationError(f"a project needs a non-empty name, got {slug!r}")
    new_id = str(uuid7())
    conn.execute(
        "INSERT INTO projects (id, organization_id, name, slug, created_at) VALUES (?, ?, ?, ?, ?)",
        (new_id, DEFAULT_ORGANIZATION_ID, slug, slug, now),
    )
    return new_id


def _queue_id(conn: sqlite3.Connection, project_id: str, name: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM job_queues WHERE project_id = ? AND name = ?", (project_id, name)
    ).fetchone()
    return None if row is None else int(row[0])


def _ensure_queue(conn: sqlite3.Connection, project_id: str, name: str, now: int) -> int:
    found = _queue_id(conn, project_id, name)
    if found is not None:
        return found
    cursor = conn.execute(
        "INSERT INTO job_queues (project_id, name, paused, created_at) VALUES (?, ?, 0, ?)",
        (project_id, name, now),
    )
    return int(cursor.lastrowid or 0)


def _filter_sql(selection: JobFilter, project_id: str) -> tuple[str, list[Any]]:
    """A WHERE clause (on alias ``j``) for every field of ``selection``."""
    clauses = ["j.project_id = ?"]
    params: list[Any] = [project_id]
    if selection.statuses is not None:
        statuses = sorted(JobStatus(s).value for s in selection.statuses)
        if statuses:
            clauses.append(f"j.status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        else:
            clauses.append("0")
    if selection.queue is not None:
        clauses.append("j.queue_id = (SELECT id FROM job_queues WHERE project_id = ? AND name = ?)")
        params.extend((project_id, selection.queue))
    if selection.task is not None:
        clauses.append("j.task = ?")
        params.append(selection.task)
    if selection.ids is not None:
        clauses.append(f"j.id {_IN_IDS}")
        params.append(_json_list(str(i) for i in selection.ids))
    if selection.updated_before is not None:
        clauses.append("j.updated_at < ?")
        params.append(_micros(selection.updated_before, "JobFilter.updated_before"))
    return " AND ".join(clauses), params


def _delete_final_jobs(
    conn: sqlite3.Connection, where: str, params: list[Any], limit: int = -1
) -> int:
    """Delete the finished jobs matching ``where`` (on alias ``j``) that no active job depends
    on, at most ``limit`` of them (-1: all); their history goes with them (ON DELETE CASCADE)."""
    cursor = conn.execute(
        f"""
        DELETE FROM jobs WHERE id IN (
            SELECT j.id FROM jobs j
            WHERE {where} AND j.status IN {_FINAL_SQL}
              AND NOT EXISTS (
                  SELECT 1 FROM job_dependencies d JOIN jobs c ON c.id = d.job_id
                  WHERE d.parent_id = j.id AND c.status IN {_ACTIVE_SQL})
            LIMIT ?
        )
        """,
        [*params, limit],
    )
    return int(cursor.rowcount)


def _delete_rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return int(conn.execute(sql, params).rowcount)


def _age_micros(age: dt.timedelta) -> int:
    return age // dt.timedelta(microseconds=1)


#: History older than a cutoff ($1), PRUNE_BATCH ($2) rows at a time. An attempt still running
#: (``finished_at`` unset) is kept whatever its age: its worker will report on it.
_PRUNE_HISTORY = (
    """
    DELETE FROM execution_logs WHERE id IN (
        SELECT id FROM execution_logs WHERE at < ? LIMIT ?)
    """,
    """
    DELETE FROM job_executions WHERE id IN (
        SELECT id FROM job_executions
        WHERE started_at < ? AND finished_at IS NOT NULL LIMIT ?)
    """,
)


# ---------------------------------------------------------------------------------------------
# Status changes shared by several verbs
# ---------------------------------------------------------------------------------------------


def _descendants(conn: sqlite3.Connection, roots: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(id, status, execution_id)`` of every not-final descendant of ``roots``, oldest first."""
    roots_json = _json_list(roots)
    return [
        (row[0], row[1], row[2])
        for row in conn.execute(
            f"""
            WITH RECURSIVE descendant (id) AS (
                SELECT job_id FROM job_dependencies WHERE parent_id {_IN_IDS}
                UNION
                SELECT d.job_id FROM job_dependencies d
                JOIN descendant ON d.parent_id = descendant.id
            )
            SELECT j.id, j.status, j.execution_id FROM jobs j
            WHERE j.id IN (SELECT id FROM descendant) AND j.status IN {_ACTIVE_SQL}
            ORDER BY j.id
            """,
            (roots_json,),
        )
    ]


def _cancel_rows(conn: sqlite3.Connection, rows: Sequence[tuple[str, str, str]], now: int) -> None:
    """Move ``(id, status, execution_id)`` rows to cancelled; a running attempt is cancelled."""
    for _, status, _ in rows:
        check_transition(JobStatus(status), _C)
    conn.executemany(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, updated_at = ?, "
        "lease_expires_at = NULL WHERE id = ?",
        [(now, now, row[0]) for row in rows],
    )
    running = [(now, row[2]) for row in rows if row[1] == _R.value]
    if running:
        conn.executemany(
            "UPDATE job_executions SET status = 'cancelled', finished_at = ? "
            "WHERE id = ? AND status = 'started'",
            running,
        )


def _cancel_descendants(conn: sqlite3.Connection, roots: Sequence[str], now: int) -> list[str]:
    if not roots:
        return []
    rows = _descendants(conn, roots)
    _cancel_rows(conn, rows, now)
    return [row[0] for row in rows]


def _release_children(conn: sqlite3.Connection, parents: Sequence[str], now: int) -> set[str]:
    """Move blocked children of ``parents`` whose parents have all succeeded to pending (or
    scheduled when their own due time is still ahead). Returns the queues they are in."""
    if not parents:
        return set()
    rows = conn.execute(
        f"""
        SELECT c.id, c.scheduled_for, q.name FROM jobs c JOIN job_queues q ON q.id = c.queue_id
        WHERE c.id IN (SELECT d.job_id FROM job_dependencies d WHERE d.parent_id {_IN_IDS})
          AND c.status = 'blocked'
          AND NOT EXISTS (
              SELECT 1 FROM job_dependencies d2 JOIN jobs p ON p.id = d2.parent_id
              WHERE d2.job_id = c.id AND p.status <> 'succeeded')
        """,
        (_json_list(parents),),
    ).fetchall()
    updates = []
    for job_id, scheduled_for, _ in rows:
        target = _S if scheduled_for > now else _P
        check_transition(_B, target)
        updates.append((target.value, now, job_id))
    conn.executemany("UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?", updates)
    return {row[2] for row in rows}


class _Report(Protocol):
    @property
    def job_id(self) -> uuid.UUID: ...
    @property
    def execution_id(self) -> uuid.UUID: ...


_R_ = TypeVar("_R_", bound=_Report)


def _fenced_sql(assignments: str, *columns: str) -> str:
    """The one-statement form of a report: an UPDATE of every job of the batch whose current
    claim the report names, returning the ids it changed.

    The batch is bound as ?1, a JSON array with one ``[job_id, execution_id, *columns]`` array
    per report; ``assignments`` (the SET list) reads a report's own values as ``r.<column>`` and
    may use ?2, ?3, ... for values shared by the batch. ``status = 'processing' AND
    execution_id = r.execution_id`` is the fence.
    """
    names = ("job_id", "execution_id", *columns)
    unpack = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
    return (
        f"WITH r ({', '.join(names)}) AS (SELECT {unpack} FROM json_each(?1)) "
        f"UPDATE jobs SET {assignments} FROM r "
        "WHERE jobs.id = r.job_id AND jobs.status = 'processing' "
        "AND jobs.execution_id = r.execution_id RETURNING jobs.id"
    )


def _fenced_update(
    conn: sqlite3.Connection,
    sql: str,
    ids: Sequence[tuple[str, str]],
    values: Sequence[Sequence[Any]],
    shared: Sequence[Any],
) -> list[int]:
    """Apply a batch of reports; return the positions of those the fence let through.

    ``sql`` comes from :func:`_fenced_sql`; ``ids`` holds each report's ``(job id, execution
    id)`` as text and ``values`` its own columns. A report on a job that is no longer processing
    under the report's execution id changes nothing and is rejected; so is a second report on
    one job in a batch: such a batch (rare) is applied one report at a time, in order, so that
    the first report wins.
    """
    batch = [[*pair, *own] for pair, own in zip(ids, values, strict=True)]
    if len({job_id for job_id, _ in ids}) == len(ids):
        changed = {row[0] for row in conn.execute(sql, (json.dumps(batch), *shared))}
        return [i for i, (job_id, _) in enumerate(ids) if job_id in changed]
    return [
        i
        for i, one in enumerate(batch)
        if conn.execute(sql, (json.dumps([one]), *shared)).fetchall()
    ]


def _split(
    reports: Sequence[_R_], accepted: Sequence[int]
) -> tuple[list[_R_], tuple[uuid.UUID, ...]]:
    """The accepted reports, and the job ids of the rejected ones, both in batch order."""
    taken = set(accepted)
    return (
        [reports[i] for i in accepted],
        tuple(r.job_id for i, r in enumerate(reports) if i not in taken),
    )


def _report_ids(reports: Sequence[_Report]) -> list[tuple[str, str]]:
    return [(str(r.job_id), str(r.execution_id)) for r in reports]


_COMPLETE = _fenced_sql(
    "status = 'succeeded', result = r.result, finished_at = ?2, updated_at = ?2, "
    "lease_expires_at = NULL",
    "result",
)
_RETRY = _fenced_sql(
    "status = 'scheduled', scheduled_for = r.run_at, error = COALESCE(r.error, jobs.error), "
    "attempt = jobs.attempt - r.refund, updated_at = ?2, lease_expires_at = NULL",
    "run_at",
    "error",
    "refund",
)
_FAIL = _fenced_sql(
    "status = 'failed', error = r.error, finished_at = ?2, updated_at = ?2, "
    "lease_expires_at = NULL",
    "error",
)


# ---------------------------------------------------------------------------------------------
# Enqueue preparation (pure Python, before the thread hop)
# ---------------------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    request: NewJob
    id: str
    args: str
    kwargs: str
    headers: str
    scheduled_for: int
    depends_on: tuple[str, ...]


def _bad_job(job_id: str, message: str) -> InvalidJobError:
    return InvalidJobError(f"job {job_id}: {message}")


def _prepare(jobs: Sequence[NewJob], now: int) -> list[_Prepared]:
    """Validate and encode a batch before any database work; raises for the first bad job."""
    prepared: list[_Prepared] = []
    seen: set[str] = set()
    for job in jobs:
        job_id = str(job.id)
        if job_id in seen:
            raise InvalidJobError(f"job id {job_id} appears twice in one enqueue batch")
        seen.add(job_id)
        for value, field in ((job.task, "task"), (job.project, "project"), (job.queue, "queue")):
            if not value or not isinstance(value, str):
                raise _bad_job(job_id, f"{field} must be a non-empty string, got {value!r}")
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
        if job.key is not None and not isinstance(job.key, str):
            raise _bad_job(job_id, f"key must be a string or None, not {job.key!r}")
        if job.scheduled_for is None:
            scheduled_for = now
        else:
            try:
                scheduled_for = _micros(job.scheduled_for, "scheduled_for")
            except (ValueError, TypeError, OverflowError, AttributeError) as exc:
                raise _bad_job(job_id, str(exc)) from exc
        args_json, kwargs_json = job_payload(job)
        if job.headers:
            headers = dict(job.headers)
            if not all(type(k) is str and type(v) is str for k, v in headers.items()):
                raise _bad_job(job_id, "headers must map strings to strings")
            headers_json = encode(headers, what=f"the headers of job {job_id}")
        else:
            headers_json = "{}"
        prepared.append(
            _Prepared(
                request=job,
                id=job_id,
                args=args_json,
                kwargs=kwargs_json,
                headers=headers_json,
                scheduled_for=scheduled_for,
                depends_on=tuple(dict.fromkeys(str(p) for p in job.depends_on))
                if job.depends_on
                else (),
            )
        )
    return prepared


_INSERT_JOB = """
INSERT INTO jobs (
    id, project_id, queue_id, task, status, args, kwargs, priority, attempt, max_attempts,
    timeout, scheduled_for, created_at, updated_at, key, headers, finished_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)
"""

#: The best runnable jobs of one queue, read from the jobs_claim index in claim order so that
#: SQLite stops after LIMIT entries, whatever the backlog. The plan is pinned: INDEXED BY names
#: the index, and the unary ``+`` keeps the due-time test out of the index search, because with
#: statistics (ANALYZE, ``PRAGMA optimize``) the planner otherwise prefers a skip-scan on
#: ``scheduled_for`` followed by a sort of every runnable job of the queue. Parameters: ?3 now,
#: ?4 the queue id, ?5 how many.
_CLAIMABLE = """
SELECT j.rowid FROM jobs j INDEXED BY jobs_claim
WHERE j.queue_id = ?4 AND j.status IN ('pending', 'scheduled') AND +j.scheduled_for <= ?3
ORDER BY j.priority DESC, j.scheduled_for, j.id
LIMIT ?5
"""

#: The same read for the capacity left over, merged across queues in Python (?1 queue id, ?2
#: now, ?3 how many).
_CLAIMABLE_ORDER = """
SELECT j.rowid, j.priority, j.scheduled_for, j.id FROM jobs j INDEXED BY jobs_claim
WHERE j.queue_id = ?1 AND j.status IN ('pending', 'scheduled') AND +j.scheduled_for <= ?2
ORDER BY j.priority DESC, j.scheduled_for, j.id
LIMIT ?3
"""

#: Claim the jobs whose rowids ``{chosen}`` selects, in one statement that returns what the
#: claimed models need: ?1 worker id, ?2 lease end, ?3 now. Each row gets a fresh execution id
#: from ``taskforge_uuid7()`` (see :meth:`SQLiteStorage._mint`).
_CLAIM = """
UPDATE jobs SET status = 'processing', attempt = attempt + 1, execution_id = taskforge_uuid7(),
    worker_id = ?1, lease_expires_at = ?2, started_at = ?3, updated_at = ?3
WHERE rowid IN ({chosen}) AND status IN ('pending', 'scheduled')
RETURNING id, queue_id, task, args, kwargs, priority, attempt, max_attempts, timeout,
    scheduled_for, created_at, key, headers, execution_id, finished_at, result, error
"""
_CLAIM_FROM_QUEUE = _CLAIM.format(chosen=_CLAIMABLE)
_CLAIM_IDS = _CLAIM.format(chosen="SELECT value FROM json_each(?5)")
# Positions in a row returned by _CLAIM.
_C_ID, _C_QUEUE, _C_PRIORITY, _C_ATTEMPT, _C_SCHEDULED_FOR, _C_EXECUTION_ID = 0, 1, 5, 6, 9, 13


# ---------------------------------------------------------------------------------------------
# The storage
# ---------------------------------------------------------------------------------------------


class SQLiteStorage:
    """The :class:`~taskforge_core.protocols.Storage` protocol on a SQLite file (or memory).

    Build it with a ``sqlite:///`` URL (see :func:`~taskforge_backends.sqlite._url.parse_url`
    for the forms and query parameters), then ``await open()``; ``async with`` does both ends.
    """

    capabilities: frozenset[Capability]

    def __init__(self, url: str, config: BackendConfig | None = None) -> None:
        self._settings: SQLiteSettings = parse_url(url)
        self._config = config if config is not None else BackendConfig()
        self._clock = self._config.clock
        self._conn: sqlite3.Connection | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        in_memory = self._settings.in_memory
        self._hub = hub_for(None if in_memory else self._settings.path)
        # Execution ids made by ``taskforge_uuid7()`` during the claim in progress (see _mint).
        self._minted: dict[str, uuid.UUID] = {}
        # A second connection, only for ``PRAGMA data_version`` from the event loop, and on
        # Linux an inotify watch on the WAL with the lock of the task reading it (see
        # wait_for_jobs); all None in memory, where no other process can commit.
        self._version_conn: sqlite3.Connection | None = None
        self._wal_watch: WalWatch | None = None
        self._wal_lock: anyio.Lock | None = None
        self._checkpointer: Checkpointer | None = None
        capabilities = {Capability.LOCAL_WAKEUP, Capability.INJECTABLE_CLOCK, Capability.PRUNE}
        if not in_memory:
            capabilities |= {
                Capability.CROSS_PROCESS_WAKEUP,
                Capability.MULTI_PROCESS,
                Capability.DURABLE,
            }
        self.capabilities = frozenset(capabilities)

    @property
    def path(self) -> str:
        """The absolute path of the database file, or ``:memory:``."""
        return self._settings.path

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<SQLiteStorage {self._settings.path} ({state})>"

    async def __aenter__(self) -> SQLiteStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self) -> int:
        return _micros(self._clock.now(), "clock.now()")

    def _error(self, exc: sqlite3.Error) -> StorageError:
        code = getattr(exc, "sqlite_errorcode", None)
        text = str(exc)
        where = f"SQLite database {self._settings.path}"
        if _is_busy(exc) or (
            code & 0xFF == _SQLITE_CANTOPEN
            if isinstance(code, int)
            else "unable to open" in text.lower()
        ):
            return StorageUnavailableError(f"{where} is unavailable: {text}")
        return StorageError(f"{where} failed: {text}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T], mode: _Mode = "write") -> T:
        """Run ``fn`` on the connection in a worker thread, in one transaction (``write``:
        ``BEGIN IMMEDIATE``; ``read``: a deferred one for a consistent snapshot; ``none``)."""
        if self._conn is None or self._limiter is None:
            raise StorageError(f"the SQLite storage {self._settings.path} is not open; call open()")
        return await anyio.to_thread.run_sync(self._call, fn, mode, limiter=self._limiter)

    def _call(self, fn: Callable[[sqlite3.Connection], T], mode: _Mode) -> T:
        conn = self._conn
        if conn is None:
            raise StorageError(f"the SQLite storage {self._settings.path} is not open")
        try:
            if mode == "none":
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect_watch(self) -> sqlite3.Connection:
        """The connection that notices other processes' commits. No busy timeout: it must never
        block the event loop (a busy database reads as "changed", a spurious wake-up)."""
        try:
            return sqlite3.connect(
                self._settings.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        settings = self._settings
        try:
            conn = sqlite3.connect(
                settings.path,
                timeout=settings.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout * 1000)}")
            if not settings.in_memory:
                _enable_wal(conn, settings.busy_timeout)
                # WAL checkpoints run in a thread of their own (see _checkpoint); this one only
                # if that thread ever falls behind.
                conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}")
            conn.execute(f"PRAGMA synchronous = {settings.synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA temp_store = MEMORY")
            # 4 MiB of page cache: the claim path's pages fit, and the rest comes from the OS's file
            # cache. 32 MiB made a busy worker's resident memory 70 MiB instead of 40, for no
            # measurable speed (drains of 200,000 jobs at 16,500/s either way).
            conn.execute("PRAGMA cache_size = -4096")
            conn.create_function("taskforge_uuid7", 0, self._mint)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        return conn

    def _mint(self) -> str:
        """``taskforge_uuid7()`` in SQL: a new execution id, kept as a :class:`uuid.UUID` for
        the claim in progress so that its models need not parse it back."""
        execution_id = uuid7()
        text = str(execution_id)
        self._minted[text] = execution_id
        return text

    async def open(self) -> None:
        """Connect, set the pragmas, and migrate when ``config.auto_migrate`` is set.
        Opening an open storage does nothing."""
        if self._conn is not None:
            return
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigurationError(
                f"the SQLite backend needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or "
                f"newer (for RETURNING); this Python's sqlite3 module uses SQLite "
                f"{sqlite3.sqlite_version}. Use a Python built against a newer SQLite."
            )
        limiter = anyio.CapacityLimiter(1)
        conn = await anyio.to_thread.run_sync(self._connect, limiter=limiter)
        if not self._settings.in_memory:
            try:
                self._version_conn = await anyio.to_thread.run_sync(self._connect_watch)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(conn.close, limiter=limiter)
                raise
        self._conn, self._limiter = conn, limiter
        if not self._settings.in_memory:
            self._wal_lock = anyio.Lock()
            self._checkpointer = Checkpointer(self._settings.path)
            self._checkpointer.start()
        if self._config.auto_migrate:
            try:
                await self.migrate()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.close()
                raise

    async def close(self) -> None:
        """Close the connection (after any verb in flight). Safe to call twice."""
        conn, limiter = self._conn, self._limiter
        if conn is None or limiter is None:
            return
        self._conn = None
        version_conn, self._version_conn = self._version_conn, None
        if version_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                version_conn.close()
        wal_watch, self._wal_watch = self._wal_watch, None
        if wal_watch is not None:
            with anyio.CancelScope(shield=True):
                await wal_watch.aclose()
        self._hub.notify()  # waiters of this storage return now, not at their next poll
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(checkpointer.stop)

        # No ``PRAGMA optimize`` here: statistics change query plans, and the plans this
        # backend relies on are the ones tested without them (see _CLAIMABLE).
        def shut() -> None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shut, limiter=limiter)

    async def migrate(self) -> list[str]:
        """Apply pending migrations (``migrations/*.sql``); return the names applied."""
        now = self._now()
        return await self._run(lambda conn: apply_migrations(conn, now), "none")

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        now = self._now()
        prepared = _prepare(jobs, now)
        stored, runnable_queues = await self._run(lambda conn: self._enqueue(conn, prepared, now))
        if runnable_queues:
            self._hub.notify(runnable_queues)
        return stored

    def _enqueue(
        self, conn: sqlite3.Connection, batch: list[_Prepared], now: int
    ) -> tuple[list[Job], set[str]]:
        # Projects and queues.
        project_ids = {
            slug: _ensure_project(conn, slug, now) for slug in {p.request.project for p in batch}
        }
        queue_ids: dict[tuple[str, str], int] = {}
        for slug, name in {(p.request.project, p.request.queue) for p in batch}:
            found = _queue_id(conn, project_ids[slug], name)
            if found is None:
                if not self._config.create_queues:
                    raise QueueError(
                        f"queue {name!r} does not exist in project {slug!r} "
                        "(queues are not created on demand)"
                    )
                found = _ensure_queue(conn, project_ids[slug], name, now)
            queue_ids[slug, name] = found

        # Idempotency keys: a job whose key exists stands for the request (and so does an
        # earlier member of the batch with the same key).
        existing_keys: dict[tuple[str, str], str] = {}
        keys_by_project: dict[str, set[str]] = {}
        for p in batch:
            if p.request.key is not None:
                keys_by_project.setdefault(p.request.project, set()).add(p.request.key)
        for slug, keys in keys_by_project.items():
            for key, job_id in conn.execute(
                "SELECT key, id FROM jobs "
                f"WHERE project_id = ? AND key IS NOT NULL AND key {_IN_IDS}",
                (project_ids[slug], _json_list(keys)),
            ):
                existing_keys[slug, key] = job_id
        alias: dict[str, str] = {}
        new: list[_Prepared] = []
        for p in batch:
            if p.request.key is not None:
                known = existing_keys.get((p.request.project, p.request.key))
                if known is not None:
                    alias[p.id] = known
                    continue
                existing_keys[p.request.project, p.request.key] = p.id
            alias[p.id] = p.id
            new.append(p)

        # Dependencies: parents are earlier or later members of the batch, or stored jobs of
        # the same project.
        by_id = {p.id: p for p in new}
        parents_of: dict[str, list[str]] = {}
        outside: set[str] = set()
        for p in new:
            parents: list[str] = []
            for given in p.depends_on:
                parent = alias.get(given, given)
                if parent == p.id:
                    raise DependencyError(f"job {p.id} depends on itself")
                if parent not in parents:
                    parents.append(parent)
                if parent not in by_id:
                    outside.add(parent)
            parents_of[p.id] = parents
        stored_parents: dict[str, tuple[str, JobStatus]] = {}
        if outside:
            for job_id, slug, parent_status in conn.execute(
                "SELECT j.id, p.slug, j.status FROM jobs j JOIN projects p ON p.id = j.project_id "
                f"WHERE j.id {_IN_IDS}",
                (_json_list(outside),),
            ):
                stored_parents[job_id] = (slug, JobStatus(parent_status))
        for p in new:
            for parent in parents_of[p.id]:
                project = (
                    by_id[parent].request.project
                    if parent in by_id
                    else stored_parents.get(parent, (None, None))[0]
                )
                if project != p.request.project:
                    raise DependencyError(
                        f"job {p.id} depends on job {parent}, which does not exist in project "
                        f"{p.request.project!r}"
                    )

        # Order the new jobs parents-first; what is left over lies on a cycle.
        order = [p.id for p in new]
        if outside or any(parents_of.values()):
            order = self._parents_first(new, parents_of, by_id)

        # Initial statuses, parents first.
        status: dict[str, JobStatus] = {}
        for job_id in order:
            p = by_id[job_id]
            parents = parents_of[job_id]
            if not parents:
                status[job_id] = _S if p.scheduled_for > now else _P
                continue
            parent_statuses = [status[q] if q in by_id else stored_parents[q][1] for q in parents]
            if any(s in (_F, _C) for s in parent_statuses):
                status[job_id] = _C
            elif all(s == _OK for s in parent_statuses):
                status[job_id] = _S if p.scheduled_for > now else _P
            else:
                status[job_id] = _B
        for target in set(status.values()):
            check_transition(None, target)

        rows = []
        for p in new:
            job = p.request
            project_id = project_ids[job.project]
            rows.append(
                (
                    p.id,
                    project_id,
                    queue_ids[job.project, job.queue],
                    job.task,
                    status[p.id].value,
                    p.args,
                    p.kwargs,
                    job.priority,
                    job.max_attempts,
                    None if job.timeout is None else float(job.timeout),
                    p.scheduled_for,
                    now,
                    now,
                    job.key,
                    p.headers,
                    now if status[p.id] is _C else None,
                )
            )
        try:
            conn.executemany(_INSERT_JOB, rows)
        except sqlite3.IntegrityError as exc:
            if "jobs.id" in str(exc):
                raise InvalidJobError(
                    "a job with one of the batch's ids already exists (ids must be new)"
                ) from exc
            raise
        conn.executemany(
            "INSERT INTO job_dependencies (job_id, parent_id, position) VALUES (?, ?, ?)",
            [
                (job_id, parent, position)
                for job_id, parents in parents_of.items()
                for position, parent in enumerate(parents)
            ],
        )

        made: dict[str, Job] = {}
        at = _time(now)
        for p in new:
            job = p.request
            args, kwargs = read_back(job, p.args, p.kwargs)
            made[p.id] = Job(
                id=job.id,
                project=job.project,
                queue=job.queue,
                task=job.task,
                status=status[p.id],
                args=args,
                kwargs=kwargs,
                priority=job.priority,
                attempt=0,
                max_attempts=job.max_attempts,
                timeout=None if job.timeout is None else float(job.timeout),
                scheduled_for=at if p.scheduled_for == now else _time(p.scheduled_for),
                created_at=at,
                updated_at=at,
                depends_on=tuple(uuid.UUID(q) for q in parents_of[p.id]) if p.depends_on else (),
                key=job.key,
                headers=dict(job.headers),
                finished_at=at if status[p.id] is _C else None,
            )
        missing = {alias[p.id] for p in batch} - made.keys()
        if missing:
            made.update(_load_jobs(conn, missing))
        runnable = {p.request.queue for p in new if status[p.id] in (_P, _S)}
        return [made[alias[p.id]] for p in batch], runnable

    @staticmethod
    def _parents_first(
        new: list[_Prepared], parents_of: dict[str, list[str]], by_id: dict[str, _Prepared]
    ) -> list[str]:
        """The new jobs' ids, every parent of the batch before its children; raises
        :class:`DependencyError` naming the jobs on (or behind) a cycle."""
        waiting = {p.id: sum(1 for q in parents_of[p.id] if q in by_id) for p in new}
        children: dict[str, list[str]] = {}
        for p in new:
            for parent in parents_of[p.id]:
                if parent in by_id:
                    children.setdefault(parent, []).append(p.id)
        ready = deque(job_id for job_id, count in waiting.items() if count == 0)
        order: list[str] = []
        while ready:
            job_id = ready.popleft()
            order.append(job_id)
            for child in children.get(job_id, ()):
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        if len(order) < len(new):
            cycle = sorted(job_id for job_id, count in waiting.items() if count > 0)
            raise DependencyError(f"the dependencies of jobs {', '.join(cycle)} form a cycle")
        return order

    # -- claim -------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedJob]:
        if request.limit <= 0 or not request.shares:
            return []
        lease = request.lease // _MICROSECOND
        if lease < 0:
            raise ValueError(f"a lease cannot be negative, got {request.lease}")
        now = self._now()
        return await self._run(lambda conn: self._claim(conn, request, now, lease))

    def _claim(
        self, conn: sqlite3.Connection, request: ClaimRequest, now: int, lease: int
    ) -> list[ClaimedJob]:
        # Only pending and scheduled jobs are read, and both may move to processing.
        check_transition(_P, _R)
        check_transition(_S, _R)
        queues = dict(
            conn.execute(
                "SELECT q.name, q.id FROM job_queues q JOIN projects p ON p.id = q.project_id "
                f"WHERE p.slug = ? AND q.paused = 0 AND q.name {_IN_IDS}",
                (request.project, _json_list({share.name for share in request.shares})),
            ).fetchall()
        )
        if not queues:
            return []
        worker = str(request.worker_id)
        expires = now + lease
        minted = self._minted
        minted.clear()
        rows: list[Any] = []
        exhausted: set[int] = set()
        # First each share from its own queue, up to its quota ...
        for share in request.shares:
            room = request.limit - len(rows)
            if room <= 0:
                break
            queue_id = queues.get(share.name)
            if queue_id is None or share.limit <= 0:
                continue
            want = min(share.limit, room)
            got = conn.execute(_CLAIM_FROM_QUEUE, (worker, expires, now, queue_id, want)).fetchall()
            if len(got) < want:  # nothing else is runnable in this queue right now
                exhausted.add(queue_id)
            rows += got
        # ... then the capacity left over from all the listed queues together, best first.
        room = request.limit - len(rows)
        if room > 0:
            pool = [
                candidate
                for queue_id in set(queues.values()) - exhausted
                for candidate in conn.execute(_CLAIMABLE_ORDER, (queue_id, now, room))
            ]
            if pool:
                pool.sort(key=lambda c: (-c[1], c[2], c[3]))
                chosen = json.dumps([c[0] for c in pool[:room]])
                rows += conn.execute(_CLAIM_IDS, (worker, expires, now, None, chosen)).fetchall()
        if not rows:
            return []
        rows.sort(key=lambda r: (-r[_C_PRIORITY], r[_C_SCHEDULED_FOR], r[_C_ID]))
        conn.executemany(
            "INSERT INTO job_executions (id, job_id, attempt, worker_id, status, started_at) "
            "VALUES (?, ?, ?, ?, 'started', ?)",
            [(r[_C_EXECUTION_ID], r[_C_ID], r[_C_ATTEMPT], worker, now) for r in rows],
        )
        parents = _parents_of(conn, _json_list(r[_C_ID] for r in rows))
        reader = _Reader()
        names = {queue_id: name for name, queue_id in queues.items()}
        claimed = [
            reader.claimed(row, request, names[row[_C_QUEUE]], parents, minted, now, expires)
            for row in rows
        ]
        minted.clear()
        return claimed

    # -- reports -----------------------------------------------------------------------------

    async def complete(self, completions: Sequence[Completion]) -> AckResult:
        if not completions:
            return AckResult()
        now = self._now()
        ids = _report_ids(completions)
        results = [
            (encode(c.result, what=f"the result of job {c.job_id}"),)
            if c.result is not None
            else ("null",)
            for c in completions
        ]
        check_transition(_R, _OK)

        def run(conn: sqlite3.Connection) -> tuple[AckResult, set[str]]:
            accepted = _fenced_update(conn, _COMPLETE, ids, results, (now,))
            done = [ids[i] for i in accepted]
            conn.execute(
                "UPDATE job_executions SET status = 'succeeded', finished_at = ? "
                f"WHERE id {_IN_IDS}",
                (now, _json_list(execution_id for _, execution_id in done)),
            )
            released = _release_children(conn, [job_id for job_id, _ in done], now)
            taken, rejected = _split(completions, accepted)
            return AckResult(accepted=tuple(c.job_id for c in taken), rejected=rejected), released

        ack, released = await self._run(run)
        if released:
            self._hub.notify(released)
        return ack

    async def retry(self, retries: Sequence[RetryRequest]) -> AckResult:
        if not retries:
            return AckResult()
        now = self._now()
        ids = _report_ids(retries)
        errors = [encode_error(r.error) for r in retries]
        values = [
            (_micros(r.run_at, "RetryRequest.run_at"), error, 0 if r.consume_attempt else 1)
            for r, error in zip(retries, errors, strict=True)
        ]
        check_transition(_R, _S)

        def run(conn: sqlite3.Connection) -> tuple[AckResult, set[str]]:
            accepted, rejected = _split(retries, _fenced_update(conn, _RETRY, ids, values, (now,)))
            outcome = {True: ExecutionStatus.RETRYING.value, False: ExecutionStatus.DEFERRED.value}
            conn.executemany(
                "UPDATE job_executions SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                [
                    (outcome[r.consume_attempt], now, encode_error(r.error), str(r.execution_id))
                    for r in accepted
                ],
            )
            queues = {
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT q.name FROM jobs j JOIN job_queues q ON q.id = j.queue_id "
                    f"WHERE j.id {_IN_IDS}",
                    (_json_list(str(r.job_id) for r in accepted),),
                )
            }
            ack = AckResult(accepted=tuple(r.job_id for r in accepted), rejected=rejected)
            return ack, queues

        ack, queues = await self._run(run)
        if queues:
            self._hub.notify(queues)
        return ack

    async def fail(self, failures: Sequence[Failure]) -> AckResult:
        if not failures:
            return AckResult()
        now = self._now()
        ids = _report_ids(failures)
        errors = [(encode_error(f.error),) for f in failures]
        check_transition(_R, _F)

        def run(conn: sqlite3.Connection) -> AckResult:
            accepted, rejected = _split(failures, _fenced_update(conn, _FAIL, ids, errors, (now,)))
            conn.executemany(
                "UPDATE job_executions SET status = 'failed', finished_at = ?, error = ? "
                "WHERE id = ?",
                [(now, encode_error(f.error), str(f.execution_id)) for f in accepted],
            )
            _cancel_descendants(conn, [str(f.job_id) for f in accepted], now)
            return AckResult(accepted=tuple(f.job_id for f in accepted), rejected=rejected)

        return await self._run(run)

    # -- leases ------------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: uuid.UUID, execution_ids: Sequence[uuid.UUID], lease: dt.timedelta
    ) -> tuple[WorkerStatus, list[uuid.UUID]]:
        lease_us = lease // _MICROSECOND
        if lease_us < 0:
            raise ValueError(f"a lease cannot be negative, got {lease}")
        now = self._now()
        worker = str(worker_id)
        wanted = _json_list(str(e) for e in execution_ids)

        def run(conn: sqlite3.Connection) -> tuple[WorkerStatus, list[uuid.UUID]]:
            conn.execute("UPDATE workers SET last_heartbeat_at = ? WHERE id = ?", (now, worker))
            row = conn.execute("SELECT status FROM workers WHERE id = ?", (worker,)).fetchone()
            status = WorkerStatus.RUNNING if row is None else WorkerStatus(row[0])
            if not execution_ids:
                return status, []
            # From each execution to its job (primary keys both), which this worker must still
            # hold under that execution.
            held = dict(
                conn.execute(
                    "SELECT e.id, e.job_id FROM job_executions e JOIN jobs j ON j.id = e.job_id "
                    f"WHERE e.id {_IN_IDS} AND j.status = 'processing' "
                    "AND j.execution_id = e.id AND j.worker_id = ?",
                    (wanted, worker),
                ).fetchall()
            )
            if held:
                conn.execute(
                    f"UPDATE jobs SET lease_expires_at = ? WHERE id {_IN_IDS}",
                    (now + lease_us, _json_list(held.values())),
                )
            return status, [e for e in execution_ids if str(e) not in held]

        return await self._run(run)

    async def reclaim_expired(self) -> list[uuid.UUID]:
        now = self._now()

        def run(conn: sqlite3.Connection) -> list[uuid.UUID]:
            rows = conn.execute(
                "SELECT id, attempt, max_attempts, execution_id, worker_id FROM jobs "
                "WHERE status = 'processing' AND lease_expires_at < ? ORDER BY id",
                (now,),
            ).fetchall()
            if not rows:
                return []
            job_rows, execution_rows, failed = [], [], []
            for job_id, attempt, max_attempts, execution_id, worker_id in rows:
                target = _P if attempt < max_attempts else _F
                check_transition(_R, target)
                error = encode_error(
                    ErrorInfo(
                        type="LeaseExpired",
                        message=(
                            f"attempt {attempt} of {max_attempts} was lost: the lease of worker "
                            f"{worker_id} expired before it reported"
                        ),
                    )
                )
                job_rows.append((target.value, error, now if target is _F else None, now, job_id))
                execution_rows.append((now, error, execution_id))
                if target is _F:
                    failed.append(job_id)
            conn.executemany(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, updated_at = ?, "
                "lease_expires_at = NULL WHERE id = ?",
                job_rows,
            )
            conn.executemany(
                "UPDATE job_executions SET status = 'lost', finished_at = ?, error = ? "
                "WHERE id = ?",
                execution_rows,
            )
            _cancel_descendants(conn, failed, now)
            return [uuid.UUID(row[0]) for row in rows]

        reclaimed = await self._run(run)
        if reclaimed:
            self._hub.notify()
        return reclaimed

    # -- cancel, replay, purge ---------------------------------------------------------------

    async def cancel(self, job_ids: Sequence[uuid.UUID], project: str) -> list[uuid.UUID]:
        if not job_ids:
            return []
        now = self._now()
        wanted = [str(i) for i in job_ids]

        def run(conn: sqlite3.Connection) -> list[uuid.UUID]:
            project_id = _project_id(conn, project)
            if project_id is None:
                return []
            found = {
                row[0]: (row[0], row[1], row[2])
                for row in conn.execute(
                    f"SELECT id, status, execution_id FROM jobs WHERE id {_IN_IDS} "
                    f"AND project_id = ? AND status IN {_ACTIVE_SQL}",
                    (_json_list(wanted), project_id),
                )
            }
            targets = [found[i] for i in dict.fromkeys(wanted) if i in found]
            descendants = [r for r in _descendants(conn, found) if r[0] not in found]
            everything = targets + descendants
            _cancel_rows(conn, everything, now)
            return [uuid.UUID(row[0]) for row in everything]

        return await self._run(run)

    async def replay(self, selection: JobFilter) -> ReplayResult:
        now = self._now()

        def run(conn: sqlite3.Connection) -> ReplayResult:
            project_id = _project_id(conn, selection.project)
            if project_id is None:
                return ReplayResult()
            where, params = _filter_sql(selection, project_id)
            matching = conn.execute(
                f"SELECT j.id, j.status FROM jobs j WHERE {where} ORDER BY j.id", params
            ).fetchall()
            skipped: dict[str, str] = {}
            current: dict[str, JobStatus] = {}
            for job_id, status in matching:
                if status in (_F.value, _C.value):
                    current[job_id] = JobStatus(status)
                else:
                    skipped[job_id] = f"it is {status}; only failed or cancelled jobs are replayed"
            parents: dict[str, list[tuple[str, JobStatus]]] = {}
            if current:
                for job_id, parent_id, status in conn.execute(
                    f"SELECT d.job_id, d.parent_id, p.status FROM job_dependencies d "
                    f"JOIN jobs p ON p.id = d.parent_id WHERE d.job_id {_IN_IDS}",
                    (_json_list(current),),
                ):
                    parents.setdefault(job_id, []).append((parent_id, JobStatus(status)))
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
            updates = []
            replayed = []
            for job_id in sorted(chosen):
                waits = any(status is not _OK for _, status in parents.get(job_id, ()))
                target = _B if waits else _P
                check_transition(current[job_id], target)
                updates.append((target.value, now, now, job_id))
                replayed.append(uuid.UUID(job_id))
            conn.executemany(
                "UPDATE jobs SET status = ?, attempt = 0, error = NULL, result = NULL, "
                "lease_expires_at = NULL, finished_at = NULL, scheduled_for = ?, updated_at = ? "
                "WHERE id = ?",
                updates,
            )
            return ReplayResult(
                replayed=tuple(replayed),
                skipped=tuple((uuid.UUID(k), v) for k, v in sorted(skipped.items())),
            )

        result = await self._run(run)
        if result.replayed:
            self._hub.notify()
        return result

    async def purge(self, selection: JobFilter) -> int:
        def run(conn: sqlite3.Connection) -> int:
            project_id = _project_id(conn, selection.project)
            if project_id is None:
                return 0
            where, params = _filter_sql(selection, project_id)
            return _delete_final_jobs(conn, where, params)

        return await self._run(run)

    async def prune(self, policy: RetentionPolicy | None = None) -> PruneReport:
        """Apply a retention policy to every project: delete finished jobs older than their
        status's age and history (attempts, log lines) older than ``policy.history``.

        Deletes in batches of :data:`PRUNE_BATCH` rows, one short write transaction each, so
        workers sharing the file are never locked out for long.
        """
        policy = policy if policy is not None else RetentionPolicy()
        now = self._now()
        purged: dict[JobStatus, int] = {}
        for status, age in policy.ages().items():
            where = "j.status = ? AND j.updated_at < ?"
            params = [status.value, now - _age_micros(age)]
            purged[status] = await self._in_batches(
                functools.partial(_delete_final_jobs, where=where, params=params, limit=PRUNE_BATCH)
            )
        history_rows = 0
        if policy.history is not None:
            cutoff = now - _age_micros(policy.history)
            for statement in _PRUNE_HISTORY:
                history_rows += await self._in_batches(
                    functools.partial(_delete_rows, sql=statement, params=(cutoff, PRUNE_BATCH))
                )
        return PruneReport(purged=purged, history_rows=history_rows)

    async def _in_batches(self, delete: Callable[[sqlite3.Connection], int]) -> int:
        """Run ``delete`` (which removes at most PRUNE_BATCH rows) until it removes fewer."""
        total = 0
        while True:
            deleted = await self._run(delete)
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # -- reading jobs ------------------------------------------------------------------------

    async def get_jobs(self, job_ids: Sequence[uuid.UUID], project: str) -> list[Job]:
        if not job_ids:
            return []
        wanted = [str(i) for i in job_ids]

        def run(conn: sqlite3.Connection) -> list[Job]:
            project_id = _project_id(conn, project)
            if project_id is None:
                return []
            found = _load_jobs(conn, set(wanted), project_id)
            return [found[i] for i in wanted if i in found]

        return await self._run(run, "read")

    async def list_jobs(self, selection: JobFilter, *, limit: int, cursor: str | None) -> Page:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        after: str | None = None
        if cursor is not None:
            try:
                after = str(uuid.UUID(cursor))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{cursor!r} is not a cursor returned by list_jobs") from exc

        def run(conn: sqlite3.Connection) -> Page:
            project_id = _project_id(conn, selection.project)
            if project_id is None:
                return Page(items=())
            where, params = _filter_sql(selection, project_id)
            if after is not None:
                where += " AND j.id < ?"
                params.append(after)
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE {where} ORDER BY j.id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            jobs = _jobs_from_rows(conn, rows[:limit])
            return Page(items=tuple(jobs), next_cursor=str(jobs[-1].id) if more else None)

        return await self._run(run, "read")

    # -- queues ------------------------------------------------------------------------------

    async def queue_stats(self, project: str) -> list[QueueStats]:
        def run(conn: sqlite3.Connection) -> list[QueueStats]:
            project_id = _project_id(conn, project)
            if project_id is None:
                return []
            stats: dict[str, tuple[bool, dict[JobStatus, int]]] = {}
            for name, paused, status, count in conn.execute(
                "SELECT q.name, q.paused, j.status, count(j.status) FROM job_queues q "
                "LEFT JOIN jobs j ON j.queue_id = q.id WHERE q.project_id = ? "
                "GROUP BY q.id, j.status",
                (project_id,),
            ):
                entry = stats.setdefault(name, (bool(paused), dict.fromkeys(JobStatus, 0)))
                if status is not None:
                    entry[1][JobStatus(status)] = int(count)
            return [
                QueueStats(project=project, queue=name, paused=paused, counts=counts)
                for name, (paused, counts) in sorted(stats.items())
            ]

        return await self._run(run, "read")

    async def set_queue_paused(self, project: str, queue: str, paused: bool) -> Queue:
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError(f"a queue needs a non-empty name, got {queue!r}")
        now = self._now()

        def run(conn: sqlite3.Connection) -> Queue:
            project_id = _ensure_project(conn, project, now)
            conn.execute(
                "INSERT INTO job_queues (project_id, name, paused, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project_id, name) DO UPDATE SET paused = excluded.paused",
                (project_id, queue, int(bool(paused)), now),
            )
            return Queue(project=project, name=queue, paused=bool(paused))

        result = await self._run(run)
        if not paused:
            self._hub.notify([queue])
        return result

    async def list_queues(self, project: str) -> list[Queue]:
        def run(conn: sqlite3.Connection) -> list[Queue]:
            return [
                Queue(project=project, name=name, paused=bool(paused))
                for name, paused in conn.execute(
                    "SELECT q.name, q.paused FROM job_queues q JOIN projects p "
                    "ON p.id = q.project_id WHERE p.slug = ? ORDER BY q.name",
                    (project,),
                )
            ]

        return await self._run(run, "read")

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
        now = self._now()
        started = now if worker.started_at is None else _micros(worker.started_at, "started_at")
        beat = (
            now
            if worker.last_heartbeat_at is None
            else _micros(worker.last_heartbeat_at, "last_heartbeat_at")
        )
        worker_id = str(worker.id)

        def run(conn: sqlite3.Connection) -> None:
            project_id = _ensure_project(conn, worker.project, now)
            conn.execute(
                """
                INSERT INTO workers (id, project_id, name, hostname, pid, concurrency, status,
                                     started_at, last_heartbeat_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    project_id = excluded.project_id, name = excluded.name,
                    hostname = excluded.hostname, pid = excluded.pid,
                    concurrency = excluded.concurrency, status = excluded.status,
                    started_at = excluded.started_at,
                    last_heartbeat_at = excluded.last_heartbeat_at
                """,
                (
                    worker_id,
                    project_id,
                    worker.name,
                    worker.hostname,
                    worker.pid,
                    worker.concurrency,
                    WorkerStatus(worker.status).value,
                    started,
                    beat,
                ),
            )
            conn.execute("DELETE FROM queue_worker_assignments WHERE worker_id = ?", (worker_id,))
            conn.executemany(
                "INSERT INTO queue_worker_assignments (worker_id, queue_id, weight) "
                "VALUES (?, ?, ?) ON CONFLICT (worker_id, queue_id) "
                "DO UPDATE SET weight = excluded.weight",
                [
                    (worker_id, _ensure_queue(conn, project_id, a.queue, now), a.weight)
                    for a in worker.queues
                ],
            )

        await self._run(run)

    async def set_worker_status(self, worker_id: uuid.UUID, status: WorkerStatus) -> None:
        value = WorkerStatus(status).value
        await self._run(
            lambda conn: conn.execute(
                "UPDATE workers SET status = ? WHERE id = ?", (value, str(worker_id))
            )
        )

    async def list_workers(self, project: str) -> list[WorkerInfo]:
        def run(conn: sqlite3.Connection) -> list[WorkerInfo]:
            project_id = _project_id(conn, project)
            if project_id is None:
                return []
            assignments: dict[str, list[QueueWorkerAssignment]] = {}
            for worker_id, queue, weight in conn.execute(
                "SELECT a.worker_id, q.name, a.weight FROM queue_worker_assignments a "
                "JOIN job_queues q ON q.id = a.queue_id JOIN workers w ON w.id = a.worker_id "
                "WHERE w.project_id = ? ORDER BY q.name",
                (project_id,),
            ):
                assignments.setdefault(worker_id, []).append(
                    QueueWorkerAssignment(
                        worker_id=uuid.UUID(worker_id), queue=queue, weight=weight
                    )
                )
            return [
                WorkerInfo(
                    id=uuid.UUID(row[0]),
                    name=row[1],
                    hostname=row[2],
                    pid=row[3],
                    concurrency=row[4],
                    project=project,
                    status=WorkerStatus(row[5]),
                    queues=tuple(assignments.get(row[0], ())),
                    started_at=_time(row[6]),
                    last_heartbeat_at=_opt_time(row[7]),
                )
                for row in conn.execute(
                    "SELECT id, name, hostname, pid, concurrency, status, started_at, "
                    "last_heartbeat_at FROM workers WHERE project_id = ? ORDER BY name, id",
                    (project_id,),
                )
            ]

        return await self._run(run, "read")

    # -- history -----------------------------------------------------------------------------

    async def list_executions(self, job_id: uuid.UUID) -> list[Execution]:
        def run(conn: sqlite3.Connection) -> list[Execution]:
            return [
                Execution(
                    id=uuid.UUID(row[0]),
                    job_id=job_id,
                    attempt=row[1],
                    worker_id=_opt_uuid(row[2]),
                    status=ExecutionStatus(row[3]),
                    started_at=_time(row[4]),
                    finished_at=_opt_time(row[5]),
                    error=decode_error(row[6]),
                )
                for row in conn.execute(
                    "SELECT id, attempt, worker_id, status, started_at, finished_at, error "
                    "FROM job_executions WHERE job_id = ? ORDER BY started_at, id",
                    (str(job_id),),
                )
            ]

        return await self._run(run, "none")

    async def add_logs(self, entries: Sequence[ExecutionLog]) -> None:
        if not entries:
            return
        rows = [
            (
                str(e.job_id),
                str(e.execution_id),
                _micros(e.at, "ExecutionLog.at"),
                e.level,
                e.message,
                _encode_fields(e.fields),
                str(e.job_id),
            )
            for e in entries
        ]

        def run(conn: sqlite3.Connection) -> None:
            # Lines of a job purged meanwhile are dropped rather than failing the batch.
            conn.executemany(
                "INSERT INTO execution_logs (job_id, execution_id, at, level, message, fields) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?)",
                rows,
            )

        await self._run(run)

    async def list_logs(self, job_id: uuid.UUID) -> list[ExecutionLog]:
        def run(conn: sqlite3.Connection) -> list[ExecutionLog]:
            return [
                ExecutionLog(
                    execution_id=uuid.UUID(row[0]),
                    job_id=job_id,
                    at=_time(row[1]),
                    level=row[2],
                    message=row[3],
                    fields=decode(row[4]),
                )
                for row in conn.execute(
                    "SELECT execution_id, at, level, message, fields FROM execution_logs "
                    "WHERE job_id = ? ORDER BY at, id",
                    (str(job_id),),
                )
            ]

        return await self._run(run, "none")

    # -- wake-ups ----------------------------------------------------------------------------

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when jobs may have become runnable in ``queues`` (any queue if empty): at once
        when this process enqueued or released some, within ``poll_interval`` when another
        process committed anything, else after ``timeout`` seconds. May return spuriously.

        Other processes' commits are noticed with ``PRAGMA data_version`` on a connection of
        its own, read straight from the event loop: it touches only the shared WAL index (about
        3 microseconds), so polling every few milliseconds costs an idle worker well under 1 %
        of a core, where a thread hop per poll cost several.
        """
        if self._conn is None:
            raise StorageError(f"the SQLite storage {self._settings.path} is not open; call open()")
        if not timeout > 0:
            await anyio.lowlevel.checkpoint()
            return
        waiter = Waiter(queues)
        self._hub.add(waiter)
        try:
            with anyio.move_on_after(timeout):
                version = self._data_version()
                if version is None:  # in memory: only this process commits
                    await waiter.event.wait()
                    return
                if self._wal_watch is None:  # the WAL file exists from the first commit on
                    self._wal_watch = open_wal_watch(self._settings.path)
                if self._wal_watch is not None:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._watch_wal, version)
                        await waiter.event.wait()
                        tg.cancel_scope.cancel()
                    return
                while True:
                    with anyio.move_on_after(self._settings.poll_interval):
                        await waiter.event.wait()
                    if waiter.event.is_set() or self._data_version() != version:
                        return
        finally:
            self._hub.remove(waiter)

    async def _watch_wal(self, version: int) -> None:
        """Wake every waiter of this process (through the hub) once another connection
        committed: the WAL was written and the data version moved. One waiting task at a time
        reads the watch; the others wait for the lock and are woken with everyone. The version
        is also read every :data:`WATCHED_POLL` seconds in case an event is ever missed."""
        watch, lock = self._wal_watch, self._wal_lock
        if watch is None or lock is None:  # closed meanwhile
            self._hub.notify()
            return
        async with lock:
            try:
                while True:
                    for delay in _SETTLE_DELAYS:
                        if delay:  # a write meanwhile (another commit) ends the pause at once
                            with anyio.move_on_after(delay):
                                await watch.wait()
                        else:
                            await anyio.lowlevel.checkpoint()
                        if self._data_version() != version:
                            self._hub.notify()
                            return
                    with anyio.move_on_after(WATCHED_POLL):
                        await watch.wait()
            except (OSError, RuntimeError, anyio.ClosedResourceError):  # closed meanwhile
                self._hub.notify()

    def _data_version(self) -> int | None:
        """``PRAGMA data_version`` of the watch connection; None without one (in memory, or
        closed meanwhile), -1 when the database is busy (so the caller wakes up and claims)."""
        conn = self._version_conn
        if conn is None:
            return None
        try:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return -1
