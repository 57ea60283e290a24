"""The "ft" part of the suite (``--only ft``): gilfree's backends on a free-threaded CPython.

On an interpreter without the GIL (3.13t, 3.14t) threads run Python in parallel, so gilfree's
thread backend competes with its process backend. Measured side by side in one run:

- CPU scaling of the demo's job (:func:`gilfree._demo.job`) over W slices (W = 1 2 by default),
  one worker per slice: :class:`threading.Thread`, :class:`gilfree.Worker` on the thread
  backend, and :class:`gilfree.Worker` on the process backend (warm engine). Best of
  ``repeat`` runs per cell, the backends taking turns; speedups are against threading at W = 1.
- start→join latency of one trivial Worker, thread backend and process backend, beside
  :class:`threading.Thread`: warm (many in a row in this process, after unmeasured ones; the
  process backend's engine already started) and cold (the first one of a fresh program, which on
  the process backend waits for the engine's first worker process).

Writes ``FREE_THREADED.md`` and ``free_threaded.png`` (when matplotlib imports). Skipped by name
on an interpreter with the GIL, where the thread backend cannot run in parallel: ``make test-ft``
builds a free-threaded interpreter and runs this part there.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gilfree
from gilfree import _demo
from gilfree._bench import peers, report
from gilfree._bench.latency import LatencyRow, _latency, _time_start_join, noop
from gilfree._bench.scaling import ScalingRow

if TYPE_CHECKING:
    from gilfree._backends import BackendName

FILE = "FREE_THREADED.md"
PLOT = "free_threaded.png"

Runner = Callable[[Sequence[list[int]]], int]


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (always true before 3.13)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def _workers_on(backend: BackendName) -> Runner:
    def run(chunks: Sequence[list[int]]) -> int:
        with gilfree.config(backend=backend):
            return _demo.run_workers(chunks)

    return run


BACKENDS: list[tuple[str, Runner]] = [
    ("threading.Thread", _demo.run_threads),
    ("gilfree.Worker, thread backend", _workers_on("thread")),
    ("gilfree.Worker, process backend", _workers_on("process")),
]


def measure_scaling(
    size: int, counts: Sequence[int], repeat: int
) -> tuple[list[ScalingRow], list[str]]:
    """The demo job over ``size`` integers for each backend and worker count, best of ``repeat``.

    Returns:
        The rows, and the errors (a backend whose answer differs from the sequential one).
    """
    data = _demo.make_data(size)
    slices = {w: _demo.split(data, w) for w in counts}
    expected = _demo.job(data)
    # Warm the process backend's engine so its first cell does not pay for starting processes.
    _workers_on("process")(_demo.split(data[: len(data) // 100 or 1], max(counts)))
    best: dict[tuple[str, int], float] = {}
    errors: list[str] = []
    for r in range(repeat):
        for w in counts:
            for name, runner in BACKENDS:
                seconds, result = _demo.timed(runner, slices[w])
                if result != expected:
                    errors.append(f"{name} with {w} workers computed {result}, expected {expected}")
                best[(name, w)] = min(seconds, best.get((name, w), float("inf")))
                print(f"  run {r + 1}/{repeat}  {name:<34} W={w:<3} {seconds:>8.3f} s", flush=True)
    return [ScalingRow(name, w, best[(name, w)]) for name, _ in BACKENDS for w in counts], errors


def measure_latency(reps: int) -> list[LatencyRow]:
    """Median and p90 start→join of one trivial worker: threading, thread backend, process
    backend (its engine warmed first, as in the main latency part)."""
    rows = [
        _latency(
            "threading.Thread",
            lambda: _time_start_join(lambda: threading.Thread(target=noop)),
            reps,
            warmup=10,
        ),
        _latency(
            "gilfree.Worker, thread backend",
            lambda: _time_start_join(lambda: gilfree.Worker(target=noop, backend="thread")),
            reps,
            warmup=10,
        ),
    ]
    warmers = [gilfree.Worker(target=noop, backend="process") for _ in range(os.cpu_count() or 1)]
    for w in warmers:
        w.start()
    for w in warmers:
        w.join()
    rows.append(
        _latency(
            "gilfree.Worker, process backend",
            lambda: _time_start_join(lambda: gilfree.Worker(target=noop, backend="process")),
            reps,
            warmup=100,
        )
    )
    return rows


# A fresh program that times its first start→join and prints it in seconds (the imports are not
# in it). ``{make}`` builds the worker; ``noop`` is its body.
_COLD = (
    "import time\n"
    "{imp}\n"
    "def noop():\n"
    "    pass\n"
    "w = {make}\n"
    "t0 = time.perf_counter()\n"
    "w.start()\n"
    "w.join()\n"
    "print(time.perf_counter() - t0)\n"
)

_COLD_PROGRAMS = [
    ("threading.Thread", "import threading", "threading.Thread(target=noop)"),
    (
        "gilfree.Worker, thread backend",
        "import gilfree",
        'gilfree.Worker(target=noop, backend="thread")',
    ),
    (
        "gilfree.Worker, process backend",
        "import gilfree",
        'gilfree.Worker(target=noop, backend="process")',
    ),
]


def measure_cold(runs: int) -> list[LatencyRow]:
    """start→join of the first worker of a fresh program (``runs`` programs per backend, the
    backends taking turns): on the process backend, what a user's first Worker waits for.

    Returns:
        One row per backend: the median and p90 of the runs, in µs.
    """
    times: dict[str, list[float]] = {name: [] for name, _, _ in _COLD_PROGRAMS}
    for _ in range(runs):
        for name, imp, make in _COLD_PROGRAMS:
            res = subprocess.run(
                [sys.executable, "-c", _COLD.format(imp=imp, make=make)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            times[name].append(float(res.stdout.split()[-1]) * 1e6)
    rows: list[LatencyRow] = []
    for name, samples in times.items():
        samples.sort()
        p90 = (
            statistics.quantiles(samples, n=10, method="inclusive")[8]
            if len(samples) > 1
            else samples[0]
        )
        row = LatencyRow(name, len(samples), statistics.median(samples), p90)
        print(
            f"  {name:<44} {row.median_us:>10.1f} µs median {row.p90_us:>10.1f} µs p90 (cold)",
            flush=True,
        )
        rows.append(row)
    return rows


def render(
    info: dict[str, str],
    scaling: Sequence[ScalingRow],
    latency: Sequence[LatencyRow],
    cold: Sequence[LatencyRow],
    size: int,
    repeat: int,
    plot: str | None,
) -> str:
    """The Markdown report."""
    base = next(r.seconds for r in scaling if r.backend == BACKENDS[0][0] and r.workers == 1)
    lines = [
        "# gilfree on free-threaded CPython",
        "",
        "Written by `python -m gilfree bench --only ft` (`make test-ft` runs it with `--quick`).",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "## CPU scaling of the demo job",
        "",
        f"{size:,} integers split into W slices, one worker per slice; best of {repeat} runs, "
        "the backends taking turns. Speedup is against `threading.Thread` with W = 1.",
        "",
        "| backend | W | seconds | speedup |",
        "|---|---:|---:|---:|",
        *(
            f"| {r.backend} | {r.workers} | {r.seconds:.3f} | {base / r.seconds:.2f}x |"
            for r in scaling
        ),
        "",
        "## start→join of one trivial worker",
        "",
        "Warm: one worker after another in this process, after unmeasured ones (the process "
        "backend's engine started and its workers idle). Cold: the first worker of a fresh "
        "program, right after its imports, one program per run (the process backend starts its "
        "engine and first worker process then).",
        "",
        "| backend | warm/cold | reps | median | p90 |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {r.backend} | {kind} | {r.reps} | {r.median_us:,.1f} µs | {r.p90_us:,.1f} µs |"
            for kind, rows in (("warm", latency), ("cold", cold))
            for r in rows
        ),
        "",
    ]
    if plot:
        lines += [f"![CPU scaling and start→join on free-threaded CPython]({plot})", ""]
    return "\n".join(lines)


def draw(
    scaling: Sequence[ScalingRow],
    latency: Sequence[LatencyRow],
    cold: Sequence[LatencyRow],
    out: Path,
) -> str | None:
    """``free_threaded.png``: speedup by W (left) and start→join medians, warm and cold
    (right)."""
    plt = peers.pyplot(PLOT)
    if plt is None:
        return None
    base = next(r.seconds for r in scaling if r.backend == BACKENDS[0][0] and r.workers == 1)
    counts = sorted({r.workers for r in scaling})
    cores = len(os.sched_getaffinity(0))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(counts, [min(w, cores) for w in counts], "k:", label=f"ideal ({cores} cores)")
    for name, _ in BACKENDS:
        speed = [
            base / r.seconds for w in counts for r in scaling if (r.backend, r.workers) == (name, w)
        ]
        left.plot(counts, speed, marker="o", label=name)
    left.set_xticks(counts)
    left.set_xlabel("workers (W)")
    left.set_ylabel("speedup vs threading with 1 worker")
    left.set_title("CPU scaling, free-threaded CPython")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    # One pair of bars per backend, warm above cold (both lists name the same backends).
    names = [r.backend for r in latency][::-1]
    height = 0.38
    for offset, kind, rows, color in (
        (height / 2, "warm", latency, "tab:blue"),
        (-height / 2, "cold (first of a program)", cold, "tab:orange"),
    ):
        by_name = {r.backend: r.median_us for r in rows}
        ys = [y + offset for y in range(len(names))]
        med = [by_name[n] for n in names]
        right.barh(ys, med, height=height, color=color, label=kind)
        for y, v in zip(ys, med, strict=True):
            right.annotate(
                f"{v:,.0f}",
                (v, y),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
            )
    right.set_yticks(range(len(names)), names)
    right.set_xscale("log")
    right.set_xlabel("start→join, median µs (log scale)")
    right.set_title("one trivial worker")
    right.legend(fontsize=8)
    return peers.save(plt, fig, out / PLOT)


def run(
    out: Path,
    quick: bool,
    size: int | None = None,
    counts: Sequence[int] | None = None,
    repeat: int | None = None,
    reps: int | None = None,
    cold_runs: int | None = None,
) -> int:
    """Measures, writes ``out/FREE_THREADED.md`` (and the plot), prints the report.

    Returns:
        0; 1 if a backend computed a wrong answer. 0 with a line saying so when the interpreter
        runs with the GIL (nothing measured).
    """
    if gil_enabled():
        print("ft: skipped (this interpreter runs with the GIL; make test-ft runs it on 3.13t)")
        return 0
    size = size or (20_000 if quick else _demo.DEFAULT_SIZE)
    counts = sorted(set(counts or [1, 2]))
    repeat = repeat or (1 if quick else 3)
    reps = reps or (50 if quick else 300)
    cold_runs = cold_runs or (3 if quick else 15)
    info = report.machine_info(["--only", "ft", *(["--quick"] if quick else [])])
    info["GIL"] = "disabled (sys._is_gil_enabled() is False)"
    print(f"ft: CPU scaling, {size:,} integers, W = {counts}, best of {repeat}", flush=True)
    scaling, errors = measure_scaling(size, counts, repeat)
    print(f"ft: start→join of one trivial worker ({reps} reps)", flush=True)
    latency = measure_latency(reps)
    print(f"ft: start→join of the first worker of a fresh program ({cold_runs} runs)", flush=True)
    cold = measure_cold(cold_runs)
    out.mkdir(parents=True, exist_ok=True)
    plot = draw(scaling, latency, cold, out)
    text = render(info, scaling, latency, cold, size, repeat, plot)
    (out / FILE).write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out / FILE}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0
