"""``python -m taskforge_conformance URL`` finds a backend through the entry points and runs the
suite on it: the example in-memory backend, installed as a separate package, passes it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
MEMORY_EXAMPLE = ROOT / "docs" / "examples" / "taskforge_memory"


def run(
    args: list[str], cwd: pathlib.Path, extra_path: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFORGE_")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


@pytest.mark.slow
def test_the_installed_memory_example_passes_the_suite_through_its_entry_point(
    tmp_path: pathlib.Path,
) -> None:
    target = tmp_path / "site"
    install = run(
        [
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(MEMORY_EXAMPLE),
        ],
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    assert (target / "taskforge_memory" / "backend.py").exists()

    suite = run(["-m", "taskforge_conformance", "memory://"], tmp_path, target)
    output = suite.stdout + suite.stderr
    assert suite.returncode == 0, output
    assert "taskforge-conformance: profile 'quick'" in output
    assert "test_backend_agrees_with_the_reference_model" not in output  # nothing failed
    assert " passed" in output


def test_the_runner_fills_the_tmp_placeholder_per_test_and_reaches_the_same_store_again(
    tmp_path: pathlib.Path,
) -> None:
    """The multi-process and durability tests open the store of ``{tmp}`` again."""
    result = run(
        [
            "-m",
            "taskforge_conformance",
            "sqlite:///{tmp}/jobs.db",
            "-k",
            "several_processes or survive or pages",
            "-rA",
        ],
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = {line.rsplit("::", 1)[-1] for line in output.splitlines() if line.startswith("PASSED")}
    assert passed == {
        "test_claimers_in_several_processes_never_get_the_same_job",
        "test_jobs_survive_closing_and_reopening_the_store",
        "test_pages_neither_skip_nor_repeat_while_jobs_arrive",
    }


def test_an_unknown_scheme_fails_every_test_naming_the_installed_backends(
    tmp_path: pathlib.Path,
) -> None:
    result = run(
        ["-m", "taskforge_conformance", "nosuchdb://x", "-k", "order_is_priority"], tmp_path
    )
    assert result.returncode == 1
    assert "no installed backend handles nosuchdb://" in result.stdout


def test_the_runner_needs_a_url(tmp_path: pathlib.Path) -> None:
    result = run(["-m", "taskforge_conformance"], tmp_path)
    assert result.returncode == 2
    assert "url" in result.stderr
