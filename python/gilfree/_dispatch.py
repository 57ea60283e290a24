"""The dispatch engine of :class:`gilfree.Pool`: futures, chunks, windows, ordering, retries.

The engine's scheduler (Rust) queues tasks, pipelines them to the Pool's worker processes,
detects deaths and enforces per-task timeouts; this module is the Python side of that
conversation: it pickles calls and chunks, hands bytes to the scheduler, and turns what comes
back into ``Future`` results or a ``map``'s ordered results. The public ``Pool`` and
``gilfree.map`` (``executor.py``) build on it.

How a task flows:

1. ``submit`` (or a ``map``/``imap`` chunk) pickles the call and hands bytes to the scheduler
   with an id; a handler for that id (:class:`_FutureHandler` or :class:`_Results`) waits in
   ``Pool._handlers``.
2. A worker process runs each item and sends one frame per item as it finishes, then a trailer
   with the chunk's run time (``_protocol``).
3. The Pool's collector thread (:func:`_collect`) takes finished tasks from the scheduler in
   batches (the GIL is released while it waits) and hands each to its handler, which resolves
   a ``Future`` or fills a ``map``'s result slots, and refills the chunk window.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import signal as _signal
import threading
import weakref
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gilfree import _engine, _protocol, _serialize
from gilfree.exceptions import BrokenPoolError, RemoteTraceback, WorkerCrashedError

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

    from gilfree.executor import Pool

_T = TypeVar("_T")

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
# A known-length input is cut into at least this many chunks per worker, for load balance,
# unless its chunks would then run less than _MIN_BALANCED_SECONDS each.
_MIN_CHUNKS_PER_WORKER = 4
_MIN_BALANCED_SECONDS = 0.0005
# Items per chunk at most when the source is read lazily (``imap``), see ``_next_size``.
_LAZY_CHUNK_MAX = 8192
# Functions whose measured seconds per item a pool remembers (``Pool._item_seconds``).
_ITEM_SECONDS_MAX = 64


def _unpicklable(what: str, obj: Any, exc: BaseException) -> TypeError:
    return TypeError(f"{what} cannot be pickled: {_serialize.describe_failure(obj, exc)}")


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
        ok, value = _engine.decode_value(frame)  # a plain-value frame (``_protocol``)
        if ok:
            return True, value
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


# A worker killed by SIGKILL whose resident set had reached this share of the pool's limit most
# likely ran out of memory.
_NEAR_LIMIT = 0.8


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _unpickling_error(exc: BaseException) -> pickle.UnpicklingError:
    err = pickle.UnpicklingError(
        f"the task's outcome could not be unpickled in this process: {exc!r}"
    )
    err.__cause__ = exc
    return err


class _Values:
    """The outcomes of a run of items that all returned a plain value (the tiny-task case):
    the list of the values themselves (as the engine built it: no copy), no ``(True, value)``
    pair each."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)


class _OneConsumer:
    """The source of a :class:`_ResultIterator`'s ``chain``: the runs generator, entered by one
    thread at a time. A ``chain`` ends for good at any error from its source, so a second
    thread's ``next()`` while the first waits for a run would otherwise end the first's
    iteration early, silently. Here both threads get a ``ValueError`` and the call stops:
    loud, as a generator entered twice is, and nothing is lost without a word."""

    __slots__ = ("_busy", "_misused", "runs")

    def __init__(self, runs: Generator[Iterable[Any], None, None]) -> None:
        self.runs = runs
        self._busy = threading.Lock()
        self._misused: ValueError | None = None

    def __iter__(self) -> _OneConsumer:
        return self

    def __next__(self) -> Iterable[Any]:
        if not self._busy.acquire(blocking=False):
            self._misused = ValueError(
                "the results of a map were read from two threads at once; read them from one"
                " thread (or hand them on through a queue)"
            )
            raise self._misused
        try:
            run = next(self.runs)
            if self._misused is not None:
                del run
                self.runs.close()  # stops the call
                raise self._misused
            return run
        finally:
            self._busy.release()


