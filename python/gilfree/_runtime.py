"""The engine of this interpreter: created on first use, shut down at exit.

One engine serves every Worker (and, later, every Pool) of the interpreter, so they share one
warm set of worker processes. Worker output arrives here and is written to whatever
``sys.stdout`` / ``sys.stderr`` are at that moment, so ``contextlib.redirect_stdout``, pytest's
capture and Jupyter all see it.

BLAS and OpenMP thread pools. numpy's BLAS (OpenBLAS, MKL, BLIS, Accelerate) and OpenMP code
start one thread per core in *every* process by default, so W worker processes each running a
matmul ask for W x cores threads, and oversubscription makes the whole map slower than one
process. Each worker process therefore starts with its pools capped: the standard variables
(:data:`BLAS_ENV_VARS`) are set in the worker's environment at its start, which is when those
libraries read them. The rule:

- The cap is per process start, not per Pool: every Worker and Pool of an interpreter shares
  one engine and its warm worker processes, and a library reads its variable once, when it is
  loaded. So the cap is one number for the engine, ``cores // warm workers``, where the warm
  set is one process per core (:func:`default_workers`): 1 thread per worker. Any number of
  busy workers up to the core count then runs at most one BLAS thread per core
  (workers x threads <= cores).
- A variable the user set (in this process's environment when the engine starts) wins, and is
  passed on to the workers as it is; so does a value set for one library only.
- ``GILFREE_BLAS_THREADS=N`` sets the cap to N threads per worker (for a few workers doing
  large matmuls, say); ``GILFREE_BLAS_THREADS=0`` (or ``none``) sets no variable at all.
  It is read when the engine starts (the first Worker or Pool of the interpreter).
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys

from gilfree import _engine

# ``import gilfree`` imports this module (to start the template), so it imports no more than
# that needs: ``threading`` (with ``functools`` and ``collections``) is most of the cost of
# ``import gilfree`` and is imported at the first Worker or Pool; ``_thread`` gives the locks.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Extra worker processes beyond the warm set retire after this long idle.
IDLE_TIMEOUT = 30.0

_lock = _thread.allocate_lock()
_engine_instance: _engine.Engine | None = None
_exit_hooks: list[Callable[[], None]] = []
_exiting = False
# The shared-primitive arena (gilfree.sync): one per process tree. Created on first use in the
# parent and kept across engine restarts; a worker adopts the one it inherited.
_arena_lock = _thread.allocate_lock()
_arena_instance: _engine.Arena | None = None


def _emit(pid: int, stream: int, data: bytes) -> None:
    target = sys.stdout if stream == 1 else sys.stderr
    if target is None:
        return
    target.write(data.decode("utf-8", "replace"))
    target.flush()


#: The variables that size BLAS and OpenMP thread pools, set in each worker's environment.
BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: The setting that overrides the cap (see the module docstring).
BLAS_THREADS_ENV = "GILFREE_BLAS_THREADS"


def blas_threads(environ: dict[str, str] | os._Environ[str] = os.environ) -> int | None:
    """The BLAS/OpenMP threads each worker process gets (``None``: no cap); see the module
    docstring for the rule.

    Raises:
        ValueError: ``GILFREE_BLAS_THREADS`` is set to something other than a count >= 0 or
            ``none``.
    """
    setting = environ.get(BLAS_THREADS_ENV, "").strip().lower()
    if setting in ("0", "none"):
        return None
    if setting:
        try:
            n = int(setting)
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(
                f"{BLAS_THREADS_ENV} must be a number of threads (or 0 / none for no cap),"
                f" not {environ[BLAS_THREADS_ENV]!r}"
            )
        return n
    cores = default_workers()
    return max(1, cores // default_workers())


def _blas_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[tuple[str, str]]:
    """The cap as variables for a worker's environment: those the user has not set."""
    n = blas_threads(environ)
    if n is None:
        return []
    return [(name, str(n)) for name in BLAS_ENV_VARS if not environ.get(name)]


def _pythonpath() -> str:
    # The worker must import this very gilfree, even when it was put on sys.path by hand.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return package_root if not path else package_root + os.pathsep + path


