"""The worker process: ``python -m gilfree._worker``, started by the engine.

It never imports the user's main module (unlike multiprocessing's spawn), so a script needs no
``if __name__ == "__main__":`` guard. Its loop:

1. open the channel the parent handed down and tell the parent it is ready
   (``Endpoint.from_env``, which also arms the parent-death signal);
2. receive a task, adopt the parent's ``sys.path`` and working directory, unpickle, run;
3. flush stdout/stderr (so all output precedes the reply), send the reply;
4. repeat until the parent goes away.
"""

from __future__ import annotations

import gc
import sys

if __name__ == "__main__" and sys.argv[1:] == ["--template"]:
    # The template: no collection until it forks (``template_main``). Everything it imports
    # lives as long as it does, so collections during the imports below would only cost time
    # on the way to its first fork, and a collection leaves freed holes in pages its workers
    # share. The recipe of ``gc.freeze``'s documentation: disable early in the parent, freeze
    # right before fork, enable early in the child.
    gc.disable()

import os
import pickle
import signal
import time
import traceback
from typing import Any, cast

if __name__ == "__main__" and os.environ.pop("GILFREE_PROCESS_GROUP", None) == "own":
    # (``_runtime.PROCESS_GROUP_ENV``, read before anything is imported.)
    # Out of the parent's process group, first thing (see ``_runtime._own_group_env``); the
    # template's forks stay in the template's group. Refused (a sandbox), it stays in the
    # parent's: what that costs is a slower kernel shutdown, not a failure.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass

from gilfree import (
    _engine,
    _module_objects,
    _protocol,
    _runtime,
    _serialize,
    _shared_state,
    _threading_api,
)
from gilfree.worker import _CALL_ATTRS, SHARED_STATE_KEY, Worker, _State


def _adopt(path: list[str], cwd: str) -> None:
    if sys.path != path:
        sys.path[:] = path  # a copy: ``path`` is kept by ``decode_task``'s cache
    if os.getcwd() != cwd:
        try:
            os.chdir(cwd)
        except OSError:
            pass


def _pickle_error(exc: BaseException, tb_text: str) -> bytes:
    """The exception, pickled so the parent can re-raise the same type; a stand-in if it
    cannot make the round trip."""
    try:
        blob = _serialize.dumps(exc)
        _serialize.loads(blob)
        return blob
    except Exception:
        stand_in = RuntimeError(
            f"{type(exc).__qualname__}: {exc} (the original exception could not be pickled)"
        )
        return _serialize.dumps(stand_in)


# Worker classes this process has rebuilt, by their pickled bytes: loading a class shipped by
# value costs ~100 µs, so it is done once per class per process.
_classes: dict[bytes, type[Worker[Any]]] = {}


def run_worker(meta: tuple[str, bool], body: memoryview) -> bytes:
    """Runs one Worker's ``run()`` and builds the reply."""
    name, daemon = meta
    cls_bytes, state = _serialize.loads(body)
    cls = _classes.get(cls_bytes)
    if cls is None:
        cls = _classes[cls_bytes] = _serialize.loads(cls_bytes)
    obj: Worker[Any] = cls.__new__(cls)
    obj.__dict__.update({key: _serialize.loads(blob) for key, blob in state.items()})
    st = _State(name, daemon)
    st.started = st.in_worker = True
    st.pid = os.getpid()
    obj.__dict__["_gilfree"] = st

    watch = _shared_state.watch(obj, Worker)
    main_name = _threading_api._enter_task(obj, name)
    payload: bytes | tuple[bytes, str] | str
    try:
        value = obj.run()
    except SystemExit:  # threading ignores SystemExit in run(); so do we
        status, payload = _protocol.OK, _serialize.dumps(None)
    except BaseException as exc:
        status, payload = _protocol.RAISED, _error_payload(exc)
    else:
        try:
            status, payload = _protocol.OK, _serialize.dumps(value)
        except Exception as exc:
            status, payload = _protocol.RESULT_UNPICKLABLE, _serialize.describe_failure(value, exc)

    changed: dict[str, bytes] = {}
    skipped: list[tuple[str, str]] = []
    for key, value in obj.__dict__.items():
        if key == "_gilfree" or key in _CALL_ATTRS:
            continue
        try:
            blob = _serialize.dumps(value)
        except Exception as exc:
            skipped.append((key, _serialize.describe_failure(value, exc)))
            continue
        if state.get(key) != blob:
            changed[key] = blob
    deleted = [key for key in state if key not in obj.__dict__ and key not in _CALL_ATTRS]
    _threading_api._exit_task(main_name)
    shared = watch.changes()
    if shared:
        changed[SHARED_STATE_KEY] = _serialize.dumps(shared)
    return _protocol.encode_reply(status, payload, changed, deleted, skipped)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _error_payload(exc: BaseException) -> tuple[bytes, str]:
    tb_text = "".join(traceback.format_exception(exc))
    return _pickle_error(exc, tb_text), tb_text


