"""The cold paths of the suite (issue 10), each beside its peers in one run: a program's start,
an additional worker when none is spare, and a burst of Workers started at once.

Every figure comes from fresh interpreters (the first workers of a program, as a user meets
them), run interleaved so that load on the machine hits every backend alike:

- *program start*: small whole programs, started, run and exited (``latency._PROGRAMS``);
- *an additional worker*: with two workers held busy and none spare (the engine's extra
  processes retire between samples), the time ``start()`` takes to return (the process is
  ready and has the task) and ``start()`` to ``join()``, one sample every 0.3 s;
- *burst*: 40 Workers (Threads, Processes) that each sleep 0.3 s, started at once, all joined.

Writes ``COLD.md`` and ``cold.png``; ``python -m gilfree bench --only cold`` runs it alone.
The goals are recorded, never asserted.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gilfree._bench import peers
from gilfree._bench.latency import (
    _PROGRAMS,
    GOAL_BURST_S,
    GOAL_START_EXTRA_MS,
    bytecode_state,
    load_average,
    measure_program_start,
)
from gilfree._bench.proc import timed_run

#: Goal: an additional worker is ready within this many milliseconds.
GOAL_ADDITIONAL_MS = 5.0

# The head of both scripts: the backend named by argv[1]. They run from a file, not ``-c``:
# a forkserver child finds the classes by importing the main module again.
_HEAD = r"""
import json, sys, time
backend, n = sys.argv[1], int(sys.argv[2])
if backend == "gilfree":
    import gilfree
    from gilfree import _runtime
    _runtime.IDLE_TIMEOUT = 0.05  # extra processes retire between samples: none is spare
    Base, Flag = gilfree.Worker, gilfree.Event
elif backend == "threading":
    import threading
    Base, Flag = threading.Thread, threading.Event
else:
    import multiprocessing
    ctx = multiprocessing.get_context(backend)
    Base, Flag = ctx.Process, ctx.Event
"""

# Two workers held busy, then ``n`` samples of one more, 0.3 s apart.
_ADDITIONAL = (
    _HEAD
    + r"""
class Busy(Base):
    def __init__(self, flag):
        super().__init__()
        self.flag = flag
    def run(self):
        self.flag.wait()

class Noop(Base):
    def run(self):
        pass

if __name__ == "__main__":
    flag = Flag()
    held = [Busy(flag) for _ in range(2)]
    for b in held:
        b.start()
    starts, joins = [], []
    for _ in range(n):
        time.sleep(0.3)
        if backend == "gilfree" and _runtime.engine().idle_count():
            continue
        w = Noop()
        t0 = time.perf_counter()
        w.start()
        t1 = time.perf_counter()
        w.join()
        t2 = time.perf_counter()
        starts.append((t1 - t0) * 1e3)
        joins.append((t2 - t0) * 1e3)
    flag.set()
    for b in held:
        b.join()
    print(json.dumps([starts, joins]))
"""
)

# ``n`` workers that each sleep 0.3 s, started at once, all joined.
_BURST_SCRIPT = (
    _HEAD
    + r"""
class Sleeper(Base):
    def run(self):
        time.sleep(0.3)

