"""``gilfree.Pool``: a ``concurrent.futures.Executor`` on the engine's worker processes.

The engine's scheduler (Rust) queues tasks, pipelines them to the Pool's worker processes,
detects deaths and enforces per-task timeouts; this module owns the Python side: pickling,
``Future`` objects, chunking, ordering and progress.

How a task flows:

1. ``submit`` (or a ``map``/``imap`` chunk) pickles the call and hands bytes to the scheduler
   with an id; a handler for that id waits in ``_Pool._handlers``.
2. A worker process runs each item and sends one frame per item as it finishes, then a trailer
   with the chunk's run time (``_protocol``).
3. The Pool's collector thread takes finished tasks from the scheduler in batches (the GIL is
   released while it waits) and hands each to its handler, which resolves a ``Future`` or fills
   a ``map``'s result slots, and refills the chunk window.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import re
import signal as _signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from typing import Any

from gilfree import _backends, _engine, _protocol, _runtime, _serialize
from gilfree.exceptions import BrokenPoolError, RemoteTraceback, WorkerCrashedError

__all__ = ["Pool", "map"]

# How a task ended, and what a cancel did: the engine's codes (crates/gilfree-py/src/pool.rs).
_DONE, _CRASHED, _TIMED_OUT = _engine.END_DONE, _engine.END_CRASHED, _engine.END_TIMED_OUT
_CANCELLED, _BROKEN = _engine.END_CANCELLED, _engine.END_BROKEN
_NOT_FOUND, _WAS_QUEUED = _engine.CANCEL_NOT_FOUND, _engine.CANCEL_CANCELLED
_RUNNING, _KILLED = _engine.CANCEL_RUNNING, _engine.CANCEL_KILLED

# Automatic chunking aims for chunks that run about this long: long enough that the per-chunk
# cost (~100 µs round trip) vanishes, short enough to balance load and show progress.
_TARGET_CHUNK_SECONDS = 0.02
# Chunks in flight per worker (the look-ahead of imap): more when chunks are small.
_WINDOW = 3
_SMALL_CHUNK_WINDOW = 12
# A known-length input is cut into at least this many chunks per worker, for load balance.
_MIN_CHUNKS_PER_WORKER = 4

_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _unpicklable(what: str, obj: Any, exc: BaseException) -> TypeError:
    return TypeError(f"{what} cannot be pickled: {_serialize.describe_failure(obj, exc)}")


def _pool_size(max_workers: int | None) -> int:
    """``max_workers`` checked, or one per CPU this process may use."""
    if max_workers is None:
        return _runtime.default_workers()
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def _check_timeout(timeout: float | None) -> None:
    """Raises now what the engine would raise when the task is queued: the engine's one rule
    for its timeouts (``ValueError`` for a negative or NaN one; one beyond
    ``threading.TIMEOUT_MAX`` means no limit)."""
    _engine.check_timeout(timeout)


def _check_retries(retries: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError("retries must be >= 0")


def _decode_frame(frame: bytes) -> tuple[bool, Any]:
    """One item's outcome: ``(True, value)`` or ``(False, exception)`` (frames: ``_protocol``).

    Unpickling runs code of the result's own (a ``__reduce__``); whatever it raises, even
    ``SystemExit``, fails this item only, as a ``pickle.UnpicklingError`` caused by it.
    """
    try:
        if frame[:1] != _protocol.FAILED:
            return True, _serialize.loads(frame)
        status, payload = _serialize.loads(frame[1:])
        if status == _protocol.RAISED:
            exc_blob, tb_text = payload
            exc = _serialize.loads(exc_blob)
            exc.__cause__ = RemoteTraceback(tb_text)
            return False, exc
    except BaseException as exc:
        return False, _unpickling_error(exc)
    return False, TypeError(f"the task's result cannot be pickled: {payload}")


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
# A worker killed by SIGKILL whose resident set had reached this share of the pool's limit most
# likely ran out of memory.
_NEAR_LIMIT = 0.8


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


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _unpickling_error(exc: BaseException) -> pickle.UnpicklingError:
    err = pickle.UnpicklingError(
        f"the task's outcome could not be unpickled in this process: {exc!r}"
    )
    err.__cause__ = exc
    return err


def _decode_frames(frames: list[bytes]) -> list[tuple[bool, Any]]:
    """:func:`_decode_frame` of each frame, with a fast path for plain pickled results (the
    per-item cost of tiny tasks): one ``pickle.loads`` each, nothing else."""
    _serialize.reap()  # what _serialize.loads does per load, once per chunk here
    loads = pickle.loads
    out: list[tuple[bool, Any]] = []
    append = out.append
    for frame in frames:
        if frame[:1] == b"\x80":  # a plain pickle stream: the item returned this value
            try:
                append((True, loads(frame)))
            except BaseException as exc:
                append((False, _unpickling_error(exc)))
        else:
            append(_decode_frame(frame))
    return out


def _end_error(
    end: int,
    info: Any,
    timeout: float | None,
    attempts: int | None = None,
    max_memory: int | None = None,
) -> BaseException:
    """The exception for an item that did not finish: crash, timeout, cancel or broken pool.

    ``attempts`` overrides the scheduler's count of runs for a crash (a ``map`` item re-run
    as part of a new chunk: the caller knows its runs across chunks). ``max_memory``: the
    pool's limit, to tell an out-of-memory kill in the message."""
    if end == _CRASHED:
        pid, exitcode, signal, runs, peak_rss, death = info
        if attempts is None:
            attempts = runs
        note = ""
        if signal == _signal.SIGKILL:
            # Timeouts and cancels end otherwise: a SIGKILL here came from outside the pool,
            # most often from the kernel's OOM killer.
            if (
                max_memory is not None
                and peak_rss is not None
                and (peak_rss >= _NEAR_LIMIT * max_memory)
            ):
                note = (
                    f" (SIGKILL) with its resident memory at {_mb(peak_rss)}, near the pool's"
                    f" max_memory_per_worker of {_mb(max_memory)}: it likely ran out of memory"
                    " (the kernel's OOM killer sends SIGKILL)"
                )
            else:
                note = (
                    " (SIGKILL; unless someone sent it, this is the kernel's OOM killer: the"
                    " task likely ran out of memory)"
                )
        tried = f" (it ran {attempts} times; each time its worker died)" if attempts > 1 else ""
        return WorkerCrashedError(
            f"{death} while running this task{note}{tried}", exitcode, signal, pid, attempts
        )
    if end == _TIMED_OUT:
        return TimeoutError(
            f"the task ran longer than its timeout of {timeout} s; its worker process {info} was killed"
        )
    if end == _BROKEN:
        err = BrokenPoolError("the pool's initializer failed; no task can run")
        try:
            err.__cause__ = _decode_init_failure(info)
        except Exception:
            pass
        return err
    return CancelledError()


