"""The "containers" section of the benchmark suite: ``gilfree.SharedList`` and
``gilfree.SharedDict`` beside ``multiprocessing.Manager()`` proxies (the stdlib's shared list and
dict) and a plain ``list``/``dict`` (what threads would share), one thread, in one run.

Operations, each timed as the best of a few loops and reported in µs per operation with its
ratio to gilfree:

- ``append`` to a list that grows from empty during the loop (gilfree appends a record to its
  log, and now and then writes a compacted snapshot);
- ``[i]`` read of a list of N items that nobody changes (gilfree's per-process copy is
  current: no reload);
- ``d[k] = v`` on a dict of 100 keys, and ``d[k]`` read;
- ``with lock: d[k] += 1``, the atomic increment that workers would do;
- reading ``len()`` right after another handle wrote (gilfree reloads the contents once).

Run alone with ``python -m gilfree bench --only containers``: it replaces its own section of
``RESULTS.md`` (between markers).
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gilfree._bench import report

START, END = report.markers("containers")


@dataclass
class ContainerRow:
    """One measured cell: ``bench`` by ``library``, in µs per operation."""

    bench: str
    library: str
    us: float
    loops: int


def _best_us(setup: Callable[[], Callable[[int], Any]], loops: int, repeat: int) -> float:
    """Best of ``repeat`` timed loops of the op ``setup()`` returns (a fresh setup per loop)."""
    best = float("inf")
    for _ in range(repeat):
        op = setup()
        t = time.perf_counter()
        for i in range(loops):
            op(i)
        best = min(best, time.perf_counter() - t)
    return best / loops * 1e6


def _cells(
    make_list: Callable[[], Any],
    make_dict: Callable[[], Any],
    make_lock: Callable[[], Any],
    reopen: Callable[[Any], Any],
    n: int,
) -> dict[str, Callable[[], Callable[[int], Any]]]:
    """The benches for one library: name -> setup that returns the op."""

    def append() -> Callable[[int], Any]:
        return cast("Callable[[int], Any]", make_list().append)

    def getitem() -> Callable[[int], Any]:
        shared = make_list()
        shared.extend(range(n))
        return lambda i: shared[i % n]

    def setitem() -> Callable[[int], Any]:
        d = make_dict()

        def op(i: int) -> None:
            d[i % 100] = i

        return op

    def dict_get() -> Callable[[int], Any]:
        d = make_dict()
        d.update({k: k for k in range(100)})
        return lambda i: d[i % 100]

    def locked_increment() -> Callable[[int], Any]:
        d, lock = make_dict(), make_lock()
        d["n"] = 0

        def op(_: int) -> None:
            with lock:
                d["n"] += 1

        return op

    def read_after_write() -> Callable[[int], Any]:
        shared = make_list()
        shared.extend(range(n))
        other = reopen(shared)

        def op(i: int) -> int:
            other[0] = i
            return len(shared)

        return op

    return {
        "list append (grows from empty)": append,
        f"list [i] read ({n} items, unchanged)": getitem,
        "dict d[k] = v (100 keys)": setitem,
        "dict d[k] read (100 keys, unchanged)": dict_get,
        "with lock: d[k] += 1": locked_increment,
        f"write via one handle, len() via another ({n} items)": read_after_write,
    }


def measure(quick: bool = False) -> list[ContainerRow]:
    """Times every cell (tens of seconds; a few with ``quick``)."""
    import gilfree

    n = 100 if quick else 1000
    loops = 200 if quick else 2000
    repeat = 2 if quick else 3
    ctx = multiprocessing.get_context("forkserver")
    rows: list[ContainerRow] = []
    with ctx.Manager() as manager:
        libraries: Sequence[tuple[str, dict[str, Callable[[], Callable[[int], Any]]], int]] = [
            ("list/dict (threads)", _cells(list, dict, threading.Lock, lambda x: x, n), loops),
            (
                "multiprocessing.Manager",
                _cells(manager.list, manager.dict, manager.Lock, lambda x: x, n),
                max(loops // 4, 50),
            ),
            (
                "gilfree.SharedList/Dict",
                _cells(
                    gilfree.SharedList,
                    gilfree.SharedDict,
                    gilfree.RLock,
                    lambda x: pickle.loads(pickle.dumps(x)),
                    n,
                ),
                loops,
            ),
        ]
        for library, cells, count in libraries:
            for bench, setup in cells.items():
                rows.append(ContainerRow(bench, library, _best_us(setup, count, repeat), count))
    return rows


def render(rows: Sequence[ContainerRow]) -> str:
    """The section's Markdown, between the markers."""
    out = [
        START,
        "## Shared containers: gilfree.SharedList/SharedDict beside Manager proxies",
        "",
        "One thread, no contention. Best of several loops, µs per operation; `vs gilfree` is"
        " the row's time over gilfree's (above 1: gilfree is faster). The Manager is started"
        " from the `forkserver` context; each proxy call is a round trip to its server process."
        " gilfree reads from a per-process copy checked against a shared version number, and"
        " every change appends a record to a log in shared memory, compacted now and then (see"
        " `python/gilfree/shared_containers.py`). `--quick` uses smaller lists. Run alone with"
        " `python -m gilfree bench --only containers`.",
        "",
    ]
    for bench in dict.fromkeys(r.bench for r in rows):
        group = [r for r in rows if r.bench == bench]
        base = next((r.us for r in group if r.library.startswith("gilfree")), float("nan"))
        out += [
            f"### {bench}",
            "",
            "| library | µs / op | vs gilfree | loops |",
            "|---|---:|---:|---:|",
        ]
        for r in group:
            out.append(f"| {r.library} | {r.us:,.2f} | {r.us / base:.2f} | {r.loops:,} |")
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def write(rows: Sequence[ContainerRow], out: Path) -> str:
    """Writes the section into ``out/RESULTS.md``; returns the section."""
    out.mkdir(parents=True, exist_ok=True)
    section = render(rows)
    report.write(out, section, "containers")
    return section
