"""Backends: choosing one, and the public API's core run once per backend.

The tests taking the ``backend`` fixture (tests/conftest.py) run on every backend in
``conftest.BACKENDS`` (process, thread, and dask on the session's LocalCluster): they are the
public API's contract. What a backend cannot do by design (``CANNOT``, the README's backend
table) is asserted there as its clear error. The rest check the choice (``backend=``,
``gilfree.config``, ``GILFREE_BACKEND``, ``auto``) and what only the thread backend does.
Process-only details (the engine's timeouts, retries, pipelining) stay in their own files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import io
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- what a backend cannot do by design -----------------------------------------------------------

# The README's backend table, as the tests use it: what a backend cannot do by design, and why.
# A test of such a thing asserts, on that backend, the documented clear error
# (``UnsupportedByBackend``) instead; where there is no error to assert (a crash on threads
# takes the whole program down), it is skipped there with the reason.
CANNOT: dict[str, dict[str, str]] = {
    "kill a running task": {
        "thread": "a running thread cannot be stopped",
        "dask": "Dask cannot stop a task that runs on a worker",
    },
    "per-task timeout": {
        "thread": "a thread that runs too long cannot be killed",
        "dask": "Dask cannot stop a task that runs too long",
    },
    "max_tasks_per_worker": {
        "thread": "a pool's threads are not replaced",
        "dask": "Dask manages its workers' lifetimes",
    },
    "initializer": {"dask": "a Dask worker is shared by every client"},
    "retries": {"dask": "Dask tells no task that raised from one whose worker died"},
    "crash isolation": {"thread": "a crash takes the whole program down"},
    "shared primitives": {"dask": "they live in one machine's shared memory"},
}


# Where a task's or Worker's output goes. The process and dask backends forward it line by line,
# each line whole. On the thread backend a task prints straight to the caller's sys.stdout, as a
# threading.Thread does, and print() writes its text and then the newline: another thread's
# print can land between the two (often, on a free-threaded build, where threads run at once).
# There every write still arrives whole and in its thread's order; the tests check that.
TORN_LINES = {"thread": "print() writes the text and the newline separately, as with threading"}


def printed(text: str, tag: str) -> list[str]:
    """What ``helpers.Printer(tag, ...)`` printed (its numbers, then ``err``), in order, however
    other threads' prints split its lines."""
    return re.findall(rf"{tag} (\d+|err)", text)


def cannot(backend: str, what: str) -> str | None:
    """Why ``backend`` cannot do ``what`` (a key of ``CANNOT``); ``None`` if it can."""
    return CANNOT[what].get(backend)


def refused(backend: str, match: str = "") -> Any:
    """``pytest.raises`` for the clear error of a backend that cannot do what is asked."""
    return pytest.raises(_backends.UnsupportedByBackend, match=f"{match}.*'{backend}' backend")


def skip_if_cannot(backend: str, what: str) -> None:
    if (why := cannot(backend, what)) is not None:
        pytest.skip(f"not on the {backend!r} backend by design: {why}")


def block_all(pool: gilfree.Pool, gate: Gate) -> list[cf.Future[Any]]:
    """Occupies every worker of the pool with a gated task; returns their Futures once all
    run. (A pool on the session's Dask cluster has that cluster's workers, whatever size was
    asked.)"""
    blockers = [pool.submit(gated, gate.port, f"blocker {i}") for i in range(pool.max_workers)]
    gate.wait_running(len(blockers))
    return blockers


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


def test_worker_attribute_changes_deletions_and_unpicklable_ones(in_backend: str) -> None:
    w = helpers.Mutator()
    w.start()
    if in_backend == "thread":  # run() works on this very object: nothing is copied
        w.join()
        assert isinstance(w.lock, type(threading.Lock()))
    else:
        with pytest.warns(RuntimeWarning, match="'lock'"):
            w.join()
        assert not hasattr(w, "lock")
    assert w.items == [1, 2, 3]
    assert w.new == {"a": 1}
    assert not hasattr(w, "doomed")
    assert w.untouched == "same"


