"""Code that runs inside worker processes in tests/test_queue.py (workers adopt the parent's
sys.path, so they can import it by name)."""

from __future__ import annotations

from typing import Any

import gilfree

WATCHDOG = 60.0


def produce(q: gilfree.Queue, producer: int, count: int) -> int:
    """Puts ``(producer, i)`` for ``i`` in ``range(count)``."""
    for i in range(count):
        q.put((producer, i), timeout=WATCHDOG)
    return count


def consume(q: gilfree.Queue) -> list[Any]:
    """Gets items until the ``None`` sentinel; returns them."""
    got = []
    while True:
        item = q.get(timeout=WATCHDOG)
        q.task_done()
        if item is None:
            return got
        got.append(item)


def put_huge(q: gilfree.Queue, size: int) -> None:
    """Puts one ``size``-byte item: long enough a copy to be killed in the middle of."""
    q.put(b"\x07" * size)


def run_sequence(mod: Any) -> list[Any]:
    """Runs one scripted sequence on ``mod.Queue`` (``queue`` or ``gilfree``) and records every
    result, or exception type and message."""
    import queue as stdlib_queue
    import threading

    out: list[Any] = []

    def rec(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # recorded, compared with queue.Queue's
            out.append((type(exc).__name__, str(exc)))
            return None
        out.append(result)
        return result

    q = mod.Queue(2)
    rec(lambda: (q.qsize(), q.empty(), q.full(), q.maxsize))
    rec(q.get_nowait)
    rec(q.get, timeout=0.01)
    rec(q.get, False, 5)
    rec(q.get, True, -1)
    rec(q.put, "a")
    rec(q.put, {"b": [1, 2]})
    rec(lambda: (q.qsize(), q.empty(), q.full()))
    rec(q.put_nowait, "c")
    rec(q.put, "c", timeout=0.01)
    rec(q.put, "c", True, -1)
    rec(q.get)
    rec(q.get_nowait)
    rec(q.task_done)
    rec(q.task_done)
    rec(q.task_done)
    rec(q.join)
    rec(lambda: stdlib_queue.Empty is not None)
    # A consumer thread blocked in get() is woken by a put.
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=WATCHDOG)))
    t.start()
    q.put(3.5)
    t.join(WATCHDOG)
    rec(lambda: got)
    # A producer blocked in put() on a full queue is woken by a get.
    q.put(1)
    q.put(2)
    t = threading.Thread(target=lambda: q.put(3, timeout=WATCHDOG))
    t.start()
    rec(q.get, timeout=WATCHDOG)
    t.join(WATCHDOG)
    rec(lambda: [q.get(), q.get()])
    # join() returns once every item is marked done.
    for _ in range(4):
        q.task_done()
    rec(q.join)
    # maxsize <= 0: unbounded.
    u = mod.Queue(-1)
    for i in range(100):
        u.put_nowait(i)
    rec(lambda: (u.qsize(), u.full()))
    rec(lambda: [u.get() for _ in range(100)] == list(range(100)))
    return out
