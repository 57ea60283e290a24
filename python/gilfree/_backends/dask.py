"""The ``dask`` backend: Pools and Workers on a Dask distributed cluster.

``gilfree.Pool(backend="dask")`` starts a ``distributed.LocalCluster`` of worker processes,
bound to the loopback interface, and closes it with the pool; ``Pool(backend="dask",
address="tcp://host:8786")`` connects to a running scheduler and leaves it running. A Worker
with ``backend="dask"`` runs as one long task on the cluster named by ``GILFREE_DASK_ADDRESS``,
or on a LocalCluster this process starts on first use and closes at exit. (A Pool without
``address=`` also uses ``GILFREE_DASK_ADDRESS`` when it is set.)

How a task flows:

1. ``submit`` (or a ``map``/``imap`` chunk) pickles the function and the calls with cloudpickle,
   here, so a call that cannot be pickled fails at ``submit``. Large arguments (a buffer of
   ``SCATTER_BYTES`` or more, a numpy array say) are not pickled into the call: each is
   ``scatter``-ed to the cluster once per pool, by identity, and every task that gets it as an
   argument receives the worker's copy (a ``distributed.Future`` from :meth:`Pool.scatter` is
   passed on the same way).
2. A Dask worker runs :func:`_run_chunk`: one outcome frame per call, the same
   ``(status, payload)`` frames the process backend's workers send, so an exception comes back
   as its own type with the remote traceback text as ``__cause__``. What the task printed is
   captured and written to this process's ``sys.stdout``/``sys.stderr`` before its Future
   resolves (at the end of the task, not line by line).
3. A worker process that dies mid-task: the scheduler gives up on the task at once (we start
   our LocalCluster with ``distributed.scheduler.allowed-failures`` set to 0, so a task that may
   have run is never silently run again) and raises ``KilledWorker``, which becomes
   :class:`~gilfree.WorkerCrashedError` on that task only; the nanny restarts the worker and the
   pool goes on. "Only" because the LocalCluster also sets
   ``distributed.scheduler.worker-saturation`` to 1.0: a worker holds no task beyond the ones
   its threads execute (Dask's default, 1.1, queues one more on a one-thread worker, and that
   task would die with it, with ``KilledWorker`` too). A scheduler of your own (``address=``)
   applies its own settings: set both there for the same guarantees. One case Dask itself
   re-runs: a task that had finished on the dying worker but whose result this process had not
   fetched yet (the result died with the worker; the scheduler computes it again).

Not available here (:class:`UnsupportedByBackend`): a per-task ``timeout=`` (Dask cannot stop
a running task), ``Pool.cancel``/``Worker.terminate`` of a running task (as on the thread
backend), ``initializer`` and
``max_tasks_per_worker``. ``Future.cancel()`` takes a task that has not started off the
cluster and, as in the stdlib, refuses one that runs (it asks the workers; see
:class:`_DaskFuture`).
"""

# distributed leaves much of its API unannotated (Client.submit/scatter/run/nthreads,
# Future.result/exception/cancel/add_done_callback), and cloudpickle ships no types: every
# access to those members is partly unknown to pyright (reportUnknownMemberType), and so is a
# distributed.Future that isinstance() narrows an Any to, as an argument (reportUnknownArgumentType).
# Their results are cast or annotated where this module keeps them.
# pyright: reportUnknownMemberType=false, reportUnknownArgumentType=false

from __future__ import annotations

import collections
import io
import itertools
import os
import pickle
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future
from concurrent.futures import wait as _wait_for
from typing import TYPE_CHECKING, Any, ClassVar, cast

import cloudpickle  # pyright: ignore[reportMissingTypeStubs]
import dask
import distributed
from distributed.core import Status
from distributed.deploy.cluster import Cluster as _DaskCluster

from gilfree import _engine, _protocol, _runtime, _sync_args
from gilfree._backends import UnsupportedByBackend, _gil_enabled
from gilfree._dispatch import _check_retries, _decode_frame
from gilfree.exceptions import WorkerCrashedError
from gilfree.executor import Pool as _ProcessPool

if TYPE_CHECKING:
    from gilfree._backends import BackendName

