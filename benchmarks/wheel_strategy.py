"""One wheel per CPython version, or one abi3 wheel for all: what each costs, measured.

``.venv/bin/python benchmarks/wheel_strategy.py`` builds the extension both ways with maturin
(release): a wheel per version (``cp311``, ``cp313``...) and one ``abi3`` wheel built with the
``abi3`` feature of gilfree-py (PyO3's ``abi3-py311``: the limited API, loadable by every CPython
from 3.11 on that has a GIL).
It installs each wheel, unpacked, into a scratch folder under ``target/wheel-strategy/`` and,
with that folder first on ``PYTHONPATH`` of the version's ``.venv-3.X`` (made by
``make test-matrix``; it supplies cloudpickle and tqdm), measures:

- the import of the native module: ``python -X importtime -c "import gilfree._engine"``, run
  many times, the median and the minimum of the module's cumulative time (loading the shared
  object and running its module init);
- the cost of hot calls across the boundary (the best of many short ``timeit`` repeats, each
  about a millisecond, so that on a busy machine some repeat runs without being preempted): an
  ``Event.is_set()``, a ``Lock`` acquire/release pair, a lock-free ``Value`` set + get, and a
  ``Pool.submit(...).result()`` round trip of a trivial task on a warm one-worker pool.

The flavours run interleaved, round after round, so a change in the machine's load falls on all
of them alike. Results go to ``benchmarks/results/WHEELS.md`` (``--out`` to change);
``--no-build`` measures the wheels of the last run again.
``--measure`` is the child mode: it times the calls in this interpreter and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import timeit
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "wheel-strategy"
FLAVOURS = ("per-version", "abi3")

# (name, setup, statement, loops per repeat, unit scale, unit)
CALLS = [
    ("Event.is_set()", "e = gilfree.Event()", "e.is_set()", 10_000, 1e9, "ns"),
    (
        "Lock acquire+release",
        "lk = gilfree.Lock()",
        "lk.acquire(); lk.release()",
        5_000,
        1e9,
        "ns",
    ),
    (
        "Value set+get (lock=False)",
        "v = gilfree.Value('q', 0, lock=False)",
        "v.value = 1; v.value",
        1_000,
        1e9,
        "ns",
    ),
    ("Pool.submit().result()", "", "pool.submit(int).result()", 20, 1e6, "µs"),
]


@dataclass
class Cell:
    """One Python version with one wheel, and what was measured of it."""

    python: str
    flavour: str
    wheel: Path
    interpreter: Path
    site: Path
    imports_us: list[float] = field(default_factory=list)
    calls: dict[str, float] = field(default_factory=dict)

    def record(self, timings: dict[str, float]) -> None:
        for name, value in timings.items():
            self.calls[name] = min(value, self.calls.get(name, value))


def measure(repeats: int) -> dict[str, float | str]:
    """Child mode: time CALLS in this interpreter (the wheel under test is first on sys.path)."""
    import gilfree
    import gilfree._engine

    out: dict[str, float | str] = {"engine_file": gilfree._engine.__file__}
    with gilfree.Pool(max_workers=1) as pool:
        pool.submit(int).result()  # the worker is started and warm
        for name, setup, stmt, loops, scale, _unit in CALLS:
            namespace = {"gilfree": gilfree, "pool": pool}
            timer = timeit.Timer(stmt, setup or "pass", globals=namespace)
            timer.timeit(loops)  # warm-up
            best = min(timer.repeat(repeat=repeats, number=loops))
            out[name] = best / loops * scale
    return out


def run(
    cmd: list[str], env: dict[str, str] | None = None, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, env=env, cwd=ROOT, capture_output=capture)


def venv_python(version: str) -> Path:
    """The interpreter of ``.venv-3.X`` (``make test-matrix``), or of ``.venv`` if it is 3.X."""
    for venv in (f".venv-{version}", ".venv"):
        py = ROOT / venv / "bin" / "python"
        if py.exists():
            out = subprocess.run(
                [str(py), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                check=True,
            )
            if out.stdout.strip() == version:
                return py
    sys.exit(f"no venv for Python {version}: make one with `make test-matrix PYTHONS={version}`")


def build(flavour: str, python: Path, folder: str) -> Path:
    """Build one wheel with maturin (release) into ``folder`` and return its path."""
    out = WORK / "wheels" / folder
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    maturin = Path(sys.executable).parent / "maturin"
    cmd = [str(maturin), "build", "--release", "--interpreter", str(python), "--out", str(out)]
    if flavour == "abi3":
        cmd += ["--features", "abi3"]
    # Its own target folder: the features differ from `make install`'s, and would rebuild there.
    env = {**os.environ, "CARGO_TARGET_DIR": str(WORK / "cargo")}
    run(cmd, env=env)
    (wheel,) = out.glob("*.whl")
    return wheel


def reuse(flavour: str, python: Path, folder: str) -> Path:
    """``--no-build``: the wheel an earlier run built into ``folder``."""
    found = sorted((WORK / "wheels" / folder).glob("*.whl"))
    if len(found) != 1:
        sys.exit(f"--no-build: expected one {flavour} wheel in {WORK / 'wheels' / folder}")
    return found[0]


def install(wheel: Path, python: Path, site: Path) -> None:
    """Unpack ``wheel`` into ``site`` with the version's own pip (which checks its tags)."""
    if site.exists():
        subprocess.run(["rm", "-rf", str(site)], check=True)
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)])


