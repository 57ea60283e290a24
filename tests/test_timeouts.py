"""Every timeout rule, by the call that takes it, with the exception type and message it gives
for each odd value (the rules live in ``gilfree/_sync_args.py``; the native glue only converts
a checked number to a duration). The shared primitives' rules are in tests/test_sync_args.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

import gilfree
from gilfree import _backends, _engine, _runtime, _sync_args

import helpers
from conftest import WATCHDOG

BIG = threading.TIMEOUT_MAX * 2
NEGATIVE = "timeout value must be a non-negative number"

# A task time limit the engine refuses, and what the call raises, before anything is queued.
BAD_TASK_LIMITS: list[tuple[Any, type[Exception], str]] = [
    (-1, ValueError, NEGATIVE),
    (-1e-9, ValueError, NEGATIVE),
    (-math.inf, ValueError, NEGATIVE),
    (math.nan, ValueError, NEGATIVE),
    ("1", TypeError, "argument 'timeout': must be real number, not str"),
    ([1], TypeError, "argument 'timeout': must be real number, not list"),
    (10**400, OverflowError, "int too large to convert to float"),
]

# Accepted: beyond TIMEOUT_MAX (infinity too) is no limit; a bool is a number, as in threading.
GOOD_TASK_LIMITS: list[Any] = [math.inf, BIG, threading.TIMEOUT_MAX, True, 5, 0.5]

TASK_CALLS: dict[str, Callable[[gilfree.Pool, Any], list[int]]] = {
    "submit": lambda pool, t: [pool.submit(helpers.square, 3, timeout=t).result(WATCHDOG)],
    "map": lambda pool, t: list(pool.map(helpers.square, [3], timeout=t)),
    "imap": lambda pool, t: list(pool.imap(helpers.square, iter([3]), timeout=t)),
    "gilfree.map": lambda pool, t: gilfree.map(helpers.square, [3], workers=1, timeout=t),
}


@pytest.fixture(scope="module")
def pool() -> Iterator[gilfree.Pool]:
    with gilfree.Pool(1, backend="process") as p:
        yield p


@pytest.mark.parametrize(("bad", "kind", "message"), BAD_TASK_LIMITS, ids=repr)
@pytest.mark.parametrize("call", TASK_CALLS)
def test_a_bad_task_limit_fails_at_the_call(
    pool: gilfree.Pool, call: str, bad: Any, kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind) as info:
        TASK_CALLS[call](pool, bad)
    assert str(info.value) == message
    assert pool.submit(helpers.square, 2).result(WATCHDOG) == 4


@pytest.mark.parametrize("good", GOOD_TASK_LIMITS, ids=repr)
@pytest.mark.parametrize("call", TASK_CALLS)
def test_a_long_or_infinite_task_limit_is_accepted(
    pool: gilfree.Pool, call: str, good: Any
) -> None:
    assert TASK_CALLS[call](pool, good) == [9]


def test_task_limit_rule() -> None:
    # What the glue receives: a finite number of seconds within TIMEOUT_MAX, or None.
    assert _sync_args.task_limit(None) is None
    assert _sync_args.task_limit(math.inf) is None
    assert _sync_args.task_limit(BIG) is None
    assert _sync_args.task_limit(threading.TIMEOUT_MAX) == threading.TIMEOUT_MAX
    assert _sync_args.task_limit(True) == 1.0
    assert _sync_args.task_limit(0) == 0.0
    assert type(_sync_args.task_limit(2)) is float


@pytest.mark.parametrize("bad", [None, -1, math.nan, math.inf, "x"], ids=repr)
@pytest.mark.parametrize("call", ["submit", "map", "imap"])
def test_a_thread_pool_refuses_any_task_limit(call: str, bad: Any) -> None:
    # Refused whatever its value: the thread backend cannot stop a running task.
    with gilfree.Pool(1, backend="thread") as pool:
        if bad is None:
            assert TASK_CALLS[call](pool, bad) == [9]
            return
        with pytest.raises(_backends.UnsupportedByBackend) as info:
            TASK_CALLS[call](pool, bad)
    assert str(info.value) == (
        f"Pool.{call}() with a per-task timeout= is not available on the 'thread' backend: a"
        " task that runs too long cannot be stopped, so its thread cannot be freed."
        " (Future.result(timeout=) still bounds how long you wait.) Use backend='process' for"
        " it."
    )


# -- Worker.join / Worker.result: threading.Thread.join's rule -------------------------------

# None of these waits on a running Worker or thread (so none of them may block the test).
JOIN_ARGS: list[Any] = [-1, -0.5, -math.inf, 0, 0.0, False, 1e-9, math.nan, math.inf, BIG, "x"]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """The result, or the exception's type and message (only the type for ``OverflowError``,
    whose text CPython takes from whichever clock conversion overflowed, and ``TypeError``,
    whose text names the comparison ``threading`` happens to make)."""
    try:
        return ("ok", call())
    except (OverflowError, TypeError) as exc:
        return (type(exc).__name__, None)
    except Exception as exc:  # the exception is the outcome we compare
        return (type(exc).__name__, str(exc))


class Waiter(gilfree.Worker):
    def __init__(self, go: gilfree.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.go = go

    def run(self) -> str:
        assert self.go.wait(WATCHDOG)
        return "done"


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_worker_join_takes_its_timeout_as_threading_does(backend: Any) -> None:
    go = gilfree.Event()
    w = Waiter(go, backend=backend)
    released = threading.Event()
    threads: list[threading.Thread] = []
    w.start()
    try:
        for timeout in JOIN_ARGS:
            # A thread of its own per value: a join that raises leaves a thread marked stopped
            # (threading releases its lock on the error path), so the next join would not wait.
            t = threading.Thread(target=released.wait, args=(WATCHDOG,))
            t.start()
            threads.append(t)
            got, want = outcome(partial(w.join, timeout)), outcome(partial(t.join, timeout))
            assert got == want, timeout
            assert w.is_alive()
            # result() raises TimeoutError where join() would return None.
            got = outcome(partial(w.result, timeout))
            if want == ("ok", None):
                assert got == ("TimeoutError", f"{w.name} did not finish within {timeout} seconds")
            else:
                assert got == want, timeout
    finally:
        go.set()
        released.set()
        for t in threads:
            t.join(WATCHDOG)
    assert w.join(WATCHDOG) == "done"
    assert w.result(-1) == "done"


def test_join_wait_rule() -> None:
    assert _sync_args.join_wait(None) is None
    assert _sync_args.join_wait(-5) == 0.0
    assert _sync_args.join_wait(True) == 1.0
    assert _sync_args.join_wait(threading.TIMEOUT_MAX) == threading.TIMEOUT_MAX
    with pytest.raises(ValueError, match="NaN"):
        _sync_args.join_wait(math.nan)
    with pytest.raises(OverflowError):
        _sync_args.join_wait(math.inf)


# -- the glue converts, and refuses what no rule lets through ---------------------------------


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e300])
def test_the_engine_glue_takes_only_checked_timeouts(bad: float) -> None:
    # Beyond what a Duration holds, or below zero: a ValueError from the conversion, never a
    # panic and never a silent "forever" (that is task_limit's decision, made before).
    lease = _runtime.engine().acquire()
    try:
        with pytest.raises(ValueError):
            lease.recv(timeout=bad)
    finally:
        lease.release()
    tp = _engine.TaskPool(_runtime.engine(), 1, None, None)
    try:
        with pytest.raises(ValueError):
            tp.submit(0, b"", 1, bad)
    finally:
        tp.shutdown(True, True)
        tp.join(None)
