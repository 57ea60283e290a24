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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from gilfree import _runtime
from gilfree._backends import UnsupportedByBackend
from gilfree.exceptions import BrokenPoolError, RemoteTraceback
from gilfree.executor import Pool as _ProcessPool

__all__ = ["NAME", "Pool", "WorkerRunner"]

NAME = "thread"

# Results the lazy ``imap`` keeps in flight, per worker thread, ahead of the consumer.
_LOOKAHEAD_PER_WORKER = 4


def _unsupported(what: str, instead: str) -> UnsupportedByBackend:
    return UnsupportedByBackend(
        f"{what} is not available on the 'thread' backend: {instead} "
        "Use backend='process' for it."
    )


def _with_traceback(exc: BaseException) -> BaseException:
    """Attaches the traceback text as ``__cause__``, as the process backend does."""
    exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(exc)))
    return exc


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        _with_traceback(exc)
        raise


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
    if timeout is not None:
        raise _unsupported(
            f"{call} with a per-task timeout=",
            "a task that runs too long cannot be stopped, so its thread cannot be freed. "
            "(Future.result(timeout=) still bounds how long you wait.)",
        )


class Pool(_ProcessPool):
    """:class:`gilfree.Pool` on threads of this process (``gilfree.Pool(backend="thread")``).

    Futures are ``concurrent.futures.Future`` objects, so ``as_completed``, ``wait`` and
    ``asyncio.wrap_future`` work. An exception a task raised carries its traceback text as
    ``__cause__`` (a :class:`~gilfree.RemoteTraceback`), as on the process backend.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        backend: str | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _runtime.default_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_worker is not None:
            raise _unsupported(
                "max_tasks_per_worker", "threads share one process, so replacing one frees nothing."
            )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._shutdown = False
        self._ex = ThreadPoolExecutor(
            max_workers,
            thread_name_prefix="gilfree-thread-pool",
            initializer=initializer,
            initargs=tuple(initargs),
        )

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Future:
        """Schedules ``fn(*args, **kwargs)`` on a thread and returns its Future.

        Raises:
            UnsupportedByBackend: if ``timeout`` is given (a thread cannot be killed).
            RuntimeError: after :meth:`shutdown`.
            BrokenPoolError: if the initializer failed.
        """
        _check_timeout(timeout, "Pool.submit()")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        try:
            return self._ex.submit(_call, fn, args, kwargs)
        except BrokenThreadPool as exc:
            raise BrokenPoolError("the pool's initializer failed; no task can run") from exc

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Runs ``fn`` over the items on the pool's threads; yields results in order.

        Every task is submitted at once; an exception is raised when iteration reaches its item.
        """
        _check_timeout(timeout, "Pool.map()")
        _check_chunksize(chunksize)
        futures = [self.submit(fn, *items) for items in zip(*iterables, strict=False)]
        return _in_order(collections.deque(futures), None)

    def imap(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """A lazy ``map`` of one-argument ``fn``, with bounded look-ahead; results in input
        order (``ordered=True``) or as they finish."""
        _check_timeout(timeout, "Pool.imap()")
        _check_chunksize(chunksize)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        window = self._max_workers * _LOOKAHEAD_PER_WORKER
        source = iter(iterable)

        def submit_next() -> Future | None:
            for item in source:
                return self.submit(fn, item)
            return None

        if ordered:
            return _in_order(collections.deque(), (submit_next, window))
        return _as_finished(submit_next, window)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        self._ex.shutdown(wait=wait, cancel_futures=cancel_futures)

    def cancel(self, future: Future) -> bool:
        """Cancels a task that has not started.

        Returns:
            ``True`` if it was cancelled (now or before); ``False`` if it had finished.

        Raises:
            UnsupportedByBackend: if the task is running (a thread cannot be stopped).
        """
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
        ex = self.__dict__.get("_ex")
        if ex is not None:
            ex.shutdown(wait=False)


def _check_chunksize(chunksize: int | None) -> None:
    # Threads need no batching; the argument is checked, for parity, and otherwise ignored.
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be >= 1")


def _in_order(
    pending: collections.deque[Future],
    refill: tuple[Callable[[], Future | None], int] | None,
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


def _as_finished(submit_next: Callable[[], Future | None], window: int) -> Iterator[Any]:
    pending: set[Future] = set()
    try:
        while len(pending) < window and (f := submit_next()) is not None:
            pending.add(f)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                if (g := submit_next()) is not None:
                    pending.add(g)
            for f in done:
                yield f.result()
    finally:
        for f in pending:
            f.cancel()