def pool_init(body: memoryview, endpoint: _engine.Endpoint) -> bool:
    """Runs a Pool's initializer; replies with one frame (see ``_protocol``)."""
    try:
        initializer, initargs = _serialize.loads(body)
        initializer(*initargs)
    except BaseException as exc:
        frame = b"\x01" + _serialize.dumps(_error_payload(exc))
    else:
        frame = b"\x00"
    _flush()
    return endpoint.send(frame)


# Functions this process has unpickled for Pool tasks, by their pickled bytes: a function
# shipped by value costs tens of µs to load. Bounded, oldest dropped first.
_functions: dict[bytes, Any] = {}
_FUNCTIONS_MAX = 64


def _function(blob: bytes) -> Any:
    fn = _functions.get(blob)
    if fn is None:
        fn = _serialize.loads(blob)
        if len(_functions) >= _FUNCTIONS_MAX:
            del _functions[next(iter(_functions))]
        _functions[blob] = fn
    return fn


class _HasBuffers(Exception):
    pass


def _refuse_buffers(_buffer: pickle.PickleBuffer) -> bool:
    raise _HasBuffers


def _dumps_here(obj: Any) -> bytes:
    """Pickles a result in a worker, plain pickle first (C speed, per item of a chunk).

    Safe here without the parent's ``__main__`` check: whatever came from the parent's
    ``__main__`` was rebuilt by value, and plain pickle refuses it (it is not the object its
    name finds here). Anything with out-of-band buffers takes ``_serialize.dumps``, which moves
    large ones through shared memory.
    """
    try:
        return pickle.dumps(obj, _protocol.PROTOCOL, buffer_callback=_refuse_buffers)
    except Exception:
        return _serialize.dumps(obj)


# This process's /proc/self/status, opened on first use (by pid: a process forked from this one
# must open its own).
_status: tuple[int, int] | None = None


def _peak_rss() -> int:
    """This process's peak resident set in bytes (``VmHWM``: the high-water mark of this
    process image's memory; ``getrusage``'s ``ru_maxrss`` would also count the process that
    exec'd it)."""
    global _status
    pid = os.getpid()
    try:
        if _status is None or _status[0] != pid:
            _status = (pid, os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC))
        text = os.pread(_status[1], 4096, 0)
        at = text.index(b"VmHWM:")
        return int(text[at + 6 : text.index(b"kB", at)]) * 1024
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Results that cannot carry out-of-band buffers nor need cloudpickle: plain pickle, no checks.
_SIMPLE = frozenset({int, float, str, bool, type(None), complex})


def _failed(status: int, payload: Any) -> bytes:
    return _protocol.FAILED + _dumps_here((status, payload))


def pool_call(meta: int | tuple[int, bool], body: memoryview, endpoint: _engine.Endpoint) -> bool:
    """Runs a chunk of calls: the start mark, one frame per item as it finishes, then the
    trailer (see ``_protocol``). ``meta``: the item count, or ``(count, True)`` to report
    the peak resident set in the trailer."""
    started = time.perf_counter()
    count, report_rss = (meta, False) if isinstance(meta, int) else meta
    send = endpoint.send
    # Before anything of the task runs (unpickling included): from now on the scheduler
    # counts it as begun, and never re-runs it. Deferred: no wake-up of the parent.
    if not send(_protocol.START_MARK, False):
        return False
    try:
        fn_blob, mode, items = _serialize.loads(body)
        fn = _function(fn_blob)
    except BaseException as exc:
        frame = _failed(_protocol.RAISED, _error_payload(exc))
        for _ in range(count):
            if not send(frame, False):
                return False
    else:
        if mode == _protocol.CALL_ARGS_KWARGS:
            alive = _send_each(fn, items, endpoint)
        else:
            calls: list[Any] = list(items)  # a copy of pointers: microseconds per chunk
            alive = _send_results(fn, calls, mode == _protocol.CALL_STAR, endpoint)
            calls = []
        if not alive:
            return False
        # Let go of the items and the last result before the trailer wakes the parent: a view
        # of a bulk segment among them pins it, and the parent's next array of that size can
        # refill that segment only once no pin is left (else it makes a new one, whose fresh
        # pages cost most of a first transfer).
        items = None
    _flush()
    elapsed = time.perf_counter() - started
    return send(_protocol.TRAILER.pack(elapsed, _peak_rss() if report_rss else 0), True)


