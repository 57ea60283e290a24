"""``python -m gilfree bench`` (also ``benchmarks/run.py``): gilfree beside its peers, in one run.

Two measurements, each taken side by side in the same process so that the ratios mean something
on a busy machine:

1. Start→join latency of one trivial worker (its target returns ``None``): the object is built
   outside the timer, then ``start()`` + ``join()`` is timed. gilfree is measured warm (after a
   few unmeasured runs), beside :class:`threading.Thread`, :class:`multiprocessing.Process`
   (``fork``, ``forkserver`` and ``spawn`` start methods) and a warm
   :class:`concurrent.futures.ProcessPoolExecutor` (``submit().result()``).
2. CPU scaling of the demo's job (:func:`gilfree._demo.job`) over the demo's data set, split into
   W slices, one worker per slice, with :class:`threading.Thread`, :class:`gilfree.Worker`,
   :class:`multiprocessing.Process` (one process per slice, result sent back over a ``Pipe``),
   a fresh :class:`~concurrent.futures.ProcessPoolExecutor` per run, and joblib and mpire when
   they are installed; the multiprocessing-based peers use :data:`MP_METHOD`. The backends take turns, and each cell is the best of ``--repeat`` runs.

Results go to ``RESULTS.md`` (tables, ratios, machine, goals), ``results.json`` and two PNG plots
in the output folder. The goals are recorded, never asserted: a slow run is a finding, not a
failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import gilfree
from gilfree import _bench_arrays, _bench_pool, _bench_primitives, _bench_report, _demo

#: Goal for the median start→join latency of one warm gilfree Worker, in microseconds.
GOAL_LATENCY_US = 40.0
#: Goal for gilfree's speedup at W = cores: at most this fraction below multiprocessing's.
GOAL_SCALING_GAP = 0.03
#: Start method of the process-based peers in the scaling benchmark. ``forkserver`` (the default
#: from Python 3.14 on) pickles each slice to the child, as gilfree does, and never forks this
#: process, whose gilfree engine runs threads by then.
MP_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"

Runner = Callable[[Sequence[list[int]]], int]


@dataclass
class LatencyRow:
    """One backend's start→join latency."""

    backend: str
    reps: int
    median_us: float
    p90_us: float


@dataclass
class ScalingRow:
    """One backend's best time at one worker count."""

    backend: str
    workers: int
    seconds: float


# --- 1. Start→join latency ----------------------------------------------------------------------


def noop() -> None:
    """The trivial worker body of the latency benchmark."""


def _time_start_join(
    make: Callable[[], threading.Thread | gilfree.Worker | multiprocessing.Process],
) -> int:
    worker = make()
    t0 = time.perf_counter_ns()
    worker.start()
    worker.join()
    return time.perf_counter_ns() - t0


def _latency(name: str, once: Callable[[], int], reps: int, warmup: int) -> LatencyRow:
    for _ in range(warmup):
        once()
    samples = sorted(once() for _ in range(reps))
    p90 = statistics.quantiles(samples, n=10, method="inclusive")[8] if reps > 1 else samples[0]
    row = LatencyRow(name, reps, statistics.median(samples) / 1e3, p90 / 1e3)
    print(f"  {name:<44} {row.median_us:>10.1f} µs median {row.p90_us:>10.1f} µs p90", flush=True)
    return row


