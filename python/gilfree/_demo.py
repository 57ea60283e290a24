"""``python -m gilfree demo``: the tutorial's program, then the tutorial's limit, measured.

Part 1 runs the threading tutorial's three workers on :class:`gilfree.Worker`; their output
interleaves as it does with threads. Part 2 runs one CPU-bound pure-Python job over a large data
set, split into slices across W workers, once with :class:`threading.Thread` and once with
:class:`gilfree.Worker`, and prints the timings side by side.

The job and the worker classes are module-level so that they pickle by reference, and so that
``benchmarks/`` (the :mod:`gilfree._bench` package, which this module never imports) measures
exactly the same work.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence

import gilfree

#: Default number of integers in the data set: about 3 s of work for one thread on a 2020s core.
DEFAULT_SIZE = 400_000
#: Seed of the data set, so that every run (and every backend) computes the same answer.
SEED = 2017


# --- The job: pure Python, CPU-bound, no I/O and no C extension that could drop the GIL ---------


def collatz_steps(n: int) -> int:
    """Counts the steps of the Collatz sequence from ``n`` down to 1.

    Args:
        n: A positive integer.

    Returns:
        How many ``n -> n / 2`` or ``n -> 3n + 1`` steps it takes to reach 1.
    """
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n & 1 else n >> 1
        steps += 1
    return steps


def job(chunk: Sequence[int]) -> int:
    """The demo's unit of work: the total Collatz step count over a slice of the data set.

    Args:
        chunk: Positive integers.

    Returns:
        The sum of :func:`collatz_steps` over ``chunk``.
    """
    return sum(collatz_steps(n) for n in chunk)


def make_data(size: int, seed: int = SEED) -> list[int]:
    """Builds the demo's data set: ``size`` pseudo-random integers below one million.

    Args:
        size: Number of integers.
        seed: Seed for :class:`random.Random`; the same seed gives the same list.

    Returns:
        The data set.
    """
    rng = random.Random(seed)
    return [rng.randrange(1, 1_000_000) for _ in range(size)]


def split(data: Sequence[int], parts: int) -> list[list[int]]:
    """Cuts ``data`` into ``parts`` contiguous slices whose lengths differ by at most one.

    Args:
        data: The data set.
        parts: Number of slices, at least 1.

    Returns:
        The slices, in order; their concatenation is ``data``.
    """
    n = len(data)
    return [list(data[k * n // parts : (k + 1) * n // parts]) for k in range(parts)]


# --- The tutorial's worker ----------------------------------------------------------------------


class Worker(gilfree.Worker[None]):
    """The tutorial's worker, on gilfree: prints ``n, i`` for ``i`` in ``range(10)``.

    Before each line it does a few milliseconds of pure-Python work (the tutorial's ``run()``
    does none, so each worker would be done before the next one starts): the three workers
    overlap, and their lines interleave as the tutorial describes.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def run(self) -> None:
        for i in range(10):
            job(range(1, 2_000))
            print(self.n, i)


def run_tutorial() -> None:
    """Runs the tutorial's ``main()``: start three workers, then join them."""
    thread1 = Worker(1)
    thread2 = Worker(2)
    thread3 = Worker(3)
    thread1.start()
    thread2.start()
    thread3.start()
    thread1.join()
    thread2.join()
    thread3.join()


# --- One slice per worker, with each backend ----------------------------------------------------


class SliceThread(threading.Thread):
    """A thread that runs :func:`job` over its slice; a thread has no return value, so the
    result is left in ``self.result``."""

    def __init__(self, chunk: list[int]) -> None:
        super().__init__()
        self.chunk = chunk
        self.result: int | None = None

    def run(self) -> None:
        self.result = job(self.chunk)


class SliceWorker(gilfree.Worker[int]):
    """A gilfree worker that runs :func:`job` over its slice; ``join()`` returns the result."""

    def __init__(self, chunk: list[int]) -> None:
        super().__init__()
        self.chunk = chunk

    def run(self) -> int:
        return job(self.chunk)


