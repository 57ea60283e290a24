"""The Pool benchmarks: gilfree.Pool beside the stdlib and peer pools, in one run.

Measured side by side, each library with the same number of worker processes:

- µs per tiny task with each library's default chunking, and with chunksize=1;
- submit→result latency of one task on a warm pool;
- CPU scaling of a coarse CPU-bound map at W = 1, 2, 4;
- cold start: a fresh interpreter that imports the library, makes a pool and gets one result;
- failure: time from a worker's death to the exception, and to the next task's result.

Peers (loky, joblib, mpire) come from ``requirements/bench.txt`` and are skipped when absent.
Timings are ratios within one run, on whatever machine runs it; nothing here is asserted.
"""

# The peers loky and mpire come from requirements/bench.txt only, so they may be missing where
# the checkers run; where present, loky and joblib ship no types and mpire does not re-export
# WorkerPool. Line ignores would be wrong in one setup or the other, so pyright's rules for those
# cases are off in this file (mypy's are in pyproject.toml); their objects are held as Any.
# pyright: reportMissingImports=false, reportMissingTypeStubs=false
# pyright: reportPrivateImportUsage=false, reportUnknownMemberType=false

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gilfree
from gilfree._bench import peers
from gilfree._bench.proc import timed_run

WORKERS = 2
# Goals from the Pool issue (benchmark targets, not test assertions).
GOAL_CHUNKED_VS_MP = 1.0  # tiny tasks with defaults: at or below multiprocessing.Pool.map
GOAL_CHUNKSIZE1_US = 15.0  # chunksize=1: µs per task
GOAL_DEATH_MS = 5.0  # death → exception


def square(x: int) -> int:
    """The tiny task."""
    return x * x


def spin(n: int) -> int:
    """A coarse CPU-bound task: pure-Python work proportional to ``n``."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def die_at(stamp_path: str) -> None:
    """Writes the monotonic clock (system-wide on Linux) to a file, then SIGKILLs itself."""
    with open(stamp_path, "w") as f:
        f.write(repr(time.monotonic()))
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Row:
    """One measurement: a library's figure for one benchmark."""

    bench: str
    library: str
    value: float
    unit: str
    note: str = ""


def _pools() -> dict[str, Callable[..., Any]]:
    """Factories of warm pools with a common ``map(fn, items, chunksize)`` / ``one(fn, x)``; a
    peer that is not installed is left out, with a line that names it."""
    pools: dict[str, Callable[..., Any]] = {
        "gilfree.Pool": _GilfreePool,
        "multiprocessing.Pool": _MpPool,
        "ProcessPoolExecutor": _Ppe,
    }
    for name, factory in (("loky", _Loky), ("joblib", _Joblib), ("mpire", _Mpire)):
        if peers.optional(name, f"the {name} rows of the Pool benchmarks") is not None:
            pools[name] = factory
    return pools


class _GilfreePool:
    def __init__(self, workers: int = WORKERS) -> None:
        self.p = gilfree.Pool(workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self.p.map(fn, items, chunksize=chunksize))

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p.submit(fn, x).result()

    def close(self) -> None:
        self.p.shutdown()


