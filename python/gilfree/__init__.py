"""gilfree: the worker-thread pattern, without the GIL.

Write workers as you would threads: subclass :class:`gilfree.Worker` (instead of
``threading.Thread``), override ``run()``, then ``start()`` and ``join()``. Each Worker runs in
its own worker process, started and supervised by a Rust engine, so CPU-bound pure-Python work
runs on every core.

``import gilfree as threading`` runs a threading program unchanged: ``Thread`` (the Worker),
``Timer``, ``local``, ``current_thread``, ``enumerate`` and the rest of ``threading``'s names
are here too, loaded on first use (see ``_threading_api``). They are not in ``__all__``, so
``from gilfree import *`` does not shadow the builtin ``enumerate``.
"""

from __future__ import annotations

from typing import Any

from gilfree._backends import config
from gilfree._queue import Queue
from gilfree.exceptions import (
    BrokenPoolError,
    OwnerDiedError,
    RemoteTraceback,
    SharedStateWarning,
    WorkerCrashedError,
)
from gilfree.executor import Pool, map
from gilfree.shared_array import SharedArray
from gilfree.shared_containers import SharedDict, SharedList
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
    "SharedDict",
    "SharedList",
    "SharedStateWarning",
    "Value",
    "Worker",
    "WorkerCrashedError",
    "__version__",
    "config",
    "map",
]

# threading's names, served by _threading_api on first use (it is small, but import time counts).
_THREADING_NAMES = frozenset(
    {
        "TIMEOUT_MAX",
        "BrokenBarrierError",
        "ExceptHookArgs",
        "Thread",
        "ThreadError",
        "Timer",
        "active_count",
        "current_thread",
        "enumerate",
        "excepthook",
        "get_ident",
        "get_native_id",
        "getprofile",
        "gettrace",
        "local",
        "main_thread",
        "setprofile",
        "settrace",
        "stack_size",
    }
)


def __getattr__(name: str) -> Any:
    if name in _THREADING_NAMES:
        from gilfree import _threading_api

        value = getattr(_threading_api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gilfree' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _THREADING_NAMES)
