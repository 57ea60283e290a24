"""gilfree.Pool and gilfree.map on the process backend: what the engine adds (per-task
timeouts that kill, pipelining, crashes mid-chunk, initializers per process). The contract every
backend keeps (results, exceptions, as_completed, cancel, crashes failing one task...) is in
tests/test_backends.py."""

from __future__ import annotations

import concurrent.futures as cf
import fractions
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gilfree
from gilfree import _runtime

import helpers
from conftest import WATCHDOG, Rendezvous, crash_mid_map, poll_until, run_code, wait_gone


@pytest.fixture
def pool() -> gilfree.Pool:
    with gilfree.Pool(2) as p:
        yield p


class Listener:
    """Learns, without sleeping, that N tasks are running: each connects once it runs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WATCHDOG)
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []

    def wait_running(self, n: int = 1) -> list[int]:
        """Waits until ``n`` more tasks run; returns their worker pids."""
        pids = []
        for _ in range(n):
            conn = self.server.accept()[0]
            conn.settimeout(WATCHDOG)
            self.conns.append(conn)
            pids.append(int(conn.makefile().readline()))
        return pids

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.server.close()


@pytest.fixture
def listener() -> Listener:
    lst = Listener()
    yield lst
    lst.close()


def test_map_keeps_order_and_takes_several_iterables(pool: gilfree.Pool) -> None:
    assert list(pool.map(helpers.add, range(50), range(50))) == [2 * i for i in range(50)]
    assert list(pool.map(helpers.square, range(1000), chunksize=7)) == [i * i for i in range(1000)]


def test_map_takes_its_items_when_called() -> None:
    """As with ``Executor.map``, the items are taken when ``map`` is called: a list changed
    afterwards (while chunks are still being cut) does not change the results. A range or a
    tuple, immutable, is read as it is, and gives the same results as a list."""
    n = 200_000
    expected = [i * i for i in range(n)]
    with gilfree.Pool(2) as p:
        items = list(range(n))
        it = p.map(helpers.square, items)
        items.clear()
        items.extend([-1] * n)
        assert list(it) == expected
        assert list(p.map(helpers.square, range(n))) == expected
        assert list(p.map(helpers.square, tuple(range(n)))) == expected
        assert list(p.map(helpers.square, range(n - 1, -1, -1))) == expected[::-1]


class _StrSub(str):
    """A subclass of a plain type: not plain itself."""


class _CountingTaskPool:
    """Stands in for a Pool's engine TaskPool: counts the engine calls that queue tasks."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[int] = []  # tasks queued by each call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def submit(self, *args: Any) -> None:
        self.calls.append(1)
        self.real.submit(*args)

    def submit_many(self, tasks: list[Any], timeout: float | None) -> None:
        self.calls.append(len(tasks))
        self.real.submit_many(tasks, timeout)


def test_map_with_chunksize_1_queues_its_first_window_in_one_engine_call(
    pool: gilfree.Pool,
) -> None:
    counting = _CountingTaskPool(pool._tp)
    pool._tp = counting  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
    n = 300
    assert list(pool.map(helpers.square, range(n), chunksize=1)) == [i * i for i in range(n)]
    assert sum(counting.calls) == n, "every item queued once, as its own task"
    # The whole first window (many chunks per worker) goes in at once; later refills take
    # whatever finished in each batch of completions.
    assert counting.calls[0] > pool.max_workers, counting.calls


_PLAIN_ITEMS = [0, -1, 2**70, 1.5, float("inf"), "", "é" * 3, b"", b"\x00" * 300, True, None, 2j]


@pytest.mark.parametrize(
    ("items", "plain"),
    [
        (_PLAIN_ITEMS, True),
        ([7], True),
        # Not all plain (a subclass, containers, a class of its own): _serialize.dumps.
        ([fractions.Fraction(1, 3), (1, 2), [3], 4, "x"], False),
        ([1, 2, 3, helpers.Squares], False),
        ([_StrSub("s")], False),
    ],
)
def test_a_chunk_of_plain_items_pickles_as_serialize_would(
    pool: gilfree.Pool, items: list[Any], plain: bool
) -> None:
    from gilfree import _dispatch, _protocol, _serialize

    results = _dispatch._Results(
        pool,
        repr,
        iter(()),
        length=0,
        ordered=True,
        chunksize=None,
        timeout=None,
        eager=True,
        single=True,
    )
    # A one-argument map's items travel bare (fn(item)), not as 1-tuples.
    expected = _serialize.dumps((results.fn_blob, _protocol.CALL_ONE, items))
    assert results._pickle_chunk(0, items) == expected
    assert results._pickle_plain(items) == (expected if plain else None)
    for chunksize in (1, 3):
        assert list(pool.map(repr, items, chunksize=chunksize)) == [repr(i) for i in items]


