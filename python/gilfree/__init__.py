"""gilfree: the worker-thread pattern, without the GIL.

Write workers as you would threads: subclass :class:`gilfree.Worker` (instead of
``threading.Thread``), override ``run()``, then ``start()`` and ``join()``. Each Worker runs in
its own worker process, started and supervised by a Rust engine, so CPU-bound pure-Python work
runs on every core.
"""

from __future__ import annotations

from gilfree._queue import Queue
from gilfree.exceptions import BrokenPoolError, OwnerDiedError, RemoteTraceback, WorkerCrashedError
from gilfree.executor import Pool, map
from gilfree.shared_array import SharedArray
from gilfree.sync import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
    Value,
)
from gilfree.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "BrokenPoolError",
    "Condition",
    "Event",
    "Lock",
    "OwnerDiedError",
    "Pool",
    "Queue",
    "RLock",
    "RemoteTraceback",
    "Semaphore",
    "SharedArray",
    "Value",
    "Worker",
    "WorkerCrashedError",
    "__version__",
    "map",
]
