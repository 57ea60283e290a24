"""gilfree.Worker on the process backend: parity with threading.Thread in what only processes
show (exit codes and signals, pickling errors, old-style super). The contract every backend
keeps (return value, attributes, exceptions, join timeouts, output) is in
tests/test_backends.py."""

from __future__ import annotations

import pickle
import signal

import pytest

import gilfree
from gilfree import _runtime

import helpers
from conftest import Rendezvous


def test_old_style_super_init() -> None:
    w = helpers.OldStyle(4)
    w.start()
    assert w.join() == 40


def test_missing_super_init_is_a_clear_error() -> None:
    class NoInit(gilfree.Worker):
        def __init__(self) -> None:
            pass

    with pytest.raises(RuntimeError, match=r"__init__\(\) not called"):
        NoInit().start()


def test_exception_that_cannot_be_pickled_becomes_runtime_error() -> None:
    w = gilfree.Worker(target=helpers.raise_unpicklable)
    w.start()
    with pytest.raises(RuntimeError, match="UnpicklableError"):
        w.join()


def test_unpicklable_attribute_fails_at_start_naming_it() -> None:
    w = helpers.Unpicklable()
    with pytest.raises(TypeError, match="attribute 'handle'"):
        w.start()
    assert not w.is_alive() and w.native_id is None
    # It was never started, so it can be fixed and started.
    del w.handle
    w.start()
    assert w.join() is None


def test_unpicklable_argument_fails_at_start_naming_it() -> None:
    import threading

    w = gilfree.Worker(target=helpers.add, args=(1, threading.Lock()))
    with pytest.raises(TypeError, match=r"argument 1 .*lock"):
        w.start()
    w2 = gilfree.Worker(target=helpers.add, args=(1, 2), kwargs={"scale": threading.Lock()})
    with pytest.raises(TypeError, match="keyword argument 'scale'"):
        w2.start()


def test_unpicklable_result_raises_at_join() -> None:
    w = helpers.ReturnsLock()
    w.start()
    with pytest.raises(TypeError, match="cannot be pickled"):
        w.join()


def test_join_timeout_returns_none_and_worker_stays_alive() -> None:
    w = gilfree.Worker(target=helpers.block_forever)
    w.start()
    try:
        assert w.join(timeout=0.05) is None
        assert w.is_alive()
        with pytest.raises(TimeoutError):
            w.result(timeout=0.01)
    finally:
        w.terminate()
    with pytest.raises(gilfree.WorkerCrashedError) as info:
        w.join()
    assert info.value.signal == signal.SIGKILL
    assert not w.is_alive()


@pytest.mark.parametrize(
    ("how", "exitcode", "sig"),
    [("exit3", 3, None), ("segv", None, signal.SIGSEGV), ("kill", None, signal.SIGKILL)],
)
def test_worker_death_raises_crashed_error(how: str, exitcode: int | None, sig: int | None) -> None:
    w = gilfree.Worker(target=helpers.die, args=(how,))
    other = gilfree.Worker(target=helpers.add, args=(1, 1))
    w.start()
    other.start()
    with pytest.raises(gilfree.WorkerCrashedError) as info:
        w.join()
    assert isinstance(info.value, RuntimeError)
    assert info.value.exitcode == exitcode
    assert info.value.signal == sig
    assert info.value.pid == w.native_id
    how = f"exited with code {exitcode}" if sig is None else f"was killed by signal {int(sig)}"
    assert str(info.value).endswith(f": worker process {w.native_id} {how}")
    # The error pickles (it may cross processes later), other Workers are unaffected, and the
    # next Worker starts fine.
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.exitcode, again.signal, again.pid) == (exitcode, sig, w.native_id)
    assert other.join() == 2
    nxt = gilfree.Worker(target=helpers.add, args=(2, 2))
    nxt.start()
    assert nxt.join() == 4


def test_every_started_worker_runs_at_once() -> None:
    # More Workers than warm processes: all must run at the same time (a queue would
    # deadlock here, and the watchdog would fail the test).
    n = _runtime.default_workers() + 2
    rv = Rendezvous(n)
    workers = [gilfree.Worker(target=helpers.rendezvous_wait, args=(rv.port,)) for _ in range(n)]
    for w in workers:
        w.start()
    rv.release_all()
    pids = [w.join() for w in workers]
    assert len(set(pids)) == n


def test_daemon_and_name_properties_follow_threading() -> None:
    w = gilfree.Worker(target=helpers.getpid, name="custom", daemon=True)
    assert w.name == "custom" and w.daemon
    w.name = "renamed"
    with pytest.deprecated_call():
        assert w.getName() == "renamed"
    with pytest.deprecated_call():
        w.setDaemon(False)
    with pytest.deprecated_call():
        assert w.isDaemon() is False
    with pytest.deprecated_call():
        w.setName("again")
    assert "again" in repr(w)
    w.start()
    with pytest.raises(RuntimeError, match="cannot set daemon status of active thread"):
        w.daemon = True
    w.join()
    assert "stopped" in repr(w)


def test_terminate_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        gilfree.Worker(target=helpers.getpid).terminate()


def test_join_from_several_threads_gets_one_outcome() -> None:
    import threading

    w = helpers.Squares(list(range(100)))
    w.start()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(w.join())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [sum(x * x for x in range(100))] * 4


def test_large_payload_round_trip() -> None:
    data = list(range(2_000_000))  # ~10 MB pickled: larger than the 1 MiB ring
    w = helpers.Squares(data)
    w.start()
    assert w.join() == sum(x * x for x in data)
    assert w.seen == data