def _decode_init_failure(frame: bytes) -> BaseException:
    """The initializer's exception, from the frame a worker sent (see ``_protocol``), or the
    engine's own failure (a worker process could not be started), whose frame is a message."""
    if frame[:1] == _protocol.ENGINE_FAILURE:
        return RuntimeError(frame[1:].decode("utf-8", "replace"))
    exc_blob, tb_text = _serialize.loads(frame[1:])
    exc = _serialize.loads(exc_blob)
    exc.__cause__ = RemoteTraceback(tb_text)
    return exc


class _PoolFuture(Future):
    """The Future of a :meth:`Pool.submit` task, with the ``concurrent.futures`` states.

    - PENDING while the task is queued. ``cancel()`` takes it out of the queue: the Future is
      cancelled, and ``wait``/``as_completed`` see it at once. A task already handed to a
      worker to run after its current one (the pool pipelines tiny tasks) is still PENDING,
      but ``cancel()`` refuses it, since only a kill could stop it now; :meth:`Pool.cancel`
      does that.
    - RUNNING from when the pool hands the task to a worker process with nothing ahead of it
      (the worker runs it next): ``running()`` is true and ``cancel()`` returns ``False``,
      as in the stdlib. The Future's own state moves when ``running()`` or ``cancel()`` asks,
      or when a later completion brings the start report, whichever is first.
    - Done: a result, an exception, or cancelled. :meth:`Pool.cancel` stops a task in any
      state; a task stopped while RUNNING cannot be marked cancelled (the stdlib allows no
      RUNNING → CANCELLED move), so its Future finishes with a ``CancelledError`` as its
      exception: ``result()`` raises it, ``cancelled()`` stays ``False``.

    Only the public ``Future`` API is used; ``set_running_or_notify_cancel`` is called exactly
    once per Future (when it starts, or when it is cancelled), so every waiter wakes.
    """

    def __init__(self, pool: Pool, task_id: int) -> None:
        super().__init__()
        self._gilfree_pool = pool
        self._gilfree_id = task_id
        self._gilfree_lock = threading.Lock()
        self._gilfree_notified = False

    def _gilfree_notify(self) -> None:
        """``set_running_or_notify_cancel``, once: PENDING → RUNNING, or a cancel's waiters
        notified."""
        with self._gilfree_lock:
            if self._gilfree_notified:
                return
            self._gilfree_notified = True
        self.set_running_or_notify_cancel()

    def _gilfree_stop(self) -> bool:
        """Resolves a Future whose task the pool stopped: cancelled if it was PENDING, else
        ``CancelledError`` as its exception. ``False`` if it had finished already."""
        if Future.cancel(self):
            self._gilfree_notify()
            return True
        try:
            self.set_exception(CancelledError("the task was stopped while it ran"))
        except InvalidStateError:  # it finished first
            return self.cancelled()
        return True

    def running(self) -> bool:
        """Whether the task runs in a worker now. The pool reports starts along with later
        completions (no wake-up per start), so a Future still PENDING asks the scheduler."""
        if super().running():
            return True
        if self.done() or not self._gilfree_pool._tp.is_running(self._gilfree_id):
            return False
        self._gilfree_notify()
        return super().running()

    def cancel(self) -> bool:
        """Cancels the task if it has not started; ``False`` once it runs or is done."""
        if self.running() or self.done():
            return self.cancelled()
        outcome = self._gilfree_pool._tp.cancel(self._gilfree_id, False)
        if outcome == _WAS_QUEUED:
            if Future.cancel(self):
                self._gilfree_notify()
                return True
            # Marked running by an earlier start, then put back in the queue: the pool's
            # cancelled completion resolves it (see the class docstring).
            return False
        if outcome == _RUNNING and self._gilfree_pool._tp.is_running(self._gilfree_id):
            # Running already; its start report may still be on its way.
            self._gilfree_notify()
        # Else it waits in a worker's pipeline, behind the running task: already handed to
        # that worker, it can no longer be taken back without killing the worker.
        return self.cancelled()

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``; Ctrl-C while waiting also stops the task (kills its worker
        process if it runs), since nobody is left to want its result."""
        try:
            return super().result(timeout)
        except KeyboardInterrupt:
            self._gilfree_pool.cancel(self)
            raise


class _FutureHandler:
    """Resolves one ``submit``'s Future."""

    __slots__ = ("blob", "future", "timeout")

    def __init__(self, future: _PoolFuture, timeout: float | None, body: bytes) -> None:
        self.future = future
        self.timeout = timeout
        self.blob = _pinning(body)

    def start(self) -> None:
        self.future._gilfree_notify()

    def complete(self, frames: list[bytes], end: int, info: Any) -> None:
        if self.blob is not None and end in (_CANCELLED, _BROKEN):
            _serialize.discard(self.blob)  # never loaded: free the shared memory it pins
        future = self.future
        if end == _CANCELLED:
            future._gilfree_stop()
            return
        if future.done():  # cancelled while queued
            return
        # The item's frame arrives as soon as it finishes: if the worker died after that, the
        # result still stands.
        ok, value = (
            _decode_frame(frames[0])
            if frames
            else (
                False,
                _end_error(end, info, self.timeout, None, future._gilfree_pool._max_memory),
            )
        )
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except InvalidStateError:  # stopped by Pool.cancel meanwhile
            pass