def import_us(python: Path, site: Path) -> float:
    """One ``-X importtime`` run: the cumulative µs of ``gilfree._engine``."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [str(python), "-X", "importtime", "-c", "import gilfree._engine"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in proc.stderr.splitlines():
        # "import time:      self [us] |  cumulative | imported package"
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == "gilfree._engine":
            return float(parts[1])
    raise RuntimeError(f"no gilfree._engine line in -X importtime output:\n{proc.stderr}")


def calls(python: Path, site: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [str(python), __file__, "--measure", "--repeats", str(repeats)]
    result = json.loads(run(cmd, env=env, capture=True).stdout)
    engine = Path(result.pop("engine_file"))
    if site not in engine.parents:
        raise RuntimeError(f"measured {engine}, not the wheel unpacked in {site}")
    return result


def report(cells: list[Cell], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    lines = [
        "# Wheel strategy: one wheel per version or one abi3 wheel",
        "",
        "Written by `benchmarks/wheel_strategy.py` (see its docstring for the method); the",
        "decision and what it rests on are in `docs/wheels.md`.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, load average at the end"
        f" {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared with other work: compare"
        " the two wheels of one Python, not figures of different runs)",
        f"- import of `gilfree._engine` (`-X importtime`, cumulative): {args.imports} runs per"
        f" row; calls: the best of {args.rounds} rounds of {args.repeats} short timeit repeats",
        "",
    ]
    header = ["Python", "wheel", "size", "import (median / min)"]
    header += [f"{name} ({unit})" for name, *_, unit in CALLS]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for cell in cells:
        row = [
            cell.python,
            f"`{cell.wheel.name}`",
            f"{cell.wheel.stat().st_size / 1e6:.2f} MB",
            f"{statistics.median(cell.imports_us):.0f} / {min(cell.imports_us):.0f} µs",
        ]
        for name, *_ in CALLS:
            value = cell.calls[name]
            row.append(f"{value:.0f}" if value >= 100 else f"{value:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "abi3 over per-version, same Python (above 1: abi3 is slower):", ""]
    lines.append("| Python | import (min) | " + " | ".join(name for name, *_ in CALLS) + " |")
    lines.append("|" + "---|" * (len(CALLS) + 2))
    by = {(c.python, c.flavour): c for c in cells}
    for version in args.pythons:
        per, abi3 = by[(version, "per-version")], by[(version, "abi3")]
        ratio = min(abi3.imports_us) / min(per.imports_us)
        row = [version, f"{ratio:.2f}"]
        row += [f"{abi3.calls[n] / per.calls[n]:.2f}" for n, *_ in CALLS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", nargs="+", default=["3.11", "3.13"])
    parser.add_argument("--imports", type=int, default=40, help="import runs per cell")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of call timings")
    parser.add_argument("--repeats", type=int, default=100, help="timeit repeats per round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "WHEELS.md")
    parser.add_argument("--no-build", action="store_true", help="reuse the last run's wheels")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeats)))
        return

    pythons = {v: venv_python(v) for v in args.pythons}
    # One abi3 wheel serves every version; it is built against the oldest.
    make = reuse if args.no_build else build
    wheels: dict[tuple[str, str], Path] = {}
    abi3 = make("abi3", pythons[args.pythons[0]], "abi3")
    for version, python in pythons.items():
        wheels[(version, "abi3")] = abi3
        wheels[(version, "per-version")] = make("per-version", python, f"cp{version}")

    cells = []
    for version, python in pythons.items():
        for flavour in FLAVOURS:
            wheel = wheels[(version, flavour)]
            site = WORK / "site" / f"{version}-{flavour}"
            install(wheel, python, site)
            cells.append(Cell(version, flavour, wheel, python, site))

    for _ in range(args.imports):
        for cell in cells:
            cell.imports_us.append(import_us(cell.interpreter, cell.site))
    for _ in range(args.rounds):
        for cell in cells:
            cell.record(calls(cell.interpreter, cell.site, args.repeats))

    text = report(cells, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
