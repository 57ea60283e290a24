"""The suite's main report: ``RESULTS.md`` for parts 1 and 2 (latency and scaling), their goals,
and their two plots. The other parts add their own sections (see :mod:`gilfree._bench.report`).
The goals are recorded, never asserted: a slow run is a finding, not a failure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gilfree._bench import peers
from gilfree._bench.latency import GOAL_LATENCY_US, LatencyRow
from gilfree._bench.scaling import GOAL_SCALING_GAP, MP_METHOD, ScalingRow


def _speedups(rows: Sequence[ScalingRow]) -> tuple[dict[tuple[str, int], float], float]:
    by_key = {(r.backend, r.workers): r.seconds for r in rows}
    base = by_key[(rows[0].backend, min(r.workers for r in rows))]
    return {k: base / s for k, s in by_key.items()}, base


def goals(
    latency: Sequence[LatencyRow], scaling: Sequence[ScalingRow], cores: int
) -> list[tuple[str, str, str]]:
    """Checks the measured numbers against the project's goals, without asserting anything.

    Args:
        latency: Rows of :func:`measure_latency` (gilfree first), or none.
        scaling: Rows of :func:`measure_scaling`, or none.
        cores: CPUs available to this process.

    Returns:
        ``(goal, measured, status)`` triples.
    """
    out: list[tuple[str, str, str]] = []
    if latency:
        g = latency[0]
        out.append(
            (
                f"start→join of one warm Worker ≤ {GOAL_LATENCY_US:.0f} µs (median)",
                f"{g.median_us:.1f} µs",
                "met" if g.median_us <= GOAL_LATENCY_US else "not met",
            )
        )
    if scaling:
        speed, _ = _speedups(scaling)
        mp = next(r.backend for r in scaling if r.backend.startswith("multiprocessing"))
        ws = [r.workers for r in scaling if r.workers <= cores]
        w = max(ws) if ws else min(r.workers for r in scaling)
        ours, theirs = speed[("gilfree.Worker", w)], speed[(mp, w)]
        gap = ours / theirs - 1
        peers = {r.backend for r in scaling} - {"threading.Thread", "gilfree.Worker"}
        best = max(peers, key=lambda name: speed[(name, w)])
        out.append(
            (
                f"speedup at W = {w} (cores: {cores}) within {GOAL_SCALING_GAP:.0%} of"
                " multiprocessing",
                f"gilfree {ours:.2f}x, multiprocessing {theirs:.2f}x ({gap:+.1%});"
                f" best process-based peer: {best} {speed[(best, w)]:.2f}x",
                "met" if gap >= -GOAL_SCALING_GAP else "not met",
            )
        )
    return out


def render_markdown(
    info: dict[str, str],
    latency: Sequence[LatencyRow],
    scaling: Sequence[ScalingRow],
    size: int,
    repeat: int,
    plots: Sequence[str],
) -> str:
    """Renders the report.

    Args:
        info: From :func:`machine_info`.
        latency: Rows of :func:`measure_latency`.
        scaling: Rows of :func:`measure_scaling`.
        size: Integers in the scaling data set.
        repeat: Runs per scaling cell.
        plots: File names of the plots written beside the report.

    Returns:
        Markdown text.
    """
    cores = len(os.sched_getaffinity(0))
    lines = [
        "# gilfree benchmark results",
        "",
        "Written by `make bench` (`python -m gilfree bench`, the same as `benchmarks/run.py`);"
        " regenerate rather than edit. How to read it: `benchmarks/README.md`.",
        "",
        "## Machine and run",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "## Goals (recorded, not asserted)",
        "",
        "| goal | measured | status |",
        "|---|---|---|",
        *(f"| {g} | {m} | {s} |" for g, m, s in goals(latency, scaling, cores)),
        "",
    ]
    if latency:
        ref = latency[0].median_us
        lines += [
            "## 1. Start→join latency of one trivial worker",
            "",
            "The worker object is built outside the timer; `start()` then `join()` is timed."
            " Every backend gets unmeasured warm-up runs first. multiprocessing starts a process"
            " per rep, so it runs fewer reps (see the column).",
            "",
            "| backend | reps | median (µs) | p90 (µs) | median ÷ gilfree |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {r.backend} | {r.reps} | {r.median_us:.1f} | {r.p90_us:.1f} |"
                f" {r.median_us / ref:.2f} |"
                for r in latency
            ),
            "",
        ]
    if scaling:
        speed, _ = _speedups(scaling)
        mp = next(r.backend for r in scaling if r.backend.startswith("multiprocessing"))
        by_key = {(r.backend, r.workers): r.seconds for r in scaling}
        lines += [
            "## 2. CPU scaling: the demo job over a large data set",
            "",
            f"Total Collatz steps of {size:,} pseudo-random integers below 10⁶ (pure Python,"
            " `gilfree._demo.job`), cut into W equal slices, one worker per slice; the time"
            " includes creating, starting and joining the workers and moving slices and results."
            f" Best of {repeat} run{'s' if repeat > 1 else ''} per cell; backends take turns."
            " multiprocessing is one `Process` per slice with its result sent over a `Pipe`;"
            f" it, ProcessPoolExecutor and mpire use the `{MP_METHOD}` start method, which"
            " pickles each slice to the child as gilfree does (`fork` would inherit the data"
            " for free, which workers started from a clean interpreter cannot). ProcessPoolExecutor is"
            " created inside the timer; joblib reuses its loky workers between runs, and with"
            " 1 worker runs the job in this process.",
            "",
            "| backend | workers | seconds | speedup vs threading, 1 worker |"
            " multiprocessing time ÷ this time |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {r.backend} | {r.workers} | {r.seconds:.3f} |"
                f" {speed[(r.backend, r.workers)]:.2f}x |"
                f" {by_key[(mp, r.workers)] / r.seconds:.2f} |"
                for r in scaling
            ),
            "",
        ]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"


def plot(latency: Sequence[LatencyRow], scaling: Sequence[ScalingRow], out: Path) -> list[str]:
    """Draws ``latency.png`` (bars) and ``scaling.png`` (lines) with matplotlib's Agg backend.

    Args:
        latency: Rows of :func:`measure_latency`.
        scaling: Rows of :func:`measure_scaling`.
        out: Folder to write into.

    Returns:
        The file names written; none if matplotlib is not installed.
    """
    if not latency and not scaling:
        return []
    plt = peers.pyplot("latency.png and scaling.png")
    if plt is None:
        return []
    written: list[str] = []
    if latency:
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(latency) + 1.2))
        names = [r.backend for r in latency][::-1]
        med = [r.median_us for r in latency][::-1]
        p90 = [r.p90_us - r.median_us for r in latency][::-1]
        ax.barh(names, med, xerr=[[0] * len(med), p90], color="tab:blue", capsize=3)
        ax.axvline(
            GOAL_LATENCY_US,
            color="tab:red",
            linestyle="--",
            label=f"gilfree goal ({GOAL_LATENCY_US:.0f} µs)",
        )
        ax.set_xscale("log")
        ax.set_xlabel("start→join latency, µs (bar: median, whisker: p90; log scale)")
        ax.legend(loc="lower right")
        for y, v in enumerate(med):
            ax.annotate(f"{v:,.0f}", (v, y), xytext=(4, 6), textcoords="offset points", fontsize=8)
        written.append(peers.save(plt, fig, out / "latency.png"))
    if scaling:
        speed, _ = _speedups(scaling)
        counts = sorted({r.workers for r in scaling})
        cores = len(os.sched_getaffinity(0))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(counts, [min(w, cores) for w in counts], "k:", label=f"ideal ({cores} cores)")
        for name in dict.fromkeys(r.backend for r in scaling):
            ax.plot(counts, [speed[(name, w)] for w in counts], marker="o", label=name)
        ax.set_xticks(counts)
        ax.set_xlabel("workers (W)")
        ax.set_ylabel("speedup vs threading with 1 worker")
        ax.set_title("CPU scaling of a pure-Python job")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(peers.save(plt, fig, out / "scaling.png"))
    return written
