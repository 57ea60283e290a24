"""gilfree on a free-threaded CPython (3.13t, 3.14t).

The extension declares that it runs without the GIL (PyO3 ``gil_used = false``), so importing
and using it leaves the GIL off; ``backend="auto"`` picks threads there; the process backend
still works. Each check runs in a fresh interpreter without ``GILFREE_BACKEND`` (the suite sets
it to ``process`` for every other test, see conftest.py). Skipped on an interpreter with the GIL:
``make test-ft`` runs the suite on a free-threaded build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import DASK_WORKERS, WATCHDOG, DaskCluster

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
needs_free_threading = pytest.mark.skipif(
    not FREE_THREADED, reason="needs a free-threaded CPython build (make test-ft)"
)


def run_fresh(code: str) -> list[str]:
    """Runs ``code`` in a fresh interpreter without GILFREE_BACKEND, a RuntimeWarning made an
    error (CPython warns when an import turns the GIL back on); returns its stdout lines."""
    env = {k: v for k, v in os.environ.items() if k != "GILFREE_BACKEND"}
    env.pop("PYTHON_GIL", None)  # PYTHON_GIL=0 would hide an extension that needs the GIL
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "GIL" not in proc.stderr, proc.stderr
    return proc.stdout.split()


@needs_free_threading
def test_import_and_use_keep_the_gil_off() -> None:
    out = run_fresh(
        """
        import sys
        import gilfree, gilfree._engine
        print(sys._is_gil_enabled())
        lock = gilfree.Lock()
        with lock:
            pass
        event = gilfree.Event()
        event.set()
        print(event.is_set(), sys._is_gil_enabled())
        """
    )
    assert out == ["False", "True", "False"]


@needs_free_threading
def test_auto_picks_the_thread_backend() -> None:
    out = run_fresh(
        """
        import os
        import gilfree, gilfree._engine
        from gilfree import _backends
        print(_backends.choose())
        # No template process was started for workers this program will not use by default
        # (prestarted_pid waits for a launch under way; None: none was begun).
        print(gilfree._engine.prestarted_pid(10.0))
        print(gilfree.map(lambda _: os.getpid(), range(3)) == [os.getpid()] * 3)
        w = gilfree.Worker(target=os.getpid)
        w.start()
        print(w.join() == os.getpid())
        """
    )
    assert out == ["thread", "None", "True", "True"]


@needs_free_threading
def test_process_backend_runs_workers_without_the_gil() -> None:
    out = run_fresh(
        """
        import os, sys
        import gilfree

        def where(_):
            import gilfree._engine  # the worker has loaded the extension too
            return os.getpid(), sys._is_gil_enabled()

        if __name__ == "__main__":
            with gilfree.Pool(2, backend="process") as pool:
                seen = list(pool.map(where, range(4)))
            print(all(pid != os.getpid() for pid, _ in seen))
            print(any(gil for _, gil in seen))
            w = gilfree.Worker(target=os.getpid, backend="process")
            w.start()
            print(w.join() != os.getpid(), sys._is_gil_enabled())
        """
    )
    assert out == ["True", "False", "True", "False"]


def bench_ft(out: Path) -> subprocess.CompletedProcess[str]:
    """``python -m gilfree bench --only ft`` on a tiny data set, watchdogged."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "gilfree", "bench", "--only", "ft", "--quick"),
            *("--size", "3000", "--reps", "5", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=WATCHDOG * 2,
    )


@needs_free_threading
def test_bench_ft_measures_the_three_backends(tmp_path: Path) -> None:
    proc = bench_ft(tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "FREE_THREADED.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    for backend in ("threading.Thread", "thread backend", "process backend"):
        for w in (1, 2):
            assert any(f"| {w} |" in line for line in lines if backend in line)
        # start→join, warm (--reps 5) and cold (--quick: 3 fresh programs), each with a median.
        for kind, reps in (("warm", 5), ("cold", 3)):
            row = [line for line in lines if backend in line and f"| {kind} | {reps} |" in line]
            assert len(row) == 1 and row[0].count(" µs |") == 2, lines
    assert "GIL: disabled" in text


@pytest.mark.skipif(FREE_THREADED, reason="checks the interpreter with the GIL")
def test_bench_ft_is_skipped_by_name_with_the_gil(tmp_path: Path) -> None:
    proc = bench_ft(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ft: skipped (this interpreter runs with the GIL" in proc.stdout
    assert not (tmp_path / "FREE_THREADED.md").exists()


def _thread_names() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate()]


@needs_free_threading
def test_dask_local_cluster_runs_no_frame_sampler(dask_session: DaskCluster) -> None:
    # distributed's profiler ("Profile" thread, in the scheduler's process and in each worker)
    # samples another thread's live frames through sys._current_frames(), which is not safe
    # without the GIL: on 3.13t it read a dict where a code object should be and died with an
    # AttributeError mid-suite. The LocalCluster the dask backend starts turns it off there.
    # A worker the nanny restarts (after a crash) starts with the same config: kill one first.
    import signal
    import time

    import psutil

    client = dask_session.client
    client.wait_for_workers(DASK_WORKERS, timeout=WATCHDOG)
    killed = next(iter(client.run(os.getpid).values()))
    os.kill(killed, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(killed)], timeout=WATCHDOG)
    deadline = time.monotonic() + WATCHDOG
    while True:  # until the scheduler has the restarted worker and not the dead one
        try:
            pids = client.run(os.getpid, on_error="ignore")
        except OSError:
            pids = {}
        if len(pids) == DASK_WORKERS and killed not in pids.values():
            break
        assert time.monotonic() < deadline, f"no worker restarted after {killed}: {pids}"
        client.wait_for_workers(DASK_WORKERS, timeout=WATCHDOG)
    assert "Profile" not in _thread_names()
    per_worker = client.run(_thread_names)
    assert len(per_worker) == DASK_WORKERS
    assert all("Profile" not in names for names in per_worker.values()), per_worker
