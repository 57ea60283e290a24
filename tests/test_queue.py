"""gilfree.Queue: parity with queue.Queue, use across worker processes and Pool tasks, a
stress test, and a producer killed in the middle of a put."""

from __future__ import annotations

import gc
import os
import pickle
import queue
import signal
import threading
import time

import pytest
import queue_helpers

import gilfree
from gilfree import _runtime

from conftest import WATCHDOG


def test_same_results_as_queue_queue() -> None:
    expected = queue_helpers.run_sequence(queue)
    assert queue_helpers.run_sequence(gilfree) == expected


def test_pickle_round_trip_shares_items() -> None:
    q = gilfree.Queue()
    q2 = pickle.loads(pickle.dumps(q))
    assert type(q2) is gilfree.Queue
    q.put({"x": 1})
    assert q2.qsize() == 1 and q2.get_nowait() == {"x": 1}
    q2.task_done()
    assert q.unfinished_tasks == 0


def test_unpicklable_item_fails_at_put() -> None:
    q = gilfree.Queue()
    with pytest.raises((TypeError, pickle.PicklingError)):
        q.put(threading.Lock())
    assert q.empty()


def test_byte_capacity_makes_put_wait() -> None:
    q = gilfree.Queue(maxbytes=1000)
    q.put(b"x" * 5000)  # an empty queue takes any item
    with pytest.raises(queue.Full):
        q.put_nowait(b"y")
    assert q.get() == b"x" * 5000
    q.put_nowait(b"y")


def test_slot_and_heap_are_freed_with_the_last_handle() -> None:
    arena = _runtime.arena()
    gc.collect()  # earlier tests' garbage must not be freed in the middle of this count
    before = arena.live_slots()
    q = gilfree.Queue()
    q.put(b"z" * 200_000)
    assert arena.live_slots() == before + 1
    del q
    assert arena.live_slots() == before


def test_four_workers_two_consumers_every_item_exactly_once() -> None:
    q = gilfree.Queue()
    producers = [gilfree.Worker(target=queue_helpers.produce, args=(q, p, 2000)) for p in range(4)]
    consumers = [gilfree.Worker(target=queue_helpers.consume, args=(q,)) for _ in range(2)]
    for w in producers + consumers:
        w.start()
    assert [w.join(WATCHDOG) for w in producers] == [2000] * 4
    for _ in consumers:
        q.put(None)
    per_consumer = [w.join(WATCHDOG) for w in consumers]
    got = [item for items in per_consumer for item in items]
    assert sorted(got) == [(p, i) for p in range(4) for i in range(2000)]
    # FIFO: each consumer saw each producer's items in the order they were put.
    for items in per_consumer:
        for p in range(4):
            seq = [i for (pp, i) in items if pp == p]
            assert seq == sorted(seq)
    q.join()
    assert q.empty() and q.unfinished_tasks == 0


def test_pool_tasks_put_and_the_parent_gets() -> None:
    q = gilfree.Queue()
    with gilfree.Pool(2) as pool:
        counts = list(
            pool.map(queue_helpers.produce, [q] * 4, range(4), [50] * 4, timeout=WATCHDOG)
        )
    assert counts == [50] * 4
    got = sorted(q.get_nowait() for _ in range(200))
    assert got == [(p, i) for p in range(4) for i in range(50)]


def test_worker_killed_mid_put_loses_no_other_item() -> None:
    size = 96 << 20
    q = gilfree.Queue(maxbytes=1 << 30)
    q.put("before-1")
    q.put("before-2")
    w = gilfree.Worker(target=queue_helpers.put_huge, args=(q, size))
    w.start()
    # Mid-put, deterministically: the worker holds the queue's lock while it copies its item
    # (the parent never takes it meanwhile), so kill it once the lock word names an owner.
    deadline = time.monotonic() + WATCHDOG
    while q._lock_owner() == 0:
        assert time.monotonic() < deadline, "the worker never took the queue's lock"
    assert w.native_id is not None
    os.kill(w.native_id, signal.SIGKILL)
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    assert q.get(timeout=WATCHDOG) == "before-1"
    assert q.get(timeout=WATCHDOG) == "before-2"
    # The killed put published its whole item (killed after its one publishing store) or
    # nothing; a half-written item is never seen.
    published = q.qsize() == 1
    if published:
        assert q.get_nowait() == b"\x07" * size
    assert q.empty()
    assert q._recoveries() == 1 or published
    q.put("after")
    assert q.get(timeout=WATCHDOG) == "after"
    for _ in range(3 + published):
        q.task_done()
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
