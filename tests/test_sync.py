"""gilfree's process-shared primitives: parity with ``threading``, use across worker
processes, a holder's death, and Ctrl-C during a wait."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from typing import Any

import pytest
import sync_helpers

import gilfree
from gilfree import _runtime

from conftest import WATCHDOG, interrupt_script


@pytest.mark.parametrize("name", sorted(sync_helpers.SEQUENCES))
def test_same_results_as_threading(name: str) -> None:
    expected = sync_helpers.run_sequence(threading, name)
    assert sync_helpers.run_sequence(gilfree, name) == expected


def test_release_by_another_thread_is_refused() -> None:
    # The one documented difference from threading.Lock.
    lock = gilfree.Lock()
    lock.acquire()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(WATCHDOG)
    assert len(errors) == 1 and "another thread" in str(errors[0])
    lock.release()


def test_pickle_round_trip_shares_state() -> None:
    lock, event, sem = gilfree.RLock(), gilfree.Event(), gilfree.Semaphore(3)
    lock2, event2, sem2 = pickle.loads(pickle.dumps((lock, event, sem)))
    assert type(lock2) is gilfree.RLock
    with lock2:
        assert lock.locked()
    event2.set()
    assert event.is_set()
    assert sem2.acquire(False)
    assert sem._value == 2


def test_slots_are_freed_when_the_last_handle_goes() -> None:
    arena = _runtime.arena()
    before = arena.live_slots()
    objs = [gilfree.Lock(), gilfree.Event(), gilfree.Condition(), gilfree.Value("d", 2.5)]
    assert arena.live_slots() > before
    del objs
    assert arena.live_slots() == before


def test_stale_handle_is_refused() -> None:
    blob = pickle.dumps(gilfree.Lock())
    with pytest.raises(RuntimeError, match="no longer exists"):
        pickle.loads(blob)


def test_value_typecodes() -> None:
    import ctypes

    assert gilfree.Value("i", -7).value == -7
    assert gilfree.Value(ctypes.c_double, 0.25).value == 0.25
    v = gilfree.Value("q")
    v.value = 2**62
    assert v.value == 2**62
    assert gilfree.Value("b", 3, lock=False).value == 3
    with pytest.raises(AttributeError):
        gilfree.Value("b", lock=False).get_lock()


def test_locked_counter_across_workers_is_exact() -> None:
    counter = gilfree.Value("i", 0)
    workers = [
        gilfree.Worker(target=sync_helpers.increment, args=(counter, 1000)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    pids = {w.join(WATCHDOG) for w in workers}
    assert len(pids) == 4
    assert counter.value == 4000


def test_counter_from_pool_tasks() -> None:
    counter = gilfree.Value("i", 0)
    with gilfree.Pool(2) as pool:
        list(pool.map(sync_helpers.increment, [counter] * 4, [250] * 4, timeout=WATCHDOG))
    assert counter.value == 1000


def test_event_set_in_a_worker_wakes_the_parent() -> None:
    event = gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.set_event, args=(event,))
    w.start()
    assert event.wait(WATCHDOG)
    w.join(WATCHDOG)


def test_barrier_of_parent_and_two_workers() -> None:
    barrier = gilfree.Barrier(3)
    workers = [gilfree.Worker(target=sync_helpers.barrier_wait, args=(barrier,)) for _ in range(2)]
    for w in workers:
        w.start()
    mine = barrier.wait(WATCHDOG)
    assert sorted([mine] + [w.join(WATCHDOG) for w in workers]) == [0, 1, 2]


def test_lock_of_a_killed_worker_goes_to_the_next_acquirer() -> None:
    lock, ready = gilfree.Lock(), gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.hold_and_die, args=(lock, ready))
    w.start()
    assert ready.wait(WATCHDOG)
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    with pytest.warns(gilfree.OwnerDiedError):
        assert lock.acquire(timeout=WATCHDOG)
    assert lock.locked()
    lock.release()
    assert lock.acquire(False)  # consistent again: no second warning
    lock.release()


def test_semaphore_permit_of_a_killed_worker_is_given_back() -> None:
    sem, ready = gilfree.BoundedSemaphore(1), gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.hold_and_die, args=(sem, ready))
    w.start()
    assert ready.wait(WATCHDOG)
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    assert sem.acquire(timeout=WATCHDOG)
    sem.release()


def test_barrier_held_by_a_killed_worker_is_broken() -> None:
    barrier = gilfree.Barrier(2)
    w = gilfree.Worker(target=sync_helpers.attach_and_die, args=(barrier,))
    w.start()
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(WATCHDOG)


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    """Runs ``fn`` (a wait with no timeout) in a daemon thread, so the test keeps a watchdog;
    the list gets its result or exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def test_untimed_barrier_wait_breaks_when_an_unjoined_worker_is_killed() -> None:
    # Nobody joins the worker: the engine sees the death through its pidfd, not a reap.
    barrier, ready = gilfree.Barrier(2), gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.hold_and_block, args=(barrier, ready))
    w.start()
    assert ready.wait(WATCHDOG)
    t, outcome = _in_thread(barrier.wait)
    deadline = time.monotonic() + WATCHDOG
    while barrier.n_waiting == 0 and t.is_alive():  # the parent is inside wait()
        assert time.monotonic() < deadline
    assert w.native_id is not None
    os.kill(w.native_id, signal.SIGKILL)
    t.join(WATCHDOG)
    assert not t.is_alive(), "Barrier.wait() still blocked after the other party died"
    assert len(outcome) == 1 and isinstance(outcome[0], threading.BrokenBarrierError)
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)


def test_untimed_semaphore_acquire_succeeds_when_an_unjoined_holder_is_killed() -> None:
    sem, ready = gilfree.Semaphore(1), gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.hold_and_block, args=(sem, ready))
    w.start()
    assert ready.wait(WATCHDOG)
    assert not sem.acquire(False)
    t, outcome = _in_thread(sem.acquire)
    assert w.native_id is not None
    os.kill(w.native_id, signal.SIGKILL)
    t.join(WATCHDOG)
    assert not t.is_alive(), "Semaphore.acquire() still blocked after the holder died"
    assert outcome == [True]
    sem.release()
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)


@pytest.mark.parametrize("kind", ["lock", "event", "queue"])
def test_ctrl_c_during_a_wait_raises_keyboard_interrupt(kind: str) -> None:
    _, out, err, returncode = interrupt_script("sync_ctrl_c.py", kind, ready="waiting")
    assert "interrupted" in out, err
    assert returncode == 0, err
