"""How long finished jobs and their history are kept, and the storage verb that enforces it.

A job queue that keeps every finished job forever slows down and fills its disk. Storage
backends that can delete old data implement :class:`Prunable`; workers call
:meth:`Prunable.prune` every ``prune_every`` seconds (see :class:`~taskforge_core.worker.Worker`)
and operators can run ``taskforge prune``. Pruning is safe from several processes at once and
while workers run: it never deletes an active job nor a job an active job depends on.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from taskforge_core.errors import ConfigurationError
from taskforge_core.protocols import Capability
from taskforge_core.states import JobStatus

if TYPE_CHECKING:
    from taskforge_core.clock import Clock
    from taskforge_core.protocols import Storage

__all__ = [
    "Prunable",
    "PruneReport",
    "RetentionPolicy",
    "as_prunable",
    "describe",
    "prune_periodically",
]

logger = logging.getLogger("taskforge.retention")

#: A worker's first prune comes within this many seconds of its start (or ``prune_every``).
FIRST_PRUNE_WITHIN = 300.0


def _age(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dt.timedelta) or value < dt.timedelta(0):
        raise ConfigurationError(
            f"RetentionPolicy.{attribute.name} must be a timedelta >= 0 or None (keep forever), "
            f"got {value!r}"
        )


def _ahead(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"RetentionPolicy.partitions_ahead must be an integer >= 0, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """What :meth:`Prunable.prune` keeps. ``None`` keeps forever.

    The defaults keep the dead-letter queue until someone looks at it, and a week of
    succeeded and cancelled jobs for debugging.
    """

    #: Execution and log history (attempts, ``current_job().log`` lines) older than this is
    #: deleted; on PostgreSQL whole daily partitions are dropped.
    history: dt.timedelta | None = attrs.field(default=dt.timedelta(days=30), validator=_age)
    #: Succeeded jobs last updated longer ago are deleted (with their history).
    succeeded: dt.timedelta | None = attrs.field(default=dt.timedelta(days=7), validator=_age)
    #: Failed jobs (the dead-letter queue) last updated longer ago are deleted.
    failed: dt.timedelta | None = attrs.field(default=None, validator=_age)
    #: Cancelled jobs last updated longer ago are deleted.
    cancelled: dt.timedelta | None = attrs.field(default=dt.timedelta(days=7), validator=_age)
    #: Backends with time-partitioned history create this many days of partitions ahead.
    partitions_ahead: int = attrs.field(default=7, validator=_ahead)

    def ages(self) -> dict[JobStatus, dt.timedelta]:
        """The finished statuses this policy deletes, with the age after which it does."""
        pairs = (
            (JobStatus.SUCCEEDED, self.succeeded),
            (JobStatus.FAILED, self.failed),
            (JobStatus.CANCELLED, self.cancelled),
        )
        return {status: age for status, age in pairs if age is not None}


@attrs.frozen(kw_only=True)
class PruneReport:
    """What :meth:`Prunable.prune` did."""

    #: History partitions created, by table name (partitioning backends only).
    created: tuple[str, ...] = ()
    #: History partitions dropped, by table name (partitioning backends only).
    dropped: tuple[str, ...] = ()
    #: Partitions left alone because they could not be locked quickly (tried next time).
    skipped: tuple[str, ...] = ()
    #: Finished jobs deleted, by status.
    purged: Mapping[JobStatus, int] = attrs.field(factory=dict)
    #: History rows (executions and log lines) deleted one by one (non-partitioning backends).
    history_rows: int = 0

    def __bool__(self) -> bool:
        """True when the run changed anything."""
        return bool(self.created or self.dropped or any(self.purged.values()) or self.history_rows)


@runtime_checkable
class Prunable(Protocol):
    """A storage that can delete old finished jobs and history by a :class:`RetentionPolicy`."""

    async def prune(self, policy: RetentionPolicy | None = None) -> PruneReport:
        """Apply ``policy`` (the default policy when None) to every project of the store.

        Never deletes an active job nor a job that an active job depends on; safe to run from
        several processes at once and while workers run.
        """
        ...


def as_prunable(storage: Storage) -> Prunable | None:
    """``storage`` when it declares ``Capability.PRUNE`` and has ``prune()``, else None."""
    if Capability.PRUNE in storage.capabilities and isinstance(storage, Prunable):
        return storage
    return None


async def prune_periodically(
    storage: Prunable, policy: RetentionPolicy, every: float, clock: Clock
) -> None:
    """Call ``storage.prune(policy)`` about every ``every`` seconds, forever.

    Each worker runs this loop (``Worker(prune_every=...)``), so runs are jittered: the first
    comes at a random moment of the first ``min(every, FIRST_PRUNE_WITHIN)`` seconds, later ones
    ``every`` seconds apart give or take 10 %, and a fleet started together does not prune in
    step. A failed run is logged and tried again at the next turn; it never stops the worker.
    """
    await clock.sleep(random.uniform(0, min(every, FIRST_PRUNE_WITHIN)))
    while True:
        try:
            report = await storage.prune(policy)
        except Exception as exc:
            logger.warning("pruning old jobs and history failed (trying again later): %s", exc)
        else:
            if report:
                logger.info("pruned: %s", describe(report))
        await clock.sleep(every * random.uniform(0.9, 1.1))


def describe(report: PruneReport) -> str:
    """One line for logs and the CLI: ``2 succeeded jobs, 14 history rows, ...``."""
    parts = [f"{count} {status.value} jobs" for status, count in report.purged.items() if count]
    if report.history_rows:
        parts.append(f"{report.history_rows} history rows")
    if report.dropped:
        parts.append(f"{len(report.dropped)} history partitions dropped")
    if report.created:
        parts.append(f"{len(report.created)} partitions created")
    if report.skipped:
        parts.append(f"{len(report.skipped)} partitions busy, skipped")
    return ", ".join(parts) or "nothing to delete"
