"""The messages a parent and a worker process exchange, as bytes.

A task is ``[u32 header length][pickled header][body]``: the header carries what the worker
must set up before it can unpickle the body (the parent's ``sys.path`` and working directory),
so a class imported from the user's own module resolves in the worker as it did in the parent.

Replies:

- ``RUN_WORKER`` (a ``gilfree.Worker``): one message, ``(status, value, changed, deleted,
  skipped)``; see :func:`encode_reply`.
- ``POOL_INIT`` (a Pool's initializer): one frame, ``b"\\x00"`` for success or ``b"\\x01"``
  followed by the pickled ``(exception, traceback text)``. The engine reads only the first byte.
- ``POOL_CALL`` (a chunk of calls): first the start mark (an empty message, sent before the
  task is unpickled; the engine's scheduler consumes it and never re-runs a task once it
  arrived); then one frame per item as soon as that item finishes (so a crash mid-chunk loses
  no finished result); then a trailer frame: the chunk's run time in seconds as a
  little-endian double, which feeds the adaptive chunk sizing, then the worker's peak resident
  set in bytes as a little-endian u64 (0 unless the task's ``meta`` is ``(count, True)``: a Pool
  with ``max_memory_per_worker``, whose scheduler reads it). An item's frame is the pickled
  result itself when it returned (a pickle stream, or a ``_serialize`` blob with out-of-band
  buffers; neither starts with ``FAILED``), else ``FAILED`` followed by the pickled
  ``(status, payload)``: no tuple is built or unpickled for the common case. A plain value
  (``None``, a ``bool``, an ``int`` that fits in 64 bits, a ``float``, ``str`` or ``bytes``,
  of exactly that type) that a ``fn(item)`` or ``fn(*item)`` call returned travels as a frame
  the engine writes and reads itself: a tag byte (none of FAILED, a pickle stream's first byte
  or an envelope's), then the value (``crates/gilfree-py/src/values.rs``, which owns the tags;
  ``_engine.decode_value`` reads one).
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any

PROTOCOL = 5
_LEN = struct.Struct("<I")
TRAILER = struct.Struct("<dQ")
# The first message a worker sends for a POOL_CALL task: "I have begun it".
START_MARK = b""

# Task kinds.
RUN_WORKER = 1
POOL_INIT = 2
# The first byte of a failure frame the engine itself made (a worker process could not be
# started): the rest is a UTF-8 message (``ENGINE_FAILURE`` in pool/scheduler/mod.rs).
ENGINE_FAILURE = b"\xff"
POOL_CALL = 3

# Reply statuses (RUN_WORKER replies and POOL_CALL item frames).
OK = 0
RAISED = 1
RESULT_UNPICKLABLE = 2

# The first byte of a POOL_CALL item frame for an item that did not return a picklable result.
FAILED = b"\x00"

# How POOL_CALL items are applied: fn(*args, **kwargs) for (args, kwargs) pairs; fn(*args);
# fn(item) (``imap`` and ``gilfree.map``: no 1-tuple per item to build, pickle and unpack).
CALL_ARGS_KWARGS = 0
CALL_STAR = 1
CALL_ONE = 2

# The pickled sys.path and cwd change rarely; cache the header prefix they make.
_cached: tuple[list[str], str, bytes] | None = None


def _context() -> bytes:
    global _cached
    cwd = os.getcwd()
    cached = _cached
    if cached is not None and cached[1] == cwd and cached[0] == sys.path:
        return cached[2]
    blob = pickle.dumps((tuple(sys.path), cwd), PROTOCOL)
    _cached = (list(sys.path), cwd, blob)
    return blob


def context() -> bytes:
    """The pickled ``(sys.path, cwd)`` of now, for :func:`encode_task` (cached while neither
    changes)."""
    return _context()


def encode_task(kind: int, meta: Any, body: bytes, context: bytes | None = None) -> bytes:
    """A task message: ``kind`` and ``meta`` travel in the header, ``body`` as it is;
    ``context`` (from :func:`context`) defaults to this moment's."""
    if context is None:
        context = _context()
    header = pickle.dumps((kind, meta), PROTOCOL)
    return b"".join((_LEN.pack(len(context)), context, _LEN.pack(len(header)), header, body))


# The last context a worker decoded: (its bytes, sys.path, cwd). Consecutive tasks nearly
# always carry the same one, and unpickling a long sys.path per tiny task is measurable.
_last_context: tuple[bytes, list[str], str] = (b"", [], "")


def decode_task(msg: bytes) -> tuple[int, list[str], str, Any, memoryview]:
    """Splits a task message into ``(kind, sys_path, cwd, meta, body)`` (``sys_path`` is the
    caller's to read, not to change)."""
    global _last_context
    view = memoryview(msg)
    (n,) = _LEN.unpack_from(view)
    raw = view[_LEN.size : _LEN.size + n]
    last = _last_context
    # As bytes: comparing a memoryview with bytes goes item by item (~8 ns a byte, microseconds
    # per task for a long sys.path), a copy and a memcmp cost a fraction of that.
    if raw.tobytes() == last[0]:
        path, cwd = last[1], last[2]
    else:
        path_tuple, cwd = pickle.loads(raw)
        path = list(path_tuple)
        _last_context = (bytes(raw), path, cwd)
    at = _LEN.size + n
    (m,) = _LEN.unpack_from(view, at)
    at += _LEN.size
    kind, meta = pickle.loads(view[at : at + m])
    return kind, path, cwd, meta, view[at + m :]


def encode_reply(
    status: int,
    value: Any,
    changed: dict[str, bytes],
    deleted: list[str],
    skipped: list[tuple[str, str]],
) -> bytes:
    """A Worker's reply: the outcome, then the attributes ``run()`` changed (already pickled
    one by one), deleted, or set but could not send (name and reason)."""
    return pickle.dumps((status, value, changed, deleted, skipped), PROTOCOL)


def decode_reply(msg: bytes) -> tuple[int, Any, dict[str, bytes], list[str], list[tuple[str, str]]]:
    """The inverse of :func:`encode_reply`."""
    reply: tuple[int, Any, dict[str, bytes], list[str], list[tuple[str, str]]] = pickle.loads(msg)
    return reply
