"""The "dask" section of the benchmark suite: the dask backend beside the process backend.

Two measurements, each side by side in one run (both pools warm: workers started, one
unmeasured round trip first):

- per-task overhead: ``submit(f, i).result()`` of a trivial task, one at a time (median), and
  the wall time per item of a ``map`` over many trivial items (throughput);
- a large array (400 MB; 40 MB with ``--quick``) through a task that returns its checksum: on
  Dask the array is scattered once and then each task uses the worker's copy, so after the
  first round trip only the task itself travels; on the process backend every task sends the
  array through shared memory.

Dask runs on a LocalCluster of two one-thread worker processes on 127.0.0.1 (its start-up time
is reported too). Skipped by name when ``distributed`` is not installed
(``pip install gilfree[dask]``). The section goes into ``RESULTS.md`` between its markers, so
``python -m gilfree bench --only dask`` rewrites it alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from gilfree._bench import report

START, END = report.markers("dask")
WORKERS = 2


def trivial(x: int) -> int:
    """The tiny task."""
    return x


def checksum(arr: Any) -> int:
    """The large-array task: touches every page of its argument."""
    return int(arr[:: 4096 // arr.itemsize].sum())


def _median(op: Callable[[], Any], reps: int) -> float:
    op()  # warm-up, unmeasured
    times: list[float] = []
    for _ in range(reps):
        t = time.perf_counter()
        op()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(quick: bool) -> tuple[list[tuple[str, str, str, str]], float] | None:
    """The rows ``(backend, submit+result, map per item, array round trip)`` and the
    LocalCluster's start-up time; ``None`` when ``distributed`` is not installed."""
    try:
        import distributed  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        print("dask: skipped (distributed is not installed: pip install gilfree[dask])")
        return None
    import numpy as np

    import gilfree
    from gilfree._backends import dask as dask_backend

    reps = 20 if quick else 200
    items = 200 if quick else 5000
    size_mb = 40 if quick else 400
    arr = np.ones(size_mb * 2**20 // 8, dtype=np.int64)
    expected = checksum(arr)

    started = time.perf_counter()
    dpool = dask_backend.Pool(WORKERS)
    startup = time.perf_counter() - started
    rows: list[tuple[str, str, str, str]] = []
    try:
        for name, pool in (("process", gilfree.Pool(WORKERS)), ("dask", dpool)):
            with pool:
                one = _median(
                    cast("Callable[[], Any]", lambda p=pool: p.submit(trivial, 1).result()), reps
                )
                t = time.perf_counter()
                assert list(pool.map(trivial, range(items))) == list(range(items))
                per_item = (time.perf_counter() - t) / items

                def big(p: Any = pool) -> None:
                    if p.submit(checksum, arr).result() != expected:
                        raise AssertionError("wrong checksum")

                array = _median(big, 3 if quick else 5)
                rows.append(
                    (
                        name,
                        f"{one * 1e3:.2f} ms",
                        f"{per_item * 1e6:.0f} µs",
                        f"{array * 1e3:.1f} ms",
                    )
                )
    finally:
        dpool.shutdown()
    return rows, startup


def section(rows: list[tuple[str, str, str, str]], startup: float, quick: bool) -> str:
    """The Markdown section, between its markers."""
    size_mb = 40 if quick else 400
    lines = [
        START,
        "## Dask backend beside the process backend",
        "",
        f"{WORKERS} workers each; Dask on a LocalCluster on 127.0.0.1, started in "
        f"{startup:.1f} s. The array is {size_mb} MB; on Dask it is scattered once, so the "
        "median round trip after the first one moves only the task.",
        "",
        f"| backend | submit+result (median) | map, per item | {size_mb} MB array task (median) |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        END,
    ]
    return "\n".join(lines) + "\n"


def run(out: Path, quick: bool) -> int:
    """Measures, writes the section into ``out/RESULTS.md``, prints it; 0 when skipped."""
    measured = measure(quick)
    if measured is None:
        return 0
    text = section(*measured, quick)
    out.mkdir(parents=True, exist_ok=True)
    report.write(out, text, "dask")
    print(text)
    print(f"written: {out / 'RESULTS.md'}")
    return 0
