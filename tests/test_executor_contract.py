"""gilfree.Pool against the documented ``concurrent.futures`` Future/Executor protocol.

States (PENDING → RUNNING → done), ``running()``/``done()``/``cancelled()``, done callbacks,
``wait`` in its three modes, ``as_completed``, ``shutdown(wait, cancel_futures)``: these take
the ``backend`` fixture and run on every backend. ``map`` timeouts, and what gilfree adds
on processes: ``Pool.cancel`` of a running task, results that fail to
unpickle, and at-most-once runs when workers are killed.

No test sleeps to synchronise: tasks connect to a socket the test holds (``Gate``) when they
run and block until the test answers; "every start reported so far has been applied" is
learnt by waiting for a later task's result (the collector applies starts and completions in
the order the scheduler records them).
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import os
import pickle
import socket
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

import gilfree

import helpers
from conftest import WATCHDOG


class Gate:
    """Tasks running ``helpers.rendezvous_wait(gate.port)`` connect when they run and block
    until the test lets them go."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WATCHDOG)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []

    def wait_running(self, n: int = 1) -> None:
        for _ in range(n):
            self.conns.append(self.server.accept()[0])

    def release(self) -> None:
        """Lets every task seen running so far finish."""
        for c in self.conns:
            c.sendall(b"go")
            c.close()
        self.conns.clear()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.server.close()


@pytest.fixture
def gate() -> Any:
    g = Gate()
    yield g
    g.close()


@pytest.fixture
def no_critical_log(caplog: pytest.LogCaptureFixture) -> Any:
    """The stdlib logs 'Future ... in unexpected state' at CRITICAL when a Future's protocol
    is misused; none may appear."""
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        yield
    assert not [r for r in caplog.records if r.name == "concurrent.futures"]


def sync(pool: gilfree.Pool) -> None:
    """Returns once every task start the pool reported before this call has been applied to
    its Future (needs a free worker)."""
    assert pool.submit(helpers.square, 3).result(timeout=WATCHDOG) == 9


def block_all(pool: gilfree.Pool, gate: Gate) -> list[cf.Future[Any]]:
    """Occupies every worker of the pool with a gated task, once all run. (A pool on the
    session's Dask cluster has that cluster's workers, whatever size was asked.)"""
    blockers = [pool.submit(helpers.rendezvous_wait, gate.port) for _ in range(pool.max_workers)]
    gate.wait_running(len(blockers))
    return blockers


class Calls:
    """A done callback that counts its calls."""

    def __init__(self) -> None:
        self.futures: list[cf.Future[Any]] = []

    def __call__(self, f: cf.Future[Any]) -> None:
        self.futures.append(f)


# -- helpers that run in the workers (importable by name: tests/ is on the workers' path) ---


def _explode() -> None:
    raise ValueError("boom while unpickling")


class ExplodesOnLoad:
    """Pickles fine in the worker; unpickling it in the parent raises."""

    def __reduce__(self) -> Any:
        return (_explode, ())


class ExitsOnLoad:
    """Unpickling it in the parent calls ``sys.exit(3)``."""

    def __reduce__(self) -> Any:
        return (sys.exit, (3,))


def explodes_on_load(_: Any = None) -> ExplodesOnLoad:
    return ExplodesOnLoad()


def exits_on_load(_: Any = None) -> ExitsOnLoad:
    return ExitsOnLoad()


class Big(bytearray):
    """A large result that supports weak references."""


def big(i: int) -> Big:
    return Big(4_000_000 + i)


def block_or_square(x: int) -> int:
    if x < 0:
        threading.Event().wait()
    return x * x


