"""Tables, targets and charts from a benchmark run's ``results.json``.

The Markdown and the targets need the standard library only (the harness imports them);
the charts need matplotlib, which lives in ``benchmarks/.venvs/report`` rather than in
TaskForge's own dependencies::

    benchmarks/.venvs/report/bin/python benchmarks/report.py results/latest --charts
    .venvs/bin/python benchmarks/report.py results/latest        # rewrite results.md only
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

TF_SQLITE, TF_PG = "taskforge-sqlite", "taskforge-postgres"
MIB = 1.0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def rss_summary(samples: Sequence[Sequence[float]], jobs: int) -> dict[str, Any]:
    """Start (once 1% of the jobs ran: imports and caches are warm), end, growth and slope.

    ``samples`` are ``(seconds, jobs done, RSS MiB)``; the slope is a least-squares fit of RSS
    against jobs done after the start, in MiB per 100,000 jobs.
    """
    warm = [s for s in samples if s[1] >= max(1, jobs // 100)]
    if len(warm) < 2:
        warm = list(samples)
    if not warm:
        return {}
    xs = [s[1] for s in warm]
    ys = [s[2] for s in warm]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return {
        "rss_first_mib": samples[0][2],
        "rss_start_mib": ys[0],
        "rss_end_mib": ys[-1],
        "rss_peak_mib": max(s[2] for s in samples),
        "rss_growth_mib": ys[-1] - ys[0],
        "rss_slope_mib_per_100k": slope * 100_000,
    }


def headline(name: str, result: dict[str, Any]) -> float:
    """The figure a workload is judged by: p99 for wake-ups, else throughput (bulk, then
    single, for enqueues)."""
    if name == "wakeup":
        return float(result["p99_ms"])
    if name == "enqueue":
        bulk = result.get("bulk", {})
        return float(bulk.get("jobs_per_s", result["single"]["jobs_per_s"]))
    return float(result["jobs_per_s"])


def median_run(name: str, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run whose headline figure is the median (the lower middle one for an even count);
    enqueue runs are combined field by field, single and bulk each from its own median."""
    if name == "enqueue" and len(runs) > 1:
        out = dict(runs[0])
        for part in ("single", "bulk"):
            rated = [r[part] for r in runs if "jobs_per_s" in r.get(part, {})]
            if rated:
                rated.sort(key=lambda r: r["jobs_per_s"])
                out[part] = rated[(len(rated) - 1) // 2]
        return out
    ordered = sorted(runs, key=lambda r: headline(name, r))
    return ordered[(len(ordered) - 1) // 2]


def brief(name: str, result: dict[str, Any]) -> str:
    """One line for the harness's progress output."""
    if name == "enqueue":
        parts = [f"single {result['single']['jobs_per_s']:,.0f}/s"]
        if "jobs_per_s" in result.get("bulk", {}):
            parts.append(f"bulk {result['bulk']['jobs_per_s']:,.0f}/s")
        return ", ".join(parts)
    if name == "wakeup":
        return f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms" + _once(result)
    if name == "soak":
        return (
            f"{result['jobs_per_s']:,.0f}/s, RSS {result.get('rss_start_mib', 0):.1f} -> "
            f"{result.get('rss_end_mib', 0):.1f} MiB" + _once(result)
        )
    return f"{result['jobs_per_s']:,.0f} jobs/s" + _once(result)


def _once(result: dict[str, Any]) -> str:
    if result.get("exactly_once"):
        return ", exactly once"
    return f", NOT exactly once (missing {result['missing']}, twice {result['twice']})"


def _get(results: dict[str, Any], key: str, *path: str) -> float | None:
    node: Any = results["systems"].get(key, {}).get("results", {})
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


def _round_ratios(results: dict[str, Any], ours: str, theirs: str, name: str) -> list[float] | None:
    """``ours / theirs`` of a workload's headline figure within each round (rounds run the
    systems one after the other, so each ratio compares runs made minutes apart)."""
    a = results["systems"].get(ours, {}).get("results", {}).get(name, {}).get("rounds")
    b = results["systems"].get(theirs, {}).get("results", {}).get(name, {}).get("rounds")
    if not a or not b or len(a) != len(b):
        return None
    return [round(x / y, 3) for x, y in zip(a, b, strict=True) if y]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as measured in this run: a ratio and whether it is met."""
    out: list[dict[str, Any]] = []

    def ratio(
        name: str,
        ours: float | None,
        theirs: float | None,
        goal: float,
        lower: bool,
        rounds: list[float] | None = None,
    ) -> None:
        """``ours / theirs`` (of the medians) must reach ``goal`` (or stay at most ``goal``
        when lower wins); ``rounds``: the same ratio within each round, for the record."""
        if ours is None or theirs is None or theirs == 0:
            out.append({"target": name, "met": None, "detail": "not measured"})
            return
        value = ours / theirs
        met = value <= goal if lower else value >= goal
        row = {"target": name, "ours": ours, "theirs": theirs, "ratio": value, "goal": goal}
        row["met"] = met
        if rounds is not None:
            row["round_ratios"] = rounds
        out.append(row)

    def bound(name: str, value: float | None, limit: float) -> None:
        if value is None:
            out.append({"target": name, "met": None, "detail": "not measured"})
            return
        out.append({"target": name, "ours": value, "goal": limit, "met": value < limit})

    pgq = "pgqueuer"
    ratio(
        "PostgreSQL drain >= 2x PgQueuer",
        _get(results, TF_PG, "drain", "jobs_per_s"),
        _get(results, pgq, "drain", "jobs_per_s"),
        2.0,
        lower=False,
        rounds=_round_ratios(results, TF_PG, pgq, "drain"),
    )
    ratio(
        "PostgreSQL bulk enqueue >= 1.5x PgQueuer",
        _get(results, TF_PG, "enqueue", "bulk", "jobs_per_s"),
        _get(results, pgq, "enqueue", "bulk", "jobs_per_s"),
        1.5,
        lower=False,
        rounds=_round_ratios(results, TF_PG, pgq, "enqueue"),
    )
    ratio(
        "PostgreSQL single enqueue >= PgQueuer",
        _get(results, TF_PG, "enqueue", "single", "jobs_per_s"),
        _get(results, pgq, "enqueue", "single", "jobs_per_s"),
        1.0,
        lower=False,
    )
    ratio(
        "PostgreSQL wake-up p99 <= PgQueuer",
        _get(results, TF_PG, "wakeup", "p99_ms"),
        _get(results, pgq, "wakeup", "p99_ms"),
        1.0,
        lower=True,
        rounds=_round_ratios(results, TF_PG, pgq, "wakeup"),
    )
    ratio(
        "SQLite drain >= 2x Huey (SQLite)",
        _get(results, TF_SQLITE, "drain", "jobs_per_s"),
        _get(results, "huey-sqlite", "drain", "jobs_per_s"),
        2.0,
        lower=False,
        rounds=_round_ratios(results, TF_SQLITE, "huey-sqlite", "drain"),
    )
    bound(
        "SQLite cross-process wake-up p99 < 10 ms",
        _get(results, TF_SQLITE, "wakeup", "p99_ms"),
        10.0,
    )
    for key in (TF_SQLITE, TF_PG):
        peak = _get(results, key, "soak", "rss_peak_mib")
        if peak is not None:
            bound(f"worker RSS < 50 MB ({key}, peak in soak)", peak * 2**20 / 1e6, 50.0)
            bound(
                f"RSS growth < 2 MiB over the soak ({key})",
                _get(results, key, "soak", "rss_growth_mib"),
                2.0,
            )
    return out


# -- Markdown -------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(results: dict[str, Any], images: Sequence[pathlib.Path] = ()) -> str:
    meta = results["meta"]
    settings = meta["settings"]
    lines = [
        f"# Benchmark run {meta['date']}"
        + (" (quick mode: a smoke run, not figures)" if meta["quick"] else ""),
        "",
        f"Python {meta['python']}, SQLite {meta['sqlite']}, {meta['machine']}; load average "
        f"{meta.get('load_at_start')} at the start, {meta.get('load_at_end')} at the end.",
        f"{settings['jobs']:,} jobs per enqueue and drain run, "
        f"bulk batches of {settings['batch']:,}; "
        f"{settings['wakeups']} wake-up samples {settings['wakeup_interval_s'] * 1000:g} ms apart; "
        f"soak of {settings['soak_jobs']:,} jobs on {settings['soak_store']}.",
        "",
        "## Throughput and latency",
        "",
        "| system | enqueue, single (jobs/s) | enqueue, bulk (jobs/s) | drain, 1 worker (jobs/s) "
        "| wake-up p50 / p95 / p99 / max (ms) | worker RSS in drain (MiB) | exactly once |",
        "|---|--:|--:|--:|--:|--:|:-:|",
    ]
    for key, entry in results["systems"].items():
        r = entry.get("results", {})
        bulk = r.get("enqueue", {}).get("bulk", {})
        bulk_text = "n/a" if "unsupported" in bulk else _rate(bulk.get("jobs_per_s"))
        wake = r.get("wakeup")
        wake_text = (
            " / ".join(_ms(wake.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
            if wake
            else "-"
        )
        checks = [r[name].get("exactly_once") for name in r if "exactly_once" in r[name]]
        once = "-" if not checks else ("yes" if all(checks) else "**NO**")
        lines.append(
            f"| {entry['label']} | {_rate(_get(results, key, 'enqueue', 'single', 'jobs_per_s'))} "
            f"| {bulk_text} | {_rate(_get(results, key, 'drain', 'jobs_per_s'))} | {wake_text} "
            f"| {_ms(_get(results, key, 'drain', 'worker_rss_peak_mib'))} | {once} |"
        )

    scale = {
        key: entry
        for key, entry in results["systems"].items()
        if any(name.startswith("drain_") for name in entry.get("results", {}))
    }
    if scale:
        counts = sorted(
            {
                int(n.split("_")[1])
                for e in scale.values()
                for n in e["results"]
                if n.startswith("drain_")
            }
        )
        lines += [
            "",
            "## Scale-out on PostgreSQL (drain, jobs/s)",
            "",
            "| system | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in counts) + " |",
            "|---|" + "--:|" * len(counts),
        ]
        for key, entry in scale.items():
            cells = [_rate(_get(results, key, f"drain_{n}", "jobs_per_s")) for n in counts]
            lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")

    soaks = {k: e for k, e in results["systems"].items() if "soak" in e.get("results", {})}
    if soaks:
        lines += [
            "",
            "## Soak: worker RSS",
            "",
            "| system | jobs | jobs/s | RSS first / at 1% / end / peak (MiB) | growth (MiB) "
            "| slope (MiB per 100k jobs) | exactly once |",
            "|---|--:|--:|--:|--:|--:|:-:|",
        ]
        for entry in soaks.values():
            s = entry["results"]["soak"]
            lines.append(
                f"| {entry['label']} | {s['jobs']:,} | {s['jobs_per_s']:,.0f} "
                f"| {s['rss_first_mib']:.1f} / {s['rss_start_mib']:.1f} / {s['rss_end_mib']:.1f} "
                f"/ {s['rss_peak_mib']:.1f} | {s['rss_growth_mib']:+.2f} "
                f"| {s['rss_slope_mib_per_100k']:+.3f} "
                f"| {'yes' if s['exactly_once'] else '**NO**'} |"
            )

    goals = targets(results)
    if goals:
        lines += [
            "",
            "## Targets",
            "",
            "Ratios of the medians; per round: the same ratio within each round.",
            "",
            "| target | measured | met |",
            "|---|---|:-:|",
        ]
        for goal in goals:
            if goal["met"] is None:
                measured = goal.get("detail", "")
            elif "ratio" in goal:
                measured = f"{goal['ratio']:.2f}x ({goal['ours']:,.1f} vs {goal['theirs']:,.1f})"
                if goal.get("round_ratios"):
                    each = ", ".join(f"{r:.2f}" for r in goal["round_ratios"])
                    measured += f"; per round: {each}"
            else:
                measured = f"{goal['ours']:,.2f} (limit {goal['goal']:g})"
            met = {True: "yes", False: "**no**", None: "-"}[goal["met"]]
            lines.append(f"| {goal['target']} | {measured} | {met} |")

    errors = {k: e["errors"] for k, e in results["systems"].items() if e.get("errors")}
    if errors:
        lines += ["", "## Failures", ""]
        for key, errs in errors.items():
            for name, text in errs.items():
                first = text.strip().splitlines()[-1] if text.strip() else text
                lines.append(f"- {results['systems'][key]['label']}, {name}: `{first[:300]}`")

    lines += ["", "## Configurations", ""]
    for entry in results["systems"].values():
        config = entry.get("config") or {}
        lines.append(
            f"- **{entry['label']}**: " + "; ".join(f"{k}: {v}" for k, v in config.items())
        )
    if images:
        lines += ["", "## Charts", ""]
        lines += [f"![{image.stem}]({image.name})" for image in images]
    return "\n".join(lines) + "\n"


# -- charts ---------------------------------------------------------------------------------


def draw_charts(results: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    """throughput.png, latency.png, and scaleout.png / soak.png when those ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    labels = [e["label"] for e in systems.values()]
    written: list[pathlib.Path] = []

    panels = (
        ("enqueue, single", ("enqueue", "single", "jobs_per_s")),
        ("enqueue, bulk", ("enqueue", "bulk", "jobs_per_s")),
        ("drain, 1 worker", ("drain", "jobs_per_s")),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 0.45 * len(labels) + 1.8), sharey=True)
    for ax, (title, path) in zip(axes, panels, strict=True):
        values = [_get(results, key, *path) or 0.0 for key in systems]
        colours = ["tab:orange" if key.startswith("taskforge") else "tab:blue" for key in systems]
        ax.barh(labels, values, color=colours)
        ax.set_title(f"{title} (jobs/s)")
        ax.invert_yaxis() if ax is axes[0] else None
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}" if value else " n/a", va="center", fontsize=8)
        ax.margins(x=0.25)
    fig.tight_layout()
    written.append(out / "throughput.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    waking = {k: e for k, e in systems.items() if "wakeup" in e.get("results", {})}
    if waking:
        fig, ax = plt.subplots(figsize=(10, 5))
        for key, entry in waking.items():
            ms = entry["results"]["wakeup"]["latencies_ms"]
            ys = [(i + 1) / len(ms) for i in range(len(ms))]
            ax.step(
                ms,
                ys,
                where="post",
                label=entry["label"],
                lw=2.2 if key.startswith("taskforge") else 1.2,
            )
        ax.set_xscale("log")
        ax.set_xlabel("enqueue-to-start latency (ms, log scale)")
        ax.set_ylabel("fraction of jobs started")
        ax.set_title("Wake-up latency of an idle worker, enqueues from another process")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "latency.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    scaling = {
        k: e
        for k, e in systems.items()
        if any(n.startswith("drain_") for n in e.get("results", {}))
    }
    if scaling:
        fig, ax = plt.subplots(figsize=(8, 5))
        for entry in scaling.values():
            points = sorted(
                (int(n.split("_")[1]), r["jobs_per_s"])
                for n, r in entry["results"].items()
                if n.startswith("drain_")
            )
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", label=entry["label"]
            )
        ax.set_xlabel("worker processes")
        ax.set_ylabel("drain (jobs/s)")
        ax.set_title("Scale-out on PostgreSQL")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "scaleout.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    soaks = {k: e for k, e in systems.items() if "soak" in e.get("results", {})}
    if soaks:
        fig, ax = plt.subplots(figsize=(8, 5))
        for entry in soaks.values():
            samples = entry["results"]["soak"]["samples"]
            ax.plot([s[1] for s in samples], [s[2] for s in samples], label=entry["label"])
        ax.set_xlabel("jobs run")
        ax.set_ylabel("worker RSS (MiB)")
        ax.set_title("Soak: worker memory")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "soak.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=pathlib.Path, help="a run's folder, holding results.json")
    p.add_argument("--charts", action="store_true", help="draw the PNGs (needs matplotlib)")
    args = p.parse_args(argv)
    results = json.loads((args.folder / "results.json").read_text())
    results["targets"] = targets(results)
    if args.charts:
        for path in draw_charts(results, args.folder):
            print(path)
    else:
        images = sorted(args.folder.glob("*.png"))
        (args.folder / "results.md").write_text(markdown(results, images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
