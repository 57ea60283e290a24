"""The public API's types, as a user's code sees them: checked by ``make lint-types`` (mypy
--strict and pyright strict over this file) and run by pytest, so every call here is real.

``assert_type`` checks, at check time, the type a checker infers; at run time it returns its
argument, and the test asserts the value. ``_rejected`` holds calls that the checkers must
refuse: each carries mypy's ``# type: ignore[code]`` and pyright's ``# pyright: ignore[rule]``,
and both checkers fail on an ignore comment that is not needed (mypy's ``warn_unused_ignores``,
pyright's ``reportUnnecessaryTypeIgnoreComment``), so a signature that stops catching them
fails lint. It is never called. (``pool.map(half, ["x"])`` is not among them: ``Pool.map``'s
last overload, ``Executor.map``'s own ``Callable[..., T]``, accepts it; nor is
``Value("i", 1.5)``: ``Value``'s last overload takes any typecode string and any value.)
"""

from __future__ import annotations

import ctypes
import queue
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, assert_type

import pytest
from numpy.typing import NDArray

import gilfree
from gilfree.exceptions import WorkerCrashedError

WATCHDOG = 60.0


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def label(n: int, suffix: str) -> str:
    return f"{n}{suffix}"


def half(x: int) -> float:
    return x / 2


class Summer(gilfree.Worker[int]):
    def __init__(self, items: list[int]) -> None:
        super().__init__()
        self.items = items

    def run(self) -> int:
        return sum(self.items)


@pytest.fixture(scope="module", params=["process", "thread"])
def pool(request: pytest.FixtureRequest) -> Iterator[gilfree.Pool]:
    with gilfree.Pool(2, backend=request.param) as p:
        yield p


def test_submit_keeps_the_result_type(pool: gilfree.Pool) -> None:
    fut = pool.submit(add, 1, 2, scale=3)
    assert_type(fut, Future[int])
    assert fut.result(timeout=WATCHDOG) == 9
    # The pool's own options: the result type is kept.
    with_options = pool.submit(add, 2, 2, timeout=None, retries=1)
    assert_type(with_options, Future[int])
    assert with_options.result(timeout=WATCHDOG) == 4
    retried = pool.submit(half, 3, retries=2)
    assert_type(retried, Future[float])
    assert retried.result(timeout=WATCHDOG) == 1.5


def test_map_and_imap_yield_the_function_result_type(pool: gilfree.Pool) -> None:
    one = pool.map(half, [2, 4])
    assert_type(one, Iterator[float])
    assert list(one) == [1.0, 2.0]
    two = pool.map(label, [1, 2], ["a", "b"], chunksize=1)
    assert_type(two, Iterator[str])
    assert list(two) == ["1a", "2b"]
    lazy = pool.imap(half, iter([6, 8]), ordered=True)
    assert_type(lazy, Iterator[float])
    assert list(lazy) == [3.0, 4.0]


def test_gilfree_map_returns_a_list_of_the_result_type() -> None:
    out = gilfree.map(half, range(4), workers=2, backend="thread")
    assert_type(out, list[float])
    assert out == [0.0, 0.5, 1.0, 1.5]
    unordered = gilfree.map(half, [2], workers=1, ordered=False, backend="process")
    assert_type(unordered, list[float])
    assert unordered == [1.0]


def test_worker_join_returns_what_run_returns() -> None:
    w = Summer([1, 2, 3])
    w.start()
    joined = w.join(timeout=WATCHDOG)
    assert_type(joined, int | None)
    assert joined == 6
    assert_type(w.join(), int)
    assert_type(w.result(), int)
    t = gilfree.Worker(target=label, args=(7, "x"))
    assert_type(t, gilfree.Worker[str])
    t.start()
    assert t.result(timeout=WATCHDOG) == "7x"
    assert not t.is_alive()


def test_queue_and_shared_containers_carry_their_item_types() -> None:
    q: gilfree.Queue[int] = gilfree.Queue(maxsize=2)
    q.put(5)
    assert_type(q.get(timeout=WATCHDOG), int)
    q.put_nowait(6)
    assert q.get_nowait() == 6
    with pytest.raises(queue.Empty):
        q.get_nowait()

    items = gilfree.SharedList([1, 2, 3])
    assert_type(items, gilfree.SharedList[int])
    assert_type(items[0], int)
    assert_type(items[1:], list[int])
    items[0] = 10
    items[1:] = [20, 30]
    assert items.copy() == [10, 20, 30]

    d = gilfree.SharedDict(a=1)
    assert_type(d, gilfree.SharedDict[str, int])
    assert_type(d.get("a"), int | None)
    assert_type(d.get("b", 0.5), int | float)
    assert d.get("a") == 1 and d.get("b", 0.5) == 0.5
    assert_type(d.setdefault("c", 3), int)
    d.update({"e": 5}, f=6)
    assert_type(d.pop("e"), int)
    assert_type(d.pop("zz", None), int | None)
    assert sorted(d.keys()) == ["a", "c", "f"]
    assert_type(list(d.items()), list[tuple[str, int]])
    pairs: list[tuple[int, str]] = [(1, "one")]
    from_pairs = gilfree.SharedDict(pairs)
    assert_type(from_pairs, gilfree.SharedDict[int, str])
    assert from_pairs[1] == "one"


def test_primitives_and_config() -> None:
    lock = gilfree.Lock()
    with lock:
        assert_type(lock.acquire(timeout=0), bool)
    ev = gilfree.Event()
    ev.set()
    assert_type(ev.wait(WATCHDOG), bool)
    barrier = gilfree.Barrier(1)
    assert_type(barrier.wait(WATCHDOG), int)
    cond = gilfree.Condition(gilfree.RLock())
    with cond:
        assert_type(cond.wait_for(lambda: True, WATCHDOG), bool)
    sem = gilfree.BoundedSemaphore(2)
    assert_type(sem.acquire(), bool)
    sem.release()
    counter = gilfree.Value("i", 3)
    assert_type(counter, gilfree.Value[int])
    with counter.get_lock():
        counter.value += 1
    assert_type(counter.value, int)
    assert counter.value == 4
    ratio = gilfree.Value(ctypes.c_double, 0.5, lock=False)
    assert_type(ratio.value, float)
    assert ratio.value == 0.5
    flag = gilfree.Value("?")
    assert_type(flag.value, bool)
    assert flag.value is False
    arr = gilfree.SharedArray(3, dtype="int64")
    view = arr.array
    assert_type(view, NDArray[Any])
    view[:] = [1, 2, 3]
    assert arr.array.sum() == 6
    with gilfree.config(backend="thread"):
        assert gilfree.map(half, [4], workers=1) == [2.0]


def test_exceptions_are_typed() -> None:
    err = WorkerCrashedError("died", exitcode=None, signal=9, pid=1)
    assert_type(err.exitcode, int | None)
    assert_type(err.attempts, int)
    assert err.signal == 9
    assert issubclass(gilfree.BrokenPoolError, RuntimeError)


def rejected_calls(pool: gilfree.Pool, w: Summer, q: gilfree.Queue[int], d: Any) -> None:
    """Calls the checkers must refuse (never run; see the module doc)."""
    pool.submit(add, "1", 2)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    pool.submit(add, 1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    pool.imap(label, [1])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    gilfree.map(half, [b""])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    gilfree.Pool(backend="threads")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    q.put("not an int")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    text: str = w.join()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    del text, d