__all__ = ["NAME", "SCATTER_BYTES", "Pool", "WorkerRunner"]

NAME = "dask"

# Arguments at least this large (``nbytes``, or ``len`` of bytes) are scattered once per pool
# rather than pickled into every task that takes them.
SCATTER_BYTES = 1 << 20
# Chunks in flight per Dask worker thread, for the lazy imap.
_LOOKAHEAD_PER_WORKER = 4
# Automatic chunking cuts a known-length input into this many chunks per worker thread.
_CHUNKS_PER_WORKER = 4
# The environment variable that names the scheduler a dask Worker runs on.
ADDRESS_ENV = "GILFREE_DASK_ADDRESS"


def _unsupported(what: str, why: str) -> UnsupportedByBackend:
    return UnsupportedByBackend(
        f"{what} is not available on the 'dask' backend: {why} Use backend='process' for it."
    )


def _dumps(obj: Any) -> bytes:
    blob: bytes = cloudpickle.dumps(obj, protocol=_protocol.PROTOCOL)
    return blob


# -- what runs on a Dask worker ----------------------------------------------------------------


class _Slot:
    """Stands, in a pickled call, for the scattered argument at ``index``."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> Any:
        return (_Slot, (self.index,))


class _Capture(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a Dask worker process while gilfree tasks run there:
    writes from a thread running a gilfree task go to that task's buffer, others pass through."""

    def __init__(self, original: Any, which: int) -> None:
        self._original = original
        self._which = which

    def _target(self) -> Any:
        bufs = getattr(_task_output, "bufs", None)
        return bufs[self._which] if bufs is not None else self._original

    def write(self, text: str) -> int:
        written: int = self._target().write(text)
        return written

    def flush(self) -> None:
        target = self._target()
        if target is not None:
            target.flush()

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_task_output = threading.local()
_capture_lock = threading.Lock()


def _capturing() -> tuple[io.StringIO, io.StringIO]:
    with _capture_lock:
        if not isinstance(sys.stdout, _Capture):
            sys.stdout = _Capture(sys.stdout, 0)
        if not isinstance(sys.stderr, _Capture):
            sys.stderr = _Capture(sys.stderr, 1)
    bufs = (io.StringIO(), io.StringIO())
    _task_output.bufs = bufs
    return bufs


def _error_frame(exc: BaseException) -> bytes:
    tb_text = "".join(traceback.format_exception(exc))
    try:
        blob = _dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = _dumps(
            RuntimeError(
                f"{type(exc).__qualname__}: {exc} (the original exception could not be pickled)"
            )
        )
    return _protocol.FAILED + _dumps((_protocol.RAISED, (blob, tb_text)))


def _run_chunk(fn_blob: bytes, calls_blob: bytes, *scattered: Any) -> tuple[list[bytes], str, str]:
    """Runs a chunk of calls on a Dask worker: ``(frames, stdout text, stderr text)``."""
    out, err = _capturing()
    frames: list[bytes] = []
    try:
        try:
            fn = pickle.loads(fn_blob)
            calls = pickle.loads(calls_blob)
        except BaseException as exc:
            return [_error_frame(exc)] * len(pickle.loads(calls_blob)), "", ""
        for args, kwargs in calls:
            try:
                args = [scattered[a.index] if isinstance(a, _Slot) else a for a in args]
                kwargs = {
                    k: scattered[v.index] if isinstance(v, _Slot) else v for k, v in kwargs.items()
                }
                value = fn(*args, **kwargs)
            except BaseException as exc:
                frames.append(_error_frame(exc))
                continue
            try:
                # A frame as the process backend's (``_protocol``): the value itself, or
                # FAILED and (status, payload).
                frames.append(_dumps(value))
            except Exception as exc:
                failure = (_protocol.RESULT_UNPICKLABLE, f"{type(value).__qualname__}: {exc!r}")
                frames.append(_protocol.FAILED + _dumps(failure))
    finally:
        _task_output.bufs = None
    return frames, out.getvalue(), err.getvalue()


