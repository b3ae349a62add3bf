"""Enqueueing through the public API, and every kind of bad input it must refuse."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid

import pytest

from taskforge_core import (
    Call,
    ConfigurationError,
    DependencyError,
    FakeClock,
    InvalidCronError,
    InvalidJobError,
    JobStatus,
    PayloadTooLargeError,
    SerializationError,
    TaskForge,
    UnknownTaskError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(tmp_path: pathlib.Path, clock: FakeClock) -> TaskForge:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db", clock=clock, max_payload_bytes=1000)

    @app.task(name="add", queue="math", priority=2)
    async def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task(name="resize")
    def resize(path: str) -> None:
        return None

    return app


async def count_jobs(app: TaskForge) -> int:
    return sum(sum(row.counts.values()) for row in await app.queue_stats())


async def test_enqueue_stores_a_pending_job_with_the_task_defaults(app: TaskForge) -> None:
    handle = await app.tasks["add"].enqueue(1, b=2)
    job = await app.get_job(handle.id)
    assert (job.status, job.queue, job.priority) == (JobStatus.PENDING, "math", 2)
    assert (job.args, dict(job.kwargs)) == ((1,), {"b": 2})
    assert job.id.version == 7


async def test_options_delay_the_job_and_override_defaults(
    app: TaskForge, clock: FakeClock
) -> None:
    handle = await app.tasks["add"].options(delay=60, priority=9, queue="slow").enqueue(1)
    job = await app.get_job(handle.id)
    assert job.status is JobStatus.SCHEDULED
    assert job.scheduled_for == clock.now() + dt.timedelta(seconds=60)
    assert (job.priority, job.queue) == (9, "slow")


async def test_enqueue_many_accepts_tuples_dicts_and_calls(app: TaskForge) -> None:
    handles = await app.tasks["add"].enqueue_many(
        [(1,), {"a": 2}, Call(args=(3,), kwargs={"b": 4})]
    )
    assert len({h.id for h in handles}) == 3
    assert await count_jobs(app) == 3


async def test_a_dependency_blocks_the_child(app: TaskForge) -> None:
    parent = await app.tasks["add"].enqueue(1)
    child = await app.tasks["add"].options(depends_on=[parent]).enqueue(2)
    assert (await app.get_job(child.id)).status is JobStatus.BLOCKED


async def test_same_key_enqueues_once(app: TaskForge) -> None:
    first = await app.tasks["add"].options(key="order-1").enqueue(1)
    second = await app.tasks["add"].options(key="order-1").enqueue(1)
    assert first.id == second.id
    assert await count_jobs(app) == 1


async def test_enqueue_by_name_and_unknown_task(app: TaskForge) -> None:
    handle = await app.enqueue("add", [1], {"b": 1}, priority=5)
    assert (await app.get_job(handle.id)).priority == 5
    with pytest.raises(UnknownTaskError, match=r"'nope'.*registered: add, resize"):
        await app.enqueue("nope")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t: t.enqueue(object()), SerializationError, "not JSON-serializable"),
        (lambda t: t.enqueue("x" * 2000), PayloadTooLargeError, "over the limit of 1000"),
        (lambda t: t.enqueue(1, 2, 3), InvalidJobError, "bad arguments for task 'add'"),
        (lambda t: t.enqueue(c=1), InvalidJobError, "bad arguments"),
        (lambda t: t.options(delay=-1).enqueue(1), InvalidJobError, "delay must be >= 0"),
        (lambda t: t.options(delay=float("nan")).enqueue(1), InvalidJobError, "delay"),
        (lambda t: t.options(at=dt.datetime(2030, 1, 1)).enqueue(1), InvalidJobError, "aware"),
        (
            lambda t: t.options(delay=1, at=dt.datetime.now(dt.UTC)).enqueue(1),
            InvalidJobError,
            "not both",
        ),
        (lambda t: t.options(priority="high").enqueue(1), InvalidJobError, "priority"),
        (lambda t: t.options(max_attempts=0).enqueue(1), InvalidJobError, "max_attempts"),
        (
            lambda t: t.options(depends_on=[uuid.uuid4()]).enqueue(1),
            DependencyError,
            "does not exist|unknown",
        ),
        (lambda t: t.options(depends_on=["not-an-id"]).enqueue(1), InvalidJobError, "not a job"),
        (lambda t: t.options(colour="red").enqueue(1), InvalidJobError, "colour"),
        (lambda t: t.enqueue_many([(1,), "oops"]), InvalidJobError, "enqueue_many items"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    app: TaskForge, call: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await call(app.tasks["add"])  # type: ignore[operator]
    assert await count_jobs(app) == 0


async def test_a_batch_with_one_bad_dependency_writes_nothing(app: TaskForge) -> None:
    good = app.tasks["add"].build((1,), {})
    bad = app.tasks["add"].options(depends_on=[uuid.uuid4()]).build((2,), {})
    with pytest.raises(DependencyError):
        await app.enqueue_jobs([good, bad])
    assert await count_jobs(app) == 0


async def test_a_dependency_cycle_is_rejected(app: TaskForge) -> None:
    import attrs

    a = app.tasks["add"].build((1,), {})
    b = app.tasks["add"].options(depends_on=[a.id]).build((2,), {})
    a = attrs.evolve(a, depends_on=(b.id,))
    with pytest.raises(DependencyError, match="cycle"):
        await app.enqueue_jobs([a, b])
    assert await count_jobs(app) == 0


async def test_unknown_queue_is_an_error_when_queues_are_not_created_on_demand(
    tmp_path: pathlib.Path,
) -> None:
    from taskforge_core import QueueError

    strict = TaskForge(f"sqlite:///{tmp_path}/strict.db", create_queues=False)

    @strict.task(queue="ghost")
    async def noop() -> None: ...

    with pytest.raises(QueueError, match="ghost"):
        await noop.enqueue()
    await strict.close()


def test_registering_two_tasks_with_one_name_fails(app: TaskForge) -> None:
    with pytest.raises(ConfigurationError, match="already registered"):

        @app.task(name="add")
        async def other() -> None: ...


@pytest.mark.parametrize(
    ("cron", "tz", "message"),
    [
        ("*/5 * * *", "UTC", "bad cron"),
        ("61 * * * *", "UTC", "bad cron"),
        ("* * * * *", "Mars/Olympus", "time zone"),
    ],
)
def test_bad_cron_or_time_zone_fails_at_declaration(
    app: TaskForge, cron: str, tz: str, message: str
) -> None:
    with pytest.raises(InvalidCronError, match=message):

        @app.periodic(cron, timezone=tz)
        async def tick() -> None: ...

    assert not app.periodic_entries


def test_enqueue_sync_works_from_plain_code(app: TaskForge) -> None:
    handle = app.tasks["resize"].enqueue_sync("/tmp/a.png")
    assert handle.status is JobStatus.PENDING
    app.close_sync()


def test_bad_rate_limit_and_timeout_fail_at_declaration(app: TaskForge) -> None:
    with pytest.raises(ConfigurationError, match="rate limit"):
        app.task(name="r", rate_limit="fast")(lambda: None)
    with pytest.raises(ValueError, match="timeout"):
        app.task(name="t", timeout=0)(lambda: None)


async def test_replay_explains_each_given_id_it_did_not_replay(app: TaskForge) -> None:
    pending = await app.tasks["add"].enqueue(1)
    missing = uuid.uuid4()
    result = await app.replay(pending.id, missing)
    assert result.replayed == ()
    reasons = dict(result.skipped)
    assert reasons[pending.id] == "it is pending, not failed"
    assert reasons[missing] == "no such job"


async def test_a_failing_enqueue_hook_does_not_fail_a_stored_enqueue(
    app: TaskForge, caplog: pytest.LogCaptureFixture
) -> None:
    from taskforge_core import hookimpl

    class Broken:
        @hookimpl
        def taskforge_jobs_enqueued(self, app: TaskForge, jobs: object) -> None:
            raise RuntimeError("metrics backend down")

    app.plugins.register(Broken())
    handle = await app.tasks["add"].enqueue(1)
    assert (await app.get_job(handle.id)).status is JobStatus.PENDING
    assert "taskforge_jobs_enqueued hook failed" in caplog.text


async def test_a_transaction_on_a_backend_without_one_is_refused(app: TaskForge) -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:// backend cannot enqueue inside"):
        await app.tasks["add"].options(transaction=object()).enqueue(1)
    assert await count_jobs(app) == 0
