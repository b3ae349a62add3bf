"""TaskForge side by side with its peers: every workload, every system, one run.

::

    make bench                    # the full run (peers in their own venvs, made on demand)
    make bench-quick              # a smoke run: TaskForge only, small N, no speed asserted
    .venv/bin/python benchmarks/harness.py --help

Each system is an adapter script in ``benchmarks/systems/`` run with the Python of its own
virtual environment (``benchmarks/.venvs/<peer>/``, installed from the pinned
``benchmarks/requirements/<peer>.txt``); TaskForge runs in the project's ``.venv``. Every
workload gets a fresh database (PostgreSQL), a flushed Redis database of its own, or a new
SQLite file. See ``docs/performance.md`` for the method and the latest figures.

Results land in ``results/<UTC timestamp>/``: ``results.json`` (every figure, raw wake-up
latencies, soak samples, each system's configuration), ``results.md`` (the tables) and, with
matplotlib from ``benchmarks/.venvs/report``, ``throughput.png``, ``latency.png``,
``scaleout.png`` and ``soak.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pathlib
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import report

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS_DIR = HERE / "systems"
VENVS = HERE / ".venvs"
REQUIREMENTS = HERE / "requirements"

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"


@dataclass(frozen=True)
class System:
    """One queue on one store."""

    key: str
    label: str
    script: str
    #: ``None``: the project's own venv; else the name of a venv under ``benchmarks/.venvs``.
    venv: str | None
    #: ``sqlite``, ``postgres`` or ``redis``.
    store: str
    #: Whether the system has a bulk-enqueue API (others report "n/a").
    bulk: bool = True

    @property
    def taskforge(self) -> bool:
        return self.venv is None


SYSTEMS = (
    System("taskforge-sqlite", "TaskForge (SQLite)", "taskforge_system.py", None, "sqlite"),
    System("taskforge-postgres", "TaskForge (PostgreSQL)", "taskforge_system.py", None, "postgres"),
    System("pgqueuer", "PgQueuer", "pgqueuer_system.py", "pgqueuer", "postgres"),
    System(
        "procrastinate", "Procrastinate", "procrastinate_system.py", "procrastinate", "postgres"
    ),
    System("saq-postgres", "SAQ (PostgreSQL)", "saq_system.py", "saq", "postgres", bulk=False),
    System("saq-redis", "SAQ (Redis)", "saq_system.py", "saq", "redis", bulk=False),
    System("arq", "arq (Redis)", "arq_system.py", "arq", "redis", bulk=False),
    System("celery", "Celery (Redis)", "celery_system.py", "celery", "redis", bulk=False),
    System("huey-sqlite", "Huey (SQLite)", "huey_system.py", "huey", "sqlite"),
)
BY_KEY = {system.key: system for system in SYSTEMS}


@dataclass
class Settings:
    jobs: int = 10_000
    batch: int = 1_000
    wakeups: int = 500
    wakeup_interval: float = 0.01
    scale_out: tuple[int, ...] = (1, 2, 4)
    soak_jobs: int = 1_000_000
    soak_store: str = "sqlite"
    postgres: str = DEFAULT_POSTGRES
    redis: str = DEFAULT_REDIS
    #: Longest a worker may go without starting a job before a drain is called stuck.
    stall_timeout: float = 60.0
    workloads: tuple[str, ...] = ("enqueue", "drain", "wakeup", "scaleout", "soak")
    #: Rounds of the enqueue, drain and wake-up workloads (scale-out once, in the first round;
    #: the soak once, after the last); each round runs every system in turn, starting one
    #: system later than the round before, so that a burst of load elsewhere hits all alike.
    repeat: int = 1
    #: Benchmark-only: URL query options appended to TaskForge's URL (``poll_interval=0.005``).
    taskforge_options: str = ""
    quick: bool = False


class BenchError(RuntimeError):
    """A workload could not be measured (the system failed, hung or lost a job)."""


# -- environments ---------------------------------------------------------------------------


def python_for(venv: str | None) -> str:
    """The interpreter of ``venv``, creating it from its pinned requirements when needed."""
    if venv is None:
        return sys.executable
    return str(ensure_venv(venv) / "bin" / "python")


def ensure_venv(name: str) -> pathlib.Path:
    requirements = REQUIREMENTS / f"{name}.txt"
    target = VENVS / name
    stamp = target / ".requirements"
    wanted = requirements.read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    print(f"[bench] creating {target.relative_to(ROOT)} from {requirements.relative_to(ROOT)}")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(wanted)
    return target


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def _pg_admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _tf_url(url: str, system: System, settings: Settings) -> str:
    if not system.taskforge or not settings.taskforge_options:
        return url
    return url + ("&" if "?" in url else "?") + settings.taskforge_options


@contextmanager
def store(system: System, settings: Settings, workdir: pathlib.Path) -> Iterator[str]:
    """A fresh, empty store for one workload; yields the URL the adapter connects to."""
    if system.store == "sqlite":
        db = workdir / "bench.db"
        yield _tf_url(f"sqlite:///{db}", system, settings) if system.taskforge else str(db)
    elif system.store == "postgres":
        name = f"tfbench_{secrets.token_hex(4)}"
        asyncio.run(_pg_admin(settings.postgres, f'CREATE DATABASE "{name}"'))
        try:
            yield _tf_url(with_database(settings.postgres, name), system, settings)
        finally:
            asyncio.run(_pg_admin(settings.postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))
    else:
        import redis

        client = redis.Redis.from_url(settings.redis)
        client.flushdb()  # our own database number only, never FLUSHALL
        try:
            yield settings.redis
        finally:
            client.flushdb()
            client.close()


# -- running adapters -----------------------------------------------------------------------


class Adapter:
    """Runs one system's adapter commands against one store and one work folder."""

    def __init__(self, system: System, url: str, workdir: pathlib.Path) -> None:
        self.system = system
        self.python = python_for(system.venv)
        self.workdir = workdir
        self.env = {
            **os.environ,
            "BENCH_URL": url,
            "BENCH_WORKDIR": str(workdir),
            "PYTHONPATH": str(SYSTEMS_DIR),
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str, timeout: float = 600) -> dict[str, Any]:
        """Run one command to completion; return the JSON of its last output line, if any."""
        argv = [self.python, str(SYSTEMS_DIR / self.system.script), *args]
        done = subprocess.run(
            argv, env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
            raise BenchError(f"{' '.join(args)} exited {done.returncode}: " + "\n".join(tail))
        for line in reversed(done.stdout.strip().splitlines()):
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result
        return {}

    def start_worker(self) -> subprocess.Popen[bytes]:
        number = len(self.workers)
        log = (self.workdir / f"worker-{number}.out").open("wb")
        proc = subprocess.Popen(
            [self.python, str(SYSTEMS_DIR / self.system.script), "worker"],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the worker's own children (Celery, Huey) stop with it
        )
        log.close()
        self.workers.append(proc)
        return proc

    def check_workers(self) -> None:
        for number, proc in enumerate(self.workers):
            if proc.poll() is not None:
                out = (self.workdir / f"worker-{number}.out").read_text(errors="replace")
                tail = "\n".join(out.strip().splitlines()[-15:])
                raise BenchError(f"worker {number} exited {proc.returncode}: {tail}")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.workers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers.clear()


class StartLog:
    """Reads the ``starts-<pid>.log`` files the workers append to, as they grow."""

    def __init__(self, workdir: pathlib.Path, jobs: int, keep_times: bool = True) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.counts = bytearray(jobs)
        self.times: list[float] = [0.0] * jobs if keep_times else []
        self.first = float("inf")
        self.last = 0.0
        self.seen = 0
        self.other = 0  # warm-up jobs and numbers outside 0..jobs-1
        self._offsets: dict[pathlib.Path, int] = {}
        self._partial: dict[pathlib.Path, bytes] = {}

    def read(self) -> int:
        """Take in what was appended since the last call; return the jobs seen so far."""
        for path in self.workdir.glob("starts-*.log"):
            with path.open("rb") as f:
                f.seek(self._offsets.get(path, 0))
                chunk = self._partial.pop(path, b"") + f.read()
                self._offsets[path] = f.tell()
            lines = chunk.split(b"\n")
            if lines[-1]:
                self._partial[path] = lines[-1]
            for line in lines[:-1]:
                number, _, stamp = line.partition(b" ")
                n, t = int(number), float(stamp)
                if not 0 <= n < self.jobs:
                    self.other += 1
                    continue
                if self.counts[n] == 0:
                    self.seen += 1
                if self.counts[n] < 255:
                    self.counts[n] += 1
                if self.times:
                    self.times[n] = t
                self.first = min(self.first, t)
                self.last = max(self.last, t)
        return self.seen

    def verify(self) -> dict[str, Any]:
        """Every job ran exactly once: none missing, none twice."""
        missing = self.counts.count(0)
        twice = self.jobs - missing - self.counts.count(1)
        return {"exactly_once": missing == 0 and twice == 0, "missing": missing, "twice": twice}


def wait_for(adapter: Adapter, log: StartLog, settings: Settings, on_tick: Any = None) -> None:
    """Until every job started; fails when no job starts for ``stall_timeout`` seconds."""
    progress, since = -1, time.monotonic()
    while log.read() < log.jobs:
        adapter.check_workers()
        if log.seen != progress:
            progress, since = log.seen, time.monotonic()
        elif time.monotonic() - since > settings.stall_timeout:
            raise BenchError(f"stuck at {log.seen} of {log.jobs} jobs")
        if on_tick is not None:
            on_tick(log)
        time.sleep(0.05)


def settle(log: StartLog) -> None:
    """Give a duplicate run a second to show up before the workers stop."""
    time.sleep(1.0)
    log.read()


# -- workloads ------------------------------------------------------------------------------


def enqueue(system: System, settings: Settings, workdir: pathlib.Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with store(system, settings, workdir) as url:
        adapter = Adapter(system, url, workdir)
        adapter.command("setup")
        single = adapter.command("enqueue-single", "--jobs", str(settings.jobs))
        out["single"] = {
            "jobs": settings.jobs,
            **single,
            "jobs_per_s": settings.jobs / single["seconds"],
        }
    if not system.bulk:
        out["bulk"] = {"unsupported": "no bulk-enqueue API"}
        return out
    bulk_dir = workdir / "bulk"
    bulk_dir.mkdir()
    with store(system, settings, bulk_dir) as url:
        adapter = Adapter(system, url, bulk_dir)
        adapter.command("setup")
        bulk = adapter.command(
            "enqueue-bulk", "--jobs", str(settings.jobs), "--batch", str(settings.batch)
        )
        out["bulk"] = {"jobs": settings.jobs, **bulk, "jobs_per_s": settings.jobs / bulk["seconds"]}
    return out


def drain(
    system: System, settings: Settings, workdir: pathlib.Path, workers: int = 1
) -> dict[str, Any]:
    jobs = settings.jobs
    with store(system, settings, workdir) as url:
        adapter = Adapter(system, url, workdir)
        adapter.command("setup")
        adapter.command("fill", "--jobs", str(jobs))
        log = StartLog(workdir, jobs, keep_times=False)
        peak = 0.0

        def sample(log: StartLog) -> None:
            nonlocal peak
            for proc in adapter.workers:
                with suppress(OSError, BenchError):
                    peak = max(peak, _rss_mib(proc.pid))

        try:
            for _ in range(workers):
                adapter.start_worker()
            wait_for(adapter, log, settings, on_tick=sample)
            settle(log)
        finally:
            adapter.stop_workers()
        log.read()
    seconds = log.last - log.first
    return {
        "jobs": jobs,
        "workers": workers,
        "seconds": seconds,
        "jobs_per_s": (jobs - 1) / seconds if seconds > 0 else float("inf"),
        "worker_rss_peak_mib": round(peak, 2),
        **log.verify(),
    }


def wakeup(system: System, settings: Settings, workdir: pathlib.Path) -> dict[str, Any]:
    jobs = settings.wakeups
    with store(system, settings, workdir) as url:
        adapter = Adapter(system, url, workdir)
        adapter.command("setup")
        log = StartLog(workdir, jobs)
        try:
            adapter.start_worker()
            adapter.command(
                "wakeup", "--jobs", str(jobs), "--interval", str(settings.wakeup_interval)
            )
            wait_for(adapter, log, settings)
            settle(log)
        finally:
            adapter.stop_workers()
        log.read()
    sent = {int(k): v for k, v in json.loads((workdir / "sent.json").read_text()).items()}
    ms = sorted((log.times[n] - sent[n]) * 1000 for n in range(jobs))
    return {
        "jobs": jobs,
        "interval_ms": settings.wakeup_interval * 1000,
        "p50_ms": report.percentile(ms, 0.50),
        "p95_ms": report.percentile(ms, 0.95),
        "p99_ms": report.percentile(ms, 0.99),
        "max_ms": ms[-1],
        "latencies_ms": [round(value, 3) for value in ms],
        **log.verify(),
    }


def _rss_mib(pid: int) -> float:
    """Resident set size of a process (and none of its children), in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def soak(system: System, settings: Settings, workdir: pathlib.Path) -> dict[str, Any]:
    jobs = settings.soak_jobs
    samples: list[tuple[float, int, float]] = []
    with store(system, settings, workdir) as url:
        adapter = Adapter(system, url, workdir)
        adapter.command("setup")
        step = 100_000
        for first in range(0, jobs, step):
            adapter.command("fill", "--jobs", str(min(step, jobs - first)), "--first", str(first))
        log = StartLog(workdir, jobs, keep_times=False)
        started = time.monotonic()
        next_sample = 0.0

        def sample(log: StartLog) -> None:
            nonlocal next_sample
            now = time.monotonic() - started
            if now >= next_sample and log.seen:
                samples.append((round(now, 2), log.seen, round(_rss_mib(worker.pid), 2)))
                next_sample = now + 0.25

        try:
            worker = adapter.start_worker()
            wait_for(adapter, log, settings, on_tick=sample)
            settle(log)
            samples.append((round(time.monotonic() - started, 2), log.seen, _rss_mib(worker.pid)))
        finally:
            adapter.stop_workers()
        log.read()
    seconds = log.last - log.first
    return {
        "jobs": jobs,
        "store": system.store,
        "seconds": seconds,
        "jobs_per_s": (jobs - 1) / seconds if seconds > 0 else float("inf"),
        **report.rss_summary(samples, jobs),
        "samples": samples,
        **log.verify(),
    }


# -- orchestration --------------------------------------------------------------------------


def _example_url(system: System, settings: Settings, tmp: pathlib.Path) -> str:
    """A URL of the system's kind of store, for its ``config`` command (which connects to
    nothing)."""
    if system.store == "postgres":
        return _tf_url(settings.postgres, system, settings)
    if system.store == "redis":
        return settings.redis
    db = tmp / "config.db"
    return _tf_url(f"sqlite:///{db}", system, settings) if system.taskforge else str(db)


def describe(system: System, settings: Settings, tmp: pathlib.Path) -> dict[str, Any]:
    """A system's entry in results.json, with the configuration its adapter reports."""
    entry: dict[str, Any] = {"label": system.label, "store": system.store, "results": {}}
    try:
        entry["config"] = Adapter(system, _example_url(system, settings, tmp), tmp).command(
            "config"
        )
        if system.taskforge and settings.taskforge_options:
            entry["config"]["benchmark-only URL options"] = settings.taskforge_options
    except (BenchError, subprocess.SubprocessError) as exc:
        entry["config"] = {}
        entry["errors"] = {"config": str(exc)}
    return entry


def attempt(
    system: System,
    settings: Settings,
    tmp: pathlib.Path,
    runs: dict[str, list[Any]],
    name: str,
    fn: Any,
    *args: Any,
) -> None:
    """One workload of ``system`` once; its result (or error text) appended to ``runs``."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    print(f"[bench] {system.key}: {name} ...", flush=True)
    started = time.monotonic()
    try:
        result = fn(system, settings, folder, *args)
        brief = report.brief(name, result)
        print(f"[bench] {system.key}: {name}: {brief} ({time.monotonic() - started:.0f} s)")
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        result = str(exc)
        print(f"[bench] {system.key}: {name} FAILED: {exc}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    runs.setdefault(name, []).append(result)


def run_round(
    system: System, settings: Settings, tmp: pathlib.Path, runs: dict[str, list[Any]], first: bool
) -> None:
    """Every workload of ``system`` once but the soak, which runs after every round."""
    if "enqueue" in settings.workloads:
        attempt(system, settings, tmp, runs, "enqueue", enqueue)
    if "drain" in settings.workloads:
        attempt(system, settings, tmp, runs, "drain", drain)
    if "wakeup" in settings.workloads:
        attempt(system, settings, tmp, runs, "wakeup", wakeup)
    # Scale-out runs in the first round only: it is long, and judged on its own.
    if first and "scaleout" in settings.workloads and system.store == "postgres":
        for workers in settings.scale_out:
            if workers != 1 or "drain" not in settings.workloads:
                attempt(system, settings, tmp, runs, f"drain_{workers}", drain, workers)


def rotated(systems: list[System], number: int) -> list[System]:
    """The order of round ``number``: each round starts one system later, so no system always
    runs right after the same other one (whose leftovers, such as dirty pages being written
    back, would slow only it)."""
    shift = number % len(systems)
    return systems[shift:] + systems[:shift]


def combine(entry: dict[str, Any], runs: dict[str, list[Any]]) -> None:
    """Each workload's median run (by its headline figure) into ``entry["results"]``; every
    run's headline in ``"rounds"``; an error if any round failed."""
    results, errors = entry["results"], entry.setdefault("errors", {})
    for name, attempts in runs.items():
        good = [a for a in attempts if isinstance(a, dict)]
        failed = [a for a in attempts if not isinstance(a, dict)]
        if failed:
            errors[name] = failed[-1]
        if not good:
            continue
        chosen = report.median_run(name, good)
        if len(good) > 1:
            chosen = {**chosen, "rounds": [report.headline(name, a) for a in good]}
            if any("exactly_once" in a for a in good):
                chosen["exactly_once"] = all(a.get("exactly_once") for a in good)
        results[name] = chosen
    if "drain" in results and any(name.startswith("drain_") for name in results):
        results.setdefault("drain_1", results["drain"])
    if not errors:
        del entry["errors"]


def meta(settings: Settings) -> dict[str, Any]:
    import sqlite3

    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_at_start": [round(x, 2) for x in load],
        "settings": {
            "jobs": settings.jobs,
            "batch": settings.batch,
            "wakeups": settings.wakeups,
            "wakeup_interval_s": settings.wakeup_interval,
            "scale_out": list(settings.scale_out),
            "soak_jobs": settings.soak_jobs,
            "soak_store": settings.soak_store,
            "workloads": list(settings.workloads),
            "repeat": settings.repeat,
            "taskforge_options": settings.taskforge_options,
        },
    }


