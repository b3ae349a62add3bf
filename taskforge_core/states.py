"""The job state machine: every status, and the one table of allowed moves between them.

Backends apply this table; they never invent transitions of their own. A move that is not in
:data:`TRANSITIONS` is a bug and :func:`check_transition` raises for it.
"""

from __future__ import annotations

import enum

from taskforge_core.errors import InvalidTransitionError

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "RUNNABLE_STATUSES",
    "TRANSITIONS",
    "Event",
    "ExecutionStatus",
    "JobStatus",
    "Transition",
    "check_transition",
    "mermaid_diagram",
]


class JobStatus(enum.StrEnum):
    """Where a job is in its life. Each value says who moves a job into it."""

    #: Runnable now. Set by enqueue, by the release of a blocked job, by a lost lease with
    #: attempts left, and by a replay.
    PENDING = "pending"
    #: Runnable once ``scheduled_for`` has passed. Set by a delayed enqueue and by a retry.
    SCHEDULED = "scheduled"
    #: Waiting for its parents to succeed. Set by enqueue with ``depends_on``.
    BLOCKED = "blocked"
    #: Claimed by a worker, which holds a lease on it. Set by a claim.
    PROCESSING = "processing"
    #: The handler returned; the result is stored. Final.
    SUCCEEDED = "succeeded"
    #: Attempts are exhausted or the error was not retryable: the job is in the dead-letter
    #: queue. Final until replayed.
    FAILED = "failed"
    #: Cancelled by a user, or because a parent failed or was cancelled. Final until replayed.
    CANCELLED = "cancelled"


class ExecutionStatus(enum.StrEnum):
    """The outcome of one attempt (one claim) of a job."""

    STARTED = "started"  #: the attempt is running
    SUCCEEDED = "succeeded"  #: the handler returned
    RETRYING = "retrying"  #: the handler raised and the job will be tried again
    DEFERRED = "deferred"  #: given back without using up an attempt (rate limit, drain)
    FAILED = "failed"  #: the handler raised and the job is dead-lettered
    LOST = "lost"  #: the lease expired before the worker reported
    CANCELLED = "cancelled"  #: the job was cancelled while this attempt ran


class Event(enum.StrEnum):
    """Why a job changes status; each transition in the table is labelled with one."""

    ENQUEUE = "enqueue"
    RELEASE = "release"
    CLAIM = "claim"
    COMPLETE = "complete"
    RETRY = "retry"
    FAIL = "fail"
    EXPIRE = "expire"
    CANCEL = "cancel"
    REPLAY = "replay"


class Transition(tuple[Event, "JobStatus | None", JobStatus]):
    """One allowed move: ``(event, from_status, to_status)``; ``from_status`` None means new."""

    __slots__ = ()

    def __new__(cls, event: Event, source: JobStatus | None, target: JobStatus) -> Transition:
        return super().__new__(cls, (event, source, target))

    @property
    def event(self) -> Event:
        return self[0]

    @property
    def source(self) -> JobStatus | None:
        return self[1]

    @property
    def target(self) -> JobStatus:
        return self[2]


_P, _S, _B = JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED
_R, _OK, _F, _C = JobStatus.PROCESSING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED

#: Every allowed move. Order only matters for the generated diagram.
TRANSITIONS: tuple[Transition, ...] = (
    Transition(Event.ENQUEUE, None, _P),
    Transition(Event.ENQUEUE, None, _S),
    Transition(Event.ENQUEUE, None, _B),
    # A job enqueued after one of its parents already failed is cancelled straight away.
    Transition(Event.ENQUEUE, None, _C),
    Transition(Event.RELEASE, _B, _P),
    # A released child whose own delay has not yet passed waits as scheduled.
    Transition(Event.RELEASE, _B, _S),
    Transition(Event.CANCEL, _B, _C),
    Transition(Event.CLAIM, _P, _R),
    Transition(Event.CLAIM, _S, _R),
    Transition(Event.COMPLETE, _R, _OK),
    Transition(Event.RETRY, _R, _S),
    Transition(Event.FAIL, _R, _F),
    Transition(Event.EXPIRE, _R, _P),
    Transition(Event.EXPIRE, _R, _F),
    Transition(Event.CANCEL, _P, _C),
    Transition(Event.CANCEL, _S, _C),
    Transition(Event.CANCEL, _R, _C),
    Transition(Event.REPLAY, _F, _P),
    Transition(Event.REPLAY, _C, _P),
    # Replaying a job whose parents are replayed in the same call waits for them again.
    Transition(Event.REPLAY, _F, _B),
    Transition(Event.REPLAY, _C, _B),
)

_ALLOWED: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    (t.source, t.target) for t in TRANSITIONS
)

#: Statuses a worker may claim from (when due).
RUNNABLE_STATUSES: frozenset[JobStatus] = frozenset({_P, _S})
#: Statuses a job stays in until something outside the worker acts (replay, pruning).
FINAL_STATUSES: frozenset[JobStatus] = frozenset({_OK, _F, _C})
#: Statuses of a job that is still on its way.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({_P, _S, _B, _R})


def check_transition(source: JobStatus | None, target: JobStatus) -> None:
    """Raise :class:`InvalidTransitionError` unless the table allows ``source -> target``."""
    if (source, target) not in _ALLOWED:
        start = source.value if source is not None else "(new)"
        raise InvalidTransitionError(f"a job cannot move from {start} to {target.value}")


def mermaid_diagram() -> str:
    """Render :data:`TRANSITIONS` as a mermaid state diagram (the docs embed this output)."""
    lines = ["stateDiagram-v2"]
    for transition in TRANSITIONS:
        start = "[*]" if transition.source is None else transition.source.value
        lines.append(f"    {start} --> {transition.target.value}: {transition.event.value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - prints the diagram for docs/concepts.md
    print(mermaid_diagram(), end="")
