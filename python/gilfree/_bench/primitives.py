"""The "primitives" section of the benchmark suite: uncontended ``Lock`` acquire+release and a
``Queue`` put+get round trip (one thread, one small item), gilfree beside ``threading`` /
``queue`` and ``multiprocessing``, in one run.

Each cell is the best of a few timed loops, reported in nanoseconds per operation with its
ratio to gilfree. The section goes into ``RESULTS.md`` between two markers (replacing an older
one), so it can be run on its own (``python -m gilfree bench --only primitives``) without
re-running the rest of the suite; the bar chart goes to ``primitives.png``.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gilfree._bench import peers, report

START, END = report.markers("primitives")


@dataclass
class PrimitiveRow:
    """One measured cell: ``bench`` by ``library``, in ns per operation."""

    bench: str
    library: str
    ns: float
    loops: int


def _best_ns(op: Callable[[], Any], loops: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(loops):
            op()
        best = min(best, time.perf_counter() - t)
    return best / loops * 1e9


def _lock_op(lock: Any) -> Callable[[], None]:
    acquire, release = lock.acquire, lock.release

    def op() -> None:
        acquire()
        release()

    return op


def _queue_op(q: Any) -> Callable[[], None]:
    put, get = q.put, q.get

    def op() -> None:
        put(1)
        get()

    return op


def measure(quick: bool = False) -> list[PrimitiveRow]:
    """Times every cell (a few seconds; less with ``quick``)."""
    import gilfree

    scale = 10 if quick else 1
    repeat = 2 if quick else 5
    ctx = multiprocessing.get_context("forkserver")
    rows: list[PrimitiveRow] = []
    locks: Sequence[tuple[str, Any, int]] = [
        ("threading.Lock", threading.Lock(), 200_000),
        ("multiprocessing.Lock", ctx.Lock(), 200_000),
        ("gilfree.Lock", gilfree.Lock(), 200_000),
    ]
    for name, lock, loops in locks:
        loops //= scale
        rows.append(
            PrimitiveRow(
                "Lock acquire+release", name, _best_ns(_lock_op(lock), loops, repeat), loops
            )
        )
    mpq = ctx.Queue()
    threads_q: queue.Queue[Any] = queue.Queue()
    simple_q = ctx.SimpleQueue()
    gilfree_q: gilfree.Queue[Any] = gilfree.Queue()
    queues: Sequence[tuple[str, Any, int]] = [
        ("queue.Queue", threads_q, 50_000),
        ("multiprocessing.Queue", mpq, 5_000),
        ("multiprocessing.SimpleQueue", simple_q, 20_000),
        ("gilfree.Queue", gilfree_q, 50_000),
    ]
    for name, q, loops in queues:
        loops //= scale
        rows.append(
            PrimitiveRow(
                "Queue put+get round trip", name, _best_ns(_queue_op(q), loops, repeat), loops
            )
        )
    mpq.close()
    mpq.join_thread()
    return rows


def render(rows: Sequence[PrimitiveRow], plot_name: str | None) -> str:
    """The section's Markdown, between the markers."""
    out = [
        START,
        "## Primitives: uncontended lock and queue round trip",
        "",
        "One thread, no contention: `acquire()`+`release()` of a free lock, and `put(1)`+`get()`"
        " on an empty queue. Best of several loops, ns per pair; `vs gilfree` is the row's time"
        " over gilfree's (above 1: gilfree is faster). multiprocessing's objects are made from"
        " the `forkserver` context. Run alone with `python -m gilfree bench --only primitives`.",
        "",
    ]
    for bench in dict.fromkeys(r.bench for r in rows):
        group = [r for r in rows if r.bench == bench]
        base = next((r.ns for r in group if r.library.startswith("gilfree")), float("nan"))
        out += [
            f"### {bench}",
            "",
            "| library | ns / op | vs gilfree | loops |",
            "|---|---:|---:|---:|",
        ]
        for r in group:
            out.append(f"| {r.library} | {r.ns:,.0f} | {r.ns / base:.2f} | {r.loops:,} |")
        out.append("")
    if plot_name:
        out += [f"![primitives]({plot_name})", ""]
    out.append(END)
    return "\n".join(out) + "\n"


def plot(rows: Sequence[PrimitiveRow], out: Path) -> str | None:
    """Draws ``primitives.png`` (bars; log scale where they span 20x); ``None`` without
    matplotlib."""
    plt = peers.pyplot("primitives.png")
    if plt is None:
        return None
    benches = list(dict.fromkeys(r.bench for r in rows))
    fig, axes = plt.subplots(1, len(benches), figsize=(6 * len(benches), 4))
    for ax, bench in zip(axes if len(benches) > 1 else [axes], benches, strict=True):
        group = [r for r in rows if r.bench == bench]
        colors = ["#d62728" if r.library.startswith("gilfree") else "#7f7f7f" for r in group]
        ax.bar(
            [r.library.replace(".", ".\n", 1) for r in group], [r.ns for r in group], color=colors
        )
        values = [r.ns for r in group]
        if max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set_ylabel("ns per operation")
        ax.set_title(bench)
        ax.tick_params(axis="x", labelsize=8)
    return peers.save(plt, fig, out / "primitives.png")


def write(rows: Sequence[PrimitiveRow], out: Path) -> str:
    """Writes ``primitives.png`` and the section into ``out/RESULTS.md``; returns the section."""
    out.mkdir(parents=True, exist_ok=True)
    section = render(rows, plot(rows, out))
    report.write(out, section, "primitives")
    return section
