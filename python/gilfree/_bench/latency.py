"""Part 1 of the suite: start→join latency of one trivial worker.

The worker object is built outside the timer, then ``start()`` + ``join()`` is timed. gilfree is
measured warm (after a few unmeasured runs), beside :class:`threading.Thread`,
:class:`multiprocessing.Process` (``fork``, ``forkserver`` and ``spawn`` start methods) and a warm
:class:`concurrent.futures.ProcessPoolExecutor` (``submit().result()``), all in one process so
that the ratios mean something on a busy machine.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import pathlib
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import gilfree
from gilfree._bench.scaling import MP_METHOD

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
    from multiprocessing.process import BaseProcess

#: Goal for the median start→join latency of one warm gilfree Worker, in microseconds.
GOAL_LATENCY_US = 40.0


@dataclass
class LatencyRow:
    """One backend's start→join latency."""

    backend: str
    reps: int
    median_us: float
    p90_us: float


def noop() -> None:
    """The trivial worker body of the latency benchmark."""


def _time_start_join(
    make: Callable[[], threading.Thread | gilfree.Worker[Any] | BaseProcess],
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


def measure_latency(reps: int, process_cap: int = 100) -> list[LatencyRow]:
    """Measures start→join latency of one trivial worker with each backend.

    gilfree is measured last, so that no peer forks this process while the engine's threads
    run (``fork`` copies only the calling thread).

    Args:
        reps: Repetitions for gilfree, threading and the warm pool.
        process_cap: The most repetitions of the multiprocessing rows, which start a process
            each: ``fork`` and ``forkserver`` run at most this many, ``spawn`` (an interpreter
            each) a fifth of it.

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
    for method, cap in (
        ("fork", process_cap),
        ("forkserver", process_cap),
        ("spawn", max(1, process_cap // 5)),
    ):
        if method not in methods:
            continue
        method_ctx = cast(
            "ForkContext | ForkServerContext | SpawnContext", multiprocessing.get_context(method)
        )
        rows.append(
            _latency(
                f"multiprocessing.Process ({method})",
                cast(
                    "Callable[[], int]",
                    lambda ctx=method_ctx: _time_start_join(lambda: ctx.Process(target=noop)),
                ),
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


# -- Cold paths (issue 10): program start and bursts of Workers -------------------------------
# ``python -m gilfree bench --only cold`` (``cold.py``) measures them beside peers and writes
# ``COLD.md``; ``python -m gilfree._bench.latency [--reps N]`` prints gilfree's alone.

#: Goal: a program that imports gilfree and starts and joins two trivial Workers, beyond a bare
#: interpreter, in milliseconds.
GOAL_START_EXTRA_MS = 60.0
#: Goal: 40 Workers that each sleep 0.3 s, started at once, all joined, in seconds.
GOAL_BURST_S = 1.0

_PROGRAMS = {
    "bare interpreter": "pass",
    "import gilfree": "import gilfree",
    "threading: 2 Threads started and joined": (
        "import threading\n"
        "ts = [threading.Thread(target=abs, args=(-1,)) for _ in range(2)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
    ),
    "gilfree: 2 Workers started and joined": (
        "import gilfree\n"
        "class W(gilfree.Worker):\n"
        "    def run(self):\n"
        "        return 1\n"
        "ws = [W(), W()]\n"
        "for w in ws: w.start()\n"
        "assert [w.join() for w in ws] == [1, 1]\n"
    ),
}


def bytecode_state(root: pathlib.Path | None = None) -> str:
    """Whether gilfree's own modules (the ``.py`` files under ``root``, by default the
    package's) have an up-to-date ``.pyc``, which decides how much a fresh interpreter (the
    program, the template, a worker started directly) spends compiling them.

    A wheel installed by pip has them (pip byte-compiles at install); an editable install
    (``maturin develop``) has none unless ``make install`` compiled them, and with
    ``PYTHONDONTWRITEBYTECODE=1`` no interpreter writes them.
    """
    import importlib.util

    if root is None:
        root = pathlib.Path(gilfree.__file__).parent
    sources = sorted(root.rglob("*.py"))
    fresh = 0
    for src in sources:
        try:
            with open(importlib.util.cache_from_source(str(src)), "rb") as f:
                head = f.read(16)
            st = src.stat()
        except OSError:
            continue
        if head[:4] != importlib.util.MAGIC_NUMBER:
            continue
        flags = int.from_bytes(head[4:8], "little")
        mtime = int.from_bytes(head[8:12], "little")
        size = int.from_bytes(head[12:16], "little")
        # A hash-based .pyc (flags != 0) is valid by its hash; a timestamp one by mtime and size.
        if flags or (mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF):
            fresh += 1
    writes = "no" if sys.dont_write_bytecode else "yes"
    return (
        f"{fresh} of {len(sources)} modules of gilfree have an up-to-date .pyc;"
        f" this interpreter writes .pyc: {writes}"
    )


def load_average() -> str:
    """The 1-minute load average, for the record (the measures are wall-clock times)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - not on Linux
        return "unknown"


