from __future__ import annotations

import pathlib
import re

import pytest

from taskforge_core.demo import demo_plan, run_demo

pytestmark = pytest.mark.anyio


async def test_the_demo_runs_every_job_and_dead_letters_only_the_doomed_ones(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = demo_plan(600)
    summary = await run_demo(jobs=600, concurrency=20, path=str(tmp_path / "demo.db"))
    match = re.match(
        r"summary: ([\d,]+) succeeded, ([\d,]+) retried, ([\d,]+) dead-lettered", summary
    )
    assert match, summary
    succeeded, retried, dead = (int(g.replace(",", "")) for g in match.groups())
    assert dead == plan["doomed"]
    assert succeeded == plan["jobs"] - plan["doomed"]
    assert retried >= plan["flaky"] // 2  # two of every three flaky jobs fail at least once
    assert "inspect it: taskforge" in capsys.readouterr().out


def test_the_plan_adds_up_to_at_least_the_requested_jobs() -> None:
    plan = demo_plan(10_000)
    assert plan["jobs"] >= 10_000