def _result_frame(value: Any) -> bytes:
    """An item's frame for a value it returned (``_protocol``)."""
    if type(value) in _SIMPLE:
        return pickle.dumps(value, _protocol.PROTOCOL)
    try:
        return _dumps_here(value)
    except Exception as exc:
        return _failed(_protocol.RESULT_UNPICKLABLE, _serialize.describe_failure(value, exc))


def _send_results(fn: Any, items: list[Any], star: bool, endpoint: _engine.Endpoint) -> bool:
    """Runs ``fn(item)`` (``fn(*item)`` with ``star``) for each item through the engine's loop:
    plain results go into the ring from Rust, a frame each, without a Python step; the items
    whose result is not plain, or that raised, come back here for their frame. ``False`` once
    the parent is gone."""
    index = 0
    while True:
        state, index, value = endpoint.send_results(fn, items, star, index)
        if state == _engine.RESULTS_DONE:
            return True
        if state == _engine.RESULTS_GONE:
            return False
        if state == _engine.RESULTS_RAISED:
            frame = _failed(_protocol.RAISED, _error_payload(cast("BaseException", value)))
        else:
            frame = _result_frame(value)
        value = None
        if not endpoint.send(frame, False):
            return False
        index += 1


def _send_each(fn: Any, items: Any, endpoint: _engine.Endpoint) -> bool:
    """The per-item loop in Python, for chunks of ``fn(*args, **kwargs)`` calls (``submit``).
    ``False`` once the parent is gone."""
    send = endpoint.send
    for args, kwargs in items:
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            frame = _failed(_protocol.RAISED, _error_payload(exc))
        else:
            frame = _result_frame(value)
        value = None
        if not send(frame, False):
            return False
    return True


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what a
    # KeyboardInterrupt means, as the main thread does for threads.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    endpoint = _engine.Endpoint.from_env()
    _runtime.adopt_inherited_arena()
    _module_objects.enter_worker()
    # The engine removed these from the C environment; os.environ is an earlier snapshot.
    os.environ.pop("GILFREE_CHANNEL_FDS", None)
    os.environ.pop("GILFREE_PARENT_PID", None)
    while True:
        msg = endpoint.recv()
        if msg is None:
            return
        kind, path, cwd, meta, body = _protocol.decode_task(msg)
        _adopt(path, cwd)
        if kind == _protocol.POOL_CALL:
            alive = pool_call(meta, body, endpoint)
        elif kind == _protocol.POOL_INIT:
            alive = pool_init(body, endpoint)
        else:
            try:
                reply = run_worker(meta, body)
            except BaseException as exc:  # a failure to unpickle the Worker itself
                reply = _protocol.encode_reply(_protocol.RAISED, _error_payload(exc), {}, [], [])
            _flush()
            alive = endpoint.send(reply)
        del msg, body
        if not alive:
            return


def template_main() -> None:
    """The template process (``python -m gilfree._worker --template``): everything a worker
    needs is imported by now; fork workers on the parent's requests (``template_serve``) until
    the parent goes away. Each fork returns here as a new worker, with its fds in place."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What a worker's first task needs that importing this module did not load: a Worker class
    # or function from the user's ``__main__`` arrives by value, and loading it imports
    # cloudpickle (inspect, ast, dataclasses, logging, ...: ~10-20 ms of CPU in every new
    # worker). Imported once here, every fork has it for free.
    _serialize._cloud_pickler_class()
    # Out of the collector's reach from now on: a forked worker's first collection would
    # otherwise write to every object's header, copying each page of the template's heap
    # (copy-on-write) into every worker. No collection first: with the collector off since
    # the imports began (top of this module) the garbage is a few hundred objects, and a full
    # collection of the template's heap costs milliseconds on the way to the first fork.
    gc.freeze()
    forked = _engine.template_serve()
    if forked is None:
        return
    # A worker collects as any interpreter does.
    gc.enable()
    cwd, env = forked
    # The environment the parent has now (the C environment and os.environ alike). Only what
    # differs from the template's is changed (clearing and refilling all of it cost ~0.6 ms
    # of a fork on demand), and gilfree's own variables always: the engine took some of them
    # out of the template's C environment, not out of its os.environ.
    wanted = dict(env)
    for key in [key for key in os.environ if key not in wanted]:
        del os.environ[key]
    for key, value in wanted.items():
        if key.startswith("GILFREE_") or os.environ.get(key) != value:
            os.environ[key] = value
    sys.argv[1:] = []
    try:
        os.chdir(cwd)
    except OSError:
        pass
    main()


if __name__ == "__main__":
    if sys.argv[1:] == ["--template"]:
        template_main()
    else:
        main()
