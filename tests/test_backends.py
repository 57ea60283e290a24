"""Backends: choosing one, and the public API's core run once per backend.

The tests taking the ``backend`` fixture (tests/conftest.py) run on every backend in
``conftest.BACKENDS``; the rest check the choice (``backend=``, ``gilfree.config``,
``GILFREE_BACKEND``, ``auto``) and what only the thread backend refuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import gilfree
from gilfree import _backends

import helpers
from conftest import WATCHDOG


class Gate:
    """Tasks that wait, on any backend, until the test lets them go: each task connects (so
    the test learns, without sleeping, that it runs) and blocks until the test sends a byte.
    Closing the gate lets every task go (a thread cannot be killed, so a test must)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WATCHDOG)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []

    def wait_running(self, n: int = 1) -> None:
        for _ in range(n):
            conn = self.server.accept()[0]
            conn.settimeout(WATCHDOG)
            assert conn.recv(1) == b"r"
            self.conns.append(conn)

    def release(self) -> None:
        for c in self.conns:
            try:
                c.sendall(b"x")
            except OSError:  # the task was killed: nobody is listening
                pass
            c.close()
        self.conns.clear()

    def close(self) -> None:
        self.release()
        self.server.close()


def gated(port: int, value: Any = None) -> Any:
    """A task that tells the gate it runs, waits to be let go, then returns ``value``."""
    with socket.create_connection(("127.0.0.1", port), timeout=WATCHDOG) as s:
        s.settimeout(WATCHDOG)
        s.sendall(b"r")
        s.recv(1)
    return value


class GatedWorker(gilfree.Worker):
    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.port = port

    def run(self) -> str:
        self.seen_name = threading.current_thread().name
        return gated(self.port, "done")


def whoami() -> tuple[int, int, str]:
    return os.getpid(), threading.get_native_id(), threading.current_thread().name


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()


@pytest.fixture
def in_backend(backend: str) -> Iterator[str]:
    """The backend, also made the default for the test (``with gilfree.config``): Worker
    subclasses that call ``super().__init__()`` without ``backend=`` run on it."""
    with gilfree.config(backend=backend):
        yield backend


# -- Worker, on every backend ------------------------------------------------------------------


def test_worker_return_value_and_attributes(in_backend: str) -> None:
    data = [1, 2, 3]
    w = helpers.Squares(data)
    w.start()
    assert w.join() == 14
    assert w.total == 14 and w.seen == [1, 2, 3]
    if in_backend == "thread":  # no copy: run() changed this very object
        assert w.data is data
    assert not w.is_alive()


def test_worker_target_args_kwargs_and_names(backend: str) -> None:
    w = gilfree.Worker(target=helpers.add, args=(2, 3), kwargs={"scale": 10}, backend=backend)
    assert "add" in w.name
    w.start()
    assert w.join() == 50
    named = gilfree.Worker(target=whoami, name="crunch", backend=backend)
    assert named.native_id is None and named.ident is None
    named.start()
    pid, native_id, thread_name = named.join()
    assert named.name == thread_name == "crunch"
    if backend == "thread":
        assert pid == os.getpid() and native_id == named.native_id
    else:
        assert pid != os.getpid() and pid == named.native_id == named.ident


def test_worker_exception_has_the_remote_traceback(in_backend: str) -> None:
    w = helpers.Failing()
    w.start()
    with pytest.raises(KeyError, match="missing-key-in-worker") as info:
        w.join()
    cause = info.value.__cause__
    assert isinstance(cause, gilfree.RemoteTraceback)
    assert "helpers.py" in str(cause) and "in run" in str(cause)
    assert w.before == "set"
    with pytest.raises(KeyError):  # a second join re-raises
        w.join()


def test_worker_join_timeout_then_result(in_backend: str, gate: Gate) -> None:
    w = GatedWorker(gate.port)
    w.start()
    gate.wait_running()
    assert w.join(timeout=0.01) is None
    assert w.is_alive()
    with pytest.raises(TimeoutError, match=w.name):
        w.result(timeout=0)
    gate.release()
    assert w.join() == "done"
    assert not w.is_alive()
    assert w.seen_name == w.name