if __name__ == "__main__":
    ws = [Sleeper() for _ in range(n)]
    t0 = time.perf_counter()
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    print(time.perf_counter() - t0)
"""
)

#: Backends of the additional-worker and burst measures: (label, ``_ADDITIONAL`` backend).
_BACKENDS = (
    ("gilfree.Worker", "gilfree"),
    ("threading.Thread", "threading"),
    ("multiprocessing.Process (fork)", "fork"),
    ("multiprocessing.Process (forkserver)", "forkserver"),
)

#: Peers of the program-start measure, beside ``latency._PROGRAMS``.
_PEER_PROGRAMS = {
    "gilfree: 2 Workers(target=abs) started and joined (as the peers below)": (
        "import gilfree\n"
        "ws = [gilfree.Worker(target=abs, args=(-1,)) for _ in range(2)]\n"
        "for w in ws: w.start()\n"
        "assert [w.join() for w in ws] == [1, 1]\n"
    ),
    "multiprocessing: 2 Processes (fork) started and joined": (
        "import multiprocessing as mp\n"
        "ps = [mp.get_context('fork').Process(target=abs, args=(-1,)) for _ in range(2)]\n"
        "for p in ps: p.start()\n"
        "for p in ps: p.join()\n"
    ),
    "concurrent.futures: ProcessPoolExecutor(2), two tasks": (
        "from concurrent.futures import ProcessPoolExecutor\n"
        "with ProcessPoolExecutor(2) as ex:\n"
        "    assert list(ex.map(abs, [-1, -2])) == [1, 2]\n"
    ),
}


@dataclass
class Additional:
    backend: str
    start_ms: float
    start_p75_ms: float
    join_ms: float
    samples: int


def _script(folder: Path, name: str, code: str) -> str:
    path = folder / name
    if not path.exists():
        path.write_text(code, encoding="utf-8")
    return str(path)


def measure_additional(folder: Path, samples: int, runs: int) -> list[Additional]:
    """``runs`` fresh interpreters per backend (interleaved), ``samples`` each."""
    script = _script(folder, "additional.py", _ADDITIONAL)
    starts: dict[str, list[float]] = {label: [] for label, _ in _BACKENDS}
    joins: dict[str, list[float]] = {label: [] for label, _ in _BACKENDS}
    for _ in range(runs):
        for label, backend in _BACKENDS:
            _, out = timed_run([sys.executable, script, backend, str(samples)], capture=True)
            run_starts, run_joins = json.loads(out.strip().splitlines()[-1])
            starts[label] += [float(x) for x in run_starts]
            joins[label] += [float(x) for x in run_joins]
    rows: list[Additional] = []
    for label, _ in _BACKENDS:
        s = sorted(starts[label])
        row = Additional(
            label, statistics.median(s), s[len(s) * 3 // 4], statistics.median(joins[label]), len(s)
        )
        rows.append(row)
        print(
            f"  additional worker: {label:<38} start() {row.start_ms:7.2f} ms median"
            f" (p75 {row.start_p75_ms:.2f}), start→join {row.join_ms:7.2f} ms",
            flush=True,
        )
    return rows


def measure_burst(folder: Path, reps: int, n: int = 40) -> list[tuple[str, float, float]]:
    """``n`` sleeping Workers (Threads, Processes) started at once, per backend.

    Returns:
        ``(backend, median s, min s)`` per backend.
    """
    script = _script(folder, "burst.py", _BURST_SCRIPT)
    times: dict[str, list[float]] = {label: [] for label, _ in _BACKENDS}
    for _ in range(reps):
        for label, backend in _BACKENDS:
            _, out = timed_run([sys.executable, script, backend, str(n)], capture=True)
            times[label].append(float(out.split()[-1]))
    rows = [(label, statistics.median(v), min(v)) for label, v in times.items()]
    for label, med, low in rows:
        print(f"  {n} x sleep(0.3): {label:<38} {med:>8.3f} s median {low:>8.3f} s min", flush=True)
    return rows


def render(
    start: list[tuple[str, float, float]],
    additional: list[Additional],
    burst: list[tuple[str, float, float]],
    conditions: str,
    plot: str | None,
) -> str:
    bare = next(med for name, med, _ in start if name == "bare interpreter")
    out = [
        "# Cold paths beside peers (`python -m gilfree bench --only cold`)",
        "",
        conditions,
        "",
        "Fresh interpreters throughout, programs and backends interleaved. The goals are",
        "recorded, never asserted. Analysis and history: `COLD_PATHS.md`.",
        "",
        *([f"![cold paths]({plot})", ""] if plot else []),
        "## Program start (start, run, exit)",
        "",
        f"Goal: 2 gilfree Workers cost at most {GOAL_START_EXTRA_MS:.0f} ms more than a bare"
        " interpreter; `import gilfree` at most 15 ms.",
        "",
        "| program | median ms | min ms | beyond bare interpreter, ms |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {m:.1f} | {lo:.1f} | {m - bare:+.1f} |" for n, m, lo in start),
        "",
        "## An additional worker while two are busy and none is spare",
        "",
        f"Goal: ready within {GOAL_ADDITIONAL_MS:.0f} ms. `start()` returns once the process is"
        " ready and has its task; start→join adds the task and its result. One sample every"
        " 0.3 s (each meets an idle machine).",
        "",
        "| backend | `start()` median ms | `start()` p75 ms | start→join median ms | samples |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.backend} | {r.start_ms:.2f} | {r.start_p75_ms:.2f} | {r.join_ms:.2f} |"
            f" {r.samples} |"
            for r in additional
        ),
        "",
        "## Burst: 40 workers that each sleep 0.3 s, started at once",
        "",
        f"Goal: at most {GOAL_BURST_S:.1f} s for gilfree.",
        "",
        "| backend | median s | min s |",
        "|---|---:|---:|",
        *(f"| {n} | {m:.3f} | {lo:.3f} |" for n, m, lo in burst),
        "",
    ]
    return "\n".join(out)


def plot(
    start: list[tuple[str, float, float]],
    additional: list[Additional],
    burst: list[tuple[str, float, float]],
    out: Path,
) -> str | None:
    """Draws ``cold.png``: one panel per measure; ``None`` without matplotlib."""
    plt = peers.pyplot("cold.png")
    if plt is None:
        return None
    bare = next(med for name, med, _ in start if name == "bare interpreter")
    panels = [
        (
            "program start, ms beyond a bare interpreter",
            [(n, m - bare) for n, m, _ in start if n != "bare interpreter"],
        ),
        (
            "an additional worker: start→join median, ms",
            [(r.backend, r.join_ms) for r in additional],
        ),
        ("40 sleeping workers at once, s", [(n, m) for n, m, _ in burst]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.5))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        labels = [
            name.replace(": ", ":\n", 1).replace(" (", "\n(", 1).replace(") s", ")\ns", 1)
            for name, _ in rows
        ]
        colors = ["#d62728" if "gilfree" in name else "#7f7f7f" for name, _ in rows]
        ax.barh(labels, [v for _, v in rows], color=colors)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
    return peers.save(plt, fig, out / "cold.png", dpi=110)


def run(out: Path, quick: bool) -> int:
    """Measures, prints and writes ``COLD.md`` and ``cold.png`` in ``out``."""
    bytecode = bytecode_state()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="gilfree-cold-") as tmp:
        folder = Path(tmp)
        print("  program start", flush=True)
        start = measure_program_start(3 if quick else 9, {**_PROGRAMS, **_PEER_PROGRAMS})
        print("  an additional worker", flush=True)
        additional = measure_additional(folder, 5 if quick else 20, 1 if quick else 3)
        print("  burst", flush=True)
        burst = measure_burst(folder, 1 if quick else 5)
    conditions = (
        f"Bytecode: {bytecode}. Load average: {load_before} before, {load_average()} after."
        f" Python {sys.version.split()[0]}."
    )
    out.mkdir(parents=True, exist_ok=True)
    text = render(start, additional, burst, conditions, plot(start, additional, burst, out))
    (out / "COLD.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out / 'COLD.md'}")
    return 0
