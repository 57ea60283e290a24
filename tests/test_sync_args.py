"""The shared primitives take their arguments as ``threading`` and ``queue`` do: the same
result, or the same exception type and message, for every odd value (the rules live in
``gilfree/_sync_args.py``; the native glue only converts)."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

import gilfree
from gilfree import _engine

BIG = threading.TIMEOUT_MAX * 2
NAN = math.nan


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """The result, or the exception's type and message (only the type for ``OverflowError``,
    whose text CPython takes from whichever clock conversion overflowed)."""
    try:
        return ("ok", call())
    except OverflowError:
        return ("OverflowError", None)
    except Exception as exc:  # the exception is the outcome we compare
        return (type(exc).__name__, str(exc))


# None of these waits (a valid wait on a held lock would block the test).
LOCK_ARGS: list[tuple[Any, ...]] = [
    (False,),
    (0,),
    (True, 0),
    (True, 0.0),
    (True, -2),
    (True, -0.5),
    (True, NAN),
    (True, BIG),
    (True, -BIG),
    (False, -1),
    (False, 0),
    (False, 1),
    (False, NAN),
    (0, -1),
    (0, 5),
    (None,),
]


@pytest.mark.parametrize("args", LOCK_ARGS, ids=repr)
@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_acquire_arguments(kind: str, args: tuple[Any, ...]) -> None:
    # On a lock another thread holds, so that every valid call would have to wait.
    ours = getattr(gilfree, kind)()
    theirs = getattr(threading, kind)()
    held = threading.Event()
    done = threading.Event()

    def holder() -> None:
        ours.acquire()
        theirs.acquire()
        held.set()
        done.wait(60)
        ours.release()
        theirs.release()

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(60)
        assert outcome(lambda: ours.acquire(*args)) == outcome(lambda: theirs.acquire(*args))
    finally:
        done.set()
        t.join(60)


# Not `(True, NAN)`: a documented difference (gilfree does not wait, threading raises from
# deep inside its wait loop).
SEM_ARGS: list[tuple[Any, ...]] = [
    (False,),
    (0,),
    (False, None),
    (False, 0),
    (False, 1),
    (True, 0),
    (True, -1),
    (True, BIG),
    (1, 0),
]


@pytest.mark.parametrize("args", SEM_ARGS, ids=repr)
@pytest.mark.parametrize("permits", [0, 1])
def test_semaphore_acquire_arguments(permits: int, args: tuple[Any, ...]) -> None:
    ours = gilfree.Semaphore(permits)
    theirs = threading.Semaphore(permits)
    assert outcome(lambda: ours.acquire(*args)) == outcome(lambda: theirs.acquire(*args))


@pytest.mark.parametrize("n", [1, 2, 0, -1])
def test_semaphore_release_count(n: int) -> None:
    ours = gilfree.Semaphore(0)
    theirs = threading.Semaphore(0)
    assert outcome(lambda: ours.release(n)) == outcome(lambda: theirs.release(n))
    assert ours._value == theirs._value


@pytest.mark.parametrize("timeout", [0, -1, 0.0, -0.5, NAN, BIG, 1e-9])
def test_event_wait_timeout(timeout: float) -> None:
    assert outcome(lambda: gilfree.Event().wait(timeout)) == outcome(
        lambda: threading.Event().wait(timeout)
    )
    ours, theirs = gilfree.Event(), threading.Event()
    ours.set()
    theirs.set()
    assert outcome(lambda: ours.wait(timeout)) == outcome(lambda: theirs.wait(timeout))


@pytest.mark.parametrize("timeout", [0, -1, NAN, BIG, 1e-9])
def test_condition_wait_timeout(timeout: float) -> None:
    ours, theirs = gilfree.Condition(), threading.Condition()
    with ours, theirs:
        assert outcome(lambda: ours.wait(timeout)) == outcome(lambda: theirs.wait(timeout))


# Not NaN: `queue.Queue` spins forever on it (documented: gilfree rejects it).
@pytest.mark.parametrize("timeout", [-1, 0, BIG, 1e-9])
@pytest.mark.parametrize("block", [True, False])
def test_queue_timeout(block: bool, timeout: float) -> None:
    ours, theirs = gilfree.Queue(1), queue.Queue(1)
    got = outcome(lambda: ours.get(block, timeout))
    want = outcome(lambda: theirs.get(block, timeout))
    assert got == want
    ours.put(1)
    theirs.put(1)
    assert outcome(lambda: ours.put(2, block, timeout)) == outcome(
        lambda: theirs.put(2, block, timeout)
    )


def test_the_glue_takes_only_checked_waits() -> None:
    # A wait no Python check lets through is refused by the conversion, never a panic.
    lock = _engine.Lock(gilfree._runtime.arena())
    for bad in (-1.0, NAN, math.inf):
        with pytest.raises(ValueError):
            lock._acquire(bad)
    assert lock._acquire(0.0) is True
    assert lock._acquire(0.0) is False
    lock.release()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (gilfree.Lock, threading.Lock),
        (gilfree.RLock, threading.RLock),
        (lambda: gilfree.BoundedSemaphore(1), lambda: threading.BoundedSemaphore(1)),
    ],
    ids=["Lock", "RLock", "BoundedSemaphore"],
)
def test_a_refused_release_says_what_threading_says(
    ours: Callable[[], Any], theirs: Callable[[], Any]
) -> None:
    a, b = ours(), theirs()
    assert outcome(a.release) == outcome(b.release)
    assert outcome(lambda: a.__exit__(None, None, None)) == outcome(
        lambda: b.__exit__(None, None, None)
    )


def test_task_done_too_often_says_what_queue_says() -> None:
    assert outcome(gilfree.Queue().task_done) == outcome(queue.Queue().task_done)


def test_refused_release_messages_are_pythons(monkeypatch: pytest.MonkeyPatch) -> None:
    # The glue picks the exception type; the words are the Python layer's.
    from gilfree import _sync_args

    monkeypatch.setitem(_sync_args.MESSAGES, "release_unlocked", "reworded")
    with pytest.raises(RuntimeError, match=r"^reworded$"):
        gilfree.Lock().release()
