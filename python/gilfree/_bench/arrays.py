"""The "large arrays" section of the benchmark suite: a big numpy array as the argument and the
result of an identity task, gilfree beside its peers, in one run.

Backends (each warm: its workers started and one unmeasured round trip done first):

- ``threading``: a ``ThreadPoolExecutor`` (no copy at all; the ceiling);
- ``gilfree.Worker`` (``start()`` + ``join()``) and ``gilfree.Pool.submit().result()``: the
  argument is copied once into the sender's shared-memory arena, the worker views it and returns
  it by reference, the parent views the result (``_oob``);
- ``ProcessPoolExecutor``: pickled through a pipe both ways;
- joblib (loky backend): arrays above 1 MB are dumped to a memory-mapped file that the worker
  maps, and the worker's result comes back pickled;
- ``multiprocessing.shared_memory`` by hand: a warm ``SharedMemory`` block, the array copied in,
  a warm ``ProcessPoolExecutor`` task attaches by name and returns the name, the parent views it.

Effective throughput = 2 x array size / round-trip time (median of ``reps``). The section goes
into ``RESULTS.md`` between two markers, so ``python -m gilfree bench --only arrays`` runs it
alone; the plot goes to ``arrays.png``.

Beside the warm figures, the cold ones (issue 10, "first transfers"): a fresh interpreter (a
subprocess) imports numpy and gilfree, starts ``gilfree.Pool(2)`` and runs one trivial task,
then times the round trips of five new arrays (``np.full(n, float(i))``, a new one each time),
then seven of one array (its warm median). Twice as a program meets it, and once more with
numpy imported in both workers first (so the row shows what the transfers cost without the
workers' first ``import numpy``).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gilfree._bench import peers, report

START, END = report.markers("arrays")
#: Goal: effective GB/s of gilfree's identity round trip of a 400 MB array.
GOAL_GBPS = 12.0
#: Goal: gilfree's throughput over ProcessPoolExecutor's.
GOAL_VS_PPE = 25.0
#: Goal: average effective GB/s of the first five round trips in a fresh process.
GOAL_FIRST_GBPS = 6.0
#: Goal: no one of those five takes more than this many times the warm round trip.
GOAL_FIRST_VS_WARM = 3.0


@dataclass
class ArrayRow:
    """One backend's round trips of one array."""

    library: str
    median_s: float
    gbps: float
    reps: int
    note: str


@dataclass
class ColdRow:
    """The first round trips of new arrays in a fresh process (``gilfree.Pool(2)``, warm)."""

    run: str
    firsts: list[float]
    warm_s: float
    nbytes: int
    load: float

    @property
    def gbps(self) -> float:
        """Average effective GB/s of the first round trips."""
        return len(self.firsts) * 2 * self.nbytes / sum(self.firsts) / 1e9

    @property
    def slowest(self) -> float:
        """The slowest first round trip over the warm one."""
        return max(self.firsts) / self.warm_s

    @property
    def warm_gbps(self) -> float:
        """Effective GB/s of the warm round trip."""
        return 2 * self.nbytes / self.warm_s / 1e9


Row = ArrayRow | ColdRow

# The fresh process: what a program does, with ``identity`` from its ``__main__`` (sent by
# value, as a user's function is). Prints one JSON line: the five firsts and the warm median.
_COLD_SCRIPT = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    import gilfree

    def identity(x):
        return x

    def numpy_imported(barrier):
        import numpy
        barrier.wait()  # both tasks at once: one on each worker
        return numpy.__name__

    if __name__ == "__main__":
        n, preimport = int(sys.argv[1]), sys.argv[2] == "1"
        with gilfree.Pool(2) as pool:
            pool.submit(identity, 0).result()
            if preimport:
                barrier = gilfree.Barrier(2)
                fs = [pool.submit(numpy_imported, barrier) for _ in range(2)]
                assert [f.result() for f in fs] == ["numpy", "numpy"]
            firsts = []
            for i in range(5):
                a = np.full(n, float(i))
                t = time.perf_counter()
                r = pool.submit(identity, a).result()
                firsts.append(time.perf_counter() - t)
                assert r[0] == float(i) and r[-1] == float(i)
                del r, a
            a = np.full(n, 9.0)
            warm = []
            for _ in range(7):
                t = time.perf_counter()
                r = pool.submit(identity, a).result()
                warm.append(time.perf_counter() - t)
                del r
        print(json.dumps({"firsts": firsts, "warm": statistics.median(warm)}))
    """
)


def measure_cold(size_mb: int, preimport: bool, run: str) -> ColdRow:
    """One fresh process's first five round trips of new ``size_mb`` MB arrays (see the
    module doc); ``preimport``: numpy imported in both workers before them."""
    n = size_mb * 2**20 // 8
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_SCRIPT, str(n), "1" if preimport else "0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the fresh process failed: {proc.stderr.strip()[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    row = ColdRow(run, [float(x) for x in got["firsts"]], float(got["warm"]), n * 8, load)
    print(
        f"  first five in a fresh process ({run}): "
        + " ".join(f"{x:.3f}" for x in row.firsts)
        + f" s, {row.gbps:.2f} GB/s, slowest {row.slowest:.1f}x warm",
        flush=True,
    )
    return row


def _any(_: Any) -> bool:
    return True


def identity(x: Any) -> Any:
    """The task: returns its argument."""
    return x


def _shm_identity(name: str, nbytes: int) -> str:
    # Attach, view, return the name: the result lives in the same block.
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(name)
    view = cast("memoryview", block.buf)[:nbytes]  # typeshed: None once closed
    view.release()
    block.close()
    return name


def _time(
    op: Callable[[], Any], reps: int, check: Callable[[Any], bool], warmup: int = 1
) -> list[float]:
    for _ in range(warmup):  # unmeasured; the first one's result is checked
        result = op()
        if not check(result):
            raise AssertionError("wrong result")
        del result
        check = _any
    times: list[float] = []
    for _ in range(reps):
        t = time.perf_counter()
        result = op()
        times.append(time.perf_counter() - t)
        del result
    return times


def default_size_mb(quick: bool) -> int:
    """The array's size in MB: 400, or 40 for a ``--quick`` run."""
    return 40 if quick else 400