def run_threads(chunks: Sequence[list[int]]) -> int:
    """Runs one :class:`SliceThread` per slice and adds up their results.

    Args:
        chunks: The slices, one per thread.

    Returns:
        The total over all slices.
    """
    threads = [SliceThread(chunk) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = 0
    for t in threads:
        assert t.result is not None, "a thread ended without a result"
        total += t.result
    return total


def run_workers(chunks: Sequence[list[int]]) -> int:
    """Runs one :class:`SliceWorker` per slice and adds up the values ``join()`` returns.

    Args:
        chunks: The slices, one per worker.

    Returns:
        The total over all slices.
    """
    workers = [SliceWorker(chunk) for chunk in chunks]
    for w in workers:
        w.start()
    return sum(w.join() for w in workers)


def timed(
    runner: Callable[[Sequence[list[int]]], int], chunks: Sequence[list[int]]
) -> tuple[float, int]:
    """Times one call of ``runner(chunks)`` on the wall clock.

    Args:
        runner: :func:`run_threads`, :func:`run_workers` or a benchmark peer.
        chunks: The slices to hand to it.

    Returns:
        ``(seconds, result)``.
    """
    t0 = time.perf_counter()
    result = runner(chunks)
    return time.perf_counter() - t0, result


def default_workers() -> list[int]:
    """The demo's worker counts: 1, 2 and the number of CPUs if that is larger.

    Returns:
        Distinct worker counts, ascending.
    """
    return sorted({1, 2, os.cpu_count() or 1})


# --- The command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``demo`` options to ``parser``.

    Args:
        parser: The ``demo`` subcommand's parser.
    """
    parser.add_argument(
        "--size",
        type=positive_int,
        default=DEFAULT_SIZE,
        metavar="N",
        help=f"integers in the data set (default: {DEFAULT_SIZE:,})",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="W",
        help="worker counts to time (default: 1, 2 and the CPU count if larger)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Runs the demo.

    Args:
        args: Parsed options from :func:`add_arguments`.

    Returns:
        The process exit status: 0, or 1 if the backends disagree on the answer.
    """
    counts = sorted(set(args.workers)) if args.workers else default_workers()
    cpus = os.cpu_count() or 1

    _say("1. The tutorial, on gilfree.Worker: three workers, output interleaved")
    run_tutorial()

    _say(
        f"2. The tutorial's limit, measured: a CPU-bound pure-Python job over {args.size:,} integers"
    )
    print("Threads take turns: the GIL lets one thread at a time run Python bytecode.")
    print(
        f"gilfree.Worker runs each worker in its own process: W workers can use W of {cpus} CPUs."
    )
    data = make_data(args.size)
    backends: list[tuple[str, Callable[[Sequence[list[int]]], int]]] = [
        ("threading", run_threads),
        ("gilfree", run_workers),
    ]
    header = f"{'backend':<10} {'workers':>7} {'seconds':>8} {'speedup':>8}"
    print()
    print(header)
    print("-" * len(header))
    baseline: float | None = None
    expected: int | None = None
    wrong: list[str] = []
    for w in counts:
        chunks = split(data, w)
        for name, runner in backends:
            seconds, result = timed(runner, chunks)
            if baseline is None:
                baseline, expected = seconds, result
            if result != expected:
                wrong.append(f"{name} with {w} workers computed {result}, expected {expected}")
            print(f"{name:<10} {w:>7} {seconds:>8.2f} {baseline / seconds:>7.2f}x", flush=True)
    print(f"(speedup: against threading with {counts[0]} worker{'s' if counts[0] > 1 else ''})")
    if wrong:
        for line in wrong:
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(f"Every run computed the same answer: {expected:,} Collatz steps.")
    return 0


def _say(title: str) -> None:
    print(f"\n== {title}", flush=True)


def positive_int(text: str) -> int:
    """Parses a command-line count that must be at least 1.

    Args:
        text: The argument as typed.

    Returns:
        The count.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not an integer of at least 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
