"""``gilfree.Pool``: a ``concurrent.futures.Executor`` on the engine's worker processes, and
``gilfree.map``.

The engine's scheduler (Rust) queues tasks, pipelines them to the Pool's worker processes,
detects deaths and enforces per-task timeouts. The Python side of dispatch (pickling calls and
chunks, ``Future`` objects, chunk sizes and windows, ordering, retries, the collector thread)
lives in ``_dispatch``; this module holds the public API on top of it: the Pool's options and
lifetime, and the process-wide pool that ``gilfree.map`` reuses.
"""

from __future__ import annotations

import itertools
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from gilfree import _backends, _engine, _protocol, _runtime, _serialize, _sync_args
from gilfree._dispatch import (
    _CANCELLED,
    _KILLED,
    _WAS_QUEUED,
    _check_retries,
    _collect,
    _FutureHandler,
    _PoolFuture,
    _Results,
    _unpicklable,
)
from gilfree.exceptions import BrokenPoolError

if TYPE_CHECKING:
    from typing import Self

    from gilfree._backends import BackendName

__all__ = ["Pool", "map"]

_T = TypeVar("_T")
_A = TypeVar("_A")
_B = TypeVar("_B")
_P = ParamSpec("_P")

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()

# Map chunks in flight per worker once its tasks are tiny (the scheduler's ``short_depth``):
# the worker runs them back to back instead of waiting, between two, for its slot thread to
# wake (a cross-CPU wake-up costs more than a tiny task). Submitted Futures are never
# pipelined that deep (``Future.cancel`` can take a queued one back).
_SHORT_DEPTH = 16