def _run_worker(
    cls_blob: bytes, state: dict[str, bytes], name: str, daemon: bool
) -> tuple[bytes, str, str, int]:
    """Runs one Worker's ``run()`` on a Dask worker: the reply ``Worker._apply_reply`` reads
    (see ``_protocol.encode_reply``), what it printed, and the Dask worker's pid.

    The thread that runs it bears the Worker's name meanwhile, so ``current_thread().name``
    inside ``run()`` is the Worker's, as on the other backends."""
    from gilfree.worker import _CALL_ATTRS, _State

    out, err = _capturing()
    thread = threading.current_thread()
    old_name, thread.name = thread.name, name
    try:
        cls = pickle.loads(cls_blob)
        obj = cls.__new__(cls)
        obj.__dict__.update({key: pickle.loads(blob) for key, blob in state.items()})
        st = _State(name, daemon)
        st.started = st.in_worker = True
        st.pid = os.getpid()
        obj.__dict__["_gilfree"] = st
        payload: bytes | str
        try:
            value = obj.run()
        except SystemExit:  # threading ignores SystemExit in run(); so do we
            status, payload = _protocol.OK, _dumps(None)
        except BaseException as exc:
            status = _protocol.RAISED
            payload = pickle.loads(_error_frame(exc)[len(_protocol.FAILED) :])[1]
        else:
            try:
                status, payload = _protocol.OK, _dumps(value)
            except Exception as exc:
                status, payload = _protocol.RESULT_UNPICKLABLE, f"{exc!r}"
        changed: dict[str, bytes] = {}
        skipped: list[tuple[str, str]] = []
        for key, value in obj.__dict__.items():
            if key == "_gilfree" or key in _CALL_ATTRS:
                continue
            try:
                blob = _dumps(value)
            except Exception as exc:
                skipped.append((key, f"{type(value).__qualname__}: {exc!r}"))
                continue
            if state.get(key) != blob:
                changed[key] = blob
        deleted = [key for key in state if key not in obj.__dict__ and key not in _CALL_ATTRS]
        reply = _protocol.encode_reply(status, payload, changed, deleted, skipped)
    finally:
        _task_output.bufs = None
        thread.name = old_name
    return reply, out.getvalue(), err.getvalue(), os.getpid()


# -- this side -------------------------------------------------------------------------------


def _echo(out: str, err: str) -> None:
    """Writes what a task printed to this process's streams, before its Future resolves."""
    for text, stream in ((out, sys.stdout), (err, sys.stderr)):
        if text and stream is not None:
            try:
                stream.write(text)
                stream.flush()
            except Exception:
                pass


def _crash_error(exc: BaseException) -> BaseException:
    if isinstance(exc, distributed.scheduler.KilledWorker):  # pyright: ignore[reportAttributeAccessIssue]
        err = WorkerCrashedError(
            f"the Dask worker running this task died (the scheduler reported: {exc})"
        )
        err.__cause__ = exc
        return err
    return exc


def _nbytes(obj: Any) -> int:
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    nbytes = getattr(obj, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 0


def _bridge(dfut: distributed.Future[Any], done: Callable[[Future[Any], Any], None]) -> Future[Any]:
    """A ``concurrent.futures.Future`` that the Dask future resolves through ``done``.

    ``done(future, value)`` gets the task's return value; a task Dask could not finish
    (its worker died, it was cancelled) sets the mapped exception instead."""
    fut: Future[Any] = Future()
    # keeps the task wanted
    fut._gilfree_dask = dfut  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]

    def callback(d: distributed.Future[Any]) -> None:
        if fut.done():
            return
        try:
            if d.status == "cancelled":
                if not fut.cancel():
                    fut.set_exception(CancelledError())
                else:
                    fut.set_running_or_notify_cancel()
                return
            # Not ``d.status``: a result lost with its worker after the task finished sets the
            # Dask future back to pending until the scheduler has it again; ``exception()``
            # waits for that.
            exc = cast("BaseException | None", d.exception())
            if exc is None:
                done(fut, d.result())
            else:
                fut.set_exception(_crash_error(exc))
        except BaseException as exc:  # the result could not be read back
            if not fut.done():
                fut.set_exception(exc)

    dfut.add_done_callback(callback)
    return fut


def _executing(dask_worker: Any) -> list[str]:
    """Runs on each Dask worker (``Client.run``): the keys of the tasks it executes now."""
    return [str(ts.key) for ts in dask_worker.state.executing]


