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

# Nothing heavy is imported here: each public name is loaded from its module on first use
# (module ``__getattr__`` below), so ``import gilfree`` costs well under a millisecond and does
# not pull in ``concurrent.futures``/``logging``, ``typing``, cloudpickle or the native engine
# (nor ``__future__``: no annotation here needs it).
# Type checkers see the real imports (``TYPE_CHECKING`` is false at run time, true for them).
TYPE_CHECKING = False
if TYPE_CHECKING:
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


# The public names, by the module that defines them.
_LAZY = {
    "Queue": "gilfree._queue",
    "BrokenPoolError": "gilfree.exceptions",
    "OwnerDiedError": "gilfree.exceptions",
    "RemoteTraceback": "gilfree.exceptions",
    "SharedStateWarning": "gilfree.exceptions",
    "WorkerCrashedError": "gilfree.exceptions",
    "Pool": "gilfree.executor",
    "map": "gilfree.executor",
    "SharedArray": "gilfree.shared_array",
    "SharedDict": "gilfree.shared_containers",
    "SharedList": "gilfree.shared_containers",
    "config": "gilfree._backends",
    "Barrier": "gilfree.sync",
    "BoundedSemaphore": "gilfree.sync",
    "Condition": "gilfree.sync",
    "Event": "gilfree.sync",
    "Lock": "gilfree.sync",
    "RLock": "gilfree.sync",
    "Semaphore": "gilfree.sync",
    "Value": "gilfree.sync",
    "Worker": "gilfree.worker",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None and name in _THREADING_NAMES:
        module = "gilfree._threading_api"
    if module is None:
        raise AttributeError(f"module 'gilfree' has no attribute {name!r}")
    value = getattr(__import__(module, None, None, [name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _THREADING_NAMES)


def _prestart() -> None:
    # The template process that forks workers starts now, in the background, so the first
    # Worker does not wait for an interpreter start (see ``_runtime.prestart``). This loads
    # the native engine (~1 ms) and ``threading``, never the heavy modules above.
    try:
        from gilfree import _runtime
    except ImportError:  # no native engine: the first Worker will say so
        return
    try:
        _runtime.prestart()
    except OSError:  # no thread or process to be had now: the engine starts one later
        pass


_prestart()
