"""The rest of ``threading``'s surface, so that ``import gilfree as threading`` runs a
threading program unchanged (``gilfree/__init__.py`` loads this module on first use).

``Thread`` is :class:`gilfree.Worker`; the locks, events and the rest are gilfree's
process-shared primitives. Identity follows the Worker: inside ``run()``,
:func:`current_thread` is the Worker itself, ``threading.current_thread().name`` is the
Worker's name (the worker process's main thread is renamed for the duration of the task),
:func:`get_ident` is the Worker's ``ident``, and :class:`local` data belongs to one Worker.
In the parent, :func:`enumerate` and :func:`active_count` count running Workers beside the
process's own threads.

What cannot cross into a worker process raises instead of being ignored: :func:`settrace`,
:func:`setprofile` (a worker runs another interpreter) and :func:`stack_size` with a size.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast

import gilfree as _gilfree
from gilfree import worker as _worker_mod
from gilfree.sync import Event
from gilfree.worker import Worker

# One list of threading's names: the package serves exactly these from here.
__all__ = sorted(_gilfree._THREADING_NAMES)  # pyright: ignore[reportUnsupportedDunderAll]  (the names are listed in gilfree/__init__.py)

Thread = Worker
TIMEOUT_MAX = threading.TIMEOUT_MAX
BrokenBarrierError = threading.BrokenBarrierError
ThreadError = threading.ThreadError
ExceptHookArgs = threading.ExceptHookArgs
# An exception raised by a Worker's run() is re-raised by its join() (with the worker's
# traceback), not handed to excepthook; this is threading's hook, for code that calls it.
excepthook = threading.excepthook
gettrace = threading.gettrace
getprofile = threading.getprofile

# -- identity inside a worker process -----------------------------------------------------------

_get_ident = threading.get_ident
_main_thread = threading.main_thread

# The Worker whose run() this process is running (in the worker process only), and the
# ident of the thread that runs it.
_task: Worker[Any] | None = None
_task_thread = 0
# Every gilfree.local of this process (reset between Worker tasks), and its __init__ arguments.
# (A list of weak references, not a WeakSet: testing a list for emptiness costs nothing, and
# this is checked before every Worker.)
_locals: list[weakref.ref[Any]] = []
_init_args: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _enter_task(worker: Worker[Any], name: str) -> str:
    """Called by the worker process before ``run()``: the Worker (named ``name``) becomes the
    current thread.

    Returns the main thread's name, for :func:`_exit_task` to restore."""
    global _task, _task_thread
    _task = worker
    _task_thread = _get_ident()
    main = _main_thread()
    # _name: the attribute behind Thread.name, set directly (this is per task); typeshed
    # does not declare it.
    old = cast("str", main._name)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    main._name = name  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    if _locals:
        alive = [loc for loc in (ref() for ref in _locals) if loc is not None]
        _locals[:] = [weakref.ref(loc) for loc in alive]
        for loc in alive:
            loc._gilfree_reset()
    return old


def _exit_task(old_name: str) -> None:
    global _task
    _task = None
    _main_thread()._name = old_name  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]


def current_thread() -> Any:
    """The current thread; inside a Worker's ``run()``, the Worker itself."""
    task = _task
    if task is not None and threading.get_ident() == _task_thread:
        return task
    return threading.current_thread()


def main_thread() -> threading.Thread:
    """This process's main thread. In a worker process, that thread runs the Worker (and
    bears its name while it does), but it is not the Worker: ``current_thread() is
    main_thread()`` is false inside ``run()``, as it is in a thread."""
    return threading.main_thread()


def get_ident() -> int:
    """The current thread's identifier; inside a Worker's ``run()``, the Worker's ``ident``
    (its worker process's pid)."""
    task = _task
    if task is not None and threading.get_ident() == _task_thread:
        # Set once the Worker started, which it has: it runs.
        return task.ident  # type: ignore[return-value]  # pyright: ignore[reportReturnType]
    return threading.get_ident()


