"""gilfree.Worker: parity with threading.Thread, and what threads cannot give."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal

import pytest

import gilfree
from gilfree import _runtime

import helpers
from conftest import Rendezvous


def test_subclass_run_returns_value_and_state_comes_back() -> None:
    w = helpers.Squares([1, 2, 3])
    w.start()
    assert w.join() == 14
    assert w.total == 14
    assert w.seen == [1, 2, 3]


def test_target_args_kwargs() -> None:
    w = gilfree.Worker(target=helpers.add, args=(2, 3), kwargs={"scale": 10})
    w.start()
    assert w.join() == 50
    assert "add" in w.name


def test_lambda_and_closure_targets() -> None:
    base = 7
    w = gilfree.Worker(target=lambda x: x + base, args=(1,))
    w.start()
    assert w.join() == 8


def test_old_style_super_init() -> None:
    w = helpers.OldStyle(4)
    w.start()
    assert w.join() == 40


def test_runs_in_another_process() -> None:
    w = gilfree.Worker(target=helpers.getpid)
    assert w.native_id is None and w.ident is None
    w.start()
    pid = w.join()
    assert pid != os.getpid()
    assert pid == w.native_id == w.ident


def test_start_twice_raises_like_threading() -> None:
    w = gilfree.Worker(target=helpers.getpid)
    w.start()
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        w.start()
    w.join()


def test_join_before_start_raises_like_threading() -> None:
    with pytest.raises(RuntimeError, match="before it is started"):
        gilfree.Worker(target=helpers.getpid).join()


def test_missing_super_init_is_a_clear_error() -> None:
    class NoInit(gilfree.Worker):
        def __init__(self) -> None:
            pass

    with pytest.raises(RuntimeError, match=r"__init__\(\) not called"):
        NoInit().start()


def test_exception_in_run_is_reraised_with_remote_traceback() -> None:
    w = helpers.Failing()
    w.start()
    with pytest.raises(KeyError, match="missing-key-in-worker") as info:
        w.join()
    cause = info.value.__cause__
    assert isinstance(cause, gilfree.RemoteTraceback)
    assert "helpers.py" in str(cause) and "in run" in str(cause)
    # State set before the exception still comes back; a second join re-raises.
    assert w.before == "set"
    with pytest.raises(KeyError):
        w.join()


def test_exception_that_cannot_be_pickled_becomes_runtime_error() -> None:
    w = gilfree.Worker(target=helpers.raise_unpicklable)
    w.start()
    with pytest.raises(RuntimeError, match="UnpicklableError"):
        w.join()


def test_attributes_changed_in_run_are_copied_back() -> None:
    w = helpers.Mutator()
    w.start()
    with pytest.warns(RuntimeWarning, match="'lock'"):
        w.join()
    assert w.items == [1, 2, 3]
    assert w.new == {"a": 1}
    assert not hasattr(w, "doomed")
    assert not hasattr(w, "lock")
    assert w.untouched == "same"


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


def test_stdout_and_stderr_reach_sys_streams_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    workers = [helpers.Printer(tag, 200) for tag in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for tag in ("a", "b"):
        mine = [line for line in lines if line.startswith(tag + " ")]
        assert mine == [f"{tag} {i}" for i in range(200)]
    assert len(lines) == 400  # every line whole: nothing torn or merged
    assert sorted(captured.err.splitlines()) == ["a err", "b err"]


def test_redirect_stdout_sees_worker_output() -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        w = helpers.Printer("r", 3)
        w.start()
        w.join()
    assert buf.getvalue().splitlines() == ["r 0", "r 1", "r 2"]


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
