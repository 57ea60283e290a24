"""The messages a parent and a worker process exchange, as bytes.

A task is ``[u32 header length][pickled header][body]``: the header carries what the worker
must set up before it can unpickle the body (the parent's ``sys.path`` and working directory),
so a class imported from the user's own module resolves in the worker as it did in the parent.

A reply is one pickled tuple ``(status, value, changed, deleted, skipped)``; see
:func:`encode_reply`.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import Any

PROTOCOL = 5
_LEN = struct.Struct("<I")

# Task kinds.
RUN_WORKER = 1

# Reply statuses.
OK = 0
RAISED = 1
RESULT_UNPICKLABLE = 2


def encode_task(kind: int, meta: Any, body: bytes) -> bytes:
    """A task message: ``kind`` and ``meta`` travel in the header, ``body`` as it is."""
    header = pickle.dumps((kind, tuple(sys.path), os.getcwd(), meta), PROTOCOL)
    return b"".join((_LEN.pack(len(header)), header, body))


def decode_task(msg: bytes) -> tuple[int, list[str], str, Any, memoryview]:
    """Splits a task message into ``(kind, sys_path, cwd, meta, body)``."""
    view = memoryview(msg)
    (n,) = _LEN.unpack_from(view)
    kind, path, cwd, meta = pickle.loads(view[_LEN.size : _LEN.size + n])
    return kind, list(path), cwd, meta, view[_LEN.size + n :]


def encode_reply(
    status: int,
    value: Any,
    changed: dict[str, bytes],
    deleted: list[str],
    skipped: list[tuple[str, str]],
) -> bytes:
    """A reply: the outcome, then the attributes ``run()`` changed (already pickled one by
    one), deleted, or set but could not send (name and reason)."""
    return pickle.dumps((status, value, changed, deleted, skipped), PROTOCOL)


def decode_reply(msg: bytes) -> tuple[int, Any, dict[str, bytes], list[str], list[tuple[str, str]]]:
    """The inverse of :func:`encode_reply`."""
    return pickle.loads(msg)