def measure(quick: bool = False, size_mb: int | None = None, reps: int | None = None) -> list[Row]:
    """Times every backend's identity round trip of one array of ``size_mb`` MB (default 400;
    40 with ``quick``), then gilfree's first round trips in fresh processes; no rows, and a
    line that says so, without numpy."""
    np = peers.optional("numpy", "the large-arrays part")
    if np is None:
        return []
    import gilfree

    size_mb = size_mb or default_size_mb(quick)
    reps = reps or (3 if quick else 5)
    a = np.random.default_rng(0).random(size_mb * 2**20 // 8)
    nbytes = a.nbytes

    def same(r: Any) -> bool:
        r = np.asarray(r)
        return r.shape == a.shape and bool(np.array_equal(r[:: 2**16], a[:: 2**16]))

    rows: list[Row] = []
    # First, before this process's own arrays and pools load the machine's memory and caches.
    rows += [measure_cold(size_mb, False, f"as a program meets it #{i}") for i in (1, 2)]
    rows.append(measure_cold(size_mb, True, "numpy imported in the workers first"))

    def add(library: str, times: list[float], note: str) -> None:
        med = statistics.median(times)
        row = ArrayRow(library, med, 2 * nbytes / med / 1e9, len(times), note)
        rows.append(row)
        print(f"  {library}: {med * 1e3:.1f} ms, {row.gbps:.2f} GB/s", flush=True)

    ctx = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )

    with concurrent.futures.ThreadPoolExecutor(1) as tp:
        add("threading", _time(lambda: tp.submit(identity, a).result(), reps, same), "no copy")

    def worker_once() -> Any:
        w = gilfree.Worker(target=identity, args=(a,))
        w.start()
        return w.join()

    # gilfree's arena reaches its steady set of recycled segments after a few round trips.
    add("gilfree.Worker", _time(worker_once, reps, same, 4), "1 copy into the arena, views")
    with gilfree.Pool(2) as pool:
        add(
            "gilfree.Pool.submit",
            _time(lambda: pool.submit(identity, a).result(), reps, same, 4),
            "1 copy into the arena, views",
        )

    ppe_reps = max(1, min(reps, 3))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ppe:
        ppe.submit(identity, 0).result()
        add(
            "ProcessPoolExecutor",
            _time(lambda: ppe.submit(identity, a).result(), ppe_reps, same),
            "pickled through a pipe, both ways",
        )

        from multiprocessing import shared_memory

        block = shared_memory.SharedMemory(create=True, size=nbytes)
        try:
            dst = np.ndarray(a.shape, a.dtype, buffer=block.buf)
            dst[...] = 0  # warm: pages touched once, as gilfree's arena is

            def shm_once() -> Any:
                dst[...] = a
                name = ppe.submit(_shm_identity, block.name, nbytes).result()
                assert name == block.name
                return dst

            add(
                "multiprocessing.shared_memory",
                _time(shm_once, reps, same),
                "by hand: 1 copy into a warm block, views",
            )
        finally:
            block.close()
            block.unlink()

    joblib = peers.optional("joblib", "the joblib row of large arrays")
    if joblib is not None:
        with joblib.Parallel(n_jobs=2, backend="loky") as par:
            add(
                "joblib (loky, memmapping)",
                _time(lambda: par([joblib.delayed(identity)(a)])[0], ppe_reps, same),
                "argument memory-mapped from a file, result pickled",
            )
    return rows


