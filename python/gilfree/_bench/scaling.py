"""Part 2 of the suite: CPU scaling of the demo's job.

The demo's job (:func:`gilfree._demo.job`) over the demo's data set, split into W slices, one
worker per slice, with :class:`threading.Thread`, :class:`gilfree.Worker`,
:class:`multiprocessing.Process` (one process per slice, result sent back over a ``Pipe``), a
fresh :class:`~concurrent.futures.ProcessPoolExecutor` per run, and joblib and mpire when they are
installed; the multiprocessing-based peers use :data:`MP_METHOD`. The backends take turns, and
each cell is the best of ``repeat`` runs.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from gilfree import _demo
from gilfree._bench import peers

if TYPE_CHECKING:
    from multiprocessing.context import (
        ForkServerContext,
        ForkServerProcess,
        SpawnContext,
        SpawnProcess,
    )

#: Goal for gilfree's speedup at W = cores: at most this fraction below multiprocessing's.
GOAL_SCALING_GAP = 0.03
#: Start method of the process-based peers in the scaling benchmark. ``forkserver`` (the default
#: from Python 3.14 on) pickles each slice to the child, as gilfree does, and never forks this
#: process, whose gilfree engine runs threads by then.
MP_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"

Runner = Callable[[Sequence[list[int]]], int]


@dataclass
class ScalingRow:
    """One backend's best time at one worker count."""

    backend: str
    workers: int
    seconds: float


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
    ctx = cast("ForkServerContext | SpawnContext", multiprocessing.get_context(MP_METHOD))
    readers: list[multiprocessing.connection.Connection] = []
    procs: list[ForkServerProcess | SpawnProcess] = []
    for chunk in chunks:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_process_slice, args=(writer, chunk))
        proc.start()
        writer.close()
        readers.append(reader)
        procs.append(proc)
    total: int = sum(reader.recv() for reader in readers)
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
    peers_: list[tuple[str, Runner]] = []
    joblib = peers.optional("joblib", "the joblib rows of CPU scaling")
    if joblib is not None:

        def run_joblib(chunks: Sequence[list[int]]) -> int:
            parallel = joblib.Parallel(n_jobs=len(chunks))
            return sum(parallel(joblib.delayed(_demo.job)(chunk) for chunk in chunks))

        peers_.append(("joblib (loky)", run_joblib))
    mpire = peers.optional("mpire", "the mpire rows of CPU scaling")
    if mpire is not None:

        def run_mpire(chunks: Sequence[list[int]]) -> int:
            with mpire.WorkerPool(n_jobs=len(chunks), start_method=MP_METHOD) as pool:
                return sum(pool.map(_demo.job, [(chunk,) for chunk in chunks]))

        peers_.append(("mpire", run_mpire))
    return peers_


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
