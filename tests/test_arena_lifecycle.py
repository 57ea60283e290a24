"""The shared primitives' slots under fork, and held locks that are dropped.

Each forked child runs inside ``try``/``finally: os._exit`` so it can never fall back into
pytest, and reports through a pipe; the parent reaps every child it forks (with a watchdog
deadline on every wait).
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import threading

import pytest

import gilfree
from gilfree import _runtime

WATCHDOG = 60.0


def _fork(child: object) -> int:
    """Forks; the child runs ``child()`` and exits 0, or 1 if it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    """Reaps ``pid`` and returns its wait status; a child still alive after the watchdog
    deadline is killed and fails the test."""
    status: list[int] = []
    waiter = threading.Thread(target=lambda: status.append(os.waitpid(pid, 0)[1]), daemon=True)
    waiter.start()
    waiter.join(WATCHDOG)
    if not status:
        os.kill(pid, signal.SIGKILL)
        waiter.join(WATCHDOG)
        raise AssertionError(f"child {pid} hung")
    return status[0]


def _read_line(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], WATCHDOG)
    assert ready, "the child never reported"
    return os.read(fd, 64)


def _index(handle: int) -> int:
    return handle & 0xFFFF_FFFF


def test_fork_child_that_drops_its_copy_leaves_the_parents_slot_alone() -> None:
    arena = _runtime.arena()
    holder = [gilfree.Lock()]  # the only reference, so the child can drop its copy
    live = arena.live_slots()

    def child() -> None:
        holder.clear()
        gc.collect()

    status = _wait(_fork(child))
    assert os.waitstatus_to_exitcode(status) == 0
    assert arena.live_slots() == live, "the child detached the parent's reference"
    # The parent's lock still works, and its slot was not handed to a new primitive.
    lock = holder[0]
    assert lock.acquire(timeout=WATCHDOG)
    lock.release()
    fresh = gilfree.Lock()
    assert _index(fresh.handle) != _index(lock.handle)


def test_fork_child_attaches_as_itself() -> None:
    arena = _runtime.arena()
    lock = gilfree.Lock()
    before = arena.live_slots()
    data = pickle.dumps(lock)
    r, w = os.pipe()

    def child() -> None:
        os.close(r)
        mine = pickle.loads(data)  # attaches: must count under the child's own pid
        os.write(w, b"ok")
        signal.pause()  # killed below
        del mine

    pid = _fork(child)
    os.close(w)
    try:
        assert _read_line(r) == b"ok"
    finally:
        os.kill(pid, signal.SIGKILL)
        _wait(pid)
        os.close(r)
    arena.reap(pid)  # what the engine does for its own dead workers
    assert arena.live_slots() == before
    del lock
    gc.collect()
    assert arena.live_slots() == before - 1, "the child's reference was counted as the parent's"


def test_more_processes_than_a_slot_table_attach_one_lock() -> None:
    n = 80
    arena = _runtime.arena()
    lock = gilfree.Lock()
    before = arena.live_slots()
    data = pickle.dumps(lock)
    r, w = os.pipe()

    def child() -> None:
        os.close(r)
        try:
            mine = pickle.loads(data)
        except RuntimeError:
            os.write(w, b"F")
            return
        os.write(w, b"A")
        signal.pause()  # killed below
        del mine

    pids = []
    try:
        for _ in range(n):
            pids.append(_fork(child))
        got = b""
        while len(got) < n:
            got += _read_line(r)
        assert got == b"A" * n
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait(pid)
            arena.reap(pid)
        os.close(r)
        os.close(w)
    assert arena.live_slots() == before
    del lock
    gc.collect()
    assert arena.live_slots() == before - 1


def test_a_dropped_held_lock_is_not_recycled_while_its_owner_lives() -> None:
    held = threading.Event()
    finish = threading.Event()
    handle: list[int] = []

    def owner() -> None:
        lock = gilfree.Lock()
        lock.acquire()
        handle.append(lock.handle)
        del lock  # `l.acquire(); del l`
        held.set()
        finish.wait(WATCHDOG)

    t = threading.Thread(target=owner)
    t.start()
    try:
        assert held.wait(WATCHDOG)
        fresh = [gilfree.Lock() for _ in range(4)]
        assert all(_index(f.handle) != _index(handle[0]) for f in fresh)
        for f in fresh:
            assert f.acquire(blocking=False)
            f.release()
    finally:
        finish.set()
        t.join(WATCHDOG)
    assert not t.is_alive()


def fork_a_grandchild_that_takes_a_permit_then_die(sem: gilfree.Semaphore) -> None:
    """Runs in a Worker: a fork child takes a permit through the inherited object and exits
    without releasing it; then this worker dies and the engine reaps it."""
    pid = _fork(lambda: _must(sem.acquire(blocking=False)))
    assert os.waitstatus_to_exitcode(_wait(pid)) == 0
    os.kill(os.getpid(), signal.SIGKILL)


def _must(ok: bool) -> None:
    assert ok


def test_a_fork_childs_permits_are_not_counted_as_its_parents() -> None:
    sem = gilfree.Semaphore(2)
    w = gilfree.Worker(target=fork_a_grandchild_that_takes_a_permit_then_die, args=(sem,))
    w.start()
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    # The worker held no permit of its own: reaping it gives nothing back. The grandchild's
    # permit is gone with it (a process the engine does not own is never reaped).
    assert sem.acquire(blocking=False)
    assert not sem.acquire(blocking=False)
