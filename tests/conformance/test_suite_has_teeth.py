"""The conformance suite has teeth: it passes a correct backend and fails broken ones.

Each backend of :mod:`broken_backends` breaks one promise. The whole suite runs against each
(in parallel subprocesses, through the same subclass-a-base-class route a third-party author
uses), and must fail -- in the tests that guard the broken promise. The correct in-memory
example backend, run the same way, must pass.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import attrs
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MEMORY_EXAMPLE = ROOT / "docs" / "examples" / "taskforge_memory"

MACHINE = "test_backend_agrees_with_the_reference_model"

#: backend class -> the scenario tests that must be among the failures. The stateful test
#: (MACHINE) usually fails these backends too, but it draws random call sequences, so whether
#: one run reaches a given bug is a matter of chance; the scenario tests always do.
EXPECTED_FAILURES: dict[str, set[str]] = {
    "HandsOutJobsTwice": {"test_concurrent_claimers_never_get_the_same_job"},
    "TakesStaleReports": {"test_a_late_report_from_a_worker_that_lost_its_lease_is_rejected"},
    "IgnoresPriority": {"test_claim_order_is_priority_then_due_time_then_age"},
    "RunsJobsEarly": {"test_nothing_runs_before_its_due_time"},
    "ForgetsExpiredLeases": {"test_an_expired_lease_is_run_again_or_dead_lettered_never_lost"},
    "StartsChildrenEarly": {"test_nothing_runs_before_all_its_parents_succeeded"},
}

SUITE_MODULE = """\
from taskforge_conformance import StorageConformance
from taskforge_memory.backend import MemoryStorage
from broken_backends import *  # noqa: F403


class TestBackend(StorageConformance):
    async def make_storage(self, clock, tmp_path):
        return {cls}(BackendConfig(clock=clock))

    async def make_storage_with_config(self, config, tmp_path):
        return {cls}(config)


from taskforge_core.backends import BackendConfig
"""

#: A light profile without shrinking or an example database: a failure is found, not minimized,
#: and the eight suite runs share the machine with the rest of the tests.
CONFTEST = """\
from hypothesis import Phase, settings

settings.register_profile(
    "teeth",
    max_examples=10,
    stateful_step_count=60,
    phases=[Phase.explicit, Phase.generate],
    database=None,
)
"""


@attrs.define
class Run:
    """One suite run in a subprocess, started at once and awaited when asked."""

    backend: str
    process: subprocess.Popen[str]
    report: pathlib.Path
    output: str = ""

    def wait(self) -> tuple[int, set[str], set[str]]:
        """Exit code, names of failed tests, names of passed tests."""
        if self.process.returncode is None:
            self.output, _ = self.process.communicate(timeout=110)
        failed, passed = set(), set()
        for case in ET.parse(self.report).getroot().iter("testcase"):
            name = case.get("name", "")
            if case.find("failure") is not None or case.find("error") is not None:
                failed.add(name)
            elif case.find("skipped") is None:
                passed.add(name)
        return self.process.returncode, failed, passed


def start(backend: str, directory: pathlib.Path) -> Run:
    directory.mkdir()
    module = directory / f"test_{backend.lower()}.py"
    module.write_text(SUITE_MODULE.format(cls=backend), encoding="utf-8")
    (directory / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    report = directory / "report.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(MEMORY_EXAMPLE)]),
        "TASKFORGE_CONFORMANCE_PROFILE": "teeth",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(module),
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        "--timeout=100",
        f"--junitxml={report}",
        f"--rootdir={directory}",
    ]
    process = subprocess.Popen(
        command,
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Run(backend=backend, process=process, report=report)


class Runs:
    """Suite runs started on demand, the next one already running in the background while a
    test waits for its own (two at a time: enough to keep two cores busy)."""

    def __init__(self, root: pathlib.Path, order: list[str]) -> None:
        self.root = root
        self.order = order
        self.started: dict[str, Run] = {}

    def __getitem__(self, backend: str) -> Run:
        self.start(backend)
        following = [name for name in self.order if name not in self.started]
        if following:
            self.start(following[0])
        return self.started[backend]

    def start(self, backend: str) -> None:
        if backend not in self.started:
            self.started[backend] = start(backend, self.root / backend)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    all_runs = Runs(
        tmp_path_factory.mktemp("teeth"), ["MemoryStorage", "Untimed", *sorted(EXPECTED_FAILURES)]
    )
    yield all_runs
    for run in all_runs.started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.communicate()


def test_the_correct_example_backend_passes_the_whole_suite(runs: Runs) -> None:
    code, failed, passed = runs["MemoryStorage"].wait()
    assert code == 0, runs["MemoryStorage"].output
    assert not failed
    assert MACHINE in passed


def test_a_backend_without_an_injectable_clock_passes_with_time_tests_skipped(
    runs: Runs,
) -> None:
    code, failed, passed = runs["Untimed"].wait()
    assert code == 0, runs["Untimed"].output
    assert not failed
    assert MACHINE in passed
    assert "test_nothing_runs_before_its_due_time" not in passed, "it needs a fake clock"


@pytest.mark.parametrize("backend", sorted(EXPECTED_FAILURES))
def test_the_suite_fails_a_broken_backend_where_it_breaks_its_promise(
    runs: Runs, backend: str
) -> None:
    code, failed, _ = runs[backend].wait()
    assert code == 1, f"the suite did not fail {backend}:\n{runs[backend].output}"
    missing = EXPECTED_FAILURES[backend] - failed
    assert not missing, (
        f"{backend} should have failed {sorted(missing)}; failures were {sorted(failed)}"
    )