def test_map_100k_tiny_tasks() -> None:
    with gilfree.Pool(2) as p:
        out = list(p.map(helpers.square, range(100_000)))
    assert out == [i * i for i in range(100_000)]


def test_unpicklable_argument_fails_at_submit(pool: gilfree.Pool) -> None:
    with pytest.raises(TypeError, match=r"argument 1 .*lock"):
        pool.submit(helpers.add, 1, threading.Lock())
    with pytest.raises(TypeError, match="keyword argument 'scale'"):
        pool.submit(helpers.add, 1, 2, scale=threading.Lock())
    # map: the bad item fails when iteration reaches it; the others run.
    items = [1, 2, threading.Lock(), 4]
    it = pool.map(helpers.square, items)
    assert [next(it), next(it)] == [1, 4]
    with pytest.raises(TypeError, match="cannot be pickled"):
        next(it)


def test_unpicklable_result_fails_its_future_and_worker_stays_usable(pool: gilfree.Pool) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.submit(threading.Lock).result()
    assert pool.submit(helpers.square, 4).result() == 16


def test_crash_mid_chunk_runs_nothing_twice(pool: gilfree.Pool, tmp_path: Path) -> None:
    runs = crash_mid_map(pool, tmp_path / "runs.txt", 60, 25, chunksize=10)
    counts = {x: runs.count(x) for x in set(runs)}
    assert all(c == 1 for c in counts.values()), counts


def test_task_timeout_kills_and_replaces_the_worker(pool: gilfree.Pool, listener: Listener) -> None:
    slow = pool.submit(helpers.connect_and_block, listener.port, timeout=0.2)
    (victim,) = listener.wait_running()
    fine = [pool.submit(helpers.square, i) for i in range(5)]
    with pytest.raises(TimeoutError):
        slow.result(timeout=WATCHDOG)
    assert [f.result(timeout=WATCHDOG) for f in fine] == [i * i for i in range(5)]
    # The worker that ran it is gone, and the tasks after it run on live processes.
    assert wait_gone([victim]) == []
    pids = {pool.submit(helpers.getpid).result(timeout=WATCHDOG) for _ in range(20)}
    assert victim not in pids


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_task_timeout_fails_at_the_call(pool: gilfree.Pool, bad: float) -> None:
    # One rule for every task limit (_sync_args.task_limit), checked before anything runs,
    # even when no task would be submitted yet.
    with pytest.raises(ValueError, match=r"timeout|NaN"):
        pool.submit(helpers.square, 2, timeout=bad)
    with pytest.raises(ValueError, match=r"timeout|NaN"):
        pool.map(helpers.square, [], timeout=bad)
    with pytest.raises(ValueError, match=r"timeout|NaN"):
        pool.imap(helpers.square, iter([]), timeout=bad)
    assert pool.submit(helpers.square, 3).result(timeout=WATCHDOG) == 9


def test_task_outcome_codes_come_from_the_engine() -> None:
    from gilfree import _dispatch, _engine

    ends = [_engine.END_DONE, _engine.END_CRASHED, _engine.END_TIMED_OUT]
    ends += [_engine.END_CANCELLED, _engine.END_BROKEN]
    assert len(set(ends)) == len(ends)
    assert _dispatch._CRASHED == _engine.END_CRASHED
    assert _dispatch._BROKEN == _engine.END_BROKEN
    cancels = [_engine.CANCEL_NOT_FOUND, _engine.CANCEL_CANCELLED]
    cancels += [_engine.CANCEL_RUNNING, _engine.CANCEL_KILLED]
    assert len(set(cancels)) == len(cancels)
    assert _dispatch._KILLED == _engine.CANCEL_KILLED


def test_map_timeout_is_per_task(pool: gilfree.Pool) -> None:
    it = pool.map(helpers.spin_or_block, [10, 10, -1, 10], timeout=0.3)
    assert [next(it), next(it)] == [helpers.spin(10)] * 2
    with pytest.raises(TimeoutError):
        next(it)