def _pool_size(max_workers: int | None) -> int:
    """``max_workers`` checked, or one per CPU this process may use."""
    if max_workers is None:
        return _runtime.default_workers()
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def _memory_size(value: int | str | None) -> int | None:
    """Bytes from ``max_memory_per_worker``: an int, or a string such as ``"2GB"``, ``"512MiB"``
    (kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"max_memory_per_worker must be a number of bytes or a string such as '2GB', not"
            f" {type(value).__name__}"
        )
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value)
        if m is None:
            raise ValueError(
                f"max_memory_per_worker: cannot read {value!r} as a size (e.g. '2GB', '512MiB')"
            )
        size = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if size < 1:
        raise ValueError("max_memory_per_worker must be at least 1 byte")
    return size


class Pool(Executor):
    """A pool of worker processes with the ``concurrent.futures.Executor`` API.

    Args:
        max_workers: Worker processes to use; by default one per CPU this process may use.
        initializer: Called in each worker process before its first task (and in each
            replacement process). If it raises, the pool is broken: every pending and later
            task fails with :class:`BrokenPoolError`, and no process is respawned in a loop.
        initargs: Arguments for ``initializer``.
        max_tasks_per_worker: Replace a worker process after it ran this many tasks (chunks).
        max_memory_per_worker: Replace a worker process after a task (a chunk) that took its
            peak resident memory over this many bytes: an int, or a string such as ``"2GB"``
            or ``"512MiB"``. The worker reports its peak (``VmHWM``) at the end of each task
            and the engine's scheduler compares it, so nothing polls; the task's result still
            arrives, and a task already queued behind it on that worker runs there first. This
            does not stop a task from using more: one that exhausts the machine's memory is
            killed by the kernel and fails with :class:`WorkerCrashedError` (SIGKILL, and a
            message saying it likely ran out of memory), while the pool goes on.
        backend: ``"process"``, ``"thread"`` or ``"auto"``; by default the one
            ``gilfree.config`` or ``GILFREE_BACKEND`` chose. ``Pool(backend="thread")`` returns
            a thread Pool (a subclass), which refuses what threads cannot do (per-task
            ``timeout=``, cancelling a running task) with ``NotImplementedError``.

    Functions travel with cloudpickle (lambdas, closures and code defined in ``__main__`` or
    a notebook work); arguments and results with plain pickle where that suffices.

    Beyond the stdlib: ``submit(..., timeout=)`` and ``map(..., timeout=)`` kill a task that
    runs longer than ``timeout`` seconds (its worker process is replaced and the other tasks
    carry on), :meth:`cancel` kills a running task, :meth:`imap` is lazy with bounded
    look-ahead, and a worker that dies fails only the task it was running.
    """

    def __new__(cls, *args: Any, backend: BackendName | None = None, **kwargs: Any) -> Self:
        # backend= picks the class; type() then calls that class's __init__ with the same args.
        if cls is Pool and (module := _backends.resolve(backend)) is not None:
            pool: Self = super().__new__(module.Pool)
            return pool
        return super().__new__(cls)

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        backend: BackendName | None = None,
    ) -> None:
        max_memory = _memory_size(max_memory_per_worker)
        max_workers = _pool_size(max_workers)
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError("max_tasks_per_worker must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        init = None
        if initializer is not None:
            try:
                body = _serialize.dumps((initializer, tuple(initargs)))
            except Exception as exc:
                raise _unpicklable(
                    "the initializer or its arguments", (initializer, initargs), exc
                ) from exc
            init = _protocol.encode_task(_protocol.POOL_INIT, None, body)
        self._max_workers = max_workers
        self._max_memory = max_memory
        self._ids = itertools.count()
        self._handlers: dict[int, Any] = {}
        # Seconds per item of each function this pool's maps measured, by the function's
        # pickled bytes (``_dispatch._Results``): a later map of it starts from that.
        self._item_seconds: dict[bytes, float] = {}
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        # Eager maps still cutting chunks; a shutdown that cancels nothing lets them finish
        # before it stops the scheduler (``_fed``).
        self._feeding: set[_Results] = set()
        self._scheduler_down = False
        self._broken: BaseException | None = None
        self._tp = _engine.TaskPool(
            _runtime.engine(),
            max_workers,
            init,
            max_tasks_per_worker,
            max_memory=max_memory,
            short_depth=_SHORT_DEPTH,
        )
        self._collector = threading.Thread(
            target=_collect,
            args=(weakref.ref(self), self._tp, self._handlers),
            name="gilfree-pool-collector",
            daemon=True,
        )
        self._collector.start()
        _live_pools.add(self)

    # -- concurrent.futures.Executor --------------------------------------------------------

    # The checkers see three signatures: two for calls that pass ``timeout=`` or ``retries=``,
    # then ``fn``'s own (its arguments checked against its parameters). A ParamSpec admits no
    # keyword between ``*args: P.args`` and ``**kwargs: P.kwargs`` (PEP 612), so with the
    # pool's options ``fn``'s arguments go unchecked; the Future's result type is kept in all.
    @overload
    def submit(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        timeout: float | None,
        retries: int = 0,
        **kwargs: Any,
    ) -> Future[_T]: ...
    @overload
    def submit(
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        retries: int,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[_T]: ...
    @overload
    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Future[_T]: ...
    # mypy cannot match the ParamSpec overload to this implementation (its keyword-only
    # timeout/retries beside **kwargs, which PEP 612 forbids in that overload); it accepts
    # every call the overloads allow.
    def submit(  # type: ignore[misc]
        self,
        fn: Callable[..., _T],
        /,
        *args: Any,
        timeout: float | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> Future[_T]:
        """Schedules ``fn(*args, **kwargs)`` and returns its Future.

        Args:
            fn: The callable; lambdas and closures work.
            timeout: Kill the task if it runs longer than this many seconds; its Future then
                raises ``TimeoutError``. (``timeout`` is therefore not passed on to ``fn``; wrap
                ``fn`` with ``functools.partial`` to give it one.)
            retries: Run the task again, up to this many times, if its worker process dies
                while running it (a segfault, an OOM kill, ``os._exit``); once they are used
                up the Future raises :class:`WorkerCrashedError` with ``.attempts`` set. A task
                that raises, times out or is cancelled is not retried, and one whose result
                arrived is never run again. (Also not passed on to ``fn``.)

        Raises:
            RuntimeError: after :meth:`shutdown`.
            BrokenPoolError: if the initializer failed.
            TypeError: if ``fn`` or an argument cannot be pickled (the message names it).
            UnsupportedByBackend: (a ``NotImplementedError``) for what the Pool's backend
                cannot do, such as a per-task ``timeout`` on the thread and dask backends.
        """
        return self._submit(fn, args, kwargs, timeout, retries)

    # ``submit``, ``map`` and ``imap`` are typed once, here: each calls its hook (``_submit``,
    # ``_map``, ``_imap``), which another backend's Pool (``_backends``) overrides with its own
    # rules and messages.
    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> Future[Any]:
        timeout = _sync_args.task_limit(timeout)
        _check_retries(retries)
        with self._shutdown_lock:
            self._check_open()
            body = self._pickle_call(fn, args, kwargs)
            task_id = next(self._ids)
            future: _PoolFuture[Any] = _PoolFuture(self, task_id)
            self._handlers[task_id] = _FutureHandler(future, timeout, body)
            msg = _protocol.encode_task(_protocol.POOL_CALL, self._call_meta(1), body)
            try:
                self._tp.submit(task_id, msg, 2, timeout, True, retries)
            except BaseException:
                del self._handlers[task_id]
                raise
        return future

    @overload
    def map(
        self,
        fn: Callable[[_A], _T],
        iterable: Iterable[_A],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
    ) -> Iterator[_T]: ...
    @overload
    def map(
        self,
        fn: Callable[[_A, _B], _T],
        iterable: Iterable[_A],
        iterable2: Iterable[_B],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
    ) -> Iterator[_T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
    ) -> Iterator[_T]: ...
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
    ) -> Iterator[_T]:
        """Runs ``fn`` over the items (in parallel, in chunks) and yields results in order.

        Like ``Executor.map``, the iterables are collected at once and every task runs even if
        the results are never read. Unlike it, ``timeout`` is per task: a task that runs longer
        is killed and its result raises ``TimeoutError`` when iteration reaches it (a timeout
        makes each item its own chunk). An exception is raised when iteration reaches its item,
        and ends the iteration. The iterator is for one reader thread at a time (a second one
        gets ``ValueError``); closing or dropping it stops the call.

        Args:
            fn: The function; lambdas and closures work.
            iterables: One iterable per positional argument of ``fn``.
            timeout: Per-task time limit in seconds.
            chunksize: Items per task; ``None`` sizes chunks automatically from measured run
                times (each chunk runs ~20 ms, and there are at least 4 per worker unless
                that would make chunks shorter than 0.5 ms). The pool remembers the speed it
                measured for a function: a later map of it starts from there.
            retries: Run an item again, up to this many times, if its worker process dies
                while running it (see :meth:`submit`); the items of its chunk that finished
                are kept, never re-run.
        """
        return self._map(fn, iterables, timeout, chunksize, retries)

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | None,
        retries: int,
    ) -> Iterator[Any]:
        single = len(iterables) == 1
        items: Sequence[Any]
        if single and type(iterables[0]) in (range, tuple):
            # Immutable, sized and cheap to iterate: taken as it is (a ``list`` of a million-item
            # range costs ~25 ms here, more than the tiny tasks' own dispatch).
            items = cast("Sequence[Any]", iterables[0])
        elif single:
            items = list(iterables[0])
        else:
            items = list(zip(*iterables, strict=False))
        results = self._start(
            fn,
            iter(items),
            len(items),
            True,
            chunksize,
            timeout,
            eager=True,
            retries=retries,
            single=single,
        )
        return iter(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks; see ``Executor.shutdown``.

        As with ``Executor.map``, a :meth:`map` started before counts as submitted in full:
        its items not yet handed to a worker still run (unless ``cancel_futures``). An
        :meth:`imap` reads its source lazily: the items it had not read yet fail, at their
        place in its results, with the ``RuntimeError`` that a submit after shutdown raises.

        Args:
            wait: Block until the submitted tasks are done and the workers are released.
            cancel_futures: Cancel every task that has not started.
        """
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures or not self._feeding:
                cancelled = self._stop_scheduler(cancel_futures, False)
            else:
                # A map's items were all submitted when it returned (``Executor.map``): the
                # scheduler stops once the maps still cutting chunks have cut their last.
                cancelled = []
        self._settle(cancelled)
        if wait:
            self._join()

    # -- beyond the stdlib -------------------------------------------------------------------

    def imap(
        self,
        fn: Callable[[_A], _T],
        iterable: Iterable[_A],
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Iterator[_T]:
        """A lazy ``map`` of one-argument ``fn``: consumes ``iterable`` with bounded look-ahead.

        An endless generator works, and memory stays flat: no more than a few chunks per worker
        (a dozen when chunks are tiny) are cut ahead of what the caller has consumed.
        Its iterator is for one reader thread at a time, as :meth:`map`'s is.

        Args:
            fn: The function, called as ``fn(item)``.
            iterable: The items; read lazily, from the Pool's collector thread too.
            ordered: Yield results in input order (``True``) or as they finish.
            chunksize: Items per task; ``None`` sizes chunks automatically.
            timeout: Per-task time limit in seconds (see :meth:`map`).
            retries: Re-runs of an item whose worker process died (see :meth:`map`).
        """
        return self._imap(fn, iterable, ordered, chunksize, timeout, retries)

    def _imap(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        retries: int,
    ) -> Iterator[Any]:
        length = len(cast("Sized", iterable)) if hasattr(iterable, "__len__") else None
        source = iter(iterable)
        results = self._start(
            fn,
            source,
            length,
            ordered,
            chunksize,
            timeout,
            eager=False,
            retries=retries,
            single=True,
        )
        return iter(results)

    def cancel(self, future: Future[Any]) -> bool:
        """Stops a task even if it is running: a running task's worker process is killed (and
        replaced; the other tasks carry on).

        A task stopped before it started is cancelled (``future.cancelled()``). One stopped
        while it ran cannot be (``concurrent.futures`` allows no RUNNING → CANCELLED move): its
        Future finishes with ``CancelledError`` as its exception, so ``result()`` raises
        ``CancelledError`` and ``done()`` is true, but ``cancelled()`` is ``False``.

        Returns:
            ``True`` if the task was stopped before it finished; ``False`` if it had finished
            (or was being completed) already. Calling it again never raises.
        """
        if not isinstance(future, _PoolFuture) or future._gilfree_pool is not self:
            raise ValueError("this future does not belong to this pool")
        if future.done():
            return future.cancelled()
        if self._tp.cancel(future._gilfree_id, True) in (_WAS_QUEUED, _KILLED):
            # Stopped by this call; the collector may resolve the Future first, from the
            # scheduler's Cancelled completion, in the same way.
            future._gilfree_stop()
            return True
        return False

    def terminate(self) -> None:
        """Stops everything now: cancels queued tasks, kills running ones, releases the pool."""
        with self._shutdown_lock:
            self._shutdown = True
            cancelled = self._stop_scheduler(True, True)
        self._settle(cancelled)
        self._join()

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:  # an error or Ctrl-C in the block: stop the work rather than wait for it
            self.terminate()

    def __del__(self) -> None:
        tp = self.__dict__.get("_tp")
        if tp is not None and not self.__dict__.get("_shutdown", True):
            tp.shutdown(False, False)

    # -- internals ----------------------------------------------------------------------------

    def _call_meta(self, count: int) -> int | tuple[int, bool]:
        """A ``POOL_CALL``'s meta: its item count, and whether its trailer reports the peak
        resident set (only with ``max_memory_per_worker``: it costs a read of /proc)."""
        return count if self._max_memory is None else (count, True)

    def _pickle_call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        try:
            fn_blob = _serialize.dumps(fn)
        except Exception as exc:
            raise _unpicklable("the function", fn, exc) from exc
        try:
            return _serialize.dumps((fn_blob, _protocol.CALL_ARGS_KWARGS, [(args, kwargs)]))
        except Exception:
            pass
        found = _serialize.find_unpicklable(args, kwargs)
        if found is None:
            raise TypeError("the call's arguments cannot be pickled")
        label, arg, err = found
        raise _unpicklable(label, arg, err) from err

    def _start(
        self,
        fn: Any,
        source: Iterator[Any],
        length: int | None,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        *,
        eager: bool,
        retries: int = 0,
        single: bool = False,
    ) -> _Results:
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        timeout = _sync_args.task_limit(timeout)
        _check_retries(retries)
        with self._shutdown_lock:
            self._check_open()
            results = _Results(
                self,
                fn,
                source,
                length=length,
                ordered=ordered,
                chunksize=chunksize,
                timeout=timeout,
                eager=eager,
                retries=retries,
                single=single,
            )
            if eager:
                results.feeding = True
                self._feeding.add(results)
        # Outside the lock: a map that cuts its last chunk here leaves ``_feeding`` (``_fed``).
        try:
            results.fill()
        except BaseException:
            results.close()
            raise
        return results

    def _stop_scheduler(self, cancel_pending: bool, kill_running: bool) -> list[int]:
        """Shuts the scheduler down (refusing every later chunk). Call with ``_shutdown_lock``
        held."""
        self._scheduler_down = True
        self._feeding.clear()
        return self._tp.shutdown(cancel_pending, kill_running)

    def _fed(self, results: _Results) -> None:
        """An eager map cut its last chunk; the last of them stops a scheduler that a shutdown
        left running for them."""
        with self._shutdown_lock:
            self._feeding.discard(results)
            if not self._shutdown or self._feeding or self._scheduler_down:
                return
            cancelled = self._stop_scheduler(False, False)
        self._settle(cancelled)

    def _check_open(self) -> None:
        """Raises if no task may be scheduled now. Call with ``_shutdown_lock`` held."""
        if self._broken is not None:
            raise BrokenPoolError(
                "the pool's initializer failed; no task can run"
            ) from self._broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _runtime.exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _settle(self, cancelled: list[int]) -> None:
        """Marks cancelled what shutdown took out of the queue, before shutdown returns (the
        collector would too, but later)."""
        for task_id in cancelled:
            handler = self._handlers.pop(task_id, None)
            if isinstance(handler, _Results):
                handler.complete(task_id, [], _CANCELLED, None)
            elif handler is not None:
                handler.complete([], _CANCELLED, None)

    def _join(self) -> None:
        self._tp.join(None)
        if self._collector is not threading.current_thread():
            self._collector.join()


def _shutdown_pools_at_exit() -> None:
    for pool in list(_live_pools):
        try:
            pool.terminate()
        except Exception:
            pass


_runtime.on_exit(_shutdown_pools_at_exit)
_runtime.after_fork_in_child(_live_pools.clear)  # the parent's pools: not ours to stop


# The process-wide Pool that ``gilfree.map`` reuses (its worker processes and threads stay warm
# between calls), made on first use; see ``_reusable_pool``.
_default_lock = threading.Lock()
_default_pool: Pool | None = None
_default_engine: _engine.Engine | None = None  # the engine it runs on
# ``gilfree.map`` calls running on the default pool now (a resize waits until it is unused).
_default_users = 0


def _forget_default_pool() -> None:
    """In a ``fork()`` child: the parent's default pool is not ours; the child makes its own."""
    global _default_lock, _default_pool, _default_engine, _default_users
    _default_lock = threading.Lock()
    _default_pool = _default_engine = None
    _default_users = 0


def _reusable_pool(workers: int | None) -> tuple[Pool, bool]:
    """The default pool for ``gilfree.map`` with ``workers`` processes: ``(pool, shared)``.

    The default pool is reused while its size matches; asked for another size, it is replaced
    (shut down, its idle processes go back to the engine's warm set) unless another call uses it
    now, in which case this call gets a pool of its own (``shared`` false: the caller shuts it
    down).
    """
    global _default_pool, _default_engine, _default_users
    want = _pool_size(workers)
    with _default_lock:
        pool = _default_pool
        if pool is not None and (
            pool._shutdown or pool._broken is not None or _default_engine is not _runtime.engine()
        ):
            # Shut down (at exit, or by hand), or its engine was stopped: make a fresh one.
            if not pool._shutdown:
                pool.terminate()
            pool = _default_pool = None
        if pool is not None and pool._max_workers != want:
            if _default_users:
                return Pool(want, backend="process"), False
            _default_pool = None
            pool.shutdown(wait=True)
            pool = None
        if pool is None:
            pool = _default_pool = Pool(want, backend="process")
            _default_engine = _runtime.engine()
            _default_users = 0
        _default_users += 1
        return pool, True


def _release_default_pool(pool: Pool) -> None:
    global _default_users
    with _default_lock:
        if pool is _default_pool:  # else it was replaced meanwhile, and counts from 0
            _default_users -= 1


def map(
    fn: Callable[[_A], _T],
    iterable: Iterable[_A],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
    retries: int = 0,
    backend: BackendName | None = None,
) -> list[_T]:
    """Runs ``fn`` over ``iterable`` in parallel and returns the results as a list.

    Calls share one process-wide Pool, made on the first call and kept warm for the next (its
    worker processes, and the functions they already loaded, are reused): a different
    ``workers=`` replaces it with one of that size, it is shut down at interpreter exit, and a
    ``fork()`` child makes its own. A call that fails (an item raised, a timeout, Ctrl-C) stops
    its own remaining items and leaves the pool ready for the next call: when an item raised,
    the queued items are cancelled and those already running finish (results dropped, the
    processes stay warm, as in ``concurrent.futures``); on Ctrl-C the running ones are killed
    too (their processes are replaced). A timed-out item's process is killed and replaced.

    Args:
        fn: The function, called as ``fn(item)``.
        iterable: The items; read lazily.
        workers: Worker processes; by default one per CPU.
        ordered: Results in input order (``True``) or in the order they finish.
        chunksize: Items per task; ``None`` sizes chunks automatically.
        timeout: Per-task time limit in seconds; a task that runs longer is killed and
            ``TimeoutError`` is raised.
        progress: Show a tqdm progress bar (in a terminal or a notebook), updated as results
            arrive.
        retries: Run an item again, up to this many times, if its worker process dies while
            running it (see :meth:`Pool.submit`).
        backend: Where to run (see :class:`Pool`); by default the configured one.

    Raises:
        Exception: whatever the first failing item raised, when the results reach it.
    """
    total = len(cast("Sized", iterable)) if hasattr(iterable, "__len__") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total)
    try:
        if _backends.choose(backend) != "process":
            pool, shared = Pool(workers, backend=backend), False
        else:
            pool, shared = _reusable_pool(workers)
        settled = False  # every task this call started is finished or stopped
        try:
            out: list[_T] = []
            update = bar.update if bar is not None else None
            if not shared and type(pool) is not Pool:  # another backend's Pool
                for value in pool.imap(
                    fn,
                    iterable,
                    ordered=ordered,
                    chunksize=chunksize,
                    timeout=timeout,
                    retries=retries,
                ):
                    out.append(value)
                    if update is not None:
                        update(1)
                return out
            source = iter(iterable)
            results = pool._start(
                fn,
                source,
                total,
                ordered,
                chunksize,
                timeout,
                eager=False,
                retries=retries,
                single=True,
            )
            results.kill_on_error = False
            try:
                if update is None:
                    out.extend(results)  # no Python step per item
                else:
                    for value in results:
                        out.append(value)
                        update(1)
            finally:
                # An item raised: its queued chunks were cancelled and its running ones left to
                # finish (``kill_on_error``). Ctrl-C (or anything else): all of them stop now.
                results.close()
                settled = True
            return out
        finally:
            if shared and not settled and _default_users == 1:
                # Interrupted (Ctrl-C) while its tasks were being started, before they had a
                # handle to stop them by: they may still run, so the default pool goes with them.
                pool.terminate()
            if shared:
                _release_default_pool(pool)
            else:
                pool.terminate()
    finally:
        if bar is not None:
            bar.close()


_runtime.after_fork_in_child(_forget_default_pool)
