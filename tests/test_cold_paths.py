"""Cold paths: what ``import gilfree`` loads, and ``gilfree.map``'s reusable default pool."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import subprocess
import sys
import threading

import pytest

import gilfree
from gilfree import executor

import helpers
from conftest import WATCHDOG, imported_by, interrupt_script, wait_gone

# Modules ``import gilfree`` must not load: each costs milliseconds and only some calls need it.
HEAVY = (
    "concurrent.futures",
    "logging",
    "tqdm",
    "numpy",
    "cloudpickle",
    "typing",
    "secrets",
    "ctypes",
    "queue",
)


def test_import_gilfree_loads_no_heavy_module() -> None:
    names = imported_by("import gilfree")
    assert "gilfree" in names  # the parse saw the import itself
    assert not {n for n in names if n.split(".")[0] in HEAVY or n in HEAVY}, sorted(names)


def test_public_names_load_on_first_use_and_star_import_works() -> None:
    code = (
        "import gilfree, sys\n"
        "assert set(gilfree.__all__) <= set(dir(gilfree)), dir(gilfree)\n"
        "assert 'concurrent.futures' not in sys.modules\n"
        "from gilfree import *\n"
        "from gilfree import Pool, Worker, Lock, Queue, SharedArray, BrokenPoolError, Thread\n"
        "import concurrent.futures as cf\n"
        "assert issubclass(BrokenPoolError, cf.BrokenExecutor)\n"
        "assert gilfree.Pool is Pool and gilfree.Thread is Worker\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_broken_pool_error_is_one_class_that_pickles_by_name() -> None:
    err = gilfree.BrokenPoolError("x")
    assert isinstance(err, cf.BrokenExecutor)
    assert gilfree.BrokenPoolError is gilfree.exceptions.BrokenPoolError
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is gilfree.BrokenPoolError and back.args == ("x",)
    with pytest.raises(AttributeError):
        gilfree.exceptions.NoSuchName  # noqa: B018


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        gilfree.no_such_name  # noqa: B018


def _collectors() -> int:
    return sum(t.name == "gilfree-pool-collector" for t in threading.enumerate())


def test_gilfree_map_reuses_one_pool_between_calls() -> None:
    assert gilfree.map(helpers.square, range(10), workers=2) == [i * i for i in range(10)]
    first = executor._default_pool
    threads = _collectors()
    for _ in range(3):
        assert gilfree.map(helpers.square, range(10), workers=2) == [i * i for i in range(10)]
    # Still warm after the calls: the same pool, and no collector thread came or went.
    assert first is not None and executor._default_pool is first
    assert not first._shutdown
    assert _collectors() == threads


def test_gilfree_map_resizes_the_default_pool() -> None:
    assert len(gilfree.map(helpers.pid_of, range(4), workers=2)) == 4
    two = executor._default_pool
    assert len(gilfree.map(helpers.pid_of, range(4), workers=1)) == 4
    one = executor._default_pool
    assert one is not two and one is not None and one.max_workers == 1
    assert two is not None and two._shutdown  # the old one was released, not leaked
    assert len(set(gilfree.map(helpers.pid_of, range(8), workers=1, chunksize=1))) == 1


def test_an_item_that_raises_does_not_poison_the_next_call() -> None:
    before = set(gilfree.map(helpers.pid_of, range(6), workers=1, chunksize=1))
    assert len(before) == 1
    with pytest.raises(ValueError, match="bad item 3"):
        gilfree.map(helpers.raise_at_three_else_pid, range(8), workers=1, chunksize=1)
    # The same warm worker process serves the next call: nothing was killed for the error.
    after = set(gilfree.map(helpers.pid_of, range(6), workers=1, chunksize=1))
    assert after == before


def test_a_timeout_does_not_poison_the_next_call() -> None:
    with pytest.raises(TimeoutError):
        gilfree.map(helpers.spin_or_block, [-1], workers=2, timeout=0.2)
    assert gilfree.map(helpers.square, range(20), workers=2) == [i * i for i in range(20)]


def test_gilfree_map_from_two_threads_with_different_sizes() -> None:
    """A resize asked while another call runs on the default pool gets a pool of its own."""
    out: dict[int, list[int]] = {}

    def call(workers: int) -> None:
        out[workers] = gilfree.map(helpers.square, range(200), workers=workers, chunksize=1)

    threads = [threading.Thread(target=call, args=(w,)) for w in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WATCHDOG)
    assert out == {w: [i * i for i in range(200)] for w in (1, 2)}
    assert executor._default_users == 0


def test_ctrl_c_in_gilfree_map_stops_its_tasks_and_the_next_call_works() -> None:
    pids, out, err, returncode = interrupt_script("pool_ctrl_c.py", "gilfree.map", ready="waiting")
    assert pids
    assert "interrupted" in out, err
    # The blocked tasks were killed at Ctrl-C: the next call on the same pool could run.
    assert "next call ok True" in out, (out, err)
    assert returncode == 0, err
    assert wait_gone(pids) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_makes_its_own_default_pool() -> None:
    assert gilfree.map(helpers.square, range(4), workers=2) == [0, 1, 4, 9]
    parent_pool = executor._default_pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            fresh = executor._default_pool is None
            ok = gilfree.map(helpers.square, range(4), workers=2) == [0, 1, 4, 9]
            own = executor._default_pool is not parent_pool
            os.write(w, f"{fresh} {ok} {own}".encode())
            code = 0
        finally:
            from gilfree import _runtime

            _runtime.shutdown()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        reply = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reply == "True True True"
    # The parent's default pool is untouched and still works.
    assert executor._default_pool is parent_pool
    assert gilfree.map(helpers.square, range(4), workers=2) == [0, 1, 4, 9]


def test_exit_after_gilfree_map_stops_the_default_pool() -> None:
    code = (
        "import gilfree\n"
        "from gilfree import _runtime\n"
        "assert gilfree.map(abs, range(-5, 5), workers=2) == [abs(i) for i in range(-5, 5)]\n"
        "print('pids', *_runtime.worker_pids(), flush=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert res.returncode == 0, res.stderr
    pids = [int(p) for p in res.stdout.split()[1:]]
    assert pids
    assert wait_gone(pids) == []


def test_gilfree_map_refuses_zero_workers_and_keeps_the_default_pool() -> None:
    assert gilfree.map(helpers.square, range(3), workers=2) == [0, 1, 4]
    pool = executor._default_pool
    with pytest.raises(ValueError, match="greater than 0"):
        gilfree.map(helpers.square, range(3), workers=0)
    assert executor._default_pool is pool and pool is not None and not pool._shutdown


def test_gilfree_map_on_processes_when_the_default_backend_is_threads() -> None:
    # The default pool is a process pool whatever the configured default: under a thread
    # default (as "auto" gives on a free-threaded build), backend="process" still means processes.
    with gilfree.config(backend="thread"):
        pids = set(gilfree.map(helpers.pid_of, range(4), workers=2, backend="process"))
        assert os.getpid() not in pids
        assert type(executor._default_pool) is executor.Pool
        assert len(set(gilfree.map(helpers.pid_of, range(4), workers=1, backend="process"))) == 1
