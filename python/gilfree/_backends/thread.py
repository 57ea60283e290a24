"""The ``thread`` backend: Workers and Pools on OS threads of this process.

Nothing is pickled and nothing crosses a process boundary, so a Worker's ``run()`` works on the
caller's own object (its attributes need no copying back) and a task costs a thread hand-off
rather than a round trip to a worker process. CPU-bound Python code runs in parallel only on an
interpreter without the GIL; with the GIL, threads suit I/O-bound work.

What threads cannot give raises :class:`UnsupportedByBackend` (a ``NotImplementedError``) where
the API asks for it: killing a running task (``Worker.terminate()``, ``Pool.cancel()`` of a
running task), a per-task ``timeout=`` that frees the worker, and ``max_tasks_per_worker``.
"""

from __future__ import annotations

import collections
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from gilfree import _sync_args
from gilfree._backends import UnsupportedByBackend
from gilfree._dispatch import _check_retries
from gilfree.exceptions import BrokenPoolError, RemoteTraceback
from gilfree.executor import Pool as _ProcessPool
from gilfree.executor import _pool_size

if TYPE_CHECKING:
    from gilfree._backends import BackendName

__all__ = ["NAME", "Pool", "WorkerRunner"]

NAME = "thread"

# Results the lazy ``imap`` keeps in flight, per worker thread, ahead of the consumer.
_LOOKAHEAD_PER_WORKER = 4


def _unsupported(what: str, instead: str) -> UnsupportedByBackend:
    return UnsupportedByBackend(
        f"{what} is not available on the 'thread' backend: {instead} Use backend='process' for it."
    )


def _with_traceback(exc: BaseException) -> BaseException:
    """Attaches the traceback text as ``__cause__``, as the process backend does."""
    exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(exc)))
    return exc


# -- Worker ----------------------------------------------------------------------------------