def measure_program_start(
    reps: int, programs: dict[str, str] | None = None
) -> list[tuple[str, float, float]]:
    """Whole-program wall time of small programs in fresh interpreters (started, run, exited),
    interleaved so that load on the machine hits every program alike.

    Args:
        reps: Runs of each program.
        programs: Name to source (default ``_PROGRAMS``); one must be "bare interpreter".

    Returns:
        ``(program, median ms, min ms)`` per program.
    """

    from gilfree._bench.proc import timed_run

    programs = _PROGRAMS if programs is None else programs
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(reps):
        for name, code in programs.items():
            elapsed, _ = timed_run([sys.executable, "-c", code])
            times[name].append(elapsed * 1e3)
    rows = [(name, statistics.median(v), min(v)) for name, v in times.items()]
    for name, med, low in rows:
        print(f"  {name:<44} {med:>8.1f} ms median {low:>8.1f} ms min", flush=True)
    return rows


_BURST = (
    "import sys, time\n"
    "{imp}\n"
    "class W({base}):\n"
    "    def run(self):\n"
    "        time.sleep(0.3)\n"
    "ws = [W() for _ in range({n})]\n"
    "t0 = time.perf_counter()\n"
    "for w in ws: w.start()\n"
    "for w in ws: w.join()\n"
    "print(time.perf_counter() - t0)\n"
)


def measure_burst(reps: int, n: int = 40) -> list[tuple[str, float, float]]:
    """``n`` Workers (Threads) that each sleep 0.3 s, started at once and joined, in a fresh
    interpreter each time (the first Workers of a program, as a user meets them).

    Returns:
        ``(backend, median s, min s)`` per backend.
    """

    from gilfree._bench.proc import timed_run

    backends = {
        "gilfree.Worker": ("import gilfree", "gilfree.Worker"),
        "threading.Thread": ("import threading", "threading.Thread"),
    }
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(reps):
        for name, (imp, base) in backends.items():
            code = _BURST.format(imp=imp, base=base, n=n)
            _, out = timed_run([sys.executable, "-c", code], capture=True)
            times[name].append(float(out.split()[-1]))
    rows = [(name, statistics.median(v), min(v)) for name, v in times.items()]
    for name, med, low in rows:
        print(f"  {n} x sleep(0.3): {name:<28} {med:>8.3f} s median {low:>8.3f} s min", flush=True)
    return rows


def measure_warm_rounds(rounds: int = 5, reps: int = 300) -> list[tuple[float, float, float]]:
    """``rounds`` rounds of ``reps`` warm start→join of a no-op Worker, one after the other in
    this process (issue 10: the first round was fast and the later ones slow, in one process).

    Returns:
        ``(median µs, p10 µs, p90 µs)`` per round.
    """
    # The target travels by reference, as in ``bench``'s latency part: run as a script
    # (``python -m gilfree._bench.latency``), this module's ``noop`` is ``__main__.noop``,
    # which cloudpickle ships by value at every start (~50 µs more per start→join here).
    target = importlib.import_module("gilfree._bench.latency").noop
    warmers = [gilfree.Worker(target=target) for _ in range(os.cpu_count() or 1)]
    for w in warmers:
        w.start()
    for w in warmers:
        w.join()
    rows: list[tuple[float, float, float]] = []
    for r in range(rounds):
        samples = sorted(
            _time_start_join(lambda: gilfree.Worker(target=target)) / 1e3 for _ in range(reps)
        )
        row = (
            statistics.median(samples),
            samples[len(samples) // 10],
            samples[len(samples) * 9 // 10],
        )
        rows.append(row)
        print(
            f"  round {r + 1}: {row[0]:>8.1f} µs median {row[1]:>8.1f} µs p10"
            f" {row[2]:>8.1f} µs p90",
            flush=True,
        )
    return rows


def render_cold(
    start: list[tuple[str, float, float]],
    burst: list[tuple[str, float, float]],
    conditions: str = "",
) -> str:
    """The two measures as Markdown tables, with the goals (and ``conditions``: the bytecode
    state and load average they were taken under)."""
    bare = next(med for name, med, _ in start if name == "bare interpreter")
    out = [
        "## Program start (fresh interpreter: start, run, exit)",
        "",
        *([conditions, ""] if conditions else []),
        f"Goal: 2 Workers cost at most {GOAL_START_EXTRA_MS:.0f} ms more than a bare interpreter.",
        "",
        "| program | median ms | min ms | beyond bare interpreter, ms |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {m:.1f} | {lo:.1f} | {m - bare:+.1f} |" for n, m, lo in start),
        "",
        "## Burst: 40 Workers that each sleep 0.3 s, started at once",
        "",
        f"Goal: at most {GOAL_BURST_S:.1f} s.",
        "",
        "| backend | median s | min s |",
        "|---|---:|---:|",
        *(f"| {n} | {m:.3f} | {lo:.3f} |" for n, m, lo in burst),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Cold-path measures (program start, bursts).")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-burst", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="only measure this many rounds of 300 warm start→join in one process",
    )
    args = parser.parse_args()
    if args.rounds:
        print(f"warm start→join, {args.rounds} rounds of 300 in one process", flush=True)
        measure_warm_rounds(args.rounds)
        raise SystemExit(0)
    bytecode = bytecode_state()
    print(f"bytecode: {bytecode}", flush=True)
    load_before = load_average()
    print("program start", flush=True)
    start_rows = measure_program_start(args.reps)
    burst_rows = [] if args.no_burst else measure_burst(max(1, args.reps // 2))
    conditions = (
        f"Bytecode: {bytecode}. Load average: {load_before} before, {load_average()} after."
    )
    print(render_cold(start_rows, burst_rows, conditions))
