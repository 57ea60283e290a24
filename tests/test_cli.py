"""``python -m gilfree``: the commands load only what they need, and the benchmark suite skips
(and names) every peer that is not installed instead of crashing.

Each command runs in a fresh interpreter (watchdogged), because what matters is what that
interpreter imports. A peer is made unimportable by a shim module of the same name, first on
``PYTHONPATH``, that raises ``ImportError`` as a missing package does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, WATCHDOG

BENCH_PEERS = ("loky", "joblib", "mpire", "numpy", "matplotlib")


def run_gilfree(
    *args: str, flags: tuple[str, ...] = (), blocked: tuple[str, ...] = (), tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``python [flags] -m gilfree args`` with the ``blocked`` modules unimportable."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if blocked:
        assert tmp is not None
        shims = tmp / "shims"
        shims.mkdir(exist_ok=True)
        for name in blocked:
            (shims / f"{name}.py").write_text(
                f"raise ImportError('{name} is blocked by tests/test_cli.py')\n"
            )
        env["PYTHONPATH"] = os.pathsep.join([str(shims), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *flags, "-m", "gilfree", *args],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        env=env,
        cwd=tmp,
    )


def imported(stderr: str) -> set[str]:
    """The modules that ``-X importtime`` reports in ``stderr``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def benchmark_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("gilfree._bench"))


# --- What each command imports -------------------------------------------------------------------


def test_help_imports_no_benchmark_code(tmp_path: Path) -> None:
    proc = run_gilfree("--help", flags=("-X", "importtime"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "bench" in proc.stdout
    modules = imported(proc.stderr)
    assert "gilfree.__main__" in modules or "gilfree" in modules  # importtime did report
    assert benchmark_modules(modules) == []


def test_demo_help_imports_no_benchmark_code(tmp_path: Path) -> None:
    proc = run_gilfree("demo", "--help", flags=("-X", "importtime"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--size" in proc.stdout
    modules = imported(proc.stderr)
    assert "gilfree._demo" in modules
    assert benchmark_modules(modules) == []


def test_demo_run_imports_no_benchmark_code(tmp_path: Path) -> None:
    proc = run_gilfree(
        "demo", "--size", "200", "--workers", "1", flags=("-X", "importtime"), tmp=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "Every run computed the same answer" in proc.stdout
    assert benchmark_modules(imported(proc.stderr)) == []


def test_bench_help_is_the_suites_own(tmp_path: Path) -> None:
    proc = run_gilfree("bench", "--help", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m gilfree bench")
    for option in ("--quick", "--only", "--skip", "--out"):
        assert option in proc.stdout


def test_benchmarks_run_py_is_the_same_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: benchmarks/run.py")
    assert "--only" in proc.stdout


# --- Bad input -----------------------------------------------------------------------------------


def test_bench_rejects_an_unknown_part(tmp_path: Path) -> None:
    proc = run_gilfree("bench", "--only", "nosuch", "--out", str(tmp_path / "out"), tmp=tmp_path)
    assert proc.returncode == 2
    assert "invalid choice: 'nosuch'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_demo_rejects_an_unknown_option(tmp_path: Path) -> None:
    proc = run_gilfree("demo", "--bogus", tmp=tmp_path)
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr
    assert "==" not in proc.stdout  # the demo did not start


def test_unknown_command_is_an_error(tmp_path: Path) -> None:
    proc = run_gilfree("benchmark", tmp=tmp_path)
    assert proc.returncode == 2
    assert "invalid choice: 'benchmark'" in proc.stderr


# --- Missing peers -------------------------------------------------------------------------------


def test_quick_scaling_without_peers_names_them_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_gilfree(
        "bench",
        "--quick",
        "--only",
        "scaling",
        "--size",
        "300",
        "--workers",
        "1",
        "--out",
        str(out),
        blocked=BENCH_PEERS,
        tmp=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for line in (
        "skipped: the joblib rows of CPU scaling: joblib is not installed",
        "skipped: the mpire rows of CPU scaling: mpire is not installed",
        "skipped: latency.png and scaling.png: matplotlib is not installed",
    ):
        assert line in proc.stdout, proc.stdout
    assert proc.stdout.count("pip install -r requirements/bench.txt") == 3
    report = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "| gilfree.Worker | 1 |" in report
    assert "| threading.Thread | 1 |" in report
    assert "| peers not installed (skipped) | joblib, mpire, matplotlib |" in report
    assert "| mpire |" not in report and "| joblib (loky) |" not in report
    assert not list(out.glob("*.png"))
    assert "1. start→join latency" not in proc.stdout  # --only scaling ran that part alone


def test_arrays_without_numpy_is_skipped_by_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_gilfree(
        "bench", "--quick", "--only", "arrays", "--out", str(out), blocked=("numpy",), tmp=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped: the large-arrays part: numpy is not installed" in proc.stdout
    assert "requirements/bench.txt" in proc.stdout
    assert not (out / "RESULTS.md").exists()


def test_full_run_without_numpy_leaves_out_arrays_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = ("latency", "scaling", "primitives", "pool", "containers")
    skips = [arg for part in parts for arg in ("--skip", part)]
    proc = run_gilfree(
        "bench", "--quick", *skips, "--out", str(out), blocked=("numpy",), tmp=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "4. large arrays" in proc.stdout
    assert "skipped: the large-arrays part: numpy is not installed" in proc.stdout
    report = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "| peers not installed (skipped) | numpy |" in report
    assert "<!-- arrays:start -->" not in report
    assert not (out / "POOL.md").exists()


def test_pool_peers_and_plot_are_skipped_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gilfree._bench import pool

    for name in ("loky", "joblib", "mpire", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    assert list(pool._pools()) == ["gilfree.Pool", "multiprocessing.Pool", "ProcessPoolExecutor"]
    rows = [pool.Row("tiny tasks, default chunking", "gilfree.Pool", 1.0, "µs/task")]
    pool.plot(rows, tmp_path / "pool.png")
    assert not (tmp_path / "pool.png").exists()
    said = capsys.readouterr().out
    for name in ("loky", "joblib", "mpire"):
        assert f"skipped: the {name} rows of the Pool benchmarks: {name} is not installed" in said
    assert "skipped: pool.png: matplotlib is not installed" in said


# -- timing child programs (gilfree._bench.proc) -------------------------------------------------


def test_timed_run_returns_the_childs_output_and_a_positive_time() -> None:
    from gilfree._bench.proc import timed_run

    elapsed, out = timed_run([sys.executable, "-c", "print('hello')"], capture=True)
    assert out == "hello\n"
    assert elapsed > 0


def test_timed_run_raises_the_childs_failure() -> None:
    from gilfree._bench.proc import timed_run

    with pytest.raises(subprocess.CalledProcessError) as info:
        timed_run([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert info.value.returncode == 3


def test_timed_run_kills_a_child_past_its_limit() -> None:
    from gilfree._bench.proc import timed_run

    # The child waits for a signal that never comes: only the watchdog can end it.
    with pytest.raises(TimeoutError, match=r"ran past 0\.5 s"):
        timed_run([sys.executable, "-c", "import signal; signal.pause()"], limit=0.5)


def test_no_benchmark_times_a_child_through_a_polling_wait() -> None:
    # subprocess's wait with a timeout polls in sleeps of up to 50 ms, which quantizes a
    # program's measured duration (two cold starts 40 ms apart both read 114.7 ms).
    bench = ROOT / "python" / "gilfree" / "_bench"
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(bench.glob("*.py"))
        if path.name != "proc.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "subprocess.run(" in line and "timeout=" in line
    ]
    assert not offenders, offenders