def measure_latency(reps: int) -> list[LatencyRow]:
    """Measures start→join latency of one trivial worker with each backend.

    gilfree is measured last, so that no peer forks this process while the engine's threads
    run (``fork`` copies only the calling thread).

    Args:
        reps: Repetitions for gilfree, threading and the warm pool; the multiprocessing rows
            use fewer (at most 100 with ``fork`` and ``forkserver``, 20 with ``spawn``) because
            each one starts a process.

    Returns:
        One row per backend, gilfree first.
    """
    rows = [
        _latency(
            "threading.Thread",
            lambda: _time_start_join(lambda: threading.Thread(target=noop)),
            reps,
            warmup=10,
        )
    ]
    methods = multiprocessing.get_all_start_methods()
    for method, cap in (("fork", 100), ("forkserver", 100), ("spawn", 20)):
        if method not in methods:
            continue
        ctx = multiprocessing.get_context(method)
        rows.append(
            _latency(
                f"multiprocessing.Process ({method})",
                lambda ctx=ctx: _time_start_join(lambda: ctx.Process(target=noop)),
                min(reps, cap),
                warmup=2,
            )
        )
    ctx = multiprocessing.get_context(MP_METHOD)
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:

        def submit_result() -> int:
            t0 = time.perf_counter_ns()
            pool.submit(noop).result()
            return time.perf_counter_ns() - t0

        rows.append(
            _latency("ProcessPoolExecutor (warm), submit→result", submit_result, reps, warmup=10)
        )
    # Warm means warm: the engine's processes are started (and done importing) before timing,
    # as they are in a program that has used gilfree for more than a moment.
    warmers = [gilfree.Worker(target=noop) for _ in range(os.cpu_count() or 1)]
    for w in warmers:
        w.start()
    for w in warmers:
        w.join()
    ours = _latency(
        "gilfree.Worker (warm engine)",
        lambda: _time_start_join(lambda: gilfree.Worker(target=noop)),
        reps,
        warmup=100,
    )
    return [ours, *rows]


# --- 2. CPU scaling -----------------------------------------------------------------------------


def _process_slice(conn: multiprocessing.connection.Connection, chunk: list[int]) -> None:
    conn.send(_demo.job(chunk))
    conn.close()


def run_processes(chunks: Sequence[list[int]]) -> int:
    """One :class:`multiprocessing.Process` per slice, each result sent back over a pipe.

    Args:
        chunks: The slices, one per process.

    Returns:
        The total over all slices.
    """
    ctx = multiprocessing.get_context(MP_METHOD)
    readers, procs = [], []
    for chunk in chunks:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_process_slice, args=(writer, chunk))
        proc.start()
        writer.close()
        readers.append(reader)
        procs.append(proc)
    total = sum(reader.recv() for reader in readers)
    for proc in procs:
        proc.join()
    return total


def run_process_pool(chunks: Sequence[list[int]]) -> int:
    """A fresh :class:`~concurrent.futures.ProcessPoolExecutor` with one process per slice.

    Args:
        chunks: The slices.

    Returns:
        The total over all slices.
    """
    ctx = multiprocessing.get_context(MP_METHOD)
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(chunks), mp_context=ctx) as pool:
        return sum(pool.map(_demo.job, chunks))


def _optional_peers() -> list[tuple[str, Runner]]:
    peers: list[tuple[str, Runner]] = []
    try:
        import joblib
    except ImportError:
        print("  (joblib not installed: skipped; pip install -r requirements/bench.txt)")
    else:

        def run_joblib(chunks: Sequence[list[int]]) -> int:
            parallel = joblib.Parallel(n_jobs=len(chunks))
            return sum(parallel(joblib.delayed(_demo.job)(chunk) for chunk in chunks))

        peers.append(("joblib (loky)", run_joblib))
    try:
        import mpire
    except ImportError:
        print("  (mpire not installed: skipped; pip install -r requirements/bench.txt)")
    else:

        def run_mpire(chunks: Sequence[list[int]]) -> int:
            with mpire.WorkerPool(n_jobs=len(chunks), start_method=MP_METHOD) as pool:
                return sum(pool.map(_demo.job, [(chunk,) for chunk in chunks]))

        peers.append(("mpire", run_mpire))
    return peers


