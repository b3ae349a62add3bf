"""The pieces of the conformance suite: profiles, URL placeholders, and the reference model."""

from __future__ import annotations

import datetime as dt
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import pytest
from hypothesis import settings
from taskforge_conformance import ReferenceModel, expand_url, suite_settings
from taskforge_conformance.profiles import PROFILE_ENV

from taskforge_core.clock import FakeClock
from taskforge_core.errors import DependencyError, InvalidJobError, InvalidTransitionError
from taskforge_core.ids import uuid7
from taskforge_core.models import ClaimRequest, NewJob, QueueShare
from taskforge_core.states import JobStatus

NOW = FakeClock().now()


def test_the_quick_profile_is_the_default_and_has_no_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    quick = suite_settings()
    assert quick.deadline is None
    assert 20 <= quick.max_examples <= 60
    monkeypatch.setenv(PROFILE_ENV, "thorough")
    thorough = suite_settings()
    assert thorough.max_examples > quick.max_examples
    assert thorough.stateful_step_count > quick.stateful_step_count
    assert thorough.deadline is None


def test_a_registered_hypothesis_profile_can_be_chosen_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.register_profile("taskforge-tests-tiny", max_examples=3)
    monkeypatch.setenv(PROFILE_ENV, "taskforge-tests-tiny")
    assert suite_settings().max_examples == 3


def test_an_unknown_profile_names_the_bundled_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, "no-such-profile")
    with pytest.raises(LookupError, match="quick, thorough"):
        suite_settings()


def test_url_placeholders_name_one_store_per_directory(tmp_path: pathlib.Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    url = "db:///{tmp}/jobs?schema={id}"
    assert expand_url(url, first) == expand_url(url, first)
    assert expand_url(url, first) != expand_url(url, second)
    expanded = expand_url(url, first)
    assert expanded.startswith(f"db:///{first.resolve()}/jobs?schema=tf_")
    assert expanded.rsplit("=", 1)[1].replace("_", "").isalnum()
    assert expand_url("memory://", first) == "memory://"


def job(**fields: Any) -> NewJob:
    return NewJob(id=uuid7(), task="t", **fields)


def request(limit: int = 10, *queues: str) -> ClaimRequest:
    return ClaimRequest(
        worker_id=uuid.UUID(int=1),
        shares=tuple(QueueShare(name=q, limit=limit) for q in queues or ("default",)),
        limit=limit,
        lease=dt.timedelta(seconds=30),
    )


def test_the_model_refuses_a_move_the_transition_table_does_not_allow() -> None:
    model = ReferenceModel()
    (job_id,) = model.enqueue([job()], NOW)
    model.claim(job_id, uuid7(), uuid.UUID(int=1), NOW)
    with pytest.raises(InvalidTransitionError):
        model.claim(job_id, uuid7(), uuid.UUID(int=1), NOW)


def test_the_model_expects_typed_errors_for_bad_batches() -> None:
    model = ReferenceModel()
    a, b = job(), job()
    cyclic = [
        NewJob(id=a.id, task="t", depends_on=(b.id,)),
        NewJob(id=b.id, task="t", depends_on=(a.id,)),
    ]
    assert model.check_enqueue(cyclic) is DependencyError
    assert model.check_enqueue([job(depends_on=(uuid7(),))]) is DependencyError
    assert model.check_enqueue([job(max_attempts=0)]) is InvalidJobError
    assert model.check_enqueue([job(), job(depends_on=(a.id,)), a]) is None


def test_the_model_claims_by_priority_then_due_time_then_age() -> None:
    model = ReferenceModel()
    early = NOW - dt.timedelta(minutes=5)
    jobs = [job(priority=1), job(priority=5), job(priority=1, scheduled_for=early)]
    model.enqueue(jobs, NOW)
    assert model.expected_claim(request(2), NOW) == [jobs[1].id, jobs[2].id]


def test_the_model_releases_a_child_only_when_every_parent_succeeded() -> None:
    model = ReferenceModel()
    p1, p2 = job(), job()
    child = job(depends_on=(p1.id, p2.id))
    model.enqueue([p1, p2, child], NOW)
    claims = {job_id: uuid7() for job_id in model.expected_claim(request(), NOW)}
    for job_id, execution_id in claims.items():
        model.claim(job_id, execution_id, uuid.UUID(int=1), NOW)
    model.complete([(p1.id, claims[p1.id], None)], NOW)
    assert model.jobs[child.id].status is JobStatus.BLOCKED
    model.complete([(p2.id, claims[p2.id], None)], NOW)
    assert model.jobs[child.id].status is JobStatus.PENDING


def test_the_suite_depends_on_the_core_alone() -> None:
    """Backends are reached through the protocol and the entry points, never imported."""
    package = pathlib.Path(__file__).resolve().parents[2] / "conformance"
    offending = [
        f"{path.name}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.lstrip().startswith(("import taskforge_", "from taskforge_"))
        and not line.lstrip().split()[1].startswith(("taskforge_core", "taskforge_conformance"))
    ]
    assert offending == []


def test_importing_the_suite_imports_neither_pytest_nor_anyio() -> None:
    """``python -m taskforge_conformance`` must start pytest before they are imported, or pytest
    cannot rewrite the asserts of their plugins."""
    code = (
        "import sys, taskforge_conformance\n"
        "print(sorted(m for m in ('anyio', 'hypothesis', 'pytest', 'taskforge_core')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
