"""Part 1 of the suite: start→join latency of one trivial worker.

The worker object is built outside the timer, then ``start()`` + ``join()`` is timed. gilfree is
measured warm (after a few unmeasured runs), beside :class:`threading.Thread`,
:class:`multiprocessing.Process` (``fork``, ``forkserver`` and ``spawn`` start methods) and a warm
:class:`concurrent.futures.ProcessPoolExecutor` (``submit().result()``), all in one process so
that the ratios mean something on a busy machine.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import gilfree
from gilfree._bench.scaling import MP_METHOD

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