def scaling_backends() -> list[tuple[str, Runner]]:
    """The scaling benchmark's backends, threading first (it is the baseline).

    Returns:
        ``(name, runner)`` pairs; each runner maps slices to the total of :func:`_demo.job`.
    """
    return [
        ("threading.Thread", _demo.run_threads),
        ("gilfree.Worker", _demo.run_workers),
        (f"multiprocessing.Process ({MP_METHOD})", run_processes),
        ("ProcessPoolExecutor (fresh)", run_process_pool),
        *_optional_peers(),
    ]


def measure_scaling(
    size: int, counts: Sequence[int], repeat: int
) -> tuple[list[ScalingRow], list[str]]:
    """Times the demo job over ``size`` integers for each backend and worker count.

    Args:
        size: Integers in the data set.
        counts: Worker counts.
        repeat: Runs per cell; the best is kept. Backends take turns between runs.

    Returns:
        The rows, and a list of errors (a backend that computed another answer than threading
        with one worker, the reference).
    """
    backends = scaling_backends()
    data = _demo.make_data(size)
    slices = {w: _demo.split(data, w) for w in counts}
    expected = _demo.job(data)
    best: dict[tuple[str, int], float] = {}
    errors: list[str] = []
    for r in range(repeat):
        for w in counts:
            for name, runner in backends:
                seconds, result = _demo.timed(runner, slices[w])
                if result != expected:
                    errors.append(f"{name} with {w} workers computed {result}, expected {expected}")
                key = (name, w)
                best[key] = min(seconds, best.get(key, float("inf")))
                print(f"  run {r + 1}/{repeat}  {name:<36} W={w:<3} {seconds:>8.3f} s", flush=True)
    rows = [ScalingRow(name, w, best[(name, w)]) for name, _ in backends for w in counts]
    return rows, errors


# --- Report -------------------------------------------------------------------------------------