def in_kernel() -> bool:
    """Whether this process is a running Jupyter (ipykernel) kernel, not merely a program that
    imported ipykernel (a library may)."""
    app = sys.modules.get("ipykernel.kernelapp")
    return app is not None and bool(app.IPKernelApp.initialized())


#: Set in the environment of the template and of a worker started directly: the process puts
#: itself in a process group of its own at start (``gilfree._worker``); forked workers inherit
#: the template's group.
PROCESS_GROUP_ENV = "GILFREE_PROCESS_GROUP"


def _own_group_env() -> list[tuple[str, str]]:
    """In a Jupyter kernel, gilfree's processes leave the kernel's process group. On a shutdown
    or restart request ipykernel signals every child in its group, SIGTERM then SIGKILL, again
    and again until none is left (for up to ~14 s per signal); an open Pool replaced its
    killed workers each time, so the kernel never saw its group empty and was itself killed by
    its manager instead of exiting. Out of the group, the kernel exits and gilfree's exit hook
    stops the workers; if the kernel is killed instead, they die with it (the parent-death
    signal). Elsewhere they stay in the caller's group, for a terminal's job control (Ctrl-Z
    stops them with the program)."""
    return [(PROCESS_GROUP_ENV, "own")] if in_kernel() else []


def _worker_env() -> list[tuple[str, str]]:
    return [
        ("PYTHONPATH", _pythonpath()),
        ("PYTHONUNBUFFERED", "1"),
        *_blas_env(),
        *_own_group_env(),
    ]


def prestart() -> None:
    """At ``import gilfree``: starts the template process in the background, so that it is
    ready (interpreter started, imports done) by the time the program starts its first Worker
    or Pool, instead of only then. Never blocks, never forks this process (the template is a
    fresh interpreter), and runs no Python in the background: a native thread starts it, and
    becomes the supervisor thread of the engine that the first Worker or Pool creates
    (``Engine.prestart_template`` in ``gilfree_core::pool::supervisor``).

    A program that never uses gilfree has the template killed and reaped at exit
    (``atexit``); if it dies instead, the template dies with it (its parent-death signal).
    Skipped with ``GILFREE_TEMPLATE=0`` (no template at all) or ``GILFREE_PRESTART=0`` (the
    template starts with the engine, at the first Worker or Pool: for a program that imports
    gilfree in many short-lived processes and rarely uses it), in gilfree's own worker and
    template processes, and where the program's default backend is not ``process``
    (:func:`_default_backend_is_process`): a free-threaded interpreter runs Workers and Pools
    on threads by default, and an idle template would be one more process for nothing.
    """
    args = _template_args()
    if (
        args is None
        or os.environ.get("GILFREE_PRESTART", "1") == "0"
        or not sys.executable
        or "GILFREE_PARENT_PID" in os.environ
        or not _default_backend_is_process()
    ):
        return
    # Only what the template's own start needs: its forks take the environment, working
    # directory and fds the parent has at each fork.
    env = [("PYTHONPATH", _pythonpath()), ("PYTHONUNBUFFERED", "1"), *_own_group_env()]
    _engine.prestart_template(sys.executable, args, env)
    atexit.register(_engine.cancel_prestart)


def _default_backend_is_process() -> bool:
    """Whether a Worker or Pool made without ``backend=`` and outside a ``gilfree.config``
    block runs on worker processes: ``GILFREE_BACKEND`` names ``process`` (or no known other
    backend: the call that reads it reports a wrong name), or it is unset or ``auto`` and the
    interpreter runs with the GIL. The rule is ``gilfree._backends.choose``'s, read here
    without importing that module, which ``import gilfree`` leaves to the first call."""
    name = os.environ.get("GILFREE_BACKEND", "").strip()
    if name in ("", "auto"):
        gil_enabled = getattr(sys, "_is_gil_enabled", None)
        return gil_enabled is None or bool(gil_enabled())
    return name not in ("thread", "dask")


