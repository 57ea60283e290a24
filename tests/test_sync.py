"""gilfree's process-shared primitives: parity with ``threading``, use across worker
processes, a holder's death, and Ctrl-C during a wait."""

from __future__ import annotations

import gc
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
    gc.collect()  # earlier tests' garbage must not be freed in the middle of this count
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


def _outcome(fn: Any) -> Any:
    """What a call did: its result, or the type of the exception it raised (any kind: a Rust
    panic is a ``BaseException``)."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, pytest.fail.Exception):
        raise  # Ctrl-C, or pytest-timeout's watchdog
    except BaseException as exc:  # recorded, compared with threading's
        return type(exc)


def _timeout_calls(mod: Any, timeout: float) -> dict[str, Any]:
    """One call per primitive and timeout-taking method, each needing to wait."""
    import queue

    held = mod.Lock()
    held.acquire()
    rheld = mod.RLock()
    t = threading.Thread(target=rheld.acquire)
    t.start()
    t.join(WATCHDOG)
    cond = mod.Condition()
    queue_mod = gilfree if mod is gilfree else queue

    def cond_wait() -> Any:
        with cond:
            return cond.wait(timeout)

    def cond_wait_for() -> Any:
        with cond:
            return cond.wait_for(lambda: False, timeout)

    return {
        "Lock.acquire": lambda: held.acquire(timeout=timeout),
        "Lock.acquire(False)": lambda: held.acquire(False, timeout),
        "RLock.acquire": lambda: rheld.acquire(timeout=timeout),
        "Event.wait": lambda: mod.Event().wait(timeout),
        "Condition.wait": cond_wait,
        "Condition.wait_for": cond_wait_for,
        "Semaphore.acquire": lambda: mod.Semaphore(0).acquire(timeout=timeout),
        "BoundedSemaphore.acquire": lambda: mod.BoundedSemaphore(0).acquire(timeout=timeout),
        "Barrier.wait": lambda: mod.Barrier(2).wait(timeout),
        "Queue.get": lambda: queue_mod.Queue().get(timeout=timeout),
        "Queue.put": lambda: _full_queue(queue_mod).put(2, timeout=timeout),
        "Queue.get(False)": lambda: queue_mod.Queue().get(False, timeout),
    }


def _full_queue(queue_mod: Any) -> Any:
    q = queue_mod.Queue(1)
    q.put(1)
    return q


BAD_TIMEOUTS = [
    float("inf"),
    threading.TIMEOUT_MAX * 2,
    1e300,
    -1.5,
    -2,
    float("-inf"),
]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_out_of_range_timeouts_behave_as_threading(timeout: float) -> None:
    theirs = {k: _outcome(f) for k, f in _timeout_calls(threading, timeout).items()}
    ours = {k: _outcome(f) for k, f in _timeout_calls(gilfree, timeout).items()}
    assert ours == theirs


def test_nan_timeouts() -> None:
    # threading's Lock rejects NaN and its Event does not wait; where threading computes a
    # remaining time (Semaphore, wait_for, Barrier, Queue) NaN never drops to <= 0 and it spins
    # forever. gilfree treats NaN as "do not wait" there, and Queue rejects it.
    nan = float("nan")
    theirs = _timeout_calls(threading, nan)
    ours = _timeout_calls(gilfree, nan)
    for same in ("Lock.acquire", "Lock.acquire(False)", "RLock.acquire", "Event.wait"):
        assert _outcome(ours[same]) == _outcome(theirs[same]), same
    assert _outcome(ours["Condition.wait"]) is False
    assert _outcome(ours["Condition.wait_for"]) is False
    assert _outcome(ours["Semaphore.acquire"]) is False
    assert _outcome(ours["Barrier.wait"]) is threading.BrokenBarrierError
    assert _outcome(ours["Queue.get"]) is ValueError


def test_timeout_max_itself_is_accepted() -> None:
    # Not waiting (the event is set): only the validation is exercised.
    event = gilfree.Event()
    event.set()
    assert event.wait(threading.TIMEOUT_MAX) is True
    lock = gilfree.Lock()
    assert lock.acquire(timeout=threading.TIMEOUT_MAX)
    lock.release()


def _acquire_in_forked_child(lock: Any) -> bool:
    """Forks; the child tries ``lock.acquire(False)`` and reports through a pipe."""
    import select

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any cleanup
        try:
            os.write(w, b"1" if lock.acquire(False) else b"0")
        finally:
            os._exit(0)
    os.close(w)
    answer = b""
    try:
        if select.select([r], [], [], WATCHDOG)[0]:
            answer = os.read(r, 1)
    finally:
        os.close(r)
        if not answer:  # hung: the watchdog fired
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer, "the forked child did not answer"
    return answer == b"1"


@pytest.mark.parametrize("kind", ["RLock", "Lock"])
def test_a_lock_held_by_the_parent_excludes_a_forked_child(kind: str) -> None:
    lock = getattr(gilfree, kind)()
    assert lock.acquire()
    if kind == "RLock":
        assert lock.acquire()  # re-entry: the owner check has run (and cached the TID)
    try:
        assert _acquire_in_forked_child(lock) is False
    finally:
        lock.release()
        if kind == "RLock":
            lock.release()
    assert _acquire_in_forked_child(lock) is True  # free: the child gets it


def test_event_wait_sees_a_set_followed_at_once_by_clear() -> None:
    event = gilfree.Event()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(event.wait(timeout=3)))
    t.start()
    deadline = time.monotonic() + WATCHDOG
    while event._waiters() == 0:  # the waiter is asleep inside wait()
        assert t.is_alive() and time.monotonic() < deadline
    event.set()
    event.clear()
    t.join(WATCHDOG)
    assert got == [True]


# ---- threading's guarantees with the participants in worker processes ----------------------


def test_a_lock_held_by_a_worker_excludes_the_parent() -> None:
    for lock in (gilfree.Lock(), gilfree.RLock()):
        held, release = gilfree.Event(), gilfree.Event()
        w = gilfree.Worker(target=sync_helpers.hold_until, args=(lock, held, release))
        w.start()
        assert held.wait(WATCHDOG)
        assert lock.locked()
        assert not lock.acquire(False)
        assert not lock.acquire(timeout=0.01)
        release.set()
        assert lock.acquire(timeout=WATCHDOG)
        lock.release()
        w.join(WATCHDOG)


def test_an_event_set_in_the_parent_releases_every_worker_waiter() -> None:
    event = gilfree.Event()
    workers = [gilfree.Worker(target=sync_helpers.event_wait, args=(event,)) for _ in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + WATCHDOG
    while event._waiters() < 3:  # all three are asleep in wait()
        assert time.monotonic() < deadline
    event.set()
    assert [w.join(WATCHDOG) for w in workers] == [True, True, True]


def test_a_semaphore_bounds_worker_processes() -> None:
    sem = gilfree.BoundedSemaphore(2)
    inside, most = gilfree.Value("i", 0), gilfree.Value("i", 0)
    workers = [
        gilfree.Worker(target=sync_helpers.count_inside, args=(sem, inside, most)) for _ in range(5)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WATCHDOG)
    assert 1 <= most.value <= 2
    assert inside.value == 0
    assert sem._value == 2


def test_a_condition_notify_in_the_parent_wakes_a_worker() -> None:
    cond, waiting = gilfree.Condition(gilfree.Lock()), gilfree.Event()
    w = gilfree.Worker(target=sync_helpers.condition_wait, args=(cond, waiting))
    w.start()
    assert waiting.wait(WATCHDOG)
    with cond:  # only once the worker's wait() has released the lock
        cond.notify()
    assert w.join(WATCHDOG) is True


def test_a_barrier_action_runs_once_per_generation_across_processes() -> None:
    import functools

    counter = gilfree.Value("i", 0)
    barrier = gilfree.Barrier(3, action=functools.partial(sync_helpers.add_one, counter))
    workers = [
        gilfree.Worker(target=sync_helpers.barrier_rounds, args=(barrier, 4)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    mine = sync_helpers.barrier_rounds(barrier, 4)
    theirs = [w.join(WATCHDOG) for w in workers]
    for rnd in range(4):
        assert sorted([mine[rnd]] + [t[rnd] for t in theirs]) == [0, 1, 2]
    assert counter.value == 4