def get_native_id() -> int:
    """The current thread's native id; inside a Worker's ``run()``, the Worker's
    ``native_id`` (its worker process's pid)."""
    task = _task
    if task is not None and threading.get_ident() == _task_thread:
        return task.native_id  # type: ignore[return-value]  # pyright: ignore[reportReturnType]
    return threading.get_native_id()


def enumerate() -> list[Any]:
    """The live threads of this process and, in the parent, every started Worker whose
    ``run()`` has not finished (in start order is not guaranteed). Inside a Worker, the
    Worker stands in for its process's main thread."""
    threads: list[Any] = threading.enumerate()
    task = _task
    if task is not None:
        main = threading.main_thread()
        return [task if t is main else t for t in threads]
    with _worker_mod._live_lock:
        live = list(_worker_mod._live)
    return threads + [w for w in live if w.is_alive()]


def active_count() -> int:
    """``len(enumerate())``: this process's threads plus its running Workers."""
    return len(enumerate())


# -- what cannot reach a worker process --------------------------------------------------------


def _cannot(what: str, instead: str) -> NotImplementedError:
    return NotImplementedError(
        f"gilfree.{what} cannot reach Workers: each runs in its own worker process, with its "
        f"own interpreter. {instead}"
    )


def settrace(func: Callable[..., Any] | None) -> None:
    """Not available: raises ``NotImplementedError`` (see the message for what to do)."""
    raise _cannot(
        "settrace",
        "Call sys.settrace() inside run(), or threading.settrace() for this process's threads.",
    )


def setprofile(func: Callable[..., Any] | None) -> None:
    """Not available: raises ``NotImplementedError`` (see the message for what to do)."""
    raise _cannot(
        "setprofile",
        "Call sys.setprofile() inside run(), or threading.setprofile() for this process's threads.",
    )


def stack_size(size: int = 0) -> int:
    """Returns the thread stack size; setting one raises ``NotImplementedError``, since a
    Worker's stack is its process's main-thread stack."""
    if size:
        raise _cannot(
            "stack_size(size)", "Set the stack limit with resource.setrlimit() inside run()."
        )
    return threading.stack_size()


# -- Timer and local ---------------------------------------------------------------------------


class Timer(Worker[None]):
    """``threading.Timer``: calls ``function(*args, **kwargs)`` in a worker process after
    ``interval`` seconds, unless :meth:`cancel` is called first (from any process)."""

    def __init__(
        self,
        interval: float,
        function: Callable[..., Any],
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.function = function
        self.args: Iterable[Any] = args if args is not None else []
        self.kwargs = kwargs if kwargs is not None else {}
        self.finished = Event()

    def cancel(self) -> None:
        """Stops the timer if it has not fired yet."""
        self.finished.set()

    def run(self) -> None:
        self.finished.wait(self.interval)
        if not self.finished.is_set():
            self.function(*self.args, **self.kwargs)
        self.finished.set()


def _rebuild_local(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


class local(threading.local):
    """``threading.local``, per Worker as well as per thread.

    Pickling one (a Worker that names it, in its target's globals or its arguments) gives a
    fresh object with no data, as a new thread sees; a ``local`` that lives in a worker
    process across Workers (a module-level one in an imported module) is emptied, and its
    ``__init__`` run again, before each Worker starts.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if (args or kwargs) and cls.__init__ is object.__init__:
            raise TypeError("Initialization arguments are not supported")
        self = super().__new__(cls, *args, **kwargs)
        _init_args[self] = (args, kwargs)
        _locals.append(weakref.ref(self))
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        args, kwargs = _init_args.get(self, ((), {}))
        return (_rebuild_local, (type(self), args, kwargs))

    def _gilfree_reset(self) -> None:
        self.__dict__.clear()
        args, kwargs = _init_args.get(self, ((), {}))
        if type(self).__init__ is not object.__init__:
            type(self).__init__(self, *args, **kwargs)