def test_cancel_pending_future_and_pool_cancel_running(
    pool: gilfree.Pool, listener: Listener
) -> None:
    running = [pool.submit(helpers.connect_and_block, listener.port) for _ in range(2)]
    listener.wait_running(2)
    # Fill the pipeline, then one more that is surely still queued.
    extra = [pool.submit(helpers.square, i) for i in range(8)]
    assert extra[-1].cancel()
    assert extra[-1].cancelled()
    # A running task refuses Future.cancel (as in the stdlib) but Pool.cancel kills it; its
    # Future cannot move RUNNING → CANCELLED, so it fails with CancelledError.
    assert not running[0].cancel()
    assert pool.cancel(running[0])
    assert running[0].done() and not running[0].cancelled()
    with pytest.raises(cf.CancelledError):
        running[0].result(timeout=0)
    assert pool.cancel(running[1])
    assert [f.result(timeout=WATCHDOG) for f in extra[:-1]] == [i * i for i in range(7)]


def test_submit_after_shutdown_raises_and_cancel_futures(listener: Listener) -> None:
    p = gilfree.Pool(1)
    blocker = p.submit(helpers.connect_and_block, listener.port)
    listener.wait_running()
    queued = [p.submit(helpers.square, i) for i in range(6)]
    p.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        p.submit(helpers.square, 1)
    assert queued[-1].cancelled()
    assert p.cancel(blocker)
    p.shutdown(wait=True)


def test_initializer_runs_in_each_worker() -> None:
    with gilfree.Pool(2, initializer=helpers.set_marker, initargs=("ready",)) as p:
        assert all(r == ["ready"] for r in p.map(lambda _: helpers.get_marker(), range(8)))


def test_failing_initializer_breaks_the_pool_without_respawn_loop() -> None:
    before = len(_runtime.worker_pids())
    p = gilfree.Pool(2, initializer=helpers.fail_init)
    errors = []
    for i in range(4):
        # Once the pool knows it is broken, submit itself raises (as the stdlib's does);
        # before that, the future fails.
        try:
            fut = p.submit(helpers.square, i)
        except gilfree.BrokenPoolError as exc:
            errors.append(exc)
            continue
        with pytest.raises(gilfree.BrokenPoolError) as info:
            fut.result(timeout=WATCHDOG)
        errors.append(info.value)
    assert len(errors) == 4
    assert all(isinstance(e, cf.BrokenExecutor) for e in errors)
    assert all(isinstance(e.__cause__, OSError) for e in errors)
    with pytest.raises(gilfree.BrokenPoolError):
        p.submit(helpers.square, 1)
    p.shutdown()
    assert len(_runtime.worker_pids()) <= before + 2 + _runtime.default_workers()


def test_pool_never_delays_a_worker() -> None:
    n = 2
    with gilfree.Pool(n) as p:
        lst = Listener()
        try:
            busy = [p.submit(helpers.connect_and_block, lst.port) for _ in range(n)]
            lst.wait_running(n)
            rv = Rendezvous(1)
            w = gilfree.Worker(target=helpers.rendezvous_wait, args=(rv.port,))
            w.start()
            rv.release_all()
            assert w.join() != os.getpid()
            for f in busy:
                p.cancel(f)
        finally:
            lst.close()


def test_crash_mid_chunk_after_shutdown_fails_the_rest_instead_of_hanging() -> None:
    # The items behind a crashed one are re-sent as a new chunk; after shutdown() the pool
    # takes no new chunk, and the map must still end: the crashed item with its error, the
    # items that could not run with theirs.
    ev = gilfree.Event()
    pool = gilfree.Pool(1)
    try:
        it = pool.map(helpers.die_when_set, [ev] * 4, range(4), chunksize=4)
        pool.shutdown(wait=False)
        ev.set()
        outcome: list[BaseException] = []
        reader = threading.Thread(
            target=lambda: outcome.extend(_raised(lambda: next(it))), daemon=True
        )
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), "the map hung after a crash past shutdown()"
        assert isinstance(outcome[0], gilfree.WorkerCrashedError)
    finally:
        pool.terminate()


def _raised(fn: Any) -> list[BaseException]:
    try:
        fn()
    except BaseException as exc:
        return [exc]
    return []


