from __future__ import annotations

import datetime as dt
import uuid

import pytest

from taskforge_core import ErrorInfo, Job, JobStatus, PayloadTooLargeError, SerializationError
from taskforge_core.serialization import check_payload, converter, decode, encode


def test_non_json_arguments_are_rejected_with_the_task_named() -> None:
    with pytest.raises(SerializationError, match=r"'t'.*not JSON"):
        check_payload((object(),), {}, task="t", limit=1000)
    with pytest.raises(SerializationError):
        check_payload((), {"x": float("nan")}, task="t", limit=1000)


def test_payload_over_the_limit_is_rejected_with_its_size() -> None:
    with pytest.raises(PayloadTooLargeError, match="over the limit of 10"):
        check_payload(("x" * 20,), {}, task="t", limit=10)


def test_models_round_trip_through_the_converter() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    job = Job(
        id=uuid.uuid4(),
        project="p",
        queue="q",
        task="t",
        status=JobStatus.FAILED,
        args=(1, "a"),
        kwargs={"k": [1]},
        priority=3,
        attempt=2,
        max_attempts=3,
        timeout=None,
        scheduled_for=now,
        created_at=now,
        updated_at=now,
        depends_on=(uuid.uuid4(),),
        error=ErrorInfo(type="ValueError", message="bad", traceback="tb"),
    )
    data = converter.unstructure(job)
    assert decode(encode(data)) == data
    assert converter.structure(decode(encode(data)), Job) == job
