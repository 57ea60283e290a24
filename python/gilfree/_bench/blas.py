"""The "BLAS oversubscription" part of the benchmark suite: a numpy matmul map on every core,
with the workers' BLAS/OpenMP pools capped (gilfree's default) and uncapped.

Each variant runs in a fresh interpreter, since the cap is fixed when the engine starts its
worker processes (``gilfree._runtime``): ``GILFREE_BLAS_THREADS`` unset (one thread per
worker) against ``GILFREE_BLAS_THREADS=none`` (each worker's BLAS starts a thread per core, so
W workers ask for W x cores threads). Both run the same map of ``tasks`` products of two
``n x n`` float64 matrices over ``gilfree.map`` with one worker per core, best of ``repeat``.
Writes ``BLAS.md``; ``python -m gilfree bench --only blas`` runs it alone. The ratio is
recorded, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = r"""
import json, os, sys, time
import numpy as np
import gilfree

n, tasks, repeat = map(int, sys.argv[1:4])

def matmul(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    return float((a @ a).trace())

gilfree.map(matmul, range(len(os.sched_getaffinity(0))))  # warm: workers started, BLAS loaded
best = float("inf")
for _ in range(repeat):
    t = time.perf_counter()
    gilfree.map(matmul, range(tasks), chunksize=1)
    best = min(best, time.perf_counter() - t)
print(json.dumps(best))
"""


@dataclass
class BlasRow:
    """One variant's best time."""

    variant: str
    setting: str
    seconds: float


def _run(setting: str | None, n: int, tasks: int, repeat: int) -> float:
    env = dict(os.environ)
    env.pop("GILFREE_BLAS_THREADS", None)
    if setting is not None:
        env["GILFREE_BLAS_THREADS"] = setting
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(n), str(tasks), str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(quick: bool) -> tuple[list[BlasRow], int, int]:
    """Both variants; returns the rows, the matrix size and the task count."""
    cores = len(os.sched_getaffinity(0))
    n = 200 if quick else 600
    tasks = cores * (2 if quick else 8)
    repeat = 1 if quick else 3
    rows = [
        BlasRow("capped (default)", "GILFREE_BLAS_THREADS unset", _run(None, n, tasks, repeat)),
        BlasRow("uncapped", "GILFREE_BLAS_THREADS=none", _run("none", n, tasks, repeat)),
    ]
    return rows, n, tasks


def render(rows: list[BlasRow], n: int, tasks: int) -> str:
    """``BLAS.md``'s text."""
    cores = len(os.sched_getaffinity(0))
    capped = rows[0].seconds
    out = [
        "# BLAS oversubscription: a numpy matmul map on every core",
        "",
        f"`gilfree.map` of {tasks} products of two {n}x{n} float64 matrices, one worker per core"
        f" ({cores} cores), best of the repeats. Capped: each worker's BLAS/OpenMP pools start"
        " with one thread (gilfree's default). Uncapped: each starts a thread per core."
        " Run alone with `python -m gilfree bench --only blas`.",
        "",
        "| variant | setting | seconds | vs capped |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r.variant} | `{r.setting}` | {r.seconds:.3f} | {r.seconds / capped:.2f}x |")
    return "\n".join(out) + "\n"


def run(out: Path, quick: bool) -> int:
    """Measures, prints and writes ``BLAS.md`` in ``out``; 0, or 1 without numpy."""
    try:
        import numpy  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        print("blas: numpy is not installed; skipped", flush=True)
        return 1
    rows, n, tasks = measure(quick)
    text = render(rows, n, tasks)
    out.mkdir(parents=True, exist_ok=True)
    (out / "BLAS.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out / 'BLAS.md'}")
    return 0