def _template_args() -> list[str] | None:
    """The template's arguments, or ``None`` when workers are started directly.

    By default workers are forked from a clean template process (see
    ``gilfree_core::pool::template``), which costs a few ms instead of an interpreter start;
    ``GILFREE_TEMPLATE=0`` starts each worker directly."""
    if os.environ.get("GILFREE_TEMPLATE", "1") == "0":
        return None
    return ["-m", "gilfree._worker", "--template"]


def default_workers() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def engine() -> _engine.Engine:
    """The interpreter's engine, started (with its warm workers) on first call."""
    global _engine_instance
    eng = _engine_instance
    if eng is not None:
        return eng
    with _lock:
        if _exiting:
            raise RuntimeError("can't create new thread at interpreter shutdown")
        if _engine_instance is None:
            from gilfree import _module_objects

            # Workers find the parent's module-level primitives here (see _module_objects); in
            # os.environ too, which the template's forks take theirs from.
            registry = os.environ[_module_objects.ENV] = _module_objects.registry_env()
            env = [*_worker_env(), (_module_objects.ENV, registry)]
            _engine_instance = _engine.Engine(
                sys.executable,
                ["-m", "gilfree._worker"],
                env,
                None,
                default_workers(),
                IDLE_TIMEOUT,
                _engine.RING_CAPACITY_DEFAULT,
                _emit,
                arena=arena(),
                template=_template_args(),
            )
            # threading's own exit hook runs before non-daemon threads are joined and before
            # atexit, the same moment concurrent.futures uses; atexit is the fallback.
            import threading

            threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
            atexit.register(shutdown)
        return _engine_instance


def _forget_after_fork() -> None:
    """In a ``fork()`` child (say, a ``multiprocessing`` worker): the engine, its threads and its
    worker processes belong to the parent. Forget them; this process starts its own engine if
    it uses gilfree. (The engine itself also refuses to touch the parent's processes here.)"""
    global _engine_instance, _lock
    if _engine_instance is not None:
        _orphaned.append(_engine_instance)  # never dropped here: it is the parent's
    _engine_instance = None
    _lock = _thread.allocate_lock()
    for hook in _fork_hooks:
        hook()


_orphaned: list[_engine.Engine] = []
_fork_hooks: list[Callable[[], None]] = []
os.register_at_fork(after_in_child=_forget_after_fork)


def after_fork_in_child(hook: Callable[[], None]) -> None:
    """Runs ``hook`` in a ``fork()`` child, to drop state that belongs to the parent."""
    _fork_hooks.append(hook)


def arena() -> _engine.Arena:
    """The arena that gilfree's Lock, Event, ... live in (created on first call)."""
    global _arena_instance
    a = _arena_instance
    if a is not None:
        return a
    with _arena_lock:
        if _arena_instance is None:
            _arena_instance = _engine.Arena.create()
        return _arena_instance


def adopt_inherited_arena() -> None:
    """In a worker process: maps the arena the parent handed down (``GILFREE_ARENA_FD``)."""
    global _arena_instance
    inherited = _engine.Arena.inherited()
    # The fd is owned now; a child of this process must not take the number for its own.
    os.environ.pop("GILFREE_ARENA_FD", None)
    if inherited is not None:
        _arena_instance = inherited


def exiting() -> bool:
    """Whether interpreter shutdown has begun (no new work may start)."""
    return _exiting


def on_exit(hook: Callable[[], None]) -> None:
    """Runs ``hook`` at interpreter exit, before the engine stops (joins non-daemon Workers)."""
    _exit_hooks.append(hook)


def _at_exit() -> None:
    global _exiting
    _exiting = True
    try:
        for hook in list(_exit_hooks):
            hook()
    finally:
        shutdown()


def shutdown() -> None:
    """Kills every worker process (and a template started at import that no engine took) and
    stops the engine. Later use starts a fresh engine."""
    global _engine_instance
    with _lock:
        eng, _engine_instance = _engine_instance, None
    if eng is not None:
        eng.shutdown()
    _engine.cancel_prestart()


def worker_pids() -> list[int]:
    """Pids of every live worker process (for tests and diagnostics)."""
    eng = _engine_instance
    return [] if eng is None else eng.pids()