def test_worker_target_args_kwargs_and_names(backend: str) -> None:
    w = gilfree.Worker(target=helpers.add, args=(2, 3), kwargs={"scale": 10}, backend=backend)
    assert "add" in w.name
    w.start()
    assert w.join() == 50
    base = 7
    closure = gilfree.Worker(target=lambda x: x + base, args=(1,), backend=backend)
    closure.start()
    assert closure.join() == 8
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
    if cannot(in_backend, "kill a running task") is None:
        w.terminate()
        with pytest.raises(gilfree.WorkerCrashedError):
            w.join()
        return
    with refused(in_backend, r"terminate\(\)"):
        w.terminate()
    assert w.is_alive()
    gate.release()
    assert w.join() == "done"
    w.terminate()  # finished: nothing to stop, as on processes


def test_worker_output_reaches_the_callers_streams(
    in_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [helpers.Printer(tag, 50) for tag in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    captured = capsys.readouterr()
    if in_backend in TORN_LINES:
        # As threading.Thread's: every write arrives, each Worker's in order; a line may be torn.
        for tag in ("a", "b"):
            assert printed(captured.out, tag) == [str(i) for i in range(50)]
            assert printed(captured.err, tag) == ["err"]
        expected = "".join(f"{tag} {i}\n" for tag in ("a", "b") for i in range(50))
        assert sorted(captured.out) == sorted(expected)
    else:
        lines = captured.out.splitlines()
        for tag in ("a", "b"):  # each Worker's lines whole and in order
            assert [line for line in lines if line.startswith(tag + " ")] == [
                f"{tag} {i}" for i in range(50)
            ]
        assert len(lines) == 100
        assert sorted(captured.err.splitlines()) == ["a err", "b err"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        w = helpers.Printer("r", 3)
        w.start()
        w.join()
    assert buf.getvalue().splitlines() == ["r 0", "r 1", "r 2"]


def test_worker_death_is_a_crashed_error_and_others_go_on(in_backend: str) -> None:
    # Each way of dying, and the exit code or signal it reports, on processes: test_worker.py.
    skip_if_cannot(in_backend, "crash isolation")
    w = gilfree.Worker(target=helpers.die, args=("kill",), name="doomed")
    w.start()
    with pytest.raises(gilfree.WorkerCrashedError, match="doomed"):
        w.join()
    assert not w.is_alive()
    nxt = gilfree.Worker(target=helpers.add, args=(2, 2))
    nxt.start()
    assert nxt.join() == 4


# -- Pool and map, on every backend ------------------------------------------------------------


def test_pool_submit_map_imap(backend: str) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        assert isinstance(pool, gilfree.Pool) and isinstance(pool, cf.Executor)
        assert pool.max_workers == 2
        f = pool.submit(helpers.add, 1, 2, scale=3)
        assert isinstance(f, cf.Future)
        assert f.result(timeout=WATCHDOG) == 9
        k = 5
        assert pool.submit(lambda x: x * k, 3).result(timeout=WATCHDOG) == 15
        assert list(pool.map(helpers.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        assert list(pool.map(helpers.square, range(300), chunksize=7)) == [
            i * i for i in range(300)
        ]
        assert list(pool.imap(helpers.square, range(50))) == [i * i for i in range(50)]
        unordered = list(pool.imap(helpers.square, iter(range(50)), ordered=False))
        assert sorted(unordered) == [i * i for i in range(50)]
        where = pool.submit(os.getpid).result(timeout=WATCHDOG)
        assert (where == os.getpid()) == (backend == "thread")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=3000), min_size=0, max_size=40),
    chunksize=st.one_of(st.none(), st.integers(min_value=1, max_value=9)),
    ordered=st.booleans(),
)
def test_pool_map_and_imap_order_property(
    backend: str, costs: list[int], chunksize: int | None, ordered: bool
) -> None:
    expected = [helpers.spin(c) for c in costs]
    with gilfree.Pool(2, backend=backend) as pool:
        assert list(pool.map(helpers.spin, costs, chunksize=chunksize)) == expected
        got = list(pool.imap(helpers.spin, costs, ordered=ordered, chunksize=chunksize))
    assert got == expected if ordered else sorted(got) == sorted(expected)


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
        assert pool.submit(helpers.square, 4).result(timeout=WATCHDOG) == 16


def test_pool_result_timeout_leaves_the_task_running(backend: str, gate: Gate) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        f = pool.submit(gated, gate.port, "late")
        gate.wait_running()
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.01)
        assert not f.done()
        gate.release()
        assert f.result(timeout=WATCHDOG) == "late"


def test_pool_as_completed_wait_callbacks_and_asyncio(backend: str) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        futures = [pool.submit(helpers.square, i) for i in range(10)]
        got = sorted(f.result() for f in cf.as_completed(futures, timeout=WATCHDOG))
        assert got == [i * i for i in range(10)]
        done, not_done = cf.wait(futures, timeout=WATCHDOG)
        assert len(done) == 10 and not not_done

        seen: list[int] = []
        ev = threading.Event()
        f = pool.submit(helpers.square, 9)
        f.add_done_callback(lambda fut: (seen.append(fut.result()), ev.set()))
        assert ev.wait(WATCHDOG) and seen == [81]

        async def main() -> int:
            return await asyncio.wrap_future(pool.submit(helpers.square, 7))

        assert asyncio.run(main()) == 49


def test_pool_cancel_queued_tasks(backend: str, gate: Gate) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        blockers = block_all(pool, gate)
        queued = [pool.submit(helpers.square, i) for i in range(8)]
        assert queued[-1].cancel() and queued[-1].cancelled()
        assert pool.cancel(queued[-2]) and queued[-2].cancelled()
        assert pool.cancel(queued[-2])  # again: still true, never raises
        as_completed = cf.as_completed(queued[-2:], timeout=WATCHDOG)
        assert {next(as_completed), next(as_completed)} == set(queued[-2:])  # cancelled = done
        assert not blockers[0].cancel()  # running: Future.cancel refuses, as in the stdlib
        gate.release()
        assert [f.result(timeout=WATCHDOG) for f in blockers] == [
            f"blocker {i}" for i in range(len(blockers))
        ]
        assert [f.result(timeout=WATCHDOG) for f in queued[:-2]] == [i * i for i in range(6)]
        done, _ = cf.wait(queued, timeout=WATCHDOG)
        assert len(done) == 8


def test_pool_cancel_of_a_running_task(backend: str, gate: Gate) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        blockers = block_all(pool, gate)
        running = blockers[0]
        if cannot(backend, "kill a running task") is None:
            assert pool.cancel(running)  # killed: its Future fails with CancelledError
            with pytest.raises(cf.CancelledError):
                running.result(timeout=WATCHDOG)
        else:
            with refused(backend, r"Pool.cancel\(\) of a running task"):
                pool.cancel(running)
        gate.release()
        rest = blockers if cannot(backend, "kill a running task") else blockers[1:]
        assert all(f.result(timeout=WATCHDOG).startswith("blocker") for f in rest)
        finished = pool.submit(helpers.square, 3)
        assert finished.result(timeout=WATCHDOG) == 9
        assert not pool.cancel(finished)  # finished: nothing to stop, never raises


def test_pool_shutdown_cancel_futures(backend: str, gate: Gate) -> None:
    pool = gilfree.Pool(1, backend=backend)
    blockers = block_all(pool, gate)
    queued = [pool.submit(helpers.square, i) for i in range(6)]
    pool.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(helpers.square, 1)
    assert queued[-1].cancelled()
    assert cf.wait(queued[-1:], timeout=WATCHDOG).done == {queued[-1]}
    gate.release()
    assert [f.result(timeout=WATCHDOG) for f in blockers] == [
        f"blocker {i}" for i in range(len(blockers))
    ]
    pool.shutdown(wait=True)


def test_pool_per_task_timeout(backend: str, gate: Gate) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        if cannot(backend, "per-task timeout") is None:
            slow = pool.submit(gated, gate.port, "never", timeout=0.2)
            gate.wait_running()
            with pytest.raises(TimeoutError):
                slow.result(timeout=WATCHDOG)
        else:
            with refused(backend, r"submit\(\)"):
                pool.submit(helpers.square, 2, timeout=1)
            with refused(backend, "map"):
                list(pool.map(helpers.square, [1], timeout=1))
            with refused(backend, "imap"):
                list(pool.imap(helpers.square, [1], timeout=1))
            with refused(backend):
                gilfree.map(helpers.square, [1], timeout=1, backend=backend)
        assert pool.submit(helpers.square, 2).result(timeout=WATCHDOG) == 4


def test_pool_max_tasks_per_worker(backend: str) -> None:
    if cannot(backend, "max_tasks_per_worker") is not None:
        with refused(backend, "max_tasks_per_worker"):
            gilfree.Pool(1, max_tasks_per_worker=1, backend=backend)
        return
    with gilfree.Pool(1, max_tasks_per_worker=1, backend=backend) as p:
        pids = [p.submit(helpers.getpid).result(timeout=WATCHDOG) for _ in range(3)]
    assert len(set(pids)) == 3


def test_pool_initializer(backend: str) -> None:
    if cannot(backend, "initializer") is not None:
        with refused(backend, "initializer"):
            gilfree.Pool(1, initializer=helpers.set_marker, initargs=("ready",), backend=backend)
        return
    with gilfree.Pool(1, initializer=helpers.set_marker, initargs=("ready",), backend=backend) as p:
        # (On threads the marker lands in this process's module, so earlier runs may be there.)
        assert p.submit(helpers.get_marker).result(timeout=WATCHDOG)[-1:] == ["ready"]


def test_pool_imap_is_lazy(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    pulled = itertools.count()

    def endless() -> Iterator[int]:
        for i in itertools.count():
            next(pulled)
            yield i

    with gilfree.Pool(2, backend=backend) as pool:
        out = []
        for value in pool.imap(helpers.square, endless()):
            out.append(value)
            if len(out) == 100:
                break
    assert out == [i * i for i in range(100)]
    assert next(pulled) < 100 + 200_000  # bounded look-ahead, not the endless source
    # The pool shut down while its collector may still have been refilling the abandoned
    # imap: nothing to report (it once printed the refused submit's traceback).
    assert "Traceback" not in capsys.readouterr().err


def test_pool_task_output_reaches_the_callers_streams(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        assert pool.submit(chatty, 1).result(timeout=WATCHDOG) == 1
        assert list(pool.map(chatty, [2, 3])) == [2, 3]
    out, err = capsys.readouterr()
    # Whole lines, except where a line may be torn (TORN_LINES): there every write arrives.
    torn = backend in TORN_LINES
    end = "" if torn else "\n"
    for x in (1, 2, 3):
        assert f"hello from task {x}{end}" in out
        assert f"warning from task {x}{end}" in err
    if torn:  # and each newline, once
        assert out.count("\n") == 3 and err.count("\n") == 3


_DEATHS = {
    "segv": f"was killed by signal {int(signal.SIGSEGV)}",
    "exit3": "exited with code 3",
    "kill": f"was killed by signal {int(signal.SIGKILL)}",
}


@pytest.mark.parametrize("how", ["segv", "exit3", "kill"])
def test_pool_crash_fails_only_that_task(backend: str, how: str) -> None:
    skip_if_cannot(backend, "crash isolation")
    if backend == "dask" and how != "kill":
        pytest.skip("one way of dying is enough on dask: the nanny sees each the same way")
    with gilfree.Pool(2, backend=backend) as pool:
        good = [pool.submit(helpers.square, i) for i in range(10)]
        bad = pool.submit(helpers.die, how)
        more = [pool.submit(helpers.square, i) for i in range(10, 20)]
        with pytest.raises(gilfree.WorkerCrashedError) as info:
            bad.result(timeout=WATCHDOG)
        if backend == "process":  # the engine's one wording of a death, as Worker.join's
            assert info.value.pid is not None
            assert str(info.value).startswith(f"worker process {info.value.pid} {_DEATHS[how]}")
        assert [f.result(timeout=WATCHDOG) for f in good + more] == [i * i for i in range(20)]
        assert pool.submit(helpers.square, 5).result(timeout=WATCHDOG) == 25
        assert list(pool.map(helpers.square, range(8))) == [i * i for i in range(8)]


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
    skip_if_cannot(in_backend, "shared primitives")
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


def chatty(x: int) -> int:
    print(f"hello from task {x}")
    print(f"warning from task {x}", file=sys.stderr)
    return x


# -- what only the thread backend does ----------------------------------------------------------


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


# What backend="auto" gives on this interpreter: threads only where the GIL is off.
AUTO = "process" if getattr(sys, "_is_gil_enabled", lambda: True)() else "thread"


def _pool_backend(**kwargs: Any) -> str:
    with gilfree.Pool(1, **kwargs) as pool:
        return (
            "thread"
            if pool.submit(os.getpid).result(timeout=WATCHDOG) == os.getpid()
            else "process"
        )


def test_config_block_sets_the_default_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    assert _backends.choose() == AUTO
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
    assert _backends.choose() == AUTO


def test_config_is_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    seen: list[str] = []
    with gilfree.config(backend="thread"):
        t = threading.Thread(target=lambda: seen.append(_backends.choose()))
        t.start()
        t.join()
        assert _backends.choose() == "thread"
    assert seen == [AUTO]


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