class _MpPool:
    def __init__(self, workers: int = WORKERS) -> None:
        self.p = multiprocessing.Pool(workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return self.p.map(fn, items, chunksize=chunksize)

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p.apply_async(fn, (x,)).get()

    def close(self) -> None:
        self.p.terminate()
        self.p.join()


class _Ppe:
    def __init__(self, workers: int = WORKERS) -> None:
        self.p = cf.ProcessPoolExecutor(workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self.p.map(fn, items, chunksize=chunksize or 1))

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p.submit(fn, x).result()

    def close(self) -> None:
        self.p.shutdown(cancel_futures=True)


class _Loky:
    def __init__(self, workers: int = WORKERS) -> None:
        import loky

        self.p: Any = loky.get_reusable_executor(max_workers=workers)

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return list(self.p.map(fn, items, chunksize=chunksize or 1))

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p.submit(fn, x).result()

    def close(self) -> None:
        pass


class _Joblib:
    def __init__(self, workers: int = WORKERS) -> None:
        import joblib

        self.joblib: Any = joblib
        self.p: Any = joblib.Parallel(n_jobs=workers)
        self.p.__enter__()

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        self.p.batch_size = chunksize or "auto"
        return cast("list[Any]", self.p(self.joblib.delayed(fn)(x) for x in items))

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p([self.joblib.delayed(fn)(x)])[0]

    def close(self) -> None:
        self.p.__exit__(None, None, None)


class _Mpire:
    def __init__(self, workers: int = WORKERS) -> None:
        import mpire

        # mpire does not re-export WorkerPool (mypy's error; none where mpire is missing).
        self.p: Any = mpire.WorkerPool(n_jobs=workers, keep_alive=True)  # type: ignore[attr-defined, unused-ignore]

    def map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> list[Any]:
        return cast("list[Any]", self.p.map(fn, items, chunk_size=chunksize, progress_bar=False))

    def one(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.p.apply(fn, (x,))

    def close(self) -> None:
        self.p.terminate()


def _best(
    fn: Callable[[], Any], reps: int, budget: float = 0.0, most: int = 9, cap: float = 1e9
) -> float:
    """The fastest of ``reps`` runs, in seconds (the least disturbed by a noisy machine).

    With a ``budget``: more runs, up to ``most``, while all of them took less than that many
    seconds (a measure of a few ms is one scheduler hiccup from another figure). With a
    ``cap``: fewer than ``reps`` once they took that long (a slow peer is not run for
    minutes). At least one run."""
    times: list[float] = []
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        total = sum(times)
        if len(times) >= most:
            break
        if not ((len(times) < reps and total < cap) or total < budget):
            break
    return min(times)


def measure_warm(quick: bool, pools: dict[str, Callable[..., Any]]) -> list[Row]:
    """Tiny tasks (defaults and chunksize=1), one-task latency and CPU scaling, warm pools.

    The tiny-task and latency measures run in rounds, each library once per round, so that a
    slow spell of the machine falls on every library alike; a row is the median of the rounds'
    figures (latency: the median of every round's samples)."""
    rows: list[Row] = []
    n_tiny = 5_000 if quick else 100_000
    n_one = 500 if quick else 5_000
    rounds = 1 if quick else 3
    reps_lat = (50 if quick else 500) // rounds
    tiny = list(range(n_tiny))
    ones = list(range(n_one))
    expect_tiny = [x * x for x in tiny]
    default: dict[str, list[float]] = {name: [] for name in pools}
    singles: dict[str, list[float]] = {name: [] for name in pools}
    lat: dict[str, list[float]] = {name: [] for name in pools}
    for r in range(rounds):
        for name, factory in pools.items():
            print(f"  {name}: tiny tasks and one-task latency, round {r + 1}", flush=True)
            pool = factory()
            try:
                pool.map(square, list(range(100)), None)  # warm up
                assert pool.map(square, tiny, None) == expect_tiny
                secs = _best(
                    cast("Callable[[], Any]", lambda pool=pool: pool.map(square, tiny, None)),
                    3,
                    budget=0.5,
                    cap=10.0,
                )
                default[name].append(secs / n_tiny * 1e6)
                secs = _best(
                    cast("Callable[[], Any]", lambda pool=pool: pool.map(square, ones, 1)), 2
                )
                singles[name].append(secs / n_one * 1e6)
                for i in range(reps_lat):
                    t = time.perf_counter()
                    assert pool.one(square, i) == i * i
                    lat[name].append(time.perf_counter() - t)
            finally:
                pool.close()
    note = f"median of {rounds} rounds" if rounds > 1 else ""
    for bench, figures in (
        ("tiny tasks, default chunking", default),
        ("tiny tasks, chunksize=1", singles),
    ):
        for name in pools:
            rows.append(Row(bench, name, statistics.median(figures[name]), "µs/task", note))
    for name in pools:
        samples = lat[name]
        rows.append(
            Row(
                "submit→result, one task",
                name,
                statistics.median(samples) * 1e6,
                "µs",
                f"median of {len(samples)}",
            )
        )
    coarse = [30_000] * 8 if quick else [300_000] * 16
    expect = [spin(coarse[0])] * len(coarse)
    for workers in (1, 2) if quick else (1, 2, 4):
        print(f"  coarse map, W={workers}: {', '.join(pools)}", flush=True)
        for name, factory in pools.items():
            pool = factory(workers)
            try:
                pool.map(spin, [10] * 8, None)
                assert pool.map(spin, coarse, 1) == expect
                secs = _best(
                    cast("Callable[[], Any]", lambda pool=pool: pool.map(spin, coarse, 1)), 2
                )
                rows.append(Row(f"coarse map, W={workers}", name, secs, "s"))
            finally:
                pool.close()
    return rows


_COLD = {
    "gilfree.Pool": "import gilfree\nwith gilfree.Pool(2) as p:\n    assert p.submit(abs, -1).result() == 1",
    "multiprocessing.Pool": "import multiprocessing\nif __name__ == '__main__':\n"
    "    with multiprocessing.Pool(2) as p:\n        assert p.apply(abs, (-1,)) == 1",
    "ProcessPoolExecutor": "import concurrent.futures as cf\nif __name__ == '__main__':\n"
    "    with cf.ProcessPoolExecutor(2) as p:\n        assert p.submit(abs, -1).result() == 1",
    "loky": "import loky\nif __name__ == '__main__':\n    assert loky.get_reusable_executor(2).submit(abs, -1).result() == 1",
    "joblib": "import joblib\nif __name__ == '__main__':\n"
    "    assert joblib.Parallel(n_jobs=2)([joblib.delayed(abs)(-1)]) == [1]",
    "mpire": "import mpire\nif __name__ == '__main__':\n"
    "    with mpire.WorkerPool(2) as p:\n        assert p.apply(abs, (-1,)) == 1",
}


def measure_cold(quick: bool, pools: dict[str, Callable[..., Any]]) -> list[Row]:
    """A fresh interpreter: import, make a pool, get one result, exit."""
    rows: list[Row] = []
    print(f"  cold start: {', '.join(pools)}", flush=True)
    for name in pools:
        code = _COLD[name]
        times: list[float] = []
        for _ in range(1 if quick else 5):
            times.append(timed_run([sys.executable, "-c", code])[0])
        rows.append(Row("cold start (import + pool + 1 task + exit)", name, min(times) * 1e3, "ms"))
    return rows


def _death(name: str, pool: Any, stamp: Path, submit: Callable[[], Any], limit: float) -> list[Row]:
    """Kills a worker through a task; times the error and the next result."""
    fut = submit()
    err = "no error"
    try:
        fut.result(timeout=limit)
    except Exception as exc:
        err = type(exc).__name__
    t_err = time.monotonic()
    died = float(stamp.read_text()) if stamp.exists() else t_err
    rows = [Row("worker death → exception", name, (t_err - died) * 1e3, "ms", err)]
    try:
        t = time.monotonic()
        pool.submit(square, 3).result(timeout=limit)
        rows.append(
            Row(
                "worker death → next task's result",
                name,
                (time.monotonic() - died) * 1e3,
                "ms",
                "same pool",
            )
        )
    except Exception as exc:
        rows.append(
            Row(
                "worker death → next task's result",
                name,
                float("nan"),
                "ms",
                f"{type(exc).__name__}: pool unusable",
            )
        )
        del t  # pyright: ignore[reportPossiblyUnboundVariable]
    return rows


def measure_death(tmp: Path) -> list[Row]:
    """Time from a worker's death to the error, and to the next task completing."""
    rows: list[Row] = []
    stamp = tmp / "died.txt"
    with gilfree.Pool(WORKERS) as p:
        p.submit(square, 1).result()
        rows += _death("gilfree.Pool", p, stamp, lambda: p.submit(die_at, str(stamp)), 10)
    stamp.unlink(missing_ok=True)
    with cf.ProcessPoolExecutor(WORKERS) as e:
        e.submit(square, 1).result()
        rows += _death("ProcessPoolExecutor", e, stamp, lambda: e.submit(die_at, str(stamp)), 10)
    stamp.unlink(missing_ok=True)
    with multiprocessing.Pool(WORKERS) as mp:
        mp.apply(square, (1,))
        res = mp.apply_async(die_at, (str(stamp),))
        try:
            res.get(timeout=3)
            note = "no error"
        except multiprocessing.TimeoutError:
            note = "hangs: no error at all (gave up after 3 s)"
        rows.append(
            Row("worker death → exception", "multiprocessing.Pool", float("nan"), "ms", note)
        )
        mp.terminate()
    return rows


def render(rows: list[Row]) -> str:
    """The Markdown tables, one per benchmark, with ratios to gilfree."""
    out = ["# Pool benchmarks", ""]
    out.append(
        f"{WORKERS} worker processes per library unless the row says W=. Lower is better everywhere. "
        "Ratios are each library's figure divided by gilfree's in the same run."
    )
    out.append("")
    benches: dict[str, list[Row]] = {}
    for r in rows:
        benches.setdefault(r.bench, []).append(r)
    for bench, group in benches.items():
        base = next((r.value for r in group if r.library == "gilfree.Pool"), float("nan"))
        out += [
            f"## {bench}",
            "",
            "| library | value | unit | ratio to gilfree | note |",
            "|---|---:|---|---:|---|",
        ]
        for r in group:
            ratio = r.value / base if base and base == base and r.value == r.value else float("nan")
            value = f"{r.value:.3f}" if abs(r.value) < 1 else f"{r.value:.2f}"
            out.append(f"| {r.library} | {value} | {r.unit} | {ratio:.2f} | {r.note} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[Row], path: Path) -> None:
    """A bar chart per warm benchmark (µs per task, latency)."""
    plt = peers.pyplot(path.name)
    if plt is None:
        return
    wanted = ["tiny tasks, default chunking", "tiny tasks, chunksize=1", "submit→result, one task"]
    fig, axes = plt.subplots(1, len(wanted), figsize=(15, 4.5))
    for ax, bench in zip(axes, wanted, strict=True):
        group = [r for r in rows if r.bench == bench]
        ax.bar(
            [r.library for r in group],
            [r.value for r in group],
            color=["#d62728" if r.library == "gilfree.Pool" else "#7f7f7f" for r in group],
        )
        ax.set_title(bench)
        ax.set_ylabel(group[0].unit if group else "")
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=45)
    peers.save(plt, fig, path, dpi=110)


def run(out: Path, quick: bool) -> int:
    """Runs every Pool benchmark and writes ``POOL.md`` and ``pool.png`` into ``out``."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    pools = _pools()
    rows = measure_warm(quick, pools)
    rows += measure_cold(quick, pools)
    print("  worker death: gilfree.Pool, ProcessPoolExecutor, multiprocessing.Pool", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure_death(Path(tmp))
    text = render(rows)
    (out / "POOL.md").write_text(text + "\n")
    plot(rows, out / "pool.png")
    print(text)
    return 0