class WorkerRunner:
    """Runs one :class:`gilfree.Worker` on a thread of this process."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        self._thread: threading.Thread | None = None
        self._outcome: tuple[bool, Any] | None = None

    def start(self) -> None:
        worker = self._worker
        thread = threading.Thread(target=self._run, name=worker.name, daemon=worker.daemon)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        try:
            outcome: tuple[bool, Any] = (True, self._worker.run())
        except BaseException as exc:
            outcome = (False, _with_traceback(exc))
        self._outcome = outcome

    def wait(self, timeout: float | None) -> bool:
        thread = self._thread
        assert thread is not None
        thread.join(timeout)
        if thread.is_alive():
            return False
        assert self._outcome is not None
        self._worker._finish(self._outcome)
        return True

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def terminate(self) -> None:
        if self.is_alive():
            raise _unsupported(
                "Worker.terminate()", "a running thread cannot be stopped from outside."
            )

    @property
    def ident(self) -> int | None:
        return None if self._thread is None else self._thread.ident

    @property
    def native_id(self) -> int | None:
        return None if self._thread is None else self._thread.native_id


# -- Pool ------------------------------------------------------------------------------------


def _check_timeout(timeout: float | None, call: str) -> None:
    _sync_args.refuse_task_limit(
        timeout,
        call,
        NAME,
        "a task that runs too long cannot be stopped, so its thread cannot be freed.",
    )


class _Future(Future[Any]):
    """A thread Pool's Future: ``cancel()`` of a queued task wakes ``wait``/``as_completed`` at
    once (the task's thread will skip it), under the pool's lock, so a task is either started or
    cancelled, never both."""

    def __init__(self, core: _Core) -> None:
        super().__init__()
        self._gilfree_core = core

    def cancel(self) -> bool:
        with self._gilfree_core.cond:
            if not super().cancel():
                return False
            if not self._gilfree_notified:
                self._gilfree_notified = True
                self.set_running_or_notify_cancel()
            return True

    _gilfree_notified = False


class _Core:
    """What a thread Pool's threads share: the queue, the lock, the state. The threads hold it,
    not the Pool, so a Pool nobody holds is collected (and shut down) like any object."""

    def __init__(
        self, max_workers: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
    ) -> None:
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = initargs
        self.cond = threading.Condition(threading.RLock())
        self.queue: collections.deque[
            tuple[_Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]
        ] = collections.deque()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.shutdown = False
        self.broken: BaseException | None = None

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> _Future:
        with self.cond:
            if self.broken is not None:
                raise BrokenPoolError(
                    "the pool's initializer failed; no task can run"
                ) from self.broken
            if self.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = _Future(self)
            self.queue.append((future, fn, args, kwargs))
            if self.idle < len(self.queue) and len(self.threads) < self.max_workers:
                thread = threading.Thread(
                    target=self.work, name=f"gilfree-thread-pool-{len(self.threads)}"
                )
                thread.start()
                self.threads.append(thread)
            else:
                self.cond.notify()
            _live.add(self)
            _register_exit_hook()
            return future

    def work(self) -> None:
        if self.initializer is not None:
            try:
                self.initializer(*self.initargs)
            except BaseException as exc:
                self.fail_all(_with_traceback(exc))
                return
        while True:
            with self.cond:
                self.idle += 1
                while not self.queue and not self.shutdown and self.broken is None:
                    self.cond.wait()
                self.idle -= 1
                if not self.queue or self.broken is not None:
                    return
                future, fn, args, kwargs = self.queue.popleft()
                if future._gilfree_notified or not future.set_running_or_notify_cancel():
                    future._gilfree_notified = True
                    continue
            _run_task(future, fn, args, kwargs)
            del future, fn, args, kwargs  # hold nothing while idle

    def fail_all(self, cause: BaseException) -> None:
        with self.cond:
            if self.broken is None:
                self.broken = cause
            pending, self.queue = list(self.queue), collections.deque()
            self.cond.notify_all()
            for future, *_ in pending:
                if not future._gilfree_notified and future.set_running_or_notify_cancel():
                    err = BrokenPoolError("the pool's initializer failed; no task can run")
                    err.__cause__ = cause
                    future.set_exception(err)

    def stop(self, wait: bool, cancel_futures: bool) -> None:
        with self.cond:
            self.shutdown = True
            if cancel_futures:
                pending, self.queue = list(self.queue), collections.deque()
                for future, *_ in pending:
                    future.cancel()
            self.cond.notify_all()
            threads = list(self.threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
            _live.discard(self)


def _run_task(
    future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(_with_traceback(exc))
    else:
        future.set_result(result)


# Thread pools with threads, for the exit hook (a pool's threads keep its _Core alive).
_live: weakref.WeakSet[_Core] = weakref.WeakSet()
_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        # Called before threading joins non-daemon threads (as concurrent.futures does): lets the
        # idle threads of pools never shut down end, once the queued tasks have run.
        threading._register_atexit(_stop_all_at_exit)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]


def _stop_all_at_exit() -> None:
    for core in list(_live):
        core.stop(wait=True, cancel_futures=False)


class Pool(_ProcessPool):
    """:class:`gilfree.Pool` on threads of this process (``gilfree.Pool(backend="thread")``).

    Futures are ``concurrent.futures.Future`` objects, so ``as_completed``, ``wait`` and
    ``asyncio.wrap_future`` work. An exception a task raised carries its traceback text as
    ``__cause__`` (a :class:`~gilfree.RemoteTraceback`), as on the process backend. Threads are
    started as tasks arrive, up to ``max_workers``.
    """

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
        if max_memory_per_worker is not None:
            raise _unsupported(
                "max_memory_per_worker", "threads share one process, so none can be replaced."
            )
        max_workers = _pool_size(max_workers)
        if max_tasks_per_worker is not None:
            raise _unsupported(
                "max_tasks_per_worker", "threads share one process, so replacing one frees nothing."
            )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._core = _Core(max_workers, initializer, tuple(initargs))

    # -- the hooks behind gilfree.Pool's submit/map/imap ------------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> Future[Any]:
        """Schedules ``fn(*args, **kwargs)`` on a thread and returns its Future.

        ``retries`` is accepted for parity and has nothing to do here: a thread's worker cannot
        die without the whole process.

        Raises:
            UnsupportedByBackend: if ``timeout`` is given (a thread cannot be killed).
            RuntimeError: after :meth:`shutdown`.
            BrokenPoolError: if the initializer failed.
        """
        _check_timeout(timeout, "Pool.submit()")
        _check_retries(retries)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._core.submit(fn, args, kwargs)

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | None,
        retries: int,
    ) -> Iterator[Any]:
        """Runs ``fn`` over the items on the pool's threads; yields results in order.

        Every task is submitted at once; an exception is raised when iteration reaches its item.
        """
        _check_timeout(timeout, "Pool.map()")
        _check_chunksize(chunksize)
        _check_retries(retries)
        futures = [self.submit(fn, *items) for items in zip(*iterables, strict=False)]
        return _in_order(collections.deque(futures), None)

    def _imap(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        retries: int,
    ) -> Iterator[Any]:
        """A lazy ``map`` of one-argument ``fn``, with bounded look-ahead; results in input
        order (``ordered=True``) or as they finish."""
        _check_timeout(timeout, "Pool.imap()")
        _check_chunksize(chunksize)
        _check_retries(retries)
        if self._core.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        window = self._max_workers * _LOOKAHEAD_PER_WORKER
        source = iter(iterable)

        def submit_next() -> Future[Any] | None:
            for item in source:
                return self.submit(fn, item)
            return None

        if ordered:
            return _in_order(collections.deque(), (submit_next, window))
        return _as_finished(submit_next, window)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._core.stop(wait, cancel_futures)

    def cancel(self, future: Future[Any]) -> bool:
        """Cancels a task that has not started.

        Returns:
            ``True`` if it was cancelled (now or before); ``False`` if it had finished.

        Raises:
            ValueError: if the future is not one of this pool's.
            UnsupportedByBackend: if the task is running (a thread cannot be stopped).
        """
        if not isinstance(future, _Future) or future._gilfree_core is not self._core:
            raise ValueError("this future does not belong to this pool")
        if future.cancel():
            return True
        if future.done():
            return future.cancelled()
        raise _unsupported("Pool.cancel() of a running task", "a running thread cannot be stopped.")

    def terminate(self) -> None:
        """Cancels the queued tasks and waits for the running ones (threads cannot be killed)."""
        self.shutdown(wait=True, cancel_futures=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.terminate()

    def __del__(self) -> None:
        core = self.__dict__.get("_core")
        if core is not None:
            core.stop(wait=False, cancel_futures=False)


def _check_chunksize(chunksize: int | None) -> None:
    # Threads need no batching; the argument is checked, for parity, and otherwise ignored.
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be >= 1")


def _in_order(
    pending: collections.deque[Future[Any]],
    refill: tuple[Callable[[], Future[Any] | None], int] | None,
) -> Iterator[Any]:
    try:
        if refill is not None:
            submit_next, window = refill
            while len(pending) < window and (f := submit_next()) is not None:
                pending.append(f)
        while pending:
            result = pending.popleft().result()
            if refill is not None and (f := refill[0]()) is not None:
                pending.append(f)
            yield result
    finally:  # abandoned or failed: the tasks not started yet are not run
        for f in pending:
            f.cancel()


def _as_finished(submit_next: Callable[[], Future[Any] | None], window: int) -> Iterator[Any]:
    pending: set[Future[Any]] = set()
    try:
        while len(pending) < window and (f := submit_next()) is not None:
            pending.add(f)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for _ in done:
                if (g := submit_next()) is not None:
                    pending.add(g)
            for f in done:
                yield f.result()
    finally:
        for f in pending:
            f.cancel()
