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
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import statistics
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


@dataclass
class ArrayRow:
    """One backend's round trips of one array."""

    library: str
    median_s: float
    gbps: float
    reps: int
    note: str


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


def measure(
    quick: bool = False, size_mb: int | None = None, reps: int | None = None
) -> list[ArrayRow]:
    """Times every backend's identity round trip of one array of ``size_mb`` MB (default 400;
    40 with ``quick``); no rows, and a line that says so, without numpy."""
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

    rows: list[ArrayRow] = []

    def add(library: str, times: list[float], note: str) -> None:
        med = statistics.median(times)
        rows.append(ArrayRow(library, med, 2 * nbytes / med / 1e9, len(times), note))
        print(f"  {library}: {med * 1e3:.1f} ms, {rows[-1].gbps:.2f} GB/s", flush=True)

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


def render(rows: Sequence[ArrayRow], plot_name: str | None, size_mb: int) -> str:
    """The section's Markdown, between the markers."""
    by = {r.library: r for r in rows}
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
    for r in rows:
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
    if plot_name:
        out += [f"![large arrays]({plot_name})", ""]
    out.append(END)
    return "\n".join(out) + "\n"


def plot(rows: Sequence[ArrayRow], out: Path) -> str | None:
    """Draws ``arrays.png`` (bars, log scale); ``None`` without matplotlib."""
    plt = peers.pyplot("arrays.png")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["#d62728" if r.library.startswith("gilfree") else "#7f7f7f" for r in rows]
    ax.bar([r.library.replace(" ", "\n", 1) for r in rows], [r.gbps for r in rows], color=colors)
    ax.set_yscale("log")
    ax.axhline(GOAL_GBPS, color="#d62728", linestyle="--", linewidth=1, label="goal")
    ax.set_ylabel("effective GB/s (log)")
    ax.set_title("identity task, large numpy array as argument and result")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "arrays.png", dpi=120)
    plt.close(fig)
    return "arrays.png"


def section(rows: Sequence[ArrayRow], out: Path, size_mb: int) -> str:
    """Draws the plot into ``out`` and returns the section."""
    out.mkdir(parents=True, exist_ok=True)
    return render(rows, plot(rows, out), size_mb)


def write(rows: Sequence[ArrayRow], out: Path, size_mb: int) -> str:
    """Writes ``arrays.png`` and the section into ``out/RESULTS.md``; returns the section."""
    text = section(rows, out, size_mb)
    report.write(out, text, "arrays")
    return text