def test_worker_start_twice_and_join_before_start(backend: str) -> None:
    w = gilfree.Worker(target=helpers.square, args=(3,), backend=backend)
    with pytest.raises(RuntimeError, match="before it is started"):
        w.join()
    w.start()
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        w.start()
    assert w.join() == 9


def test_worker_terminate(in_backend: str, gate: Gate) -> None:
    w = GatedWorker(gate.port)
    w.start()
    gate.wait_running()
    if in_backend == "process":
        w.terminate()
        with pytest.raises(gilfree.WorkerCrashedError):
            w.join()
        return
    with pytest.raises(NotImplementedError, match=r"terminate\(\).*'thread' backend"):
        w.terminate()
    assert w.is_alive()
    gate.release()
    assert w.join() == "done"
    w.terminate()  # finished: nothing to stop, as on processes


# -- Pool and map, on every backend ------------------------------------------------------------


def test_pool_submit_map_imap(backend: str) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        assert isinstance(pool, gilfree.Pool) and isinstance(pool, cf.Executor)
        assert pool.max_workers == 2
        f = pool.submit(helpers.add, 1, 2, scale=3)
        assert f.result(timeout=WATCHDOG) == 9
        assert list(pool.map(helpers.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        assert list(pool.imap(helpers.square, range(50))) == [i * i for i in range(50)]
        unordered = list(pool.imap(helpers.square, iter(range(50)), ordered=False))
        assert sorted(unordered) == [i * i for i in range(50)]
        where = pool.submit(os.getpid).result(timeout=WATCHDOG)
        assert (where == os.getpid()) == (backend == "thread")


def test_pool_task_exception_has_the_remote_traceback(backend: str) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        f = pool.submit(helpers.raise_value_error, 3)
        with pytest.raises(ValueError, match="bad item 3") as info:
            f.result(timeout=WATCHDOG)
        cause = info.value.__cause__
        assert isinstance(cause, gilfree.RemoteTraceback)
        assert "raise_value_error" in str(cause)
        results = pool.map(helpers.raise_value_error, range(5))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3"):
            next(results)


def test_pool_as_completed_wait_and_asyncio(backend: str) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        futures = [pool.submit(helpers.square, i) for i in range(10)]
        got = sorted(f.result() for f in cf.as_completed(futures, timeout=WATCHDOG))
        assert got == [i * i for i in range(10)]
        done, not_done = cf.wait(futures, timeout=WATCHDOG)
        assert len(done) == 10 and not not_done

        async def main() -> int:
            return await asyncio.wrap_future(pool.submit(helpers.square, 7))

        assert asyncio.run(main()) == 49


def test_pool_cancel_queued_tasks(backend: str, gate: Gate) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        blocker = pool.submit(gated, gate.port, "blocker")
        gate.wait_running()
        queued = [pool.submit(helpers.square, i) for i in range(8)]
        assert queued[-1].cancel() and queued[-1].cancelled()
        assert pool.cancel(queued[-2]) and queued[-2].cancelled()
        assert pool.cancel(queued[-2])  # again: still true, never raises
        assert not blocker.cancel()  # running: Future.cancel refuses, as in the stdlib
        gate.release()
        assert blocker.result(timeout=WATCHDOG) == "blocker"
        assert [f.result(timeout=WATCHDOG) for f in queued[:-2]] == [i * i for i in range(6)]
        done, _ = cf.wait(queued, timeout=WATCHDOG)
        assert len(done) == 8


def test_pool_shutdown_cancel_futures(backend: str, gate: Gate) -> None:
    pool = gilfree.Pool(1, backend=backend)
    blocker = pool.submit(gated, gate.port, "blocker")
    gate.wait_running()
    queued = [pool.submit(helpers.square, i) for i in range(6)]
    pool.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(helpers.square, 1)
    assert queued[-1].cancelled()
    assert cf.wait(queued[-1:], timeout=WATCHDOG).done == {queued[-1]}
    gate.release()
    assert blocker.result(timeout=WATCHDOG) == "blocker"
    pool.shutdown(wait=True)


def test_pool_imap_is_lazy(backend: str) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for i in itertools.count():
            next(pulled)
            yield i

    with gilfree.Pool(2, backend=backend) as pool:
        out = []
        for value in pool.imap(helpers.square, endless()):
            out.append(value)
            if len(out) == 500:
                break
    assert out == [i * i for i in range(500)]
    assert next(pulled) < 500 + 200_000  # bounded look-ahead, not the endless source


def test_gilfree_map_with_progress(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    got = gilfree.map(helpers.square, range(120), progress=True, workers=2, backend=backend)
    assert got == [i * i for i in range(120)]
    assert "120/120" in capsys.readouterr().err
    unordered = gilfree.map(helpers.square, range(30), ordered=False, backend=backend)
    assert sorted(unordered) == [i * i for i in range(30)]
    with pytest.raises(ValueError, match="bad item 3"):
        gilfree.map(helpers.raise_value_error, range(10), backend=backend)


def test_shared_primitives_across_workers(in_backend: str) -> None:
    """gilfree's Lock, Value and Barrier work between Workers of either backend; the Barrier
    completes only if all three Workers run at the same time."""
    counter = gilfree.Value("i", 0)
    lock = gilfree.Lock()
    barrier = gilfree.Barrier(3, timeout=WATCHDOG)
    workers = [
        gilfree.Worker(target=_count_after_barrier, args=(counter, lock, barrier, 200))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    assert [w.join() for w in workers] == [True] * 3
    assert counter.value == 600


def _count_after_barrier(counter: Any, lock: Any, barrier: Any, n: int) -> bool:
    barrier.wait()
    for _ in range(n):
        with lock:
            counter.value += 1
    return True


# -- what the thread backend refuses ------------------------------------------------------------


def test_thread_pool_refuses_per_task_timeouts() -> None:
    with gilfree.Pool(1, backend="thread") as pool:
        with pytest.raises(NotImplementedError, match=r"submit\(\).*'thread' backend"):
            pool.submit(helpers.square, 2, timeout=1)
        with pytest.raises(NotImplementedError, match="'thread' backend"):
            pool.map(helpers.square, [1], timeout=1)
        with pytest.raises(NotImplementedError, match="'thread' backend"):
            pool.imap(helpers.square, [1], timeout=1)
        assert pool.submit(helpers.square, 2).result(timeout=WATCHDOG) == 4
    with pytest.raises(NotImplementedError, match="'thread' backend"):
        gilfree.map(helpers.square, [1], timeout=1, backend="thread")
    with pytest.raises(NotImplementedError, match="max_tasks_per_worker"):
        gilfree.Pool(1, max_tasks_per_worker=1, backend="thread")


def test_thread_pool_cancel_of_a_running_task_is_refused(gate: Gate) -> None:
    with gilfree.Pool(1, backend="thread") as pool:
        running = pool.submit(gated, gate.port, 5)
        gate.wait_running()
        with pytest.raises(NotImplementedError, match="running task"):
            pool.cancel(running)
        gate.release()
        assert running.result(timeout=WATCHDOG) == 5
        assert not pool.cancel(running)  # finished: nothing to stop, as on processes


def test_thread_pool_initializer_runs_and_a_failing_one_breaks_the_pool() -> None:
    seen: list[str] = []
    with gilfree.Pool(1, initializer=seen.append, initargs=("init",), backend="thread") as pool:
        assert pool.submit(helpers.square, 3).result(timeout=WATCHDOG) == 9
    assert seen == ["init"]
    with gilfree.Pool(1, initializer=helpers.fail_init, backend="thread") as pool:
        f = pool.submit(helpers.square, 3)
        with pytest.raises(gilfree.BrokenPoolError) as info:
            f.result(timeout=WATCHDOG)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(gilfree.BrokenPoolError):
            pool.submit(helpers.square, 3)


def test_thread_pool_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    with gilfree.Pool(3, backend="thread") as pool:
        assert list(pool.map(helpers.square, range(20))) == [i * i for i in range(20)]
    assert set(threading.enumerate()) == before
    # A pool dropped without shutdown: its idle threads end once it is collected.
    dropped = gilfree.Pool(2, backend="thread")
    assert dropped.submit(helpers.square, 2).result(timeout=WATCHDOG) == 4
    started = [t for t in threading.enumerate() if t not in before]
    assert started
    del dropped
    gc.collect()
    for t in started:
        t.join(WATCHDOG)
        assert not t.is_alive()


def test_thread_worker_thread_ends_with_run(gate: Gate) -> None:
    w = GatedWorker(gate.port, backend="thread")
    before = set(threading.enumerate())
    w.start()
    gate.wait_running()
    (thread,) = set(threading.enumerate()) - before
    assert thread.name == w.name and thread.native_id == w.native_id and thread.ident == w.ident
    gate.release()
    assert w.join() == "done"
    assert not thread.is_alive()


# -- choosing a backend ---------------------------------------------------------------------------


def _pool_backend(**kwargs: Any) -> str:
    with gilfree.Pool(1, **kwargs) as pool:
        return (
            "thread"
            if pool.submit(os.getpid).result(timeout=WATCHDOG) == os.getpid()
            else "process"
        )


def test_config_block_sets_the_default_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    assert _backends.choose() == "process"  # this interpreter has the GIL
    with gilfree.config(backend="thread"):
        assert _pool_backend() == "thread"
        assert _pool_backend(backend="process") == "process"  # backend= wins
        with gilfree.config(backend="process"):
            assert _backends.choose() == "process"
        assert _backends.choose() == "thread"
        w = gilfree.Worker(target=os.getpid)
        w.start()
        assert w.join() == os.getpid()
    with pytest.raises(KeyError), gilfree.config(backend="thread"):
        raise KeyError("leaves the block")
    assert _backends.choose() == "process"


def test_config_is_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    seen: list[str] = []
    with gilfree.config(backend="thread"):
        t = threading.Thread(target=lambda: seen.append(_backends.choose()))
        t.start()
        t.join()
        assert _backends.choose() == "thread"
    assert seen == ["process"]


def test_environment_variable_sets_the_program_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_backends.ENV_VAR, "thread")
    assert _pool_backend() == "thread"
    assert gilfree.map(lambda _: os.getpid(), range(3)) == [os.getpid()] * 3
    with gilfree.config(backend="process"):  # a block wins over the environment
        assert _pool_backend() == "process"
    monkeypatch.setenv(_backends.ENV_VAR, "threads")
    with pytest.raises(ValueError, match=r"GILFREE_BACKEND.*'threads'"):
        gilfree.Pool(1)
    with pytest.raises(ValueError, match="GILFREE_BACKEND"):
        gilfree.Worker(target=os.getpid)


def test_auto_follows_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert _backends.choose("auto") == "thread"
    assert _pool_backend() == "thread"
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert _backends.choose("auto") == "process"
    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)  # before 3.13: the GIL is on
    assert _backends.choose() == "process"


def test_unknown_or_missing_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"backend=: unknown backend 'gpu'.*'thread'"):
        gilfree.Pool(1, backend="gpu")
    with pytest.raises(ValueError, match="unknown backend"):
        gilfree.Worker(target=os.getpid, backend="gpu")
    with pytest.raises(ValueError, match="unknown backend"):
        gilfree.map(helpers.square, [1], backend="gpu")
    with pytest.raises(ValueError, match=r"gilfree.config\(backend=\): unknown backend"):
        with gilfree.config(backend="gpu"):
            pass
    monkeypatch.setitem(_backends._MODULES, "dask", "gilfree._backends._not_installed_here")
    with pytest.raises(ValueError, match="backend 'dask' is not available"):
        gilfree.Pool(1, backend="dask")


def test_import_gilfree_does_not_load_the_backends() -> None:
    code = "import sys, gilfree; print(sorted(m for m in sys.modules if '_backends.' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
