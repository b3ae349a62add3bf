from __future__ import annotations

import pathlib

import pytest

from taskforge_core.errors import InvalidTransitionError
from taskforge_core.states import (
    FINAL_STATUSES,
    RUNNABLE_STATUSES,
    TRANSITIONS,
    JobStatus,
    check_transition,
    mermaid_diagram,
)

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def test_every_status_is_reachable_from_enqueue() -> None:
    reached = {JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.BLOCKED}
    changed = True
    while changed:
        before = len(reached)
        reached |= {t.target for t in TRANSITIONS if t.source in reached}
        changed = len(reached) != before
    assert reached == set(JobStatus)


def test_a_succeeded_job_never_moves_again() -> None:
    assert not [t for t in TRANSITIONS if t.source is JobStatus.SUCCEEDED]


@pytest.mark.parametrize("status", sorted(RUNNABLE_STATUSES))
def test_only_runnable_jobs_can_be_claimed(status: JobStatus) -> None:
    check_transition(status, JobStatus.PROCESSING)
    for other in set(JobStatus) - RUNNABLE_STATUSES:
        with pytest.raises(InvalidTransitionError):
            check_transition(other, JobStatus.PROCESSING)


def test_a_transition_outside_the_table_raises_with_both_states_named() -> None:
    with pytest.raises(InvalidTransitionError, match="from succeeded to pending"):
        check_transition(JobStatus.SUCCEEDED, JobStatus.PENDING)
    with pytest.raises(InvalidTransitionError, match=r"from \(new\) to processing"):
        check_transition(None, JobStatus.PROCESSING)


def test_final_jobs_leave_only_by_replay() -> None:
    for t in TRANSITIONS:
        if t.source in FINAL_STATUSES:
            assert t.event.value == "replay"


def test_docs_show_the_diagram_generated_from_the_table() -> None:
    page = (DOCS / "concepts.md").read_text()
    assert mermaid_diagram() in page, "regenerate with: python -m taskforge_core.states"
