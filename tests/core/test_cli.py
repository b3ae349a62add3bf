"""The ``taskforge`` command line: each command, and clear errors with exit code 2."""

from __future__ import annotations

import itertools
import json
import pathlib
import textwrap

import pytest

from taskforge_core.cli import main

_counter = itertools.count()


@pytest.fixture
def app_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A small application module on sys.path; returns its ``module:attr``."""
    name = f"cli_app_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from taskforge_core import TaskForge, Retry

            app = TaskForge("sqlite:///{tmp_path}/cli.db")

            @app.task(name="add")
            async def add(a: int, b: int = 0) -> int:
                return a + b

            @app.task(name="loop")
            async def loop() -> str:
                import asyncio

                return type(asyncio.get_running_loop()).__module__.split(".")[0]

            @app.task(name="boom", retry=Retry(max_attempts=1))
            async def boom() -> None:
                raise RuntimeError("always")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TASKFORGE_URL", f"sqlite:///{tmp_path}/cli.db")
    return f"{name}:app"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_enqueue_then_burst_worker_then_show(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "enqueue", app_path, "add", "--args", "[2]", "--kwargs", '{"b": 3}')
    assert code == 0
    job_id = out.strip()
    assert run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")[0] == 0
    code, out, _ = run(capsys, "jobs", "show", job_id)
    assert code == 0
    assert "succeeded" in out
    assert "result     5" in out
    code, out, _ = run(capsys, "jobs", "show", job_id, "--json")
    assert json.loads(out)["job"]["result"] == 5


@pytest.mark.parametrize(("loop", "expected"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_worker_runs_on_the_event_loop_asked_for(
    app_path: str, capsys: pytest.CaptureFixture[str], loop: str, expected: str
) -> None:
    job_id = run(capsys, "enqueue", app_path, "loop")[1].strip()
    assert run(capsys, "--loop", loop, "worker", app_path, "--burst")[0] == 0
    code, out, _ = run(capsys, "jobs", "show", job_id, "--json")
    assert (code, json.loads(out)["job"]["result"]) == (0, expected)


def test_an_unknown_event_loop_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKFORGE_LOOP", "tokio")
    code, _, err = run(capsys, "queues")
    assert code == 2
    assert "$TASKFORGE_LOOP" in err
    assert "'tokio'" in err


def test_jobs_list_filters_by_status_and_pages(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(3):
        run(capsys, "enqueue", app_path, "add", "--args", f"[{n}]")
    code, out, _ = run(capsys, "jobs", "list", "--status", "pending", "--limit", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("-- more: --cursor ")
    cursor = lines[-1].split()[-1]
    code, out, _ = run(capsys, "jobs", "list", "--limit", "2", "--cursor", cursor, "--json")
    assert [json.loads(line)["status"] for line in out.strip().splitlines()] == ["pending"]


def test_dead_letter_list_replay_and_purge(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = run(capsys, "enqueue", app_path, "boom")[1].strip()
    run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")
    code, out, _ = run(capsys, "dlq", "list")
    assert code == 0
    assert job_id in out
    assert "RuntimeError: always" in out
    assert run(capsys, "dlq", "replay", job_id)[1].strip() == "replayed 1 job(s)"
    run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")
    assert run(capsys, "dlq", "purge", "--all")[1].strip() == "purged 1 job(s)"
    assert run(capsys, "dlq", "list")[1] == ""


def test_cancel_and_queues_table(app_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = run(capsys, "enqueue", app_path, "add", "--args", "[1]", "--delay", "3600")[1].strip()
    code, out, _ = run(capsys, "jobs", "cancel", job_id)
    assert (code, out.strip()) == (0, f"cancelled {job_id}")
    code, _, err = run(capsys, "jobs", "cancel", job_id)
    assert code == 1
    assert "already final" in err
    code, out, _ = run(capsys, "queues", "--pause", "default")
    assert code == 0
    assert "default (paused)" in out
    row = next(line for line in out.splitlines() if line.startswith("default"))
    assert row.split()[-1] == "1"  # one cancelled job


def test_migrate_reports_when_the_schema_is_current(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert "applied" in out
    assert run(capsys, "migrate")[1].strip() == "schema is up to date"


def test_prune_deletes_finished_jobs_older_than_asked_and_keeps_the_rest(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run(capsys, "enqueue", app_path, "add", "--args", "[1]")[1].strip()
    dead = run(capsys, "enqueue", app_path, "boom")[1].strip()
    run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")
    waiting = run(capsys, "enqueue", app_path, "add", "--args", "[2]")[1].strip()
    code, out, _ = run(capsys, "prune")
    assert (code, out.strip()) == (0, "pruned: nothing to delete")  # nothing is 7 days old
    code, out, _ = run(capsys, "prune", "--succeeded", "0m", "--history", "never")
    assert (code, out.strip()) == (0, "pruned: 1 succeeded jobs")
    listed = run(capsys, "jobs", "list")[1]
    assert done not in listed
    assert dead in listed, "the dead-letter queue is kept unless --failed is given"
    assert waiting in listed, "active jobs are never pruned"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", "nocolon"], "module:attribute"),
        (["worker", "no_such_module_xyz:app"], "cannot import"),
        (["worker", "json:dumps"], "not a TaskForge application"),
        (["worker", "x:y", "-c", "0"], "expected a number >= 1"),
        (["worker", "x:y", "-q", "emails:zero"], "whole number"),
        (["worker", "x:y", "--grace-period", "-5"], "seconds"),
        (["jobs", "show", "not-a-uuid"], "not a job id"),
        (["jobs", "list", "--status", "done"], "unknown status 'done'"),
        (["enqueue", "x:y", "add", "--args", "[1,"], "not valid JSON"),
        (["dlq", "replay"], "give job ids, or --all"),
        (["--url", "mysql://db", "queues"], "no installed backend handles mysql://"),
        (["frobnicate"], "invalid choice"),
        (["prune", "--succeeded", "7 days"], "expected an age such as 90m, 36h or 7d"),
        (["prune", "--history=-1d"], "expected an age"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_enqueue_of_an_unknown_task_names_the_registered_ones(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "enqueue", app_path, "nope")
    assert code == 2
    assert "registered: add, boom" in err


def test_enqueue_with_bad_arguments_for_the_task(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "enqueue", app_path, "add", "--args", "[1, 2, 3]")
    assert code == 2
    assert "bad arguments for task 'add'" in err


def test_showing_a_missing_job_fails_with_exit_1(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "jobs", "show", "01900000-0000-7000-8000-000000000000")
    assert code == 1
    assert "no job with id" in err


def test_migrate_uses_the_app_from_the_environment(
    app_path: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKFORGE_URL")
    monkeypatch.setenv("TASKFORGE_APP", app_path)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert "applied 0001_initial" in out
    assert (tmp_path / "cli.db").exists()
    assert not (tmp_path / "taskforge.db").exists()


def test_replay_with_cancelled_jobs_resumes_a_failed_chain(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    from taskforge_core import JobStatus

    app = importlib.import_module(app_path.partition(":")[0]).app

    async def build_chain() -> tuple[str, str]:
        parent = await app.tasks["boom"].enqueue()
        child = await app.tasks["add"].options(depends_on=[parent]).enqueue(1)
        await app.close()
        return str(parent.id), str(child.id)

    import anyio

    parent_id, child_id = anyio.run(build_chain)
    run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")
    code, out, _ = run(capsys, "dlq", "replay", "--all", "--include-cancelled")
    assert (code, out.strip()) == (0, "replayed 2 job(s)")

    async def statuses() -> list[JobStatus]:
        jobs = [await app.get_job(parent_id), await app.get_job(child_id)]
        await app.close()
        return [job.status for job in jobs]

    assert anyio.run(statuses) == [JobStatus.PENDING, JobStatus.BLOCKED]


def _register_worker(url: str, name: str) -> str:
    """A worker record as a running worker on another machine leaves it; returns its id."""
    import anyio

    from taskforge_core import TaskForge
    from taskforge_core.ids import uuid7
    from taskforge_core.models import WorkerInfo

    async def register() -> str:
        async with TaskForge(url) as app:
            info = WorkerInfo(id=uuid7(), name=name, hostname="elsewhere", pid=1, concurrency=4)
            await (await app.storage()).register_worker(info)
            return str(info.id)

    return anyio.run(register)


def test_workers_list_and_drain(
    app_path: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "worker", app_path, "--burst", "--poll-interval", "0.05")[0] == 0
    remote = _register_worker(f"sqlite:///{tmp_path}/cli.db", "far-away")
    code, out, _ = run(capsys, "workers", "list")
    assert code == 0
    assert [line.split()[:3] for line in out.splitlines()] == [[remote, "running", "far-away"]]
    code, out, _ = run(capsys, "workers", "list", "--all", "--json")
    statuses = sorted(json.loads(line)["status"] for line in out.splitlines())
    assert statuses == ["running", "stopped"]
    stopped = next(json.loads(line)["id"] for line in out.splitlines() if '"stopped"' in line)

    code, out, _ = run(capsys, "workers", "drain", remote, stopped)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"draining {remote} (far-away)"
    assert lines[1].startswith(f"already stopped {stopped} (")
    code, out, _ = run(capsys, "workers", "list")
    assert out.split()[1] == "draining"


def test_draining_unknown_or_malformed_workers_fails(
    app_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "0190a000-0000-7000-8000-000000000000"
    code, _, err = run(capsys, "workers", "drain", missing)
    assert code == 1
    assert f"no worker with id {missing}" in err
    code, _, err = run(capsys, "workers", "drain", "nope")
    assert code == 2
    assert "not a worker id: 'nope'" in err
