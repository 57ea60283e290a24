"""A module whose top-level code makes primitives through the drop-in module, as a threading
program's helper module would (imported by name in worker processes)."""

import gilfree as threading

lock = threading.Lock()
rlock = threading.RLock()
started = threading.Event()
slots = threading.Semaphore(3)
bounded = threading.BoundedSemaphore(2)
cond = threading.Condition()
barrier = threading.Barrier(2)
counter = threading.Value("q", 0)
queue = threading.Queue()
local_only = [threading.Event() for _ in range(2)]  # two on one line: told apart by their order


def handles() -> dict[str, object]:
    """What each module-level object is, as this process sees it."""
    return {
        "lock": lock.handle,
        "rlock": rlock.handle,
        "started": started.handle,
        "slots": slots.handle,
        "bounded": bounded.handle,
        "queue": queue.handle,
        "cond": cond.__reduce__()[1][1],
        "barrier": barrier.__reduce__()[1],
        "counter": (counter.__reduce__()[1][1], counter.get_lock().handle),
        "pair": [e.handle for e in local_only],
    }


def see_and_change() -> tuple[bool, int]:
    """Reads the parent's Event, bumps the counter, puts an item: all shared if the objects are."""
    with counter.get_lock():
        counter.value += 1
    queue.put("from the worker")
    return started.is_set(), counter.value
