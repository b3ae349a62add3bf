from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from taskforge_core import (
    ErrorInfo,
    Job,
    JobStatus,
    NewJob,
    PayloadTooLargeError,
    SerializationError,
)
from taskforge_core.ids import uuid7
from taskforge_core.serialization import (
    converter,
    decode,
    encode,
    encode_payload,
    job_payload,
    read_back,
)


def test_non_json_arguments_are_rejected_with_the_task_named() -> None:
    with pytest.raises(SerializationError, match=r"'t'.*not JSON"):
        encode_payload((object(),), {}, task="t", limit=1000)
    with pytest.raises(SerializationError):
        encode_payload((), {"x": float("nan")}, task="t", limit=1000)


def test_payload_over_the_limit_is_rejected_with_its_size() -> None:
    with pytest.raises(PayloadTooLargeError, match="over the limit of 10"):
        encode_payload(("x" * 20,), {}, task="t", limit=10)


def test_the_payload_limit_counts_utf8_bytes_not_characters() -> None:
    assert encode_payload(("é" * 4,), {}, task="t", limit=14) == ('["éééé"]', "{}")
    with pytest.raises(PayloadTooLargeError, match="encode to 19 bytes"):
        encode_payload(("é" * 4,), {"k": 1}, task="t", limit=18)  # 15 characters, 19 bytes
    assert encode_payload((), {}, task="t", limit=4) == ("[]", "{}")


def test_a_backend_stores_the_json_that_build_made_or_encodes_a_hand_made_job() -> None:
    from taskforge_core import NewJob, TaskForge
    from taskforge_core.serialization import job_payload

    app = TaskForge("sqlite:///:memory:")

    @app.task(name="t")
    async def t(a: int, *, b: str = "") -> None: ...

    built = t.build((1,), {"b": "x"})
    assert built.encoded == ("[1]", '{"b":"x"}')
    assert job_payload(built) is built.encoded
    by_hand = NewJob(id=uuid.uuid4(), task="t", args=(1, (2, 3)), kwargs={"b": "x"})
    assert job_payload(by_hand) == ("[1,[2,3]]", '{"b":"x"}')
    assert by_hand == NewJob(
        id=by_hand.id, task="t", args=(1, (2, 3)), kwargs={"b": "x"}, encoded=("x", "y")
    ), "the encoded texts are a cache: they take no part in equality"


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


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, "a", 2.5, None, True), {"k": "v", "n": 3}),
        ((1, (2, 3)), {"k": (1, 2)}),
        (([1, {"a": (1,)}],), {}),
        ((), {"nested": {"x": [1.5, None]}}),
    ],
)
def test_read_back_gives_what_a_read_of_the_stored_json_gives(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    job = NewJob(id=uuid7(), task="t", args=args, kwargs=kwargs)
    args_json, kwargs_json = job_payload(job)
    assert read_back(job, args_json, kwargs_json) == (
        tuple(decode(args_json)),
        decode(kwargs_json),
    )


def test_encode_is_compact_json_and_refuses_what_json_cannot_hold() -> None:
    assert encode([1, "é", {"a": None}, 1.5, True]) == '[1,"é",{"a":null},1.5,true]'
    assert (encode("x"), encode(None), encode({})) == ('"x"', "null", "{}")
    loop: list[Any] = []
    loop.append(loop)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for value, message in [
        (loop, "recursion"),
        (deep, "recursion"),
        (float("nan"), "Out of range float"),
        (object(), "not JSON serializable"),
    ]:
        with pytest.raises(SerializationError, match=message):
            encode(value, what="the result")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[1]", [1]), (' {"a": [1, 2]} ', {"a": [1, 2]}), (b"[true]", [True]), ("\n7\n", 7)],
)
def test_decode_reads_json_however_it_is_spaced(text: str | bytes, expected: Any) -> None:
    assert decode(text) == expected


@pytest.mark.parametrize("text", ["[1,", "[1] x", "", "nan", "{'a': 1}"])
def test_decode_of_corrupt_json_says_what_is_wrong(text: str) -> None:
    with pytest.raises(SerializationError, match="stored JSON is corrupt"):
        decode(text)
