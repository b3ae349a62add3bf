"""Shortcuts on the hot path must behave exactly like the general code they stand in for."""

from __future__ import annotations

import inspect
import itertools
import pathlib
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from taskforge_core import TaskForge
from taskforge_core.errors import InvalidJobError
from taskforge_core.task import _fits, _plain_shape
from taskforge_core.worker import Worker


def _signatures() -> list[Callable[..., Any]]:
    def none() -> None: ...
    def one(a: int) -> None: ...
    def defaults(a: int, b: int = 1) -> None: ...
    def mixed(a: int, b: int, c: int = 2) -> None: ...
    def keyword_only(a: int, *, k: int, m: int = 3) -> None: ...
    def all_defaults(a: int = 1, b: int = 2, *, k: int = 0) -> None: ...
    def positional_only(a: int, /, b: int) -> None: ...
    def var_args(*args: int, **kwargs: int) -> None: ...
    def var_kwargs(a: int, **kwargs: int) -> None: ...

    return [
        none,
        one,
        defaults,
        mixed,
        keyword_only,
        all_defaults,
        positional_only,
        var_args,
        var_kwargs,
    ]


@pytest.mark.parametrize("fn", _signatures(), ids=lambda fn: fn.__name__)
def test_the_argument_shortcut_agrees_with_signature_bind(fn: Callable[..., Any]) -> None:
    signature = inspect.signature(fn)
    shape = _plain_shape(signature)
    kinds = {p.kind for p in signature.parameters.values()}
    plain = kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    assert (shape is not None) == plain  # anything unusual always goes through bind
    if shape is None:
        return
    names: list[Any] = [*signature.parameters, "unknown"]
    for count in range(5):
        args = tuple(range(count))
        for size in range(len(names) + 1):
            for chosen in itertools.combinations(names, size):
                kwargs = dict.fromkeys(chosen, 0)
                try:
                    signature.bind(*args, **kwargs)
                    binds = True
                except TypeError:
                    binds = False
                assert _fits(shape, args, kwargs) is binds, (args, kwargs)


def test_bad_arguments_still_carry_the_message_of_bind(tmp_path: pathlib.Path) -> None:
    app = TaskForge(f"sqlite:///{tmp_path}/jobs.db")

    @app.task
    async def add(a: int, b: int = 0) -> int:
        return a + b

    for args, kwargs in (((1, 2, 3), {}), ((1,), {"a": 1}), ((), {"c": 1}), ((), {})):
        with pytest.raises(TypeError) as refused:
            inspect.signature(add.fn).bind(*args, **kwargs)
        with pytest.raises(InvalidJobError) as raised:
            add.build(args, kwargs)
        assert str(raised.value) == f"bad arguments for task {add.name!r}: {refused.value}"


@pytest.mark.anyio
async def test_runners_run_as_many_suspending_jobs_at_once_as_the_concurrency(
    tmp_path: pathlib.Path, anyio_backend: str
) -> None:
    concurrency = 8
    started = 0
    everyone_in = anyio.Event()

    async with TaskForge(f"sqlite:///{tmp_path}/jobs.db") as app:

        @app.task
        async def gather() -> None:
            nonlocal started
            started += 1
            if started == concurrency:
                everyone_in.set()
            await everyone_in.wait()  # only returns once all of them run side by side

        await gather.enqueue_many([()] * (3 * concurrency))
        worker = Worker(app, concurrency=concurrency, poll_interval=0.05, lease=2.0)
        with anyio.fail_after(30):
            stats = await worker.run(stop_when_idle=True)
    assert stats.succeeded == 3 * concurrency