def machine_info(argv: Sequence[str]) -> dict[str, str]:
    """Describes the machine and the run, for the report.

    Args:
        argv: The command line's arguments.

    Returns:
        Labels to values.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        version = importlib.metadata.version("gilfree")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": platform.platform(),
        "gilfree": version,
        "load average at start (1, 5, 15 min)": load,
        "command": " ".join(["python -m gilfree bench", *argv]),
    }


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
    out = []
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install -r requirements/bench.txt)")
        return []
    written = []
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
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=120)
        plt.close(fig)
        written.append("latency.png")
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
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=120)
        plt.close(fig)
        written.append("scaling.png")
    return written


# --- The command ---------------------------------------------------------------------------------


def default_out(quick: bool) -> Path:
    """Where results go by default: ``benchmarks/results`` of the source checkout.

    A ``--quick`` run writes to ``benchmarks/results/quick.tmp`` (ignored by git) so that a smoke
    run never overwrites the real results. Outside a checkout, the current folder is used.

    Args:
        quick: Whether this is a ``--quick`` run.

    Returns:
        The output folder.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks").is_dir() and (root / "pyproject.toml").is_file():
        base = root / "benchmarks" / "results"
    else:
        base = Path.cwd() / "gilfree-bench-results"
    return base / "quick.tmp" if quick else base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``.

    Args:
        parser: The ``bench`` subcommand's parser.
    """
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small data set, few reps, W = 1 2, one run per cell;"
        " writes to benchmarks/results/quick.tmp unless --out is given",
    )
    parser.add_argument("--out", type=Path, help="folder for RESULTS.md, results.json and plots")
    parser.add_argument(
        "--size",
        type=_demo.positive_int,
        help=f"integers in the scaling data set (default {_demo.DEFAULT_SIZE:,})",
    )
    parser.add_argument(
        "--workers",
        type=_demo.positive_int,
        nargs="+",
        metavar="W",
        help="worker counts (default: 1 2 4 and nproc)",
    )
    parser.add_argument("--reps", type=_demo.positive_int, help="latency repetitions (default 300)")
    parser.add_argument(
        "--repeat", type=_demo.positive_int, help="runs per scaling cell, best kept (default 3)"
    )
    parser.add_argument(
        "--skip",
        choices=["latency", "scaling", "primitives", "arrays", "pool"],
        action="append",
        default=[],
        help="skip a part",
    )
    parser.add_argument(
        "--only",
        choices=["primitives", "arrays", "pool"],
        help="run only this part, and replace its section of an existing RESULTS.md",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks and writes the report.

    Args:
        args: Parsed options from :func:`add_arguments`.
        argv: The arguments as given, for the report (default: ``sys.argv[2:]``).

    Returns:
        The process exit status: 0, or 1 if a backend computed a wrong answer.
    """
    cores = len(os.sched_getaffinity(0))
    size = args.size or (40_000 if args.quick else _demo.DEFAULT_SIZE)
    counts = sorted(set(args.workers or ([1, 2] if args.quick else [1, 2, 4, cores])))
    reps = args.reps or (50 if args.quick else 300)
    repeat = args.repeat or (1 if args.quick else 3)
    out = args.out or default_out(args.quick)
    if getattr(args, "only", None) == "arrays":
        size_mb = 40 if args.quick else 400
        print(f"large arrays: a {size_mb} MB array through an identity task", flush=True)
        rows = _bench_arrays.measure(args.quick)
        print(_bench_arrays.write(rows, out, size_mb))
        print(f"written: {out / 'RESULTS.md'}")
        return 0
    if getattr(args, "only", None) == "pool":
        print("pool: gilfree.Pool beside multiprocessing, concurrent.futures and peers", flush=True)
        return _bench_pool.run(out, args.quick)
    if getattr(args, "only", None) == "primitives":
        print("primitives: uncontended Lock and Queue round trips", flush=True)
        print(_bench_primitives.write(_bench_primitives.measure(args.quick), out))
        print(f"written: {out / 'RESULTS.md'}")
        return 0
    info = machine_info(sys.argv[2:] if argv is None else argv)

    latency: list[LatencyRow] = []
    scaling: list[ScalingRow] = []
    errors: list[str] = []
    if "latency" not in args.skip:
        print(f"1. start→join latency of one trivial worker ({reps} reps)", flush=True)
        latency = measure_latency(reps)
    if "scaling" not in args.skip:
        print(f"2. CPU scaling: {size:,} integers, W = {counts}, best of {repeat}", flush=True)
        scaling, errors = measure_scaling(size, counts, repeat)

    out.mkdir(parents=True, exist_ok=True)
    plots = plot(latency, scaling, out)
    report = render_markdown(info, latency, scaling, size, repeat, plots)
    if "arrays" not in args.skip:
        size_mb = 40 if args.quick else 400
        print(f"4. large arrays: a {size_mb} MB array through an identity task", flush=True)
        rows = _bench_arrays.measure(args.quick)
        report = _bench_report.merge(report, _bench_arrays.section(rows, out, size_mb), "arrays")
    if "primitives" not in args.skip:
        print("3. primitives: uncontended Lock and Queue round trips", flush=True)
        prims = _bench_primitives.measure(args.quick)
        section = _bench_primitives.render(prims, _bench_primitives.plot(prims, out))
        report = _bench_report.merge(report, section, "primitives")
    (out / "RESULTS.md").write_text(report, encoding="utf-8")
    raw = {
        "machine": info,
        "size": size,
        "repeat": repeat,
        "latency": [asdict(r) for r in latency],
        "scaling": [asdict(r) for r in scaling],
    }
    (out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print()
    print(report)
    print(f"written: {out / 'RESULTS.md'}")
    if "pool" not in args.skip:
        print(
            "5. pool: gilfree.Pool beside multiprocessing, concurrent.futures and peers", flush=True
        )
        _bench_pool.run(out, args.quick)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``benchmarks/run.py``: parses ``argv`` and runs :func:`main`.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Measure gilfree beside its peers; the same as `python -m gilfree bench`.",
    )
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(parser.parse_args(argv), argv)