class _ResultIterator(itertools.chain[Any]):
    """What ``Pool.map`` and ``Pool.imap`` return: ``chain`` over the runs of results (so a
    run of plain values is iterated in C), with the ``close()`` of a generator: it stops the
    call at once, as dropping the iterator does. One consumer thread at a time
    (:class:`_OneConsumer`)."""

    # ``_source`` also keeps the source alive while a thread runs in it: ``chain`` drops its
    # own reference when another thread's ``next()`` fails (freed under the first, it crashed
    # 3.12 and later).
    __slots__ = ("_source",)
    _source: _OneConsumer

    @classmethod
    def over(cls, runs: Generator[Iterable[Any], None, None]) -> _ResultIterator:
        source = _OneConsumer(runs)
        it = cast("_ResultIterator", cls.from_iterable(source))  # typeshed: a plain chain
        it._source = source
        return it

    def close(self) -> None:
        """Stops the call: nothing more is yielded; its queued chunks are cancelled and its
        running ones killed (see ``_Results.close``)."""
        self._source.runs.close()

    def __reduce__(self) -> Any:
        # ``chain`` would copy (and, on older Pythons, pickle) a twin sharing the call's state.
        raise TypeError(f"cannot pickle or copy {type(self).__name__!r} object")


# A run of outcomes: ``(ok, value)`` pairs, or the values of items that all returned.
_Outcomes = list[tuple[bool, Any]] | _Values


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
        runs: int
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
    exc: BaseException = _serialize.loads(exc_blob)
    exc.__cause__ = RemoteTraceback(tb_text)
    return exc