# -- a map or imap still running when the pool shuts down ------------------------------------


def _drain(it: Any) -> tuple[list[Any], BaseException | None]:
    """Iterates ``it`` on a thread with a watchdog: what it yielded, and what it raised."""
    got: list[Any] = []
    raised: list[BaseException] = []

    def read() -> None:
        try:
            got.extend(it)
        except BaseException as exc:
            raised.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(WATCHDOG)
    assert not reader.is_alive(), "the map hung after its pool shut down"
    return got, (raised[0] if raised else None)


def test_a_map_started_before_shutdown_runs_every_item(capsys: pytest.CaptureFixture[str]) -> None:
    """As with ``Executor.map``, a map's items count as submitted when ``map`` returns:
    ``shutdown()`` (the end of a ``with`` block) lets the chunks it has not cut yet run too."""
    n = 5_000
    with gilfree.Pool(2) as pool:
        it = pool.map(helpers.square, range(n), chunksize=1)
    got, raised = _drain(it)
    assert raised is None
    assert got == [i * i for i in range(n)]
    assert "Traceback" not in capsys.readouterr().err


def test_shutdown_wait_false_still_runs_a_maps_items() -> None:
    pool = gilfree.Pool(2)
    try:
        it = pool.map(helpers.square, range(3_000), chunksize=1)
        pool.shutdown(wait=False)
        got, raised = _drain(it)
        assert raised is None
        assert got == [i * i for i in range(3_000)]
    finally:
        pool.terminate()


def test_an_imap_cut_short_by_shutdown_fails_at_its_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An imap reads its source lazily: what it had not read when the pool shut down cannot
    run. The caller gets every result that was cut before, then the shutdown's error at the
    first item that was not; nothing hangs and no background thread prints a traceback."""
    with gilfree.Pool(2) as pool:
        it = pool.imap(helpers.square, range(50_000), chunksize=1)
    got, raised = _drain(it)
    assert isinstance(raised, RuntimeError)
    assert "after shutdown" in str(raised)
    assert 0 < len(got) < 50_000
    assert got == [i * i for i in range(len(got))]
    assert "Traceback" not in capsys.readouterr().err


def test_shutdown_cancel_futures_cancels_a_map_in_flight() -> None:
    pool = gilfree.Pool(2)
    try:
        it = pool.map(helpers.square, range(20_000), chunksize=1)
        pool.shutdown(wait=True, cancel_futures=True)
        got, raised = _drain(it)
        assert isinstance(raised, (cf.CancelledError, RuntimeError))
        assert got == [i * i for i in range(len(got))]
    finally:
        pool.terminate()


def _returns_in_time(fn: Callable[[], object]) -> bool:
    """Runs ``fn`` on a daemon thread: whether it returned within the watchdog (a hang fails
    the test instead of freezing the suite)."""
    runner = threading.Thread(target=fn, daemon=True)
    runner.start()
    runner.join(WATCHDOG)
    return not runner.is_alive()


def test_an_abandoned_map_does_not_hold_up_shutdown() -> None:
    """A map the caller stopped reading cuts nothing more: ``shutdown(wait=True)`` does not
    wait for its remaining items."""
    pool = gilfree.Pool(2)
    try:
        it = pool.map(helpers.square, range(10_000_000), chunksize=1)
        assert next(it) == 0
        it.close()  # what dropping the iterator does
        assert _returns_in_time(pool.shutdown), "shutdown waited for an abandoned map"
    finally:
        pool.terminate()


def test_a_closed_map_yields_nothing_more_even_mid_run() -> None:
    """``close()`` on a map's iterator acts at once, as a generator's does: even in the middle
    of a run of plain values (which the iterator walks in C), nothing more is yielded, and the
    call's remaining chunks are stopped, so a shutdown does not wait for them."""
    pool = gilfree.Pool(2)
    try:
        it = pool.map(helpers.square, range(2_000_000))
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        it.close()
        assert list(it) == []
        it.close()  # a second close is a no-op, as for a generator
        assert _returns_in_time(pool.shutdown), "shutdown waited for a closed map"
    finally:
        pool.terminate()