class _DaskFuture(Future[Any]):
    """A task's Future; ``cancel()`` also takes the task off the cluster.

    ``running()`` and ``cancel()`` ask the workers whether the task executes now (one round
    trip): a task that does is RUNNING, and ``cancel()`` refuses it, as in the stdlib. A task
    that starts between that question and the cancel is cancelled anyway; it runs to its end
    on its worker, and its result is dropped."""

    _gilfree_dask: distributed.Future[Any] | None = None

    def _executing(self) -> bool:
        dfut = self._gilfree_dask
        if dfut is None or self.done():
            return False
        try:
            found = cast(
                "dict[str, list[str]]", cast("distributed.Client", dfut.client).run(_executing)
            )
        except Exception:  # the cluster is going away: nothing runs
            return False
        return any(str(dfut.key) in keys for keys in found.values())

    def running(self) -> bool:
        if super().running():
            return True
        if self._executing():
            try:
                self.set_running_or_notify_cancel()
            except RuntimeError:  # another caller marked it, or it finished meanwhile
                pass
            return super().running()
        return False

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self.running():
            return False
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()
        dfut = self._gilfree_dask
        if dfut is not None:
            dfut.cancel()
        return True


class Pool(_ProcessPool):
    """:class:`gilfree.Pool` on a Dask distributed cluster (``gilfree.Pool(backend="dask")``).

    Args:
        max_workers: Dask worker processes of the LocalCluster this pool starts (one thread
            each); by default one per CPU. With ``address=``, ignored: the cluster has the
            workers it has.
        address: A running scheduler's address (``"tcp://10.0.0.5:8786"``) to connect to; it is
            left running at shutdown. ``None``: the one ``GILFREE_DASK_ADDRESS`` names, if set;
            else a LocalCluster on 127.0.0.1, started for this pool and closed with it.
        initializer, initargs, max_tasks_per_worker: Not available (see the module's doc).

    Futures are ``concurrent.futures.Future`` objects (``as_completed``, ``wait`` and
    ``asyncio.wrap_future`` work).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | str | None = None,
        address: str | None = None,
        backend: BackendName | None = None,
    ) -> None:
        if max_memory_per_worker is not None:
            raise _unsupported(
                "max_memory_per_worker", "set the Dask workers' own memory_limit instead."
            )
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None:
            raise _unsupported("initializer", "a Dask worker is shared by every client.")
        if max_tasks_per_worker is not None:
            raise _unsupported("max_tasks_per_worker", "Dask manages its workers' lifetimes.")
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        self._scattered: dict[int, tuple[Any, distributed.Future[Any]]] = {}
        self._cluster: distributed.LocalCluster | None = None
        if address is None:
            address = os.environ.get(ADDRESS_ENV) or None
        if address is None:
            n = _runtime.default_workers() if max_workers is None else max_workers
            self._cluster = _local_cluster(n)
            address = self._cluster.scheduler_address
        try:
            self._client: distributed.Client = distributed.Client(address, set_as_default=False)
            threads = sum(cast("dict[str, int]", self._client.nthreads()).values())
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        self._max_workers = max(1, threads)
        self.address = address
        _live_pools.add(self)

    # -- the hooks behind gilfree.Pool's submit/map/imap ------------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> Future[Any]:
        """Schedules ``fn(*args, **kwargs)`` on the cluster and returns its Future.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            TypeError: if ``fn`` or an argument cannot be pickled.
            UnsupportedByBackend: for ``timeout=``.
        """
        _no_timeout(timeout, "submit()")
        _no_retries(retries, "submit()")
        future = _DaskFuture()
        with self._shutdown_lock:
            self._check_open()
            dfut = self._submit_chunk(fn, [(args, kwargs)])

            def done(_: Future[Any], value: Any) -> None:
                frames, out, err = value
                _echo(out, err)
                ok, outcome = _decode_frame(frames[0])
                if ok:
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)

            inner = _bridge(dfut, done)
            future._gilfree_dask = dfut
            self._pending.add(future)
        inner.add_done_callback(lambda f: _copy_failure(f, future))
        future.add_done_callback(self._pending.discard)
        return future

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | None,
        retries: int,
    ) -> Iterator[Any]:
        """Runs ``fn`` over the items on the cluster, in chunks, and yields results in order.

        All chunks are submitted at once (as ``Executor.map``); an exception is raised when
        iteration reaches its item. ``timeout`` is not available on this backend.
        """
        _no_timeout(timeout, "map()")
        _no_retries(retries, "map()")
        items: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (args, {}) for args in zip(*iterables, strict=False)
        ]
        size = self._chunksize(chunksize, len(items))
        with self._shutdown_lock:
            self._check_open()
            chunks = [
                self._chunk_future(fn, items[i : i + size]) for i in range(0, len(items), size)
            ]
        return _ordered(chunks)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks; with ``wait``, waits for them, then closes the client (and
        the LocalCluster this pool started)."""
        with self._shutdown_lock:
            # _client is typed as always set; _close() sets it to None.
            if self._shutdown and self._client is None:  # pyright: ignore[reportUnnecessaryComparison]
                return
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            _wait_for(pending)
            self._close()
        else:
            threading.Thread(target=self._close_after, args=(pending,), daemon=True).start()

    # -- beyond the stdlib -------------------------------------------------------------------

    def _imap(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        ordered: bool,
        chunksize: int | None,
        timeout: float | None,
        retries: int,
    ) -> Iterator[Any]:
        """A lazy ``map`` of one-argument ``fn``, with a bounded number of chunks in flight.

        ``chunksize=None`` cuts a sized input into a few chunks per worker, and an unsized one
        into single items."""
        _no_timeout(timeout, "imap()")
        _no_retries(retries, "imap()")
        with self._shutdown_lock:
            self._check_open()
        length = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        size = self._chunksize(chunksize, length)
        window = self._max_workers * _LOOKAHEAD_PER_WORKER
        return self._imap_chunks(fn, iter(iterable), size, window, ordered)

    def scatter(self, obj: Any) -> distributed.Future[Any]:
        """Sends ``obj`` to the cluster once; pass the returned handle as an argument of
        ``submit``/``map`` and the task gets the object. (Arguments of ``SCATTER_BYTES`` or more
        are scattered this way by themselves.)"""
        with self._shutdown_lock:
            self._check_open()
            return self._scatter(obj)

    def cancel(self, future: Future[Any]) -> bool:
        """Cancels a task that has not started (``Future.cancel``).

        Returns:
            ``True`` if it was cancelled (now or before); ``False`` if it had finished.

        Raises:
            ValueError: if the future is not one of this pool's.
            UnsupportedByBackend: if the task is running (Dask cannot stop it), as on the
                thread backend.
        """
        if not isinstance(future, _DaskFuture):
            raise ValueError("this future does not belong to this pool")
        if future.cancel():
            return True
        if future.done():
            return future.cancelled()
        raise _unsupported(
            "Pool.cancel() of a running task", "Dask cannot stop a task that runs on a worker."
        )

    def terminate(self) -> None:
        """Cancels every unfinished task and closes the pool now."""
        self.shutdown(wait=False, cancel_futures=True)
        self._close()

    def __del__(self) -> None:
        # Unlike the process pool's, closing a client and cluster blocks on Dask's event loop:
        # left to :func:`_close_live_pools` at exit rather than done in a finalizer.
        pass

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _runtime.exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _chunksize(self, chunksize: int | None, length: int | None) -> int:
        if chunksize is not None:
            if chunksize < 1:
                raise ValueError("chunksize must be >= 1")
            return chunksize
        if length is None:
            return 1
        return max(1, -(-length // (self._max_workers * _CHUNKS_PER_WORKER)))

    def _scatter(self, obj: Any) -> distributed.Future[Any]:
        known = self._scattered.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        dfut: distributed.Future[Any]
        [dfut] = cast(
            "list[distributed.Future[Any]]",
            self._client.scatter([obj], broadcast=False, hash=False),
        )
        self._scattered[id(obj)] = (obj, dfut)  # holds obj, so its id stays its own
        return dfut

    def _submit_chunk(
        self, fn: Any, calls: list[tuple[tuple[Any, ...] | list[Any], dict[str, Any]]]
    ) -> distributed.Future[Any]:
        """Pickles ``fn`` and the calls here (scattering large arguments) and submits them as
        one task. Call with ``_shutdown_lock`` held."""
        try:
            fn_blob = _dumps(fn)
        except Exception as exc:
            raise TypeError(f"the function cannot be pickled: {exc!r}") from exc
        handles: list[distributed.Future[Any]] = []
        slots: dict[int, _Slot] = {}

        def slot(value: Any) -> Any:
            if isinstance(value, distributed.Future) or _nbytes(value) >= SCATTER_BYTES:
                known = slots.get(id(value))
                if known is None:
                    # isinstance() narrows value to distributed.Future[Unknown] for pyright.
                    handle = (  # pyright: ignore[reportUnknownVariableType]
                        value if isinstance(value, distributed.Future) else self._scatter(value)
                    )
                    known = slots[id(value)] = _Slot(len(handles))
                    handles.append(handle)
                return known
            return value

        prepared = [
            ([slot(a) for a in args], {k: slot(v) for k, v in kwargs.items()})
            for args, kwargs in calls
        ]
        try:
            calls_blob = _dumps(prepared)
        except Exception as exc:
            raise TypeError(f"the call's arguments cannot be pickled: {exc!r}") from exc
        return self._client.submit(_run_chunk, fn_blob, calls_blob, *handles, pure=False, retries=0)

    def _chunk_future(self, fn: Any, items: list[Any]) -> Future[Any]:
        """One chunk as a Future of its decoded outcomes. Call with ``_shutdown_lock`` held."""

        def done(fut: Future[Any], value: Any) -> None:
            frames, out, err = value
            _echo(out, err)
            fut.set_result([_decode_frame(frame) for frame in frames])

        fut = _bridge(self._submit_chunk(fn, items), done)
        fut._gilfree_size = len(items)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    def _imap_chunks(
        self, fn: Any, source: Iterator[Any], size: int, window: int, ordered: bool
    ) -> Iterator[Any]:
        inflight: collections.deque[Future[Any]] = collections.deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(inflight) < window:
                    chunk: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
                        ((item,), {}) for item in itertools.islice(source, size)
                    ]
                    if not chunk:
                        exhausted = True
                        break
                    with self._shutdown_lock:
                        self._check_open()
                        inflight.append(self._chunk_future(fn, chunk))
                if not inflight:
                    return
                if ordered:
                    fut = inflight.popleft()
                else:
                    finished, _ = _wait_for(inflight, return_when=FIRST_COMPLETED)
                    fut = next(f for f in inflight if f in finished)
                    inflight.remove(fut)
                yield from _unwrap_chunk(fut)
        finally:
            for fut in inflight:
                fut._gilfree_dask.cancel()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]

    def _close_after(self, pending: list[Future[Any]]) -> None:
        _engine.block_async_signals()  # Ctrl-C is the main thread's to take
        _wait_for(pending)
        self._close()

    def _close(self) -> None:
        with self._shutdown_lock:
            # Closed: nothing reaches the client after this (the pool refuses work first).
            client, self._client = self.__dict__.get("_client"), None  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
            cluster, self._cluster = self.__dict__.get("_cluster"), None
            self._scattered.clear()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _copy_failure(inner: Future[Any], outer: Future[Any]) -> None:
    """Moves a failure of the bridge (a crash, a cancel) to the caller's Future."""
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
        return
    exc = inner.exception()
    if exc is not None:
        outer.set_exception(exc)


