"""Pickling policy: how objects become bytes for the engine and back.

The engine only ever sees bytes. Code objects (targets, Worker subclasses, anything defined in
``__main__`` or a REPL) go through cloudpickle, which ships what cannot be imported by value.
Plain pickle (protocol 5) is tried first where it is enough, because it is much faster on large
containers; cloudpickle is the fallback.

Large buffers (numpy arrays, ``bytearray``, ``memoryview``, :class:`gilfree.SharedArray`) travel
out-of-band through shared memory: see ``_oob`` for the format and the protocol. ``dumps``
always returns ``bytes``; a blob with out-of-band buffers starts with ``_oob.MAGIC`` (a pickle
stream never does), and ``loads`` accepts both.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any

from gilfree import _oob

PROTOCOL = 5


class _MainRefused(pickle.PicklingError):
    pass


class _PlainPickler(pickle.Pickler):
    """A plain pickler that refuses anything a worker could not import by name.

    Classes and functions of ``__main__`` are importable in the parent only (workers never run
    the user's main module), and dynamic classes that cloudpickle rebuilt in a worker have no
    importable home; both must travel by value, so this pickler bails out and cloudpickle
    takes over.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | types.FunctionType):
            module = getattr(obj, "__module__", None)
            if module == "__main__" or module is None:
                raise _MainRefused(obj)
            return NotImplemented
        if type(obj) in _BUFFER_TYPES:
            return _oob.reduce_buffer(obj)
        return NotImplemented


_BUFFER_TYPES = (bytearray, memoryview)


_cloud_pickler: type[pickle.Pickler] | None = None


def _cloud_pickler_class() -> type[pickle.Pickler]:
    """cloudpickle's pickler, with large ``bytearray`` and ``memoryview`` sent out-of-band too.

    Imported on first use: cloudpickle costs ~15 ms to import, and a program whose functions
    all import by name never needs it (a worker loading its pickles imports it by itself)."""
    global _cloud_pickler
    if _cloud_pickler is None:
        import cloudpickle

        class _CloudPickler(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) in _BUFFER_TYPES:
                    reduced = _oob.reduce_buffer(obj)
                    if reduced is not NotImplemented:
                        return reduced
                return super().reducer_override(obj)

        _cloud_pickler = _CloudPickler
    return _cloud_pickler


def dumps(obj: Any) -> bytes:
    """Pickles ``obj``, by reference where possible and by value where needed.

    Out-of-band buffers of at least ``_oob.THRESHOLD`` bytes (and any that already live in
    shared memory) are placed in shared memory rather than in the returned bytes.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``obj`` cannot be pickled at all.
    """
    buf = io.BytesIO()
    session = _oob.Session()
    try:
        _PlainPickler(buf, PROTOCOL, buffer_callback=session.callback).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        buf = io.BytesIO()
        session = _oob.Session()
        _cloud_pickler_class()(buf, protocol=PROTOCOL, buffer_callback=session.callback).dump(obj)
    if not session.buffers:
        return buf.getvalue()
    return session.finish(buf.getbuffer())


def loads(data: Any) -> Any:
    """Unpickles what :func:`dumps` made (``bytes``, or a ``memoryview`` of them)."""
    if pins_shared_memory(data):
        return _oob.loads(data)
    _oob.reap()
    return pickle.loads(data)


def pins_shared_memory(blob: bytes) -> bool:
    """Whether ``blob`` (from :func:`dumps`) placed buffers in shared memory."""
    return blob[:4] == _oob.MAGIC


def discard(blob: bytes) -> None:
    """Tells the shared-memory arena that ``blob`` will never be sent or loaded (a cancelled
    task's arguments, say), so the memory it pins can be reused at once."""
    _oob.discard(blob)


def find_unpicklable(args: Any = (), kwargs: Any = None) -> tuple[str, Any, BaseException] | None:
    """The first argument of a call that cannot be pickled, as ``(label, object, error)``
    with a label such as ``"argument 1"`` or ``"keyword argument 'key'"``; ``None`` if every
    one can. For naming the culprit once pickling the whole call has failed."""
    labelled = [(f"argument {i}", a) for i, a in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", a) for k, a in (kwargs or {}).items()]
    for label, arg in labelled:
        try:
            dumps(arg)
        except Exception as exc:
            return label, arg, exc
    return None


def describe_failure(obj: Any, exc: BaseException) -> str:
    """A short, readable account of why ``obj`` could not be pickled."""
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(obj).__name__}): {type(exc).__name__}: {exc}"
