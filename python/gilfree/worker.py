"""``gilfree.Worker``: the ``threading.Thread`` surface, run in a worker process.

A Worker is written exactly like a thread (subclass and override ``run()``, or pass
``target=``), but ``start()`` runs it in one of the engine's worker processes, so CPU-bound
pure-Python code runs in parallel on every core. On top of what threads give:

- ``join()`` returns what ``run()`` returned, and re-raises what it raised (with the worker's
  traceback attached as ``__cause__``);
- attributes that ``run()`` set or changed on ``self`` are copied back to this object when the
  worker finishes (each one pickled on its own; one that cannot be pickled is skipped with a
  ``RuntimeWarning`` naming it);
- ``terminate()`` stops a running Worker, and a worker process that dies makes ``join()`` raise
  :class:`~gilfree.WorkerCrashedError` instead of hanging.

Each Worker starts at once, as a thread would: if every warm process is busy, the engine
starts another one rather than queueing.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from gilfree import _backends, _protocol, _runtime, _serialize, _sync_args
from gilfree.exceptions import RemoteTraceback, SharedStateWarning, WorkerCrashedError

if TYPE_CHECKING:
    from gilfree._backends import BackendName

__all__ = ["Worker"]

_counter = itertools.count(1)

# What run() returns, and so what join() returns: ``class MyWorker(gilfree.Worker[int])``, or
# inferred from ``target=``.
_T = TypeVar("_T")

# Started Workers whose outcome has not been read yet: kept alive, like running threads, and
# joined (or, for daemons, killed) at interpreter exit.
_live_lock = threading.Lock()
_live: set[Worker[Any]] = set()

# Attributes that describe the call rather than the Worker's own state: never copied back.
_CALL_ATTRS = ("_target", "_args", "_kwargs")

# The key, among the reply's changed attributes, that carries the shared state ``run()``
# changed in the worker (see ``_shared_state``); no attribute name starts with a NUL.
SHARED_STATE_KEY = "\x00gilfree.shared_state"

# The variables a SharedStateWarning was issued for, as ``(where, name)``: once each.
_warned: set[tuple[str, str]] = set()


class _State:
    """The bookkeeping of one Worker; never pickled."""

    __slots__ = (
        "daemon",
        "done",
        "in_worker",
        "join_lock",
        "lease",
        "name",
        "outcome",
        "pid",
        "runner",
        "started",
    )

    def __init__(self, name: str, daemon: bool) -> None:
        self.name = name
        self.daemon = daemon
        self.started = False
        self.done = False
        self.in_worker = False
        self.lease: Any = None
        self.pid: int | None = None
        self.outcome: tuple[bool, Any] | None = None
        self.join_lock = threading.Lock()
        # The backend's runner (see ``_backends``); None on the process backend.
        self.runner: Any = None


class Worker(Generic[_T]):
    """A unit of work that runs in its own worker process, with ``threading.Thread``'s API.

    ``Worker`` is generic in what ``run()`` returns, which is what ``join()`` returns: a
    subclass names it (``class Sum(gilfree.Worker[int])`` with ``def run(self) -> int``), and
    ``gilfree.Worker(target=f)`` takes it from ``f``'s return type.

    Args:
        group: Must be ``None``; kept so positional calls match ``threading.Thread``.
        target: The callable that ``run()`` calls, if ``run()`` is not overridden.
        name: The Worker's name; by default ``"Worker-N"``.
        args: Positional arguments for ``target``.
        kwargs: Keyword arguments for ``target``.
        daemon: Daemon Workers are killed at interpreter exit; others are joined, as threads
            are. By default inherited from the current thread.
        backend: Where ``run()`` runs: ``"process"``, ``"thread"`` or ``"auto"``; by default
            the one ``gilfree.config`` or ``GILFREE_BACKEND`` chose (see the README's backend
            table). On ``"thread"`` nothing is pickled and ``terminate()`` is not available.

    Everything a Worker carries to its process (``target``, ``args``, ``kwargs`` and every
    attribute of ``self``) is pickled at ``start()``; anything that cannot be pickled fails
    there with a ``TypeError`` naming it.
    """

    def __init__(
        self,
        group: None = None,
        target: Callable[..., _T] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        backend: BackendName | None = None,
    ) -> None:
        if group is not None:
            raise AssertionError("group argument must be None for now")
        n = next(_counter)
        if name is None:
            name = f"Worker-{n}"
            target_name = getattr(target, "__name__", None)
            if target_name:
                name += f" ({target_name})"
        else:
            name = str(name)
        if daemon is None:
            daemon = threading.current_thread().daemon
        self._target = target
        self._args = args
        self._kwargs: Mapping[str, Any] = {} if kwargs is None else kwargs
        self._gilfree = _State(name, bool(daemon))
        backend_module = _backends.resolve(backend)
        if backend_module is not None:
            self._gilfree.runner = backend_module.WorkerRunner(self)
            return
        # Start the engine (and its warm processes, in the background) now, so they are ready,
        # or nearly, by the time this Worker starts.
        if not _runtime.exiting():
            _runtime.engine()

    # -- what runs in the worker -------------------------------------------------------------

    def run(self) -> _T:
        """The Worker's activity; override it, or pass ``target=``.

        Runs in the worker process. Its return value is what ``join()`` returns.
        """
        if self._target is not None:
            return self._target(*self._args, **self._kwargs)
        # Neither target= nor an override: nothing runs, and join() returns None, as a
        # Thread's does (such a Worker's type argument is left for the checker to infer).
        return cast("_T", None)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts ``run()`` in a worker process, at once.

        Raises:
            RuntimeError: if called twice (as ``threading.Thread.start``).
            TypeError: if the target, an argument or an attribute cannot be pickled; the
                message names it.
        """
        st = self._state()
        if st.started:
            raise RuntimeError("threads can only be started once")
        if st.in_worker:
            raise RuntimeError("a Worker cannot be restarted inside its worker process")
        if st.runner is not None:
            st.runner.start()
            st.started = True
            return
        body = self._pickle()
        lease = _runtime.engine().acquire()
        try:
            lease.send(_protocol.encode_task(_protocol.RUN_WORKER, (st.name, st.daemon), body))
        except BaseException:
            lease.kill()
            lease.release()
            raise
        st.lease = lease
        st.pid = lease.pid
        st.started = True
        with _live_lock:
            _live.add(self)

    @overload
    def join(self, timeout: None = None) -> _T: ...
    @overload
    def join(self, timeout: float) -> _T | None: ...
    def join(self, timeout: float | None = None) -> _T | None:
        """Waits until the Worker finishes, and returns what ``run()`` returned.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            ``run()``'s return value, or ``None`` if ``timeout`` passed first (then
            ``is_alive()`` is still true, as with threads; see :meth:`result` for a variant
            that raises instead).

        Raises:
            RuntimeError: if the Worker was not started.
            WorkerCrashedError: if the worker process died (or was terminated).
            BaseException: whatever ``run()`` raised, with the worker's traceback as
                ``__cause__``.
        """
        done = self._wait(timeout)
        if not done:
            return None
        return self._outcome()

    def result(self, timeout: float | None = None) -> _T:
        """Like :meth:`join`, but raises ``TimeoutError`` if ``timeout`` passes first."""
        if not self._wait(timeout):
            raise TimeoutError(f"{self.name} did not finish within {timeout} seconds")
        return self._outcome()

    def is_alive(self) -> bool:
        """Whether ``run()`` has started and not yet finished (it never blocks)."""
        st = self._state()
        if st.in_worker:
            return True
        if not st.started or st.done:
            return False
        if st.runner is not None:
            alive: bool = st.runner.is_alive()
            return alive
        lease = st.lease
        try:
            return lease is not None and not lease.has_incoming()
        except RuntimeError:  # released by a concurrent join
            return False

    def terminate(self) -> None:
        """Stops a running Worker by killing its process (which the engine replaces).

        A later ``join()`` raises :class:`WorkerCrashedError`. Does nothing if the Worker has
        already finished.
        """
        st = self._state()
        if not st.started:
            raise RuntimeError("cannot terminate a Worker before it is started")
        if st.runner is not None:
            st.runner.terminate()
            return
        lease = st.lease
        if lease is not None and not st.done:
            try:
                lease.kill()
            except RuntimeError:  # released by a concurrent join: it had finished
                pass

    # -- threading.Thread's properties -------------------------------------------------------

    @property
    def name(self) -> str:
        """The Worker's name (not necessarily unique)."""
        return self._state().name

    @name.setter
    def name(self, name: str) -> None:
        self._state().name = str(name)

    @property
    def daemon(self) -> bool:
        """Whether the Worker is killed (True) or joined (False) at interpreter exit."""
        return self._state().daemon

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        st = self._state()
        if st.started:
            raise RuntimeError("cannot set daemon status of active thread")
        st.daemon = bool(daemonic)

    @property
    def ident(self) -> int | None:
        """The worker process's pid once started (a Worker's identity is its process); on the
        thread backend, the thread's ident."""
        st = self._state()
        return st.runner.ident if st.runner is not None else st.pid

    @property
    def native_id(self) -> int | None:
        """The worker process's pid once started, else ``None``; on the thread backend, the
        thread's native id."""
        st = self._state()
        return st.runner.native_id if st.runner is not None else st.pid

    def getName(self) -> str:
        """Deprecated alias of :attr:`name`, as in ``threading``."""
        warnings.warn(
            "getName() is deprecated, get the name attribute instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.name

    def setName(self, name: str) -> None:
        """Deprecated alias of setting :attr:`name`, as in ``threading``."""
        warnings.warn(
            "setName() is deprecated, set the name attribute instead",
            DeprecationWarning,
            stacklevel=2,
        )
        self.name = name

    def isDaemon(self) -> bool:
        """Deprecated alias of :attr:`daemon`, as in ``threading``."""
        warnings.warn(
            "isDaemon() is deprecated, get the daemon attribute instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.daemon

    def setDaemon(self, daemonic: bool) -> None:
        """Deprecated alias of setting :attr:`daemon`, as in ``threading``."""
        warnings.warn(
            "setDaemon() is deprecated, set the daemon attribute instead",
            DeprecationWarning,
            stacklevel=2,
        )
        self.daemon = daemonic

    def __repr__(self) -> str:
        st = self.__dict__.get("_gilfree")
        if st is None:
            return f"<{type(self).__name__}(<uninitialized>)>"
        status = "initial"
        if st.started:
            status = "started" if not st.done else "stopped"
        if st.daemon:
            status += " daemon"
        if st.pid is not None:
            status += f" {st.pid}"
        return f"<{type(self).__name__}({st.name}, {status})>"

    # -- internals -----------------------------------------------------------------------------

    def _state(self) -> _State:
        try:
            state: _State = self.__dict__["_gilfree"]
            return state
        except KeyError:
            raise RuntimeError("Worker.__init__() not called") from None

    def _pickle(self) -> bytes:
        """The Worker's class and each attribute, pickled one by one so that a failure names
        the attribute, and so the worker can tell which ones ``run()`` changed."""
        state: dict[str, bytes] = {}
        for key, value in self.__dict__.items():
            if key == "_gilfree":
                continue
            try:
                state[key] = _serialize.dumps(value)
            except Exception as exc:
                raise TypeError(self._unpicklable_message(key, value, exc)) from exc
        return _serialize.dumps((_class_bytes(type(self), self.name), state))

    def _unpicklable_message(self, key: str, value: Any, exc: BaseException) -> str:
        found = _find_thread_only(key, value)
        if found is not None:
            where, hint = found
            return f"cannot start {self.name}: {where} is a {hint} (pickling failed: {exc})"
        what = f"attribute {key!r}"
        if key == "_target":
            what = "target"
        elif key in ("_args", "_kwargs"):
            args, kwargs = (value, None) if key == "_args" else ((), value)
            culprit = _serialize.find_unpicklable(args, kwargs)
            if culprit is not None:
                label, item, item_exc = culprit
                return (
                    f"cannot start {self.name}: {label} cannot be pickled: "
                    + _serialize.describe_failure(item, item_exc)
                )
            what = "arguments" if key == "_args" else "keyword arguments"
        return (
            f"cannot start {self.name}: {what} cannot be pickled: "
            + _serialize.describe_failure(value, exc)
        )

    def _wait(self, timeout: float | None) -> bool:
        """Waits for the outcome; True once it is known, False on timeout."""
        st = self._state()
        if not st.started:
            raise RuntimeError("cannot join thread before it is started")
        if st.in_worker:
            raise RuntimeError("cannot join current thread")
        timeout = _sync_args.join_wait(timeout)
        if st.runner is not None:
            return st.done or st.runner.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not st.join_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if st.done:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = st.lease.recv(remaining)
            except WorkerCrashedError as exc:
                exc.args = (f"{st.name}: {exc.args[0]}", *exc.args[1:])
                self._finish((False, exc))
                return True
            if msg is None:
                return False
            self._finish(self._apply_reply(msg))
            return True
        finally:
            st.join_lock.release()

    def _apply_reply(self, msg: bytes) -> tuple[bool, Any]:
        status, value, changed, deleted, skipped = _protocol.decode_reply(msg)
        shared = changed.pop(SHARED_STATE_KEY, None)
        if shared is not None:
            self._warn_shared_state(_serialize.loads(shared))
        for key, blob in changed.items():
            try:
                self.__dict__[key] = _serialize.loads(blob)
            except Exception as exc:
                warnings.warn(
                    f"{self.name}: attribute {key!r} set by run() could not be unpickled here and was not copied back: {exc!r}",
                    RuntimeWarning,
                    stacklevel=4,
                )
        for key in deleted:
            self.__dict__.pop(key, None)
        for key, reason in skipped:
            warnings.warn(
                f"{self.name}: attribute {key!r} set by run() could not be pickled and was not copied back: {reason}",
                RuntimeWarning,
                stacklevel=4,
            )
        if status == _protocol.OK:
            return True, _serialize.loads(value)
        if status == _protocol.RAISED:
            exc_blob, tb_text = value
            raised: BaseException = _serialize.loads(exc_blob)
            raised.__cause__ = RemoteTraceback(tb_text)
            return False, raised
        return False, TypeError(
            f"{self.name}: run() returned a value that cannot be pickled: {value}"
        )

    def _warn_shared_state(self, found: list[tuple[str, str, str, str]]) -> None:
        for kind, scope, where, name in found:
            if (where, name) in _warned:
                continue
            _warned.add((where, name))
            if kind == "rebound" and scope == "global":
                what = f"reassigned the global {name!r} of {where}"
                fix = "use a gilfree.Value for a number"
            elif kind == "rebound":
                what = f"reassigned {name!r}, a variable that {where} closes over,"
                fix = "use a gilfree.Value for a number"
            elif scope == "global":
                what = f"changed the module-level {kind} {name!r} of {where}"
                fix = "use a gilfree.Queue to send items back"
            else:
                what = f"changed the {kind} {name!r} that {where} closes over"
                fix = "use a gilfree.Queue to send items back"
            warnings.warn(
                f"{self.name}: run() {what} in its worker process; the change stayed there, "
                f"and {name!r} here is unchanged. Return the value from run() (join() returns "
                f"it), keep it on self (attributes are copied back at join()), or {fix}. "
                "See docs/shared-state.md.",
                SharedStateWarning,
                stacklevel=4,
            )

    def _finish(self, outcome: tuple[bool, Any]) -> None:
        st = self._state()
        st.outcome = outcome
        st.done = True
        lease, st.lease = st.lease, None
        if lease is not None:
            lease.release()
        with _live_lock:
            _live.discard(self)

    def _outcome(self) -> _T:
        # Set before done is (see _finish); the checkers cannot know that.
        ok, value = self._state().outcome  # type: ignore[misc]  # pyright: ignore[reportGeneralTypeIssues, reportUnknownVariableType]
        if ok:
            return cast("_T", value)  # what run() returned, unpickled
        raise value


# A class defined in __main__ travels by value, and pickling it by value costs ~160 µs; it is
# done once per class (the worker keeps the rebuilt class, keyed by these bytes, likewise).
_class_blobs: weakref.WeakKeyDictionary[type, bytes] = weakref.WeakKeyDictionary()


def _find_thread_only(key: str, value: Any) -> tuple[str, str] | None:
    """The thread-only object (``queue.Queue``, ``threading.Lock``...) in one attribute of a
    Worker that could not be pickled, as ``(where, hint)``; ``None`` if there is none."""
    if key == "_target":
        return _serialize.find_thread_only(value, "target")
    items: list[tuple[str, Any]]
    if key == "_args" and isinstance(value, list | tuple):
        # isinstance narrows the Any to list/tuple/dict of unknown items; they are Any.
        items = [(f"argument {i}", v) for i, v in enumerate(value)]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    elif key == "_kwargs" and isinstance(value, dict):
        items = [(f"keyword argument {k!r}", v) for k, v in value.items()]  # pyright: ignore[reportUnknownVariableType]
    else:
        items = [(f"attribute {key!r}", value)]
    for label, item in items:
        found = _serialize.find_thread_only(item, label)
        if found is not None:
            return found
    return None


def _class_bytes(cls: type, name: str) -> bytes:
    blob = _class_blobs.get(cls)
    if blob is None:
        try:
            blob = _serialize.dumps(cls)
        except Exception as exc:
            found = _serialize.find_thread_only(cls, f"class {cls.__qualname__}")
            if found is not None:
                raise TypeError(
                    f"cannot start {name}: {found[0]} is a {found[1]} (pickling failed: {exc})"
                ) from exc
            raise TypeError(
                f"cannot start {name}: its class {cls.__qualname__} cannot be pickled: {exc}"
            ) from exc
        _class_blobs[cls] = blob
    return blob


def _join_at_exit() -> None:
    """At interpreter exit: join non-daemon Workers (as threads are joined), kill daemons."""
    while True:
        with _live_lock:
            pending = list(_live)
        if not pending:
            return
        for w in pending:
            if w.daemon:
                w.terminate()
                with _live_lock:
                    _live.discard(w)
                continue
            try:
                w.join()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                print(f"Exception in {w.name} (never joined):", file=sys.stderr)
                traceback.print_exception(exc, file=sys.stderr)


def _forget_after_fork() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    _live.clear()  # the parent's Workers: not ours to join at exit


_runtime.on_exit(_join_at_exit)
_runtime.after_fork_in_child(_forget_after_fork)
