"""Exceptions raised by gilfree.

Each class derives from the stdlib exception a caller would already catch, and pickles cleanly
so it can cross a process boundary.
"""

from __future__ import annotations

__all__ = [
    "BrokenPoolError",
    "OwnerDiedError",
    "RemoteTraceback",
    "SharedStateWarning",
    "WorkerCrashedError",
]


class WorkerCrashedError(RuntimeError):
    """The worker process running a task died before finishing it.

    Raised by ``Worker.join()`` (and later by a Pool task's future) when the process was killed
    by a signal (segfault, SIGKILL, OOM killer, ``Worker.terminate()``) or exited without
    returning a result (``os._exit``).

    Attributes:
        exitcode: The process's exit status if it exited, else ``None``.
        signal: The number of the signal that killed it, else ``None``.
        pid: The worker process's pid.
        attempts: How many times the task ran (1, plus the retries it used with
            ``retries=``); each run's worker died.
    """

    def __init__(
        self,
        message: str,
        exitcode: int | None = None,
        signal: int | None = None,
        pid: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, exitcode, signal, pid, attempts)
        self.exitcode = exitcode
        self.signal = signal
        self.pid = pid
        self.attempts = attempts

    def __str__(self) -> str:
        return str(self.args[0])


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text.

    Attached as ``__cause__`` of the re-raised exception, so a traceback printed in the parent
    shows where the error happened in the worker (as ``concurrent.futures`` does).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class OwnerDiedError(RuntimeWarning):
    """The previous owner of a :class:`gilfree.Lock` (or ``RLock``) died while holding it.

    Issued as a *warning* by the ``acquire`` (or ``with`` block) that took the lock over: the
    lock is held by the caller, as after any successful acquire, but the data it guards may be
    half-updated. This mirrors ``EOWNERDEAD`` of robust pthread mutexes, which gilfree's locks
    are built on. Turn it into an exception with ``warnings.simplefilter("error",
    gilfree.OwnerDiedError)``, or catch it with ``warnings.catch_warnings``.
    """


class SharedStateWarning(UserWarning):
    """A Worker changed state that threads would share but a worker process only copies.

    Issued by ``Worker.join()`` when ``run()`` changed a module-level or closure-captured
    ``list``, ``dict``, ``set`` or ``bytearray``, or reassigned a global (``global counter;
    counter += 1``) or a closure variable: the change happened in the worker process, and this
    process's variable is unchanged. The message names the variable and the fix: return the
    value from ``run()`` (``join()`` returns it), keep it on ``self`` (copied back at
    ``join()``), or use a shared object (``gilfree.Value``, ``gilfree.Queue``,
    ``gilfree.SharedArray``). Issued once per variable per process. See docs/shared-state.md.
    """


_BROKEN_POOL_DOC = """The Pool cannot run tasks: its ``initializer`` failed in a worker process.

A ``concurrent.futures.BrokenExecutor``, as ``ProcessPoolExecutor``'s ``BrokenProcessPool``
is (not a subclass of that one: importing it would pull ``multiprocessing`` into every
``import gilfree``). The initializer's own exception is attached as ``__cause__``. (A worker
that dies does not break a gilfree Pool: only its task fails, with
:class:`WorkerCrashedError`.)
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import BrokenExecutor

    class BrokenPoolError(BrokenExecutor):
        pass


def _make_broken_pool_error() -> type:
    # concurrent.futures imports logging (~10 ms), so this class is made when it is first asked
    # for (module ``__getattr__`` below), not at ``import gilfree``. It pickles by name as
    # ``gilfree.exceptions.BrokenPoolError``, like any other class of this module.
    from concurrent.futures import BrokenExecutor

    return type(
        "BrokenPoolError",
        (BrokenExecutor,),
        {"__doc__": _BROKEN_POOL_DOC, "__module__": __name__, "__qualname__": "BrokenPoolError"},
    )


def __getattr__(name: str) -> object:
    if name == "BrokenPoolError":
        cls = globals()[name] = _make_broken_pool_error()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