def _unwrap_chunk(fut: Future[Any]) -> Iterator[Any]:
    try:
        outcomes: list[tuple[bool, Any]] = fut.result()
    except BaseException as exc:  # the whole chunk failed: its worker died, say
        outcomes = [(False, exc)] * cast("int", fut._gilfree_size)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    for ok, value in outcomes:
        if not ok:
            raise value
        yield value


def _ordered(chunks: list[Future[Any]]) -> Iterator[Any]:
    try:
        for fut in chunks:
            yield from _unwrap_chunk(fut)
    finally:
        for fut in chunks:
            if not fut.done():
                fut._gilfree_dask.cancel()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]


def _no_timeout(timeout: float | None, call: str) -> None:
    _sync_args.refuse_task_limit(timeout, call, NAME, "Dask cannot stop a task that runs too long.")


def _no_retries(retries: int, call: str) -> None:
    _check_retries(retries)
    if retries:
        raise _unsupported(
            f"{call} with retries=",
            "Dask tells no task that raised from one whose worker died, and a re-run of a task"
            " that may have run is what this pool's cluster refuses (allowed-failures 0).",
        )


class _LocalCluster(distributed.LocalCluster):
    """A LocalCluster that keeps every worker its nannies restart.

    SpecCluster (LocalCluster's base) starts a timer whenever a worker leaves the scheduler
    (``distributed.deploy.lost-worker-timeout``, 15 s by default): when it fires and no worker
    of that name is registered at that moment, it closes the worker's nanny for good. A nanny
    restarts a dead worker in about a second, so a worker that dies again 15 s after an earlier
    death, and is still restarting when the earlier death's timer fires, took its nanny with it:
    the pool shrank by one worker, silently and for good (seen as a test cluster stuck at one of
    two workers). Here nannies own their workers' lives, so the timer is not started; the
    cluster's view of the scheduler's workers is kept as the base ``Cluster`` keeps it."""

    def _update_worker_status(self, op: str, msg: Any) -> None:
        _DaskCluster._update_worker_status(self, op, msg)


