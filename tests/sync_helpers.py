"""Code that runs inside worker processes in tests/test_sync.py (workers adopt the parent's
sys.path, so they can import it by name)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import gilfree

WATCHDOG = 60.0


def increment(value: gilfree.Value, times: int) -> int:
    """Adds 1 to ``value`` ``times`` times under its lock."""
    for _ in range(times):
        with value.get_lock():
            value.value += 1
    return os.getpid()


def set_event(event: gilfree.Event) -> None:
    event.set()


def barrier_wait(barrier: gilfree.Barrier) -> int:
    return barrier.wait(timeout=WATCHDOG)


def hold_and_die(lock: Any, ready: gilfree.Event) -> None:
    """Takes ``lock`` (a Lock, or a Semaphore permit), says so, and dies with SIGKILL."""
    assert lock.acquire(timeout=WATCHDOG)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def attach_and_die(barrier: gilfree.Barrier) -> None:
    """Holds ``barrier`` (attached by unpickling) and dies without reaching it."""
    del barrier
    os.kill(os.getpid(), signal.SIGKILL)


def hold_and_block(prim: Any, ready: gilfree.Event) -> None:
    """Holds ``prim`` (a Barrier, attached by unpickling, or a Semaphore permit), says so,
    then blocks until killed."""
    if isinstance(prim, gilfree.Semaphore):
        assert prim.acquire(timeout=WATCHDOG)
    ready.set()
    threading.Event().wait()


def hold_until(lock: Any, held: gilfree.Event, release: gilfree.Event) -> None:
    """Holds ``lock`` until ``release`` is set."""
    with lock:
        held.set()
        assert release.wait(WATCHDOG)


def event_wait(event: gilfree.Event) -> bool:
    return event.wait(WATCHDOG)


def count_inside(sem: gilfree.Semaphore, inside: gilfree.Value, most: gilfree.Value) -> None:
    """Holds a permit of ``sem`` while counting the holders; records the most seen at once."""
    with sem:
        with inside.get_lock():
            inside.value += 1
            most.value = max(most.value, inside.value)
        with inside.get_lock():
            inside.value -= 1


def condition_wait(cond: gilfree.Condition, waiting: gilfree.Event) -> bool:
    """Waits on ``cond`` (having said so while holding its lock); returns ``wait``'s result."""
    with cond:
        waiting.set()
        return cond.wait(WATCHDOG)


def add_one(counter: gilfree.Value) -> None:
    with counter.get_lock():
        counter.value += 1


def barrier_rounds(barrier: gilfree.Barrier, rounds: int) -> list[int]:
    return [barrier.wait(WATCHDOG) for _ in range(rounds)]