@pytest.mark.parametrize("chunksize", [None, 1])
def test_a_map_yields_nothing_after_the_exception_of_an_item(chunksize: int | None) -> None:
    """Once an item's exception has been raised, the iterator is done, as a generator is: the
    next ``next()`` raises ``StopIteration`` at once; it neither waits for the results the
    failure cancelled nor yields the ones queued behind the failed item."""
    with gilfree.Pool(2) as p:
        it = p.map(helpers.fail_at_7, range(10_000), chunksize=chunksize)
        got = []
        with pytest.raises(ValueError, match="item 7"):
            for value in it:
                got.append(value)
        assert got == [x * x for x in range(7)]
        after: list[object] = []
        assert _returns_in_time(lambda: after.append(next(it, "done"))), (
            "next() after the exception waited"
        )
        assert after == ["done"]


def test_ctrl_c_inside_a_run_read_in_c_ends_the_call() -> None:
    """A Ctrl-C that lands while ``list(it)`` walks a run of results that are not plain values
    (the only Python code running is the run's own unpacking) ends the call as one anywhere
    else does: nothing more is yielded afterwards, and its remaining chunks are stopped, so a
    shutdown does not wait for them. The interrupt is raised from a trace function at a line
    of that unpacking, where a signal's handler would raise it."""
    pool = gilfree.Pool(2)
    try:
        it = pool.map(fractions.Fraction, range(2_000_000))
        assert next(it) == 0
        lines = 0

        def tracer(frame: Any, event: str, arg: object) -> Any:
            nonlocal lines
            if frame.f_code.co_name != "_unpack":
                return None
            if event == "line":
                lines += 1
                if lines == 5:
                    raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            with pytest.raises(KeyboardInterrupt):
                list(it)
        finally:
            sys.settrace(None)
        assert lines >= 5, "the interrupt did not land in the unpacking"
        after: list[object] = []
        assert _returns_in_time(lambda: after.append(next(it, "done"))), "next() waited"
        assert after == ["done"]
        assert _returns_in_time(pool.shutdown), "shutdown waited for the interrupted map"
    finally:
        pool.terminate()


def test_a_map_read_from_two_threads_at_once_fails_loudly_in_both() -> None:
    """A map's results are for one reader thread at a time: a second thread's ``next()`` while
    the first waits for a result raises ``ValueError``, and so does the first thread's, once
    its result comes; neither ends quietly with results missing."""
    ev = gilfree.Event()
    with gilfree.Pool(2) as p:
        it = p.map(helpers.wait_then_square, [ev] * 4, range(4))
        first: list[object] = []

        def read_first() -> None:
            try:
                first.append(next(it))
            except ValueError as exc:
                first.append(exc)

        reader = threading.Thread(target=read_first, daemon=True)
        reader.start()
        busy = it._source._busy  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownVariableType]
        # What is awaited: the reader inside next(), holding its lock.
        assert poll_until(busy.locked, 0.001), "the first reader never entered next()"  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
        with pytest.raises(ValueError, match="two threads at once"):
            next(it)
        ev.set()
        reader.join(WATCHDOG)
        assert not reader.is_alive(), "the first reader hung"
        assert len(first) == 1 and isinstance(first[0], ValueError)
        assert next(it, "done") == "done"


def test_a_map_iterator_cannot_be_copied_or_pickled() -> None:
    """A copy would share the call's state with the original (and a pickle could not carry
    it): both are refused, as for the generator a map returned before."""
    import copy
    import pickle

    with gilfree.Pool(2) as p:
        it = p.map(helpers.square, range(10))
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot pickle or copy"):
                attempt(it)
        assert list(it) == [x * x for x in range(10)]


def test_ctrl_c_while_a_map_reads_its_source_ends_the_call_at_once() -> None:
    """A KeyboardInterrupt raised on the caller's thread while the map reads the caller's
    iterable is the caller's interrupt, not the iterable's outcome: it propagates at once
    instead of waiting, "at its place", behind chunks already running (here, ones that never
    end). Run in a fresh interpreter, on its main thread, with a watchdog."""
    code = (
        "import sys, gilfree, helpers\n"
        "def source():\n"
        "    yield -1\n"
        "    yield -1\n"
        "    raise KeyboardInterrupt\n"
        "pool = gilfree.Pool(2)\n"
        "try:\n"
        "    list(pool.imap(helpers.spin_or_block, source(), chunksize=1))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted at once')\n"
        "pool.terminate()\n"
    )
    assert run_code(code) == "interrupted at once"