def charts(out: pathlib.Path) -> list[str]:
    """Draw the PNGs with matplotlib from its own venv; returns the files written."""
    python = python_for("report")
    done = subprocess.run(
        [python, str(HERE / "report.py"), str(out), "--charts"], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"[bench] charts failed: {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return []
    return done.stdout.split()


def run(
    settings: Settings, systems: list[System], out_root: pathlib.Path, draw: bool
) -> pathlib.Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_root / (stamp + ("-quick" if settings.quick else ""))
    out.mkdir(parents=True)
    results: dict[str, Any] = {"meta": meta(settings), "systems": {}}
    for system in systems:  # make every venv first, so installs do not disturb measurements
        python_for(system.venv)
    with tempfile.TemporaryDirectory(prefix="taskforge-bench-") as tmp:
        entries = {s.key: describe(s, settings, pathlib.Path(tmp)) for s in systems}
        runs: dict[str, dict[str, list[Any]]] = {s.key: {} for s in systems}
        for number in range(settings.repeat):
            for system in rotated(systems, number):
                if settings.repeat > 1:
                    print(f"[bench] round {number + 1} of {settings.repeat}: {system.key}")
                folder = pathlib.Path(tmp) / f"{system.key}-{number}"
                folder.mkdir()
                run_round(system, settings, folder, runs[system.key], first=number == 0)
                combine(entries[system.key], runs[system.key])
                results["systems"] = entries
                (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        # The soak last: a million jobs leave the disk busy for a while after them.
        soaked = [s for s in systems if s.taskforge and s.store == settings.soak_store]
        for system in soaked if "soak" in settings.workloads else []:
            attempt(system, settings, pathlib.Path(tmp), runs[system.key], "soak", soak)
            combine(entries[system.key], runs[system.key])
            results["systems"] = entries
    results["meta"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = report.targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if draw:
        charts(out)
    (out / "results.md").write_text(report.markdown(results, images=sorted(out.glob("*.png"))))
    latest = out_root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(out.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: TaskForge only, small N")
    p.add_argument("--systems", help=f"comma-separated, of: {', '.join(BY_KEY)}")
    p.add_argument(
        "--workloads", help="comma-separated, of: enqueue, drain, wakeup, scaleout, soak"
    )
    p.add_argument("--jobs", type=int, help="jobs per enqueue and drain run (10000)")
    p.add_argument("--batch", type=int, help="jobs per bulk-enqueue call (1000)")
    p.add_argument("--wakeups", type=int, help="wake-up samples (500)")
    p.add_argument("--soak-jobs", type=int, help="jobs in the soak (1000000)")
    p.add_argument("--soak-store", choices=("sqlite", "postgres"), help="(sqlite)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds, systems taking turns; medians count (1)"
    )
    p.add_argument(
        "--taskforge-options",
        default="",
        help="benchmark-only: URL options for TaskForge, e.g. poll_interval=0.005",
    )
    p.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES))
    p.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "results")
    p.add_argument("--no-charts", action="store_true", help="skip the PNGs (no matplotlib venv)")
    args = p.parse_args(argv)

    settings = Settings(
        postgres=args.postgres,
        redis=args.redis,
        repeat=max(1, args.repeat),
        taskforge_options=args.taskforge_options,
    )
    if args.quick:
        settings.quick = True
        settings.jobs, settings.batch, settings.wakeups = 300, 100, 30
        settings.scale_out, settings.soak_jobs, settings.stall_timeout = (1, 2), 3_000, 30.0
    for name in ("jobs", "batch", "wakeups", "soak_jobs", "soak_store"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if args.workloads:
        settings.workloads = tuple(args.workloads.split(","))
    if args.systems:
        unknown = set(args.systems.split(",")) - set(BY_KEY)
        if unknown:
            p.error(f"unknown systems: {', '.join(sorted(unknown))}")
        systems = [BY_KEY[key] for key in args.systems.split(",")]
    elif args.quick:
        systems = [BY_KEY["taskforge-sqlite"], BY_KEY["taskforge-postgres"]]
    else:
        systems = list(SYSTEMS)
    if settings.jobs < 2 or settings.wakeups < 1 or settings.soak_jobs < 2:
        p.error("--jobs and --soak-jobs must be >= 2, --wakeups >= 1")
    draw = not args.no_charts and not args.quick
    out = run(settings, systems, args.out, draw)
    print((out / "results.md").read_text())
    print(f"[bench] results in {out}")
    return 1 if problems(json.loads((out / "results.json").read_text()), settings) else 0


def problems(results: dict[str, Any], settings: Settings) -> list[str]:
    """What makes the run fail: a TaskForge job that did not run exactly once, or (in quick
    mode, the smoke test of the harness itself) any workload that could not be measured. A
    peer's duplicate or lost job is a finding about that peer: printed, and marked in the
    table, but no failure of the run."""
    found = []
    for key, entry in results["systems"].items():
        for name, result in entry.get("results", {}).items():
            if result.get("exactly_once") is False:
                line = f"{key}: {name}: not exactly once"
                if BY_KEY[key].taskforge:
                    found.append(line)
                else:
                    print(f"[bench] finding about a peer: {line}", file=sys.stderr)
        if settings.quick:
            found += [f"{key}: {name} failed" for name in entry.get("errors", {})]
    for line in found:
        print(f"[bench] PROBLEM: {line}", file=sys.stderr)
    return found


if __name__ == "__main__":
    sys.exit(main())
