"""Zero-copy transport of large buffers: the pickle glue over the engine's bulk segments.

``_serialize.dumps`` hands every out-of-band ``PickleBuffer`` (numpy arrays, ``bytearray``,
``memoryview``, :class:`gilfree.SharedArray`) to :class:`Session`. A buffer of at least
:data:`THRESHOLD` bytes, or any buffer that already lies in shared memory (an array this
process received, a ``SharedArray``), leaves the pickle stream; the engine then makes an
*envelope*: the private buffers copied once into a shared segment, the shared ones named by
reference, and the pickle stream. The receiver's engine maps the segments and hands pickle
writable views of them (``buffers=``), so numpy builds its arrays as views of shared memory.
Small private buffers stay in-band.

Everything about the memory lives in the engine (``gilfree_core::shm::bulk``): segments are
sealed memfds made, recycled by size class, pinned while a receiver views them, and freed
by the process that made them; their fds reach a peer over its channel's Unix socket
(``SCM_RIGHTS``), never through ``/proc``; the protocol, its loom models and the conformance
suite are there. This module only decides what goes out-of-band and calls the engine.

Limits (see the engine's module docs): a blob can be loaded while a view from an earlier load
lives, or once for sure; a late load raises :class:`StaleBufferError`, never returns other
data. A blob only reaches processes over a channel (a Worker, a Pool task and its result);
one put in a ``gilfree.Queue`` travels in-band. Large ``bytes`` stay in-band: pickle does not
let a reducer see exact ``bytes`` objects. ``GILFREE_ZERO_COPY=0`` keeps private buffers
in-band.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, cast

from gilfree import _engine

MAGIC: bytes = _engine.BULK_MAGIC

# Out-of-band buffers smaller than this stay in-band (unless they lie in shared memory).
THRESHOLD = 64 * 1024

ENABLED = os.environ.get("GILFREE_ZERO_COPY", "1") != "0"


class StaleBufferError(RuntimeError):
    """A blob names a shared segment that was recycled or freed before this load."""


class Session:
    """Collects one ``dumps`` call's out-of-band buffers, then asks the engine for the blob."""

    __slots__ = ("buffers", "inband")

    def __init__(self, inband: bool = False) -> None:
        self.buffers: list[memoryview] = []
        self.inband = inband

    def callback(self, pb: pickle.PickleBuffer) -> bool:
        """``buffer_callback``: True keeps the buffer in-band, False sends it out-of-band."""
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickle copies it in-band
            return True
        if self.inband:
            return True
        if raw.nbytes < THRESHOLD or not ENABLED:
            if not raw.nbytes or not _engine.bulk_is_shared(raw):
                return True
        self.buffers.append(raw)
        return False

    def finish(self, stream: Any) -> bytes:
        """The blob: the engine's envelope of the buffers and the pickle stream."""
        return _engine.bulk_pack(self.buffers, stream)


def loads(data: Any) -> Any:
    """Unpickles a blob made by :meth:`Session.finish`."""
    unpacked = _engine.bulk_unpack(data)
    if unpacked is None:
        raise StaleBufferError(
            "a shared buffer in this message was recycled or freed before it was read"
        )
    views, at = unpacked
    return pickle.loads(memoryview(data)[at:], buffers=views)


def reap() -> None:
    """Nothing to do: the engine settles pins as it packs and unpacks (kept for callers)."""


def discard(blob: bytes) -> None:
    """Releases what a blob this process made and will never send keeps busy."""
    if blob[:4] == MAGIC:
        _engine.bulk_discard(blob)


def stats() -> dict[str, int]:
    """This process's shared segments, for tests and diagnostics.

    Keys: ``segments`` (own recycled segments), ``bytes`` (their size), ``free`` (those no
    live process pins and no blob in flight names), ``pinned`` (blobs in flight not yet
    loaded), ``mapped`` (other processes' segments viewed here now), ``known`` (other processes'
    segments kept mapped for later blobs), ``shared`` (SharedArray segments made here and alive).
    """
    return dict(_engine.bulk_stats())


def is_shared(buf: Any) -> bool:
    """Whether the bytes of ``buf`` lie in shared memory (they would be sent by reference)."""
    raw = memoryview(buf).cast("B") if memoryview(buf).format != "B" else memoryview(buf)
    return raw.nbytes > 0 and _engine.bulk_is_shared(raw)


def new_shared(nbytes: int) -> memoryview:
    """A fresh zero-filled shared segment of ``nbytes`` (a SharedArray's memory), as a
    writable memoryview; the memory lives while a view of it does."""
    # BulkView exports the buffer protocol from Rust (the stub cannot say so on 3.11).
    return memoryview(cast("Any", _engine.bulk_shared(nbytes)))


# -- reducers for buffers pickle keeps in-band by default -------------------------------------------


def _rebuild_bytearray(buf: Any) -> bytearray:
    return bytearray(buf)


def _rebuild_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buf)
    if fmt != "B" or len(shape) != 1:
        # typeshed types cast() by Literal format codes; this one comes from the sender's view.
        view = cast("Any", view.cast("B")).cast(fmt, shape)
    return view


def reduce_buffer(obj: Any) -> Any:
    """A protocol-5 reduction of a large ``bytearray`` or ``memoryview``; NotImplemented for
    anything else (pickle's own rule then applies)."""
    if type(obj) is bytearray:
        if len(obj) >= THRESHOLD:
            return _rebuild_bytearray, (pickle.PickleBuffer(obj),)
    elif type(obj) is memoryview:
        if obj.c_contiguous:
            return _rebuild_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape)
    return NotImplemented