def render(rows: Sequence[Row], plot_name: str | None, size_mb: int) -> str:
    """The section's Markdown, between the markers."""
    warm = [r for r in rows if isinstance(r, ArrayRow)]
    cold = [r for r in rows if isinstance(r, ColdRow)]
    by = {r.library: r for r in warm}
    ppe = by.get("ProcessPoolExecutor")
    out = [
        START,
        "## Large arrays: identity task, argument and result",
        "",
        f"A {size_mb} MB float64 numpy array is the argument and the result of a task that returns"
        " it. Effective GB/s = 2 x size / round trip, median of the reps (after one warm-up"
        " round trip; four for gilfree, whose arena then holds its steady set of recycled"
        " segments). Run alone with `python -m gilfree bench --only arrays`.",
        "",
        "| library | round trip ms | effective GB/s | vs ProcessPoolExecutor | reps | how |",
        "|---|---:|---:|---:|---:|---|",
    ]
    r: ArrayRow | None
    for r in warm:
        ratio = r.gbps / ppe.gbps if ppe else float("nan")
        out.append(
            f"| {r.library} | {r.median_s * 1e3:,.1f} | {r.gbps:.2f} | {ratio:.1f}x | {r.reps} | {r.note} |"
        )
    out.append("")
    for name in ("gilfree.Worker", "gilfree.Pool.submit"):
        r = by.get(name)
        if r is None:
            continue
        ratio = r.gbps / ppe.gbps if ppe else float("nan")
        met = "met" if r.gbps >= GOAL_GBPS and ratio >= GOAL_VS_PPE else "missed"
        out.append(
            f"- Goal ({name}): ≥ {GOAL_GBPS:g} GB/s and ≥ {GOAL_VS_PPE:g}x ProcessPoolExecutor:"
            f" {r.gbps:.1f} GB/s, {ratio:.0f}x: **{met}**."
        )
    out.append("")
    if cold:
        out += [
            "### First transfers: the first five round trips in a fresh process",
            "",
            f"A fresh interpreter starts `gilfree.Pool(2)`, runs one trivial task, then sends a new"
            f" {size_mb} MB array through `pool.submit(identity, a).result()` five times (timed),"
            " then one array seven times (the warm median). The last row imports numpy in both"
            " workers first: the difference is the workers' first `import numpy`.",
            "",
            "| run | round trips (s) | average GB/s | slowest ÷ warm | warm GB/s | load |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for c in cold:
            trips = " ".join(f"{x:.3f}" for x in c.firsts)
            out.append(
                f"| {c.run} | {trips} | {c.gbps:.2f} | {c.slowest:.1f}x | {c.warm_gbps:.1f}"
                f" | {c.load:.1f} |"
            )
        out.append("")
        for c in cold:
            met = (
                "met" if c.gbps >= GOAL_FIRST_GBPS and c.slowest <= GOAL_FIRST_VS_WARM else "missed"
            )
            out.append(
                f"- Goal ({c.run}): ≥ {GOAL_FIRST_GBPS:g} GB/s on average and no trip above"
                f" {GOAL_FIRST_VS_WARM:g}x warm: {c.gbps:.1f} GB/s, {c.slowest:.1f}x: **{met}**."
            )
        out.append("")
    if plot_name:
        out += [f"![large arrays]({plot_name})", ""]
    out.append(END)
    return "\n".join(out) + "\n"


def plot(rows: Sequence[Row], out: Path) -> str | None:
    """Draws ``arrays.png`` (bars of the warm rows, log scale); ``None`` without matplotlib."""
    plt = peers.pyplot("arrays.png")
    if plt is None:
        return None
    warm = [r for r in rows if isinstance(r, ArrayRow)]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["#d62728" if r.library.startswith("gilfree") else "#7f7f7f" for r in warm]
    ax.bar([r.library.replace(" ", "\n", 1) for r in warm], [r.gbps for r in warm], color=colors)
    ax.set_yscale("log")
    ax.axhline(GOAL_GBPS, color="#d62728", linestyle="--", linewidth=1, label="goal")
    ax.set_ylabel("effective GB/s (log)")
    ax.set_title("identity task, large numpy array as argument and result")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    return peers.save(plt, fig, out / "arrays.png")


def section(rows: Sequence[Row], out: Path, size_mb: int) -> str:
    """Draws the plot into ``out`` and returns the section."""
    out.mkdir(parents=True, exist_ok=True)
    return render(rows, plot(rows, out), size_mb)


def write(rows: Sequence[Row], out: Path, size_mb: int) -> str:
    """Writes ``arrays.png`` and the section into ``out/RESULTS.md``; returns the section."""
    text = section(rows, out, size_mb)
    report.write(out, text, "arrays")
    return text
