"""The benchmark harness's quick mode works end to end (no speed is asserted).

It runs ``benchmarks/harness.py --quick`` for TaskForge only, with tiny counts, in a fresh
process: each workload starts real worker processes, and every job must run exactly once.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HARNESS = ROOT / "benchmarks" / "harness.py"


def _run_quick(out: pathlib.Path, systems: str, *extra: str) -> dict:
    command = [sys.executable, str(HARNESS), "--quick", "--systems", systems]
    command += ["--jobs", "60", "--batch", "20", "--wakeups", "5", "--soak-jobs", "300"]
    command += ["--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = [p for p in out.iterdir() if p.is_dir() and not p.is_symlink()]
    assert (folder / "results.md").read_text().startswith("# Benchmark run")
    assert (out / "latest").resolve() == folder.resolve()
    return json.loads((folder / "results.json").read_text())


def _every_job_ran_once(entry: dict) -> None:
    assert "errors" not in entry, entry.get("errors")
    checked = [result for result in entry["results"].values() if "exactly_once" in result]
    assert checked, "no workload checked that its jobs ran exactly once"
    assert all(result["exactly_once"] for result in checked), checked


@pytest.mark.slow
@pytest.mark.timeout(100)
def test_quick_mode_on_sqlite_writes_results_and_runs_every_job_once(
    tmp_path: pathlib.Path,
) -> None:
    results = _run_quick(tmp_path, "taskforge-sqlite")
    assert results["meta"]["quick"] is True
    entry = results["systems"]["taskforge-sqlite"]
    assert entry["config"]["system"] == "TaskForge"
    assert set(entry["results"]) == {"enqueue", "drain", "wakeup", "soak"}
    _every_job_ran_once(entry)
    assert entry["results"]["wakeup"]["jobs"] == 5
    assert entry["results"]["soak"]["rss_end_mib"] > 0
    assert {goal["target"] for goal in results["targets"]}  # targets listed, met or not


@pytest.mark.slow
@pytest.mark.timeout(100)
def test_quick_mode_on_postgres_runs_scale_out(tmp_path: pathlib.Path, postgres_url: str) -> None:
    results = _run_quick(
        tmp_path, "taskforge-postgres", "--postgres", postgres_url, "--workloads", "drain,scaleout"
    )
    entry = results["systems"]["taskforge-postgres"]
    assert set(entry["results"]) == {"drain", "drain_1", "drain_2"}
    _every_job_ran_once(entry)