def run_sequence(mod: Any, name: str) -> list[Any]:
    """Runs one scripted sequence of calls on ``mod.<primitive>`` (``threading`` or
    ``gilfree``) and records every result or exception (type and message)."""
    out: list[Any] = []

    def rec(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # recorded, compared with threading's
            out.append((type(exc).__name__, str(exc)))
            return None
        out.append(result)
        return result

    SEQUENCES[name](mod, rec)
    return out


def _lock(mod: Any, rec: Any) -> None:
    lock = mod.Lock()
    rec(lock.locked)
    rec(lock.acquire)
    rec(lock.locked)
    rec(lock.acquire, False)
    rec(lock.acquire, timeout=0.01)
    rec(lock.acquire, False, 1)
    rec(lock.acquire, True, -2)
    rec(lock.release)
    rec(lock.release)
    with lock:
        rec(lock.locked)
    rec(lock.locked)
    t = threading.Thread(target=lambda: rec(lock.acquire, timeout=0.01))
    with lock:
        t.start()
        t.join(WATCHDOG)


def _rlock(mod: Any, rec: Any) -> None:
    lock = mod.RLock()
    rec(lock.release)
    rec(lock.acquire)
    rec(lock.acquire, False)
    rec(lock.acquire, timeout=0.01)
    rec(lock.release)
    rec(lock.release)
    rec(lock.release)
    rec(lock.release)
    with lock, lock:
        t = threading.Thread(target=lambda: (rec(lock.acquire, False), rec(lock.release)))
        t.start()
        t.join(WATCHDOG)
    rec(lock.acquire, False)
    rec(lock.release)


def _event(mod: Any, rec: Any) -> None:
    ev = mod.Event()
    rec(ev.is_set)
    rec(ev.wait, 0)
    rec(ev.wait, 0.01)
    ev.set()
    rec(ev.is_set)
    rec(ev.wait)
    rec(ev.wait, 0.01)
    ev.clear()
    rec(ev.is_set)
    rec(ev.wait, 0.001)
    t = threading.Thread(target=lambda: rec(ev.wait, WATCHDOG))
    t.start()
    ev.set()
    t.join(WATCHDOG)


def _semaphore(mod: Any, rec: Any) -> None:
    rec(mod.Semaphore, -1)
    sem = mod.Semaphore(2)
    rec(sem.acquire)
    rec(sem.acquire)
    rec(sem.acquire, False)
    rec(sem.acquire, timeout=0.01)
    rec(sem.acquire, False, 1)
    rec(sem.release, 0)
    rec(sem.release, 2)
    rec(sem.release)
    rec(sem.acquire, False)
    with sem:
        rec(sem.acquire, blocking=False)
    t = threading.Thread(target=lambda: rec(sem.acquire, timeout=WATCHDOG))
    z = mod.Semaphore(0)
    t2 = threading.Thread(target=lambda: rec(z.acquire, timeout=WATCHDOG))
    t.start()
    t.join(WATCHDOG)
    t2.start()
    z.release()
    t2.join(WATCHDOG)


def _bounded(mod: Any, rec: Any) -> None:
    sem = mod.BoundedSemaphore(1)
    rec(sem.release)
    rec(sem.acquire)
    rec(sem.release)
    rec(sem.release)
    rec(sem.acquire, False)
    rec(sem.release, 2)


def _condition(mod: Any, rec: Any) -> None:
    cond = mod.Condition(mod.Lock())
    rec(cond.wait, 0.01)
    rec(cond.notify)
    with cond:
        rec(cond.wait, 0.01)
        rec(cond.wait_for, lambda: 42)
        rec(cond.wait_for, lambda: False, 0.01)
        cond.notify()
        cond.notify_all()
    items: list[int] = []

    def consumer() -> None:
        with cond:
            rec(cond.wait_for, lambda: items, WATCHDOG)

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for t in threads:
        t.start()
    with cond:
        items.append(1)
        cond.notify_all()
    for t in threads:
        t.join(WATCHDOG)
    rcond = mod.Condition()
    with rcond, rcond:
        rec(rcond.wait, 0.01)


def _barrier(mod: Any, rec: Any) -> None:
    calls: list[int] = []
    b = mod.Barrier(1, action=lambda: calls.append(1))
    rec(b.wait)
    rec(b.wait)
    rec(lambda: calls)
    b2 = mod.Barrier(2)
    rec(lambda: (b2.parties, b2.n_waiting, b2.broken))
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(b2.wait(WATCHDOG)))
    t.start()
    got.append(b2.wait(WATCHDOG))
    t.join(WATCHDOG)
    rec(lambda: sorted(got))
    rec(b2.wait, 0.01)
    rec(lambda: b2.broken)
    rec(b2.wait)
    b2.reset()
    rec(lambda: b2.broken)
    b2.abort()
    rec(lambda: b2.broken)
    rec(b2.wait)
    b2.reset()

    def boom() -> None:
        raise ValueError("action failed")

    b3 = mod.Barrier(1, action=boom)
    rec(b3.wait)
    rec(lambda: b3.broken)


SEQUENCES = {
    "Lock": _lock,
    "RLock": _rlock,
    "Event": _event,
    "Semaphore": _semaphore,
    "BoundedSemaphore": _bounded,
    "Condition": _condition,
    "Barrier": _barrier,
}