class _Nanny(distributed.Nanny):
    """A nanny that gives this process's environment back after each worker start.

    Before it spawns a worker, a nanny writes ``distributed.nanny.pre-spawn-environ``
    (``OMP_NUM_THREADS=1`` and the other BLAS caps, ``MALLOC_TRIM_THRESHOLD_``,
    ``PYTHONHASHSEED``) into ``os.environ``, because a spawned worker inherits the environment
    at its exec, before its own code could set anything. distributed leaves them there: every
    later subprocess of the program (a ``subprocess.run``, gilfree's own process workers)
    would start with one BLAS thread and a fixed hash seed. Here each variable the nanny set
    is put back as it was once no worker start is under way (nannies start their workers
    concurrently, on the cluster's event loop), unless something else changed it meanwhile."""

    # While any start is under way (in every cluster of this process: each may run its own
    # loop thread, hence the lock): each variable a starting nanny writes, with its value before
    # the first of them wrote it (None: unset) and the values written since.
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _before: ClassVar[dict[str, str | None]] = {}
    _written: ClassVar[dict[str, set[str]]] = {}
    _starting: ClassVar[int] = 0

    async def instantiate(self) -> Status:
        cls = _Nanny
        # What this nanny writes before a spawn (distributed >= 2022.12 has it; none: nothing).
        writes: dict[str, str] = getattr(self, "pre_spawn_env", None) or {}
        with cls._lock:
            for name, value in writes.items():
                cls._before.setdefault(name, os.environ.get(name))
                cls._written.setdefault(name, set()).add(value)
            cls._starting += 1
        try:
            return await super().instantiate()
        finally:
            with cls._lock:
                cls._starting -= 1
                if cls._starting == 0:
                    for name, old in cls._before.items():
                        if os.environ.get(name) not in cls._written[name]:
                            continue  # changed by someone else since: theirs
                        if old is None:
                            os.environ.pop(name, None)
                        else:
                            os.environ[name] = old
                    cls._before, cls._written = {}, {}