def _pinning(body: bytes) -> bytes | None:
    """``body`` if it carries large buffers in shared memory (which stay pinned until a worker
    loads them, or until ``_serialize.discard``), else ``None``."""
    return body if _serialize.pins_shared_memory(body) else None


class _Results:
    """The result slots of one ``map``/``imap`` call, filled by the collector thread.

    Chunks are cut from ``source`` on demand: the call's thread cuts the first window, and the
    collector cuts more as chunks finish, so a ``map`` runs to the end even if nobody iterates,
    while an ``imap`` stops cutting once ``window`` chunks wait to be consumed.
    """

    def __init__(
        self,
        pool: Pool,
        fn: Any,
        source: Iterator[tuple[Any, ...]],
        *,
        length: int | None,
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        eager: bool,
        retries: int = 0,
        single: bool = False,
    ) -> None:
        self.pool = pool
        self.retries = retries
        self.single = single  # every item of source is a 1-tuple: call fn(item)
        # The sys.path and cwd the call's chunks run with: those of the call's start (one
        # getcwd() per call, not per chunk).
        self.context = _protocol.context()
        # When an item's exception ends the iteration: kill the call's running chunks (else
        # they finish, their results dropped, and their worker processes stay warm).
        self.kill_on_error = True
        try:
            self.fn_blob = _serialize.dumps(fn)
        except Exception as exc:
            raise _unpicklable("the function", fn, exc) from exc
        self.source = source
        self.remaining = length
        self.ordered = ordered
        self.fixed_chunk = 1 if timeout is not None else chunksize
        self.timeout = timeout
        self.eager = eager
        self.cond = threading.Condition(threading.Lock())
        # Guards cutting, submitting and completing chunks (call's thread and collector).
        self.lock = threading.RLock()
        self.stalled = False  # imap: cutting paused until the caller consumes more
        self.next_index = 0  # index of the next item to cut from source
        self.yielded = 0  # ordered: index of the next item to yield
        # Outcomes by the index of a run's first item (ordered) or in arrival order (unordered).
        self.slots: dict[int, list[tuple[bool, Any]]] = {}
        self.arrivals: collections.deque[list[tuple[bool, Any]]] = collections.deque()
        # task id → (first index, items, the pickled chunk if it pins shared memory, runs its
        # first item had before this chunk: a retried item travels in a new chunk)
        self.outstanding: dict[int, tuple[int, list[Any], bytes | None, int]] = {}
        self.source_done = False
        self.source_error: BaseException | None = None
        self.closed = False
        self.per_item: float | None = None  # measured seconds per item, smoothed
        self.chunk = 1

    # -- cutting and submitting chunks (call's thread, then collector thread) --------------

    def _next_size(self) -> int:
        if self.fixed_chunk is not None:
            return self.fixed_chunk
        if self.per_item is not None:
            want = int(_TARGET_CHUNK_SECONDS / max(self.per_item, 1e-7))
            self.chunk = max(1, min(want, self.chunk * 4))
        size = self.chunk
        if self.remaining is not None:
            balance = -(-self.remaining // (self.pool._max_workers * _MIN_CHUNKS_PER_WORKER))
            size = max(1, min(size, balance))
        return size

    def _window(self) -> int:
        """How many chunks may be in flight. Small chunks need many: refills come from the
        collector thread, whose wake-up (tens of µs on this kind of machine) must not leave the
        workers idle; big chunks need few (each keeps a worker busy for a while)."""
        size = self.fixed_chunk if self.fixed_chunk is not None else self.chunk
        return self.pool._max_workers * (_SMALL_CHUNK_WINDOW if size <= 16 else _WINDOW)

    def fill(self) -> None:
        """Cuts and submits chunks until the window is full or the source is exhausted."""
        with self.lock:
            self.stalled = False
            while not self.source_done and not self.closed:
                window = self._window()
                if len(self.outstanding) >= window:
                    break
                if not self.eager and self.next_index - self.yielded >= window * self.chunk:
                    self.stalled = True
                    return
                size = self._next_size()
                try:
                    items = list(itertools.islice(self.source, size))
                except BaseException as exc:  # the caller's iterable raised: surfaces at its place
                    self.source_error = exc
                    self.source_done = True
                    break
                if len(items) < size:
                    self.source_done = True
                if not items:
                    break
                first = self.next_index
                self.next_index += len(items)
                if self.remaining is not None:
                    self.remaining -= len(items)
                self._submit(first, items)
        if self.source_done:
            with self.cond:
                self.cond.notify_all()

    def _submit(self, first: int, items: list[Any], prior: int = 0) -> None:
        body = self._pickle_chunk(first, items)
        if body is None:
            return
        pool = self.pool
        task_id = next(pool._ids)
        self.outstanding[task_id] = (first, items, _pinning(body), prior)
        pool._handlers[task_id] = self
        msg = _protocol.encode_task(
            _protocol.POOL_CALL, pool._call_meta(len(items)), body, self.context
        )
        # The scheduler re-runs the chunk while its worker dies before the first item's frame
        # (so before anything of it finished); later items are re-sent from _complete.
        retries = max(0, self.retries - prior)
        try:
            pool._tp.submit(task_id, msg, len(items) + 1, self.timeout, False, retries)
        except BaseException:
            pool._handlers.pop(task_id, None)
            del self.outstanding[task_id]
            raise

    def _pickle_chunk(self, first: int, items: list[Any]) -> bytes | None:
        if self.single:  # fn(item): the items travel bare, not as 1-tuples
            call = (self.fn_blob, _protocol.CALL_ONE, [item for (item,) in items])
        else:
            call = (self.fn_blob, _protocol.CALL_STAR, items)
        try:
            return _serialize.dumps(call)
        except Exception:
            pass
        # Find the culprits: each fails at its own place; the rest still run.
        good: list[tuple[int, Any]] = []
        for i, item in enumerate(items):
            try:
                _serialize.dumps(item)
            except Exception as exc:
                self._put(first + i, (False, _unpicklable(f"argument {item!r:.60}", item, exc)))
            else:
                good.append((first + i, item))
        # Re-submit runs of consecutive good items as their own chunks.
        for _, run in itertools.groupby(enumerate(good), key=lambda p: p[1][0] - p[0]):
            run_items = [pair for _, pair in run]
            self._submit(run_items[0][0], [item for _, item in run_items])
        return None

    # -- completion (collector thread) ------------------------------------------------------

    def complete(self, task_id: int, frames: list[bytes], end: int, info: Any) -> None:
        with self.lock:
            self._complete(task_id, frames, end, info)
        self.fill()

    def _complete(self, task_id: int, frames: list[bytes], end: int, info: Any) -> None:
        first, items, blob, prior = self.outstanding.pop(task_id)
        if blob is not None and end in (_CANCELLED, _BROKEN):
            _serialize.discard(blob)  # never loaded: free the shared memory it pins
        n = len(items)
        results = _decode_frames(frames[:n])
        if end == _DONE and len(frames) == n + 1:
            seconds = _protocol.TRAILER.unpack(frames[n])[0]
            per = seconds / n
            self.per_item = per if self.per_item is None else 0.5 * self.per_item + 0.5 * per
        done = len(results)
        if done < n:
            attempts = None
            if end == _CRASHED:
                # The scheduler's runs of this chunk all died before the first item's frame,
                # except perhaps the last: the item that crashed it ran that many times.
                attempts = prior + info[3] if done == 0 else 1
                if attempts <= self.retries and not self.closed:
                    # Nothing of this item finished (its frame would have arrived): run it
                    # again, with the items behind it that never started.
                    failed = self._resubmit(first + done, items[done:], attempts)
                    if failed is None:
                        self._put_many(first, results)
                        return
            limit = self.pool._max_memory
            results.append((False, _end_error(end, info, self.timeout, attempts, limit)))
            rest = items[done + 1 :]
            failed = None
            if rest and end in (_CRASHED, _TIMED_OUT) and not self.closed:
                # Never started: runs once, elsewhere.
                failed = self._resubmit(first + done + 1, rest)
            elif rest:
                failed = _end_error(end, info, self.timeout)
            if failed is not None:
                results += [(False, failed)] * len(rest)
        self._put_many(first, results)

    def _resubmit(self, first: int, items: list[Any], prior: int = 0) -> BaseException | None:
        """Sends items again as their own chunk; if the pool takes no more work (it was shut
        down meanwhile), the error those items fail with instead: they must not hang."""
        try:
            self._submit(first, items, prior)
        except RuntimeError as exc:
            err = WorkerCrashedError(
                "a worker process died while running an earlier item of this item's chunk, and"
                " the pool was shut down before this item could be sent to another worker",
                attempts=0,
            )
            err.__cause__ = exc
            return err
        return None

    def _put(self, index: int, outcome: tuple[bool, Any]) -> None:
        self._put_many(index, [outcome])

    def _put_many(self, first: int, outcomes: list[tuple[bool, Any]]) -> None:
        """Publishes the outcomes of items ``first, first + 1, ...`` (one lock, one wake-up)."""
        if not outcomes:
            return
        with self.cond:
            if self.ordered:
                self.slots[first] = outcomes
            else:
                self.arrivals.append(outcomes)
            self.cond.notify_all()

    # -- consuming (caller's thread) -------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        # No local names a result: what was yielded is the caller's alone to keep or drop.
        pending: collections.deque[tuple[bool, Any]] = collections.deque()
        try:
            while True:
                with self.cond:
                    while True:
                        batch = self._take()
                        if batch is not None:
                            break
                        if self._finished():
                            if self.source_error is not None:
                                raise self.source_error
                            return
                        self.cond.wait()
                pending.extend(batch)
                del batch
                while pending:
                    if not pending[0][0]:
                        # An item failed: the call ends here. Its running chunks are killed,
                        # unless the caller asked to let them finish (``gilfree.map``).
                        self.close(kill=self.kill_on_error)
                        raise pending.popleft()[1]
                    yield pending.popleft()[1]
                if self.stalled:
                    self.fill()
        finally:
            self.close()

    def _take(self) -> list[tuple[bool, Any]] | None:
        """The next run of outcomes to yield (in input order if ordered), or ``None``."""
        if self.ordered:
            batch = self.slots.pop(self.yielded, None)
        else:
            batch = self.arrivals.popleft() if self.arrivals else None
        if batch is not None:
            self.yielded += len(batch)
        return batch

    def _finished(self) -> bool:
        return self.source_done and self.yielded >= self.next_index

    def close(self, kill: bool = True) -> None:
        """Stops the call: nothing more is cut, its queued chunks are cancelled, and its
        running chunks are killed (``kill``) or left to finish, their results dropped."""
        if self.closed:
            return
        self.closed = True
        for task_id in list(self.outstanding):
            self.pool._tp.cancel(task_id, kill)


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

    def __new__(cls, *args: Any, backend: str | None = None, **kwargs: Any) -> Pool:
        # backend= picks the class; type() then calls that class's __init__ with the same args.
        if cls is Pool and (module := _backends.resolve(backend)) is not None:
            return super().__new__(module.Pool)
        return super().__new__(cls)

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        backend: str | None = None,
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
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._broken: BaseException | None = None
        self._tp = _engine.TaskPool(
            _runtime.engine(), max_workers, init, max_tasks_per_worker, max_memory=max_memory
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

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> Future:
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
        """
        _check_timeout(timeout)
        _check_retries(retries)
        with self._shutdown_lock:
            self._check_open()
            body = self._pickle_call(fn, args, kwargs)
            task_id = next(self._ids)
            future = _PoolFuture(self, task_id)
            self._handlers[task_id] = _FutureHandler(future, timeout, body)
            msg = _protocol.encode_task(_protocol.POOL_CALL, self._call_meta(1), body)
            try:
                self._tp.submit(task_id, msg, 2, timeout, True, retries)
            except BaseException:
                del self._handlers[task_id]
                raise
        return future

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
    ) -> Iterator[Any]:
        """Runs ``fn`` over the items (in parallel, in chunks) and yields results in order.

        Like ``Executor.map``, the iterables are collected at once and every task runs even if
        the results are never read. Unlike it, ``timeout`` is per task: a task that runs longer
        is killed and its result raises ``TimeoutError`` when iteration reaches it (a timeout
        makes each item its own chunk). An exception is raised when iteration reaches its item.

        Args:
            fn: The function; lambdas and closures work.
            iterables: One iterable per positional argument of ``fn``.
            timeout: Per-task time limit in seconds.
            chunksize: Items per task; ``None`` sizes chunks automatically from measured run
                times (each chunk runs ~20 ms, and there are at least 4 per worker).
            retries: Run an item again, up to this many times, if its worker process dies
                while running it (see :meth:`submit`); the items of its chunk that finished
                are kept, never re-run.
        """
        items = list(zip(*iterables, strict=False))
        single = len(iterables) == 1
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

        Args:
            wait: Block until the submitted tasks are done and the workers are released.
            cancel_futures: Cancel every task that has not started.
        """
        with self._shutdown_lock:
            self._shutdown = True
            cancelled = self._tp.shutdown(cancel_futures, False)
        self._settle(cancelled)
        if wait:
            self._join()

    # -- beyond the stdlib -------------------------------------------------------------------

    def imap(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> Iterator[Any]:
        """A lazy ``map`` of one-argument ``fn``: consumes ``iterable`` with bounded look-ahead.

        An endless generator works, and memory stays flat: no more than a few chunks per worker
        (a dozen when chunks are tiny) are cut ahead of what the caller has consumed.

        Args:
            fn: The function, called as ``fn(item)``.
            iterable: The items; read lazily, from the Pool's collector thread too.
            ordered: Yield results in input order (``True``) or as they finish.
            chunksize: Items per task; ``None`` sizes chunks automatically.
            timeout: Per-task time limit in seconds (see :meth:`map`).
            retries: Re-runs of an item whose worker process died (see :meth:`map`).
        """
        length = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        source = ((item,) for item in iterable)
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

    def cancel(self, future: Future) -> bool:
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
            cancelled = self._tp.shutdown(True, True)
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
        label, arg, exc = found
        raise _unpicklable(label, arg, exc) from exc

    def _start(
        self,
        fn: Any,
        source: Iterator[tuple[Any, ...]],
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
        _check_timeout(timeout)
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
            results.fill()
        return results

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


def _collect(pool_ref: weakref.ref[Pool], tp: _engine.TaskPool, handlers: dict[int, Any]) -> None:
    """The collector thread: hands finished tasks to their handlers until the pool is done."""
    while True:
        batch = tp.completions(None)
        if batch is None:
            return
        started, done = batch
        for task_id in started:  # before completions: a task starts before it ends
            handler = handlers.get(task_id)
            if isinstance(handler, _FutureHandler):
                handler.start()
        for task_id, frames, end, info in done:
            handler = handlers.pop(task_id, None)
            if handler is None:
                continue
            if end == _BROKEN:
                pool = pool_ref()
                if pool is not None and pool._broken is None:
                    try:
                        pool._broken = _decode_init_failure(info)
                    except Exception as exc:
                        pool._broken = exc
            try:
                if isinstance(handler, _Results):
                    handler.complete(task_id, frames, end, info)
                else:
                    handler.complete(frames, end, info)
            except BaseException as exc:  # a handler bug must not kill the collector
                import traceback

                traceback.print_exception(exc)


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
                return Pool(want), False
            _default_pool = None
            pool.shutdown(wait=True)
            pool = None
        if pool is None:
            pool = _default_pool = Pool(want)
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
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    ordered: bool = True,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
    retries: int = 0,
    backend: str | None = None,
) -> list[Any]:
    """Runs ``fn`` over ``iterable`` in parallel and returns the results as a list.

    Calls share one process-wide Pool, made on the first call and kept warm for the next (its
    worker processes, and the functions they already loaded, are reused): a different
    ``workers=`` replaces it with one of that size, it is shut down at interpreter exit, and a
    ``fork()`` child makes its own. A call that fails (an item raised, a timeout, Ctrl-C) stops
    its own remaining items and leaves the pool ready for the next call: when an item raised,
    the queued items are cancelled and those already running finish (results dropped, the
    processes stay warm, as in ``concurrent.futures``); on Ctrl-C the running ones are killed
    too (their processes are replaced). A timed-out item's process is killed and replaced.
    In a Jupyter kernel each call still gets a pool of its own, shut down when it returns: an
    open Pool keeps a kernel from exiting by itself when it is asked to shut down.

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
    total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total)
    try:
        if _backends.choose(backend) != "process":
            pool, shared = Pool(workers, backend=backend), False
        elif "ipykernel" in sys.modules:
            # Known issue: on a shutdown request ipykernel SIGTERMs, then SIGKILLs, its child
            # processes until none is left (sleeping up to 14 s between rounds); an open Pool
            # replaces the killed workers each time, so the kernel outlasts the manager's wait
            # and is SIGTERMed (tests/test_notebook.py). Until the engine stops respawning
            # then, a call in a kernel gets a pool of its own, shut down when it returns.
            pool, shared = Pool(workers), False
        else:
            pool, shared = _reusable_pool(workers)
        try:
            out = []
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
            source = ((item,) for item in iterable)
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
                for value in results:
                    out.append(value)
                    if update is not None:
                        update(1)
            finally:
                # An item raised: its queued chunks were cancelled and its running ones left to
                # finish (``kill_on_error``). Ctrl-C (or anything else): all of them stop now.
                results.close()
            return out
        finally:
            if shared:
                _release_default_pool(pool)
            else:
                pool.terminate()
    finally:
        if bar is not None:
            bar.close()


_runtime.after_fork_in_child(_forget_default_pool)