def record(path: str, x: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    return x


def record_then_block_if(path: str, x: int, block: bool) -> int:
    record(path, x)
    if block:
        threading.Event().wait()
    return x


def wait_then_record(port: int, path: str, x: int) -> int:
    helpers.rendezvous_wait(port)
    return record(path, x)


def gate_first_time(port: int, path: str) -> None:
    """An initializer that waits at the gate in the first worker only."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    helpers.rendezvous_wait(port)


def runs(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


# -- states ---------------------------------------------------------------------------------


def test_states_pending_running_finished(backend: str, gate: Gate, no_critical_log: None) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        first = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        second = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        # Both workers are busy: this one waits in the queue.
        queued = pool.submit(helpers.square, 4)
        assert not queued.running() and not queued.done() and not queued.cancelled()
        gate.release()
        assert first.result(timeout=WATCHDOG) > 0 and second.result(timeout=WATCHDOG) > 0
        assert queued.result(timeout=WATCHDOG) == 16
        blocker = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        sync(pool)
        assert blocker.running(), "a task running in a worker is RUNNING"
        assert not blocker.done() and not blocker.cancelled()
        gate.release()
        assert blocker.result(timeout=WATCHDOG) > 0
        assert not blocker.running() and blocker.done() and not blocker.cancelled()


def test_done_callback_fires_once_for_a_result_and_at_once_when_added_later(
    backend: str, no_critical_log: None
) -> None:
    calls = Calls()
    with gilfree.Pool(1, backend=backend) as pool:
        f = pool.submit(helpers.square, 5)
        f.add_done_callback(calls)
        assert f.result(timeout=WATCHDOG) == 25
        late = Calls()
        f.add_done_callback(late)
        assert late.futures == [f]
    assert calls.futures == [f]


# -- cancellation ---------------------------------------------------------------------------


def test_cancel_of_a_queued_future_wakes_wait_and_as_completed(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        blocker, *_ = block_all(pool, gate)
        queued = [pool.submit(helpers.square, i) for i in range(4)]
        calls = Calls()
        queued[-1].add_done_callback(calls)
        assert queued[-1].cancel()
        assert queued[-1].cancelled() and queued[-1].done() and not queued[-1].running()
        assert calls.futures == [queued[-1]], "the callback fired on cancel"
        # A waiter must see the cancel at once, not at its timeout.
        done, not_done = cf.wait(
            [blocker, queued[-1]], timeout=WATCHDOG, return_when="FIRST_COMPLETED"
        )
        assert done == {queued[-1]} and not_done == {blocker}
        assert next(cf.as_completed([queued[-1]], timeout=WATCHDOG)) is queued[-1]
        # Again, and through the pool: no error, the same answer, no second callback.
        assert queued[-1].cancel()
        assert pool.cancel(queued[-1])
        assert calls.futures == [queued[-1]]
        with pytest.raises(cf.CancelledError):
            queued[-1].result(timeout=0)
        with pytest.raises(cf.CancelledError):
            queued[-1].exception(timeout=0)
        gate.release()
        assert [f.result(timeout=WATCHDOG) for f in queued[:-1]] == [0, 1, 4]


def test_cancel_of_a_running_future_is_refused_and_pool_cancel_stops_it(
    gate: Gate, no_critical_log: None
) -> None:
    with gilfree.Pool(2) as pool:
        running = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        calls = Calls()
        running.add_done_callback(calls)
        assert not running.cancel(), "a running task refuses Future.cancel, as in the stdlib"
        assert running.running()
        assert not running.cancel()
        # Pool.cancel kills it; a RUNNING future cannot become CANCELLED: it fails instead.
        assert pool.cancel(running)
        assert running.done() and not running.running() and not running.cancelled()
        assert isinstance(running.exception(timeout=0), cf.CancelledError)
        with pytest.raises(cf.CancelledError):
            running.result(timeout=0)
        done, _ = cf.wait([running], timeout=WATCHDOG)
        assert done == {running}
        assert list(cf.as_completed([running], timeout=WATCHDOG)) == [running]
        # Twice, and Future.cancel after it: no error, nothing fires again.
        assert not pool.cancel(running)
        assert not running.cancel()
        assert calls.futures == [running]
        assert pool.submit(helpers.square, 6).result(timeout=WATCHDOG) == 36


def test_a_task_pipelined_behind_a_running_one(tmp_path: Path) -> None:
    """Handed to a worker behind the running task: PENDING, not cancellable by
    Future.cancel (only a kill could stop it), stopped by Pool.cancel without harming the
    task ahead."""
    init_gate, gate = Gate(), Gate()
    pool = gilfree.Pool(
        1, initializer=gate_first_time, initargs=(init_gate.port, str(tmp_path / "init"))
    )
    try:
        ahead = pool.submit(helpers.rendezvous_wait, gate.port)
        behind = pool.submit(helpers.square, 5)
        init_gate.wait_running()
        init_gate.release()  # the slot's first fill takes both
        gate.wait_running()
        assert ahead.running()
        assert pool._tp.queued() == 0, "both are in the worker's pipeline"
        assert not behind.running() and not behind.done()
        assert not behind.cancel()
        assert not behind.running() and not behind.cancelled()
        assert pool.cancel(behind)
        assert behind.cancelled()
        gate.release()
        assert ahead.result(timeout=WATCHDOG) > 0, "the task ahead is unharmed"
        assert pool.submit(helpers.square, 6).result(timeout=WATCHDOG) == 36
    finally:
        pool.terminate()
        init_gate.close()
        gate.close()


def test_pool_cancel_of_a_queued_future_cancels_it(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        block_all(pool, gate)
        queued = [pool.submit(helpers.square, i) for i in range(4)]
        assert pool.cancel(queued[-1])
        assert queued[-1].cancelled()
        assert not queued[-1].cancel() or queued[-1].cancelled()
        assert next(cf.as_completed([queued[-1]], timeout=WATCHDOG)) is queued[-1]
        gate.release()


def test_as_completed_yields_cancelled_futures_too(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    with gilfree.Pool(1, backend=backend) as pool:
        blockers = block_all(pool, gate)
        queued = [pool.submit(helpers.square, i) for i in range(5)]
        cancelled = {f for f in queued[2:] if f.cancel()}
        assert cancelled, "tasks behind a blocker are still queued"
        seen = []
        for f in cf.as_completed([*blockers, *queued], timeout=WATCHDOG):
            seen.append(f)
            if len(seen) == len(cancelled):
                assert set(seen) == cancelled, "cancelled ones come first, while others wait"
                gate.release()
        assert set(seen) == {*blockers, *queued}


# -- wait -----------------------------------------------------------------------------------


def test_wait_first_exception_all_completed(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    with gilfree.Pool(2, backend=backend) as pool:
        blocker = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        failing = pool.submit(helpers.die, "plain")
        ok = pool.submit(helpers.square, 2)
        done, not_done = cf.wait(
            [blocker, failing, ok], timeout=WATCHDOG, return_when=cf.FIRST_EXCEPTION
        )
        assert failing in done and blocker in not_done
        assert isinstance(failing.exception(), ValueError)
        queued = pool.submit(helpers.square, 3)
        other = pool.submit(helpers.rendezvous_wait, gate.port)
        gate.wait_running()
        # Both workers are busy now: `late` is queued, and cancelled.
        late = pool.submit(helpers.square, 9)
        assert late.cancel()
        gate.release()
        done, not_done = cf.wait(
            [blocker, failing, ok, queued, other, late],
            timeout=WATCHDOG,
            return_when=cf.ALL_COMPLETED,
        )
        assert not not_done and late in done and late.cancelled()
        # FIRST_EXCEPTION does not count a cancel as an exception; ALL_COMPLETED is reached.
        done, not_done = cf.wait([late, ok], timeout=WATCHDOG, return_when=cf.FIRST_EXCEPTION)
        assert not not_done


# -- shutdown -------------------------------------------------------------------------------


def test_shutdown_cancel_futures_notifies_waiters(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    pool = gilfree.Pool(1, backend=backend)
    try:
        blocker, *others = block_all(pool, gate)
        queued = [pool.submit(helpers.square, i) for i in range(6)]
        waiter_done: list[set[cf.Future[Any]]] = []
        waiting = threading.Event()

        def waiter() -> None:
            waiting.set()
            done, _ = cf.wait(queued, timeout=WATCHDOG, return_when=cf.ALL_COMPLETED)
            waiter_done.append(done)

        t = threading.Thread(target=waiter)
        t.start()
        waiting.wait(WATCHDOG)
        pool.shutdown(wait=False, cancel_futures=True)
        t.join(WATCHDOG)
        assert waiter_done == [set(queued)], "the waiter saw every cancelled future"
        cancelled = [f for f in queued if f.cancelled()]
        assert cancelled, "queued futures are cancelled by shutdown(cancel_futures=True)"
        assert all(f.done() for f in queued)
        assert not blocker.done(), "a running task carries on"
        gate.release()
        assert all(f.result(timeout=WATCHDOG) > 0 for f in [blocker, *others])
        pool.shutdown(wait=True)
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(helpers.square, 1)
    finally:
        pool.terminate()


def test_shutdown_wait_runs_everything_queued(
    backend: str, gate: Gate, no_critical_log: None
) -> None:
    pool = gilfree.Pool(1, backend=backend)
    blockers = block_all(pool, gate)
    queued = [pool.submit(helpers.square, i) for i in range(5)]
    pool.shutdown(wait=False)
    gate.release()
    pool.shutdown(wait=True)
    assert all(f.done() for f in blockers)
    assert [f.result(timeout=0) for f in queued] == [0, 1, 4, 9, 16]


# -- map ------------------------------------------------------------------------------------


def test_map_timeout_is_per_task_and_raises_at_its_item() -> None:
    with gilfree.Pool(2) as pool:
        # Loads this module in the workers first: a cold import must not count as a timeout.
        assert list(pool.map(block_or_square, range(8), chunksize=1)) == [i * i for i in range(8)]
        it = pool.map(block_or_square, [1, 2, -1, 3], timeout=5.0)
        assert next(it) == 1
        assert next(it) == 4
        with pytest.raises(TimeoutError):
            next(it)


def test_map_iterator_keeps_no_reference_to_what_it_yielded() -> None:
    with gilfree.Pool(2) as pool:
        it = pool.map(big, range(6), chunksize=3)
        first = next(it)
        ref = weakref.ref(first)
        del first
        gc.collect()
        assert ref() is None, "the iterator holds a result it has already yielded"
        assert [len(b) for b in it] == [4_000_000 + i for i in range(1, 6)]


# -- results that fail to unpickle ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "cause"), [(explodes_on_load, ValueError), (exits_on_load, SystemExit)]
)
def test_a_result_that_fails_to_unpickle_fails_its_own_future(
    fn: Any, cause: type[BaseException], capsys: pytest.CaptureFixture[str]
) -> None:
    with gilfree.Pool(1) as pool:
        f = pool.submit(fn)
        exc = f.exception(timeout=WATCHDOG)
        assert isinstance(exc, pickle.UnpicklingError)
        assert isinstance(exc.__cause__, cause)
        assert pool._collector.is_alive()
        assert pool.submit(helpers.square, 7).result(timeout=WATCHDOG) == 49
        it = pool.map(fn, range(3), chunksize=3)
        with pytest.raises(pickle.UnpicklingError):
            next(it)
        assert list(pool.map(helpers.square, range(4))) == [0, 1, 4, 9]
    assert "Traceback" not in capsys.readouterr().err


# -- at most once ---------------------------------------------------------------------------


def test_timeouts_never_run_a_task_twice(tmp_path: Path) -> None:
    """Tasks pipelined behind ones killed by their timeout run once each, or fail."""
    path = tmp_path / "runs"
    with gilfree.Pool(2) as pool:
        futures = [
            pool.submit(record_then_block_if, str(path), i, i % 4 == 0, timeout=0.5)
            for i in range(16)
        ]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=WATCHDOG))
            except (TimeoutError, gilfree.WorkerCrashedError) as exc:
                outcomes.append(exc)
    seen = runs(path)
    assert len(seen) == len(set(seen)), f"a task ran twice: {sorted(seen)}"
    for i, out in enumerate(outcomes):
        if i % 4 == 0:
            assert isinstance(out, TimeoutError)
        elif out == i:
            assert i in seen


def test_pool_cancel_never_runs_the_next_task_twice(tmp_path: Path) -> None:
    """Pool.cancel of a task that ends as the kill lands: the task pipelined behind it, which
    may have begun, fails or runs once; it is never run again."""
    path = tmp_path / "runs"
    for round_ in range(5):
        init_gate, gate = Gate(), Gate()
        # The first worker's initializer holds the slot until both tasks are queued, so that
        # its first fill pipelines them onto one worker.
        pool = gilfree.Pool(
            1,
            initializer=gate_first_time,
            initargs=(init_gate.port, str(tmp_path / f"init-{round_}")),
        )
        try:
            ahead = pool.submit(wait_then_record, gate.port, str(path), 2 * round_)
            behind = pool.submit(record, str(path), 2 * round_ + 1)
            init_gate.wait_running()
            init_gate.release()
            gate.wait_running()
            gate.release()
            pool.cancel(ahead)
            try:
                assert behind.result(timeout=WATCHDOG) == 2 * round_ + 1
            except gilfree.WorkerCrashedError:
                pass
        finally:
            pool.terminate()
            init_gate.close()
            gate.close()
    seen = runs(path)
    assert len(seen) == len(set(seen)), f"a task ran twice: {sorted(seen)}"