def _local_cluster(n_workers: int) -> distributed.LocalCluster:
    """A LocalCluster of ``n_workers`` one-thread processes on 127.0.0.1, no dashboard, and
    no silent re-run of a task whose worker died (``allowed-failures`` 0), and no task waiting
    on a worker beside the ones it runs (``worker-saturation`` 1.0), so that a worker's death
    fails only the tasks it was running.

    Its nannies start the workers with multiprocessing's spawn, which also starts the stdlib's
    ``resource_tracker`` process once per interpreter; that one ends when this process does."""
    settings = {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    # What each nanny adds to the config its worker processes start with (a restarted one too:
    # the settings above hold only while the cluster starts).
    worker_config: dict[str, object] = {}
    if not _gil_enabled():
        # distributed's profiler thread (in this process, for the scheduler, and in each worker)
        # walks another thread's live frames from sys._current_frames(), which is unsafe
        # without the GIL: on CPython 3.13t it read a dict where a code object should be.
        settings["distributed.worker.profile.enabled"] = False
        worker_config["distributed.worker.profile.enabled"] = False
    with dask.config.set(settings):  # pyright: ignore[reportPrivateImportUsage]
        return _LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            worker_class=_Nanny,
            host="127.0.0.1",
            dashboard_address=None,  # pyright: ignore[reportArgumentType]
            # The scheduler serves its health and metrics routes even without a dashboard, by
            # default on 0.0.0.0:8787: keep it on loopback, on a free port.
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            config=worker_config,
        )