class _PoolFuture(Future[_T]):
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
        if Future.cancel(self):  # pyright: ignore[reportUnknownMemberType]  (the base class's own cancel, unparameterised)
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
            if Future.cancel(self):  # pyright: ignore[reportUnknownMemberType]  (the base class's own cancel, unparameterised)
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

    def result(self, timeout: float | None = None) -> _T:
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

    def __init__(self, future: _PoolFuture[Any], timeout: float | None, body: bytes) -> None:
        self.future = future
        self.timeout = timeout
        self.blob = _pinning(body)

    def start(self) -> None:
        self.future._gilfree_notify()

    def complete(
        self, frames: list[bytes], end: int, info: Any, values: list[Any] | None = None
    ) -> None:
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
            (True, values[0])
            if values
            else _decode_frame(frames[0])
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
        source: Iterator[Any],
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
        # Every item of source is one argument (call fn(item)), else a tuple of them (fn(*item)).
        self.single = single
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
        # What every chunk's body starts with: ``(fn_blob, mode, items)`` (``_protocol``).
        self.call_head = (self.fn_blob, _protocol.CALL_ONE if single else _protocol.CALL_STAR)
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
        self.slots: dict[int, _Outcomes] = {}
        self.arrivals: collections.deque[_Outcomes] = collections.deque()
        # task id → (first index, items, the pickled chunk if it pins shared memory, runs its
        # first item had before this chunk: a retried item travels in a new chunk)
        self.outstanding: dict[int, tuple[int, list[Any], bytes | None, int]] = {}
        self.source_done = False
        self.source_error: BaseException | None = None
        self.closed = False
        # An eager call (``map``) the pool waits for before its scheduler shuts down: its items
        # count as submitted when ``map`` returns, as with ``Executor.map`` (``Pool._fed``).
        self.feeding = False
        # Measured seconds per item, smoothed; from the pool's last map of the same function
        # if it had one. Known, it lets the first window grow chunk by chunk (1, 4, 16...)
        # instead of measuring single items first, a round trip each.
        self.per_item: float | None = pool._item_seconds.get(self.fn_blob)
        self.timed = (0.0, 0)  # seconds and items of this call's finished chunks
        self.chunk = 1
        # Chunks cut but not yet handed to the scheduler: (id, message, frames, retries), sent
        # together by ``_send`` (one engine call for a window's worth of tiny chunks).
        self.unsent: list[tuple[int, bytes, int, int]] = []
        # The message header of a chunk of n items (it depends on n only), by n.
        self.headers: dict[int, bytes] = {}
        # Outcomes placed by completions of the collector's current batch, published together
        # by ``publish`` (one lock and at most one wake-up of the caller per batch).
        self.staged: list[tuple[int, _Outcomes]] = []

    # -- cutting and submitting chunks (call's thread, then collector thread) --------------

    def _next_size(self) -> int:
        if self.fixed_chunk is not None:
            return self.fixed_chunk
        if self.per_item is not None:
            want = int(_TARGET_CHUNK_SECONDS / max(self.per_item, 1e-7))
            self.chunk = max(1, min(want, self.chunk * 4))
        if not self.eager:
            # A lazy source (imap) is read at most a window of chunks ahead of the caller: a
            # cap on a chunk's items keeps that look-ahead bounded in items, not only in time
            # (20 ms of a trivial function is hundreds of thousands of items).
            self.chunk = min(self.chunk, _LAZY_CHUNK_MAX)
        size = self.chunk
        if self.remaining is not None:
            balance = -(-self.remaining // (self.pool._max_workers * _MIN_CHUNKS_PER_WORKER))
            if self.per_item is not None:
                # Near the end, balance shrinks with what remains; not below chunks that run
                # _MIN_BALANCED_SECONDS: a chunk's round trip costs tens of µs of the pool's
                # CPU, so a tail of ever tinier chunks costs more than the balance it buys.
                balance = max(balance, int(_MIN_BALANCED_SECONDS / max(self.per_item, 1e-9)))
            size = max(1, min(size, balance))
        return size

    def _window(self) -> int:
        """How many chunks may be in flight. Small chunks need many: refills come from the
        collector thread, whose wake-up (tens of µs on this kind of machine) must not leave the
        workers idle; big chunks need few (each keeps a worker busy for a while)."""
        size = self.fixed_chunk if self.fixed_chunk is not None else self.chunk
        return self.pool._max_workers * (_SMALL_CHUNK_WINDOW if size <= 16 else _WINDOW)

    def fill(self) -> None:
        """Cuts and submits chunks until the window is full or the source is exhausted, then
        publishes the outcomes staged meanwhile (by the collector, or by a refused send)."""
        with self.lock:
            try:
                self._fill()
            finally:
                self._send()
            fed = self.feeding and self.source_done
            if fed:
                self.feeding = False
            staged, self.staged = self.staged, []
        if staged:
            self._place(staged)
        if fed:
            self.pool._fed(self)
        if self.source_done:
            with self.cond:
                self.cond.notify_all()

    def _fill(self) -> None:
        self.stalled = False
        while not self.source_done and not self.closed:
            window = self._window()
            free = window - len(self.outstanding)
            if free <= 0:
                break
            ahead = window * self.chunk - (self.next_index - self.yielded)
            if not self.eager and ahead <= 0:
                self.stalled = True
                return
            size = self._next_size()
            # Chunks of one item (``chunksize=1``, or a timeout): the free part of the window is
            # read at once and cut item by item, not a turn of this loop per item.
            runs = 1
            if self.fixed_chunk == 1:
                runs = free if self.eager else min(free, ahead)
            want = size * runs
            try:
                items = list(itertools.islice(self.source, want))
            except BaseException as exc:  # the caller's iterable raised: surfaces at its place
                self.source_error = exc
                self.source_done = True
                if not isinstance(exc, Exception) and (
                    threading.current_thread() is threading.main_thread()
                ):
                    # Ctrl-C (or SystemExit) while the caller's own thread read the source:
                    # the caller's interrupt, not the iterable's outcome. It ends the call now;
                    # kept for its place, it would wait behind every chunk already cut.
                    raise
                break
            if len(items) < want:
                self.source_done = True
            if not items:
                break
            first = self.next_index
            self.next_index += len(items)
            if self.remaining is not None:
                self.remaining -= len(items)
            if runs == 1:
                self._cut(first, items)
            else:
                self._cut_singles(first, items)

    def _submit(self, first: int, items: list[Any], prior: int = 0) -> None:
        """Cuts a chunk and hands it to the scheduler now (with any chunks cut before it)."""
        self._cut(first, items, prior)
        self._send()

    def _cut(self, first: int, items: list[Any], prior: int = 0) -> None:
        """Pickles a chunk and registers it; ``_send`` hands it to the scheduler."""
        body = self._pickle_plain(items)
        if body is not None:
            blob = None  # plain pickle pins no shared memory
        else:
            body = self._pickle_chunk(first, items)
            if body is None:
                return
            blob = _pinning(body)
        pool = self.pool
        task_id = next(pool._ids)
        self.outstanding[task_id] = (first, items, blob, prior)
        pool._handlers[task_id] = self
        n = len(items)
        # The scheduler re-runs the chunk while its worker dies before the first item's frame
        # (so before anything of it finished); later items are re-sent from _complete.
        self.unsent.append((task_id, self._header(n) + body, n + 1, max(0, self.retries - prior)))

    def _header(self, n: int) -> bytes:
        """The message header of a chunk of ``n`` items (cached: it depends on ``n`` only)."""
        header = self.headers.get(n)
        if header is None:
            # A task message is its header, then the body as it is (``_protocol``).
            header = self.headers[n] = _protocol.encode_task(
                _protocol.POOL_CALL, self.pool._call_meta(n), b"", self.context
            )
        return header

    def _cut_singles(self, first: int, items: list[Any]) -> None:
        """``_cut`` of each item as a chunk of its own (``chunksize=1``): for plain items, one
        check for the run and the per-chunk lookups out of the loop (a few µs per item of
        the collector's time otherwise); anything else goes through ``_cut`` one by one."""
        if not _engine.all_plain(items, not self.single):
            for offset, item in enumerate(items):
                self._cut(first + offset, [item])
            return
        ids, handlers = self.pool._ids, self.pool._handlers
        outstanding, unsent = self.outstanding, self.unsent
        head = self.call_head
        header, retries, dumps, proto = (
            self._header(1),
            max(0, self.retries),
            pickle.dumps,
            _protocol.PROTOCOL,
        )
        for offset, item in enumerate(items):
            task_id = next(ids)
            chunk = [item]
            outstanding[task_id] = (first + offset, chunk, None, 0)
            handlers[task_id] = self
            # The same bytes as ``_pickle_plain(chunk)``.
            unsent.append((task_id, header + dumps((*head, chunk), proto), 2, retries))

    def _send(self) -> None:
        """Hands the chunks cut so far to the scheduler, in order; if it refuses them (shut
        down), they are forgotten and the error raised."""
        unsent = self.unsent
        if not unsent:
            return
        self.unsent = []
        pool = self.pool
        try:
            if len(unsent) == 1:
                task_id, msg, frames, retries = unsent[0]
                pool._tp.submit(task_id, msg, frames, self.timeout, False, retries)
            else:
                pool._tp.submit_many(unsent, self.timeout)
        except BaseException as exc:
            refused: list[tuple[int, list[Any], bytes | None, int]] = []
            for task_id, _, _, _ in unsent:
                pool._handlers.pop(task_id, None)
                entry = self.outstanding.pop(task_id, None)
                if entry is not None:
                    refused.append(entry)
            if not isinstance(exc, RuntimeError):
                raise
            # The pool shut down (or broke) while the call was still being cut: nothing more
            # is read, and each refused item fails at its own place, so the caller gets what
            # finished and then this error, never a wait for results that cannot come. (An
            # abandoned call, closed, has nobody waiting.) Refills come from the collector
            # thread too, where raising would only print a traceback and lose the items.
            self.source_done = True
            if self.closed:
                return
            for first, items, blob, _ in refused:
                if blob is not None:
                    _serialize.discard(blob)
                self._put_many(first, [(False, exc)] * len(items))

    def _pickle_plain(self, items: list[Any]) -> bytes | None:
        """The chunk pickled with plain pickle if every item (or argument) is of a plain type:
        the same bytes as ``_serialize.dumps``, without its pickler and buffer session.
        ``None`` if some item is not plain."""
        if not _engine.all_plain(items, not self.single):
            return None
        return pickle.dumps((*self.call_head, items), _protocol.PROTOCOL)

    def _pickle_chunk(self, first: int, items: list[Any]) -> bytes | None:
        try:
            return _serialize.dumps((*self.call_head, items))
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
        self.complete_one(task_id, frames, end, info, None)
        self.publish()

    def complete_one(
        self, task_id: int, frames: list[bytes], end: int, info: Any, values: list[Any] | None
    ) -> None:
        """Takes one finished chunk; its outcomes reach the caller at the next
        :meth:`publish` (the collector calls it once per batch). ``values``: the values its
        items returned, when the engine read them all from plain-value frames (``frames``
        then holds only the trailer)."""
        with self.lock:
            if values is None:
                self._complete(task_id, frames, end, info)
                return
            # Finished, every item a plain value (the scheduler waits for all of a chunk's
            # item frames before its trailer, so there is one value per item).
            first, items, _, _ = self.outstanding.pop(task_id)
            if self.fixed_chunk is None:
                self._learn(frames[0], len(items))
            self.staged.append((first, _Values(values)))

    def publish(self) -> None:
        """Refills the window, then publishes the outcomes staged since the last call (the
        workers get their next chunks before the caller is woken): :meth:`fill` does both;
        if the refill raised, what was staged is still published."""
        try:
            self.fill()
        except BaseException:
            with self.lock:
                staged, self.staged = self.staged, []
            if staged:
                self._place(staged)
            raise

    def _complete(self, task_id: int, frames: list[bytes], end: int, info: Any) -> None:
        first, items, blob, prior = self.outstanding.pop(task_id)
        n = len(items)
        if blob is not None and end in (_CANCELLED, _BROKEN):
            _serialize.discard(blob)  # never loaded: free the shared memory it pins
        results = _decode_frames(frames[:n])
        if end == _DONE and len(frames) == n + 1 and self.fixed_chunk is None:
            self._learn(frames[n], n)
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

    def _learn(self, trailer: bytes, n: int) -> None:
        """Folds a finished chunk's run time per item into the automatic chunk sizing."""
        elapsed = _protocol.TRAILER.unpack(trailer)[0]
        per = elapsed / n
        self.per_item = per if self.per_item is None else 0.5 * self.per_item + 0.5 * per
        # What the pool remembers: this call's time per item over all its chunks (the last
        # chunks are the smallest, their per-chunk overhead the largest: a poor estimate).
        self.timed = (self.timed[0] + elapsed, self.timed[1] + n)
        seconds = self.pool._item_seconds
        if len(seconds) >= _ITEM_SECONDS_MAX and self.fn_blob not in seconds:
            seconds.clear()  # a bound, not a cache policy: another map measures again
        seconds[self.fn_blob] = self.timed[0] / self.timed[1]

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
        self._place([(index, [outcome])])

    def _put_many(self, first: int, outcomes: list[tuple[bool, Any]]) -> None:
        """Stages the outcomes of items ``first, first + 1, ...`` for :meth:`publish`."""
        if outcomes:
            self.staged.append((first, outcomes))

    def _place(self, runs: list[tuple[int, _Outcomes]]) -> None:
        """Publishes runs of outcomes (one lock), waking the caller only if it can go on: in
        input order, only the run it waits for lets it."""
        with self.cond:
            wake = not self.ordered
            for first, outcomes in runs:
                if self.ordered:
                    self.slots[first] = outcomes
                    wake = wake or first == self.yielded
                else:
                    self.arrivals.append(outcomes)
            if wake:
                self.cond.notify_all()

    # -- consuming (caller's thread) -------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        return _ResultIterator.over(self._runs())

    def _runs(self) -> Generator[Iterable[Any], None, None]:
        """The runs of outcomes in the order they are to be yielded; the next is taken when
        the caller has consumed the one before. A run of plain values is the engine's list of
        them, which ``chain`` iterates in C (~0.013 us an item, against ~0.035 for a
        ``yield`` each); any other run is :meth:`_unpack`, one item at a time."""
        run: list[Any] | Generator[Any, None, None] | None = None
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
                # A run of plain values needs no pair looked into, and ``chain`` keeps it to
                # its end: plain values pin no shared memory.
                run = batch.values if isinstance(batch, _Values) else self._unpack(batch)
                del batch
                yield run
                run = None
                if self.closed:
                    return  # an item failed (``_unpack``): nothing comes after its exception
                if self.stalled:
                    self.fill()
        finally:
            # Closed while ``chain`` was still in a run: what it had not yielded is dropped,
            # so that nothing more comes, as from a closed generator.
            if isinstance(run, list):
                run.clear()
            elif run is not None:
                run.close()
            self.close()

    def _unpack(self, batch: list[tuple[bool, Any]]) -> Generator[Any, None, None]:
        # No local names a result: what was yielded is the caller's alone to keep or drop.
        pending: collections.deque[tuple[bool, Any]] = collections.deque(batch)
        del batch
        try:
            while pending:
                if not pending[0][0]:
                    # An item failed: the call ends here. Its running chunks are killed,
                    # unless the caller asked to let them finish (``gilfree.map``).
                    self.close(kill=self.kill_on_error)
                    raise pending.popleft()[1]
                yield pending.popleft()[1]
        except BaseException:
            # Ctrl-C lands here when the caller consumes in C (``list(it)``): the call ends
            # with it, and :meth:`_runs` then yields nothing more, as for a failed item.
            self.close()
            raise

    def _take(self) -> _Outcomes | None:
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
        with self.lock:
            fed, self.feeding = self.feeding, False
        if fed:
            self.pool._fed(self)  # nothing more is cut: a shutdown need not wait for it
        for task_id in list(self.outstanding):
            self.pool._tp.cancel(task_id, kill)


def _collect(pool_ref: weakref.ref[Pool], tp: _engine.TaskPool, handlers: dict[int, Any]) -> None:
    """The collector thread: hands finished tasks to their handlers until the pool is done."""
    # Ctrl-C is the main thread's to take: delivered here, it would not wake a main thread
    # asleep in a wait (``gilfree_core::sys::thread``).
    _engine.block_async_signals()
    while True:
        batch = tp.completions(None)
        if batch is None:
            return
        started, done = batch
        for task_id in started:  # before completions: a task starts before it ends
            handler = handlers.get(task_id)
            if isinstance(handler, _FutureHandler):
                handler.start()
        # The map/imap calls with a chunk in this batch: their outcomes are published (and their
        # windows refilled) once per batch, after every chunk of theirs is taken.
        touched: dict[int, _Results] = {}
        for task_id, frames, end, info, values in done:
            handler = handlers.pop(task_id, None)
            if handler is None:
                continue
            if end == _BROKEN:
                pool = pool_ref()
                if pool is not None and pool._broken is None:
                    try:
                        # A broken pool's info is the initializer's failure frame (bytes).
                        pool._broken = _decode_init_failure(info)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
                    except Exception as exc:
                        pool._broken = exc
            try:
                if isinstance(handler, _Results):
                    touched[id(handler)] = handler
                    handler.complete_one(task_id, frames, end, info, values)
                else:
                    handler.complete(frames, end, info, values)
            except BaseException as exc:  # a handler bug must not kill the collector
                _report(exc)
        _publish(touched)
        touched.clear()
        # Nothing of this batch stays referenced while we wait for the next one: a handler's
        # future holds its result, which may view a shared segment the pool would reuse.
        handler = None


def _publish(touched: dict[int, _Results]) -> None:
    for results in touched.values():
        try:
            results.publish()
        except BaseException as exc:  # a handler bug must not kill the collector
            _report(exc)


def _report(exc: BaseException) -> None:
    import traceback

    traceback.print_exception(exc)
