"""What the SharedStateWarning watch costs per Worker start, measured in-process.

``python benchmarks/shared_state_cost.py`` times ``_shared_state.watch(...)`` plus
``changes()`` (all the watch adds to a Worker's run in its worker process) for three kinds of
Worker, and start→join of the same Workers for scale. Nothing else differs when nothing changed:
the watch sends no bytes back then.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cloudpickle

import gilfree
from gilfree import _shared_state
from gilfree.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import helpers  # an importable module, as a user's would be


class Sub(gilfree.Worker):
    def run(self) -> int:
        return 2


def trivial() -> int:
    return 1


BY_VALUE = cloudpickle.dumps(trivial)  # a function defined in __main__ travels by value

KINDS = {
    "Worker subclass": lambda: Sub(),
    "imported target": lambda: gilfree.Worker(target=helpers.add, args=(1, 2)),
    "target by value (__main__)": lambda: gilfree.Worker(target=cloudpickle.loads(BY_VALUE)),
}


def watch_us(make, n: int = 3000) -> float:
    times = []
    for _ in range(n):
        w = make()
        t = time.perf_counter()
        _shared_state.watch(w, Worker).changes()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def start_join_us(make, n: int = 300) -> float:
    times = []
    for _ in range(n):
        w = make()
        t = time.perf_counter()
        w.start()
        w.join()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    print("| Worker | watch (µs, median) | start→join (µs, median) | share |")
    print("|---|---:|---:|---:|")
    for name, make in KINDS.items():
        start_join_us(make, 50)  # warm
        w, sj = watch_us(make), start_join_us(make)
        print(f"| {name} | {w:.1f} | {sj:.0f} | {100 * w / sj:.1f} % |")


if __name__ == "__main__":
    main()