# -- Worker ----------------------------------------------------------------------------------

_default_lock = threading.Lock()
_default: Pool | None = None


def default_pool() -> Pool:
    """The pool dask Workers run on: the scheduler named by ``GILFREE_DASK_ADDRESS``, or a
    LocalCluster started on first use; closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None or _default._client is None:  # pyright: ignore[reportUnnecessaryComparison]
            _default = Pool()
        return _default


def close_default_pool() -> None:
    """Closes the pool of :func:`default_pool`, if one was started."""
    global _default
    with _default_lock:
        pool, _default = _default, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        pool._close()


_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _close_live_pools() -> None:
    """At interpreter exit: every pool not shut down is terminated, so no LocalCluster it
    started outlives this process's Python."""
    close_default_pool()
    for pool in list(_live_pools):
        try:
            pool.terminate()
        except Exception:
            pass


# threading's exit hook, as in ``_runtime``: before non-daemon threads are joined and before
# atexit, while Dask's event loop still runs. (``_runtime.on_exit`` hooks run only in a process
# that started the engine, which a dask-only program never does.)
threading._register_atexit(_close_live_pools)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]


class WorkerRunner:
    """Runs one :class:`gilfree.Worker` as a long task on the Dask cluster."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker
        self._future: Future[Any] | None = None
        self._pid: int | None = None  # the Dask worker process's, once run() returned

    def start(self) -> None:
        worker = self._worker
        state: dict[str, bytes] = {}
        for key, value in worker.__dict__.items():
            if key == "_gilfree":
                continue
            try:
                state[key] = _dumps(value)
            except Exception as exc:
                raise TypeError(worker._unpicklable_message(key, value, exc)) from exc
        try:
            cls_blob = _dumps(type(worker))
        except Exception as exc:
            raise TypeError(
                f"cannot start {worker.name}: its class {type(worker).__qualname__} cannot be pickled: {exc}"
            ) from exc
        pool = default_pool()
        with pool._shutdown_lock:
            pool._check_open()
            dfut = pool._client.submit(
                _run_worker, cls_blob, state, worker.name, worker.daemon, pure=False, retries=0
            )

            def done(fut: Future[Any], value: Any) -> None:
                reply, out, err, self._pid = value
                _echo(out, err)
                fut.set_result(reply)

            self._future = _bridge(dfut, done)
            pool._pending.add(self._future)
        self._future.add_done_callback(pool._pending.discard)

    def wait(self, timeout: float | None) -> bool:
        fut = self._future
        assert fut is not None
        done, _ = _wait_for([fut], timeout=timeout)
        if not done:
            return False
        worker = self._worker
        try:
            reply = fut.result()
        except WorkerCrashedError as exc:
            exc.args = (f"{worker.name}: {exc.args[0]}", *exc.args[1:])
            worker._finish((False, exc))
        except BaseException as exc:
            worker._finish((False, exc))
        else:
            worker._finish(worker._apply_reply(reply))
        return True

    def is_alive(self) -> bool:
        return self._future is not None and not self._future.done()

    def terminate(self) -> None:
        if self.is_alive():
            raise _unsupported(
                "Worker.terminate()", "Dask cannot stop a task that runs on a worker."
            )

    @property
    def ident(self) -> int | None:
        """The pid of the Dask worker process that ran the Worker, once it finished."""
        return self._pid

    @property
    def native_id(self) -> int | None:
        return self._pid
