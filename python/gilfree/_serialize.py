"""Pickling policy: how objects become bytes for the engine and back.

The engine only ever sees bytes. Code objects (targets, Worker subclasses, anything defined in
``__main__`` or a REPL) go through cloudpickle, which ships what cannot be imported by value.
Plain pickle (protocol 5) is tried first where it is enough, because it is much faster on large
containers; cloudpickle is the fallback.

Large buffers (numpy arrays, ``bytearray``, ``memoryview``, :class:`gilfree.SharedArray`) travel
out-of-band through the engine's shared segments: see ``_oob``. ``dumps`` always returns
``bytes``; a blob with out-of-band buffers is the engine's envelope and starts with
``_oob.MAGIC`` (a pickle stream never does), and ``loads`` accepts both.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any, cast

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
        # cloudpickle ships no types (no py.typed, no stubs): its Pickler is Any to mypy and
        # partly unknown to pyright, hence the three narrow ignores below.
        import cloudpickle  # pyright: ignore[reportMissingTypeStubs]

        class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                if type(obj) in _BUFFER_TYPES:
                    reduced = _oob.reduce_buffer(obj)
                    if reduced is not NotImplemented:
                        return reduced
                return super().reducer_override(obj)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

        _cloud_pickler = _CloudPickler
    return _cloud_pickler


def dumps(obj: Any, inband: bool = False) -> bytes:
    """Pickles ``obj``, by reference where possible and by value where needed.

    Out-of-band buffers of at least ``_oob.THRESHOLD`` bytes (and any that already live in
    shared memory) are placed in shared memory rather than in the returned bytes, unless
    ``inband``: a blob that does not travel over a worker's channel (a ``gilfree.Queue``
    item) cannot hand its segments over, so it carries its bytes.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``obj`` cannot be pickled at all.
    """
    buf = io.BytesIO()
    session = _oob.Session(inband)
    try:
        _PlainPickler(buf, PROTOCOL, buffer_callback=session.callback).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        buf = io.BytesIO()
        session = _oob.Session(inband)
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


def reap() -> None:
    """Lets go of shared memory this process's earlier blobs pinned and their receivers have
    claimed (what :func:`loads` does first; for callers that unpickle with ``pickle.loads``)."""
    _oob.reap()


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
    labelled += [
        (f"keyword argument {k!r}", a) for k, a in cast("dict[str, Any]", kwargs or {}).items()
    ]
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


# -- objects that work between the threads of one process only ---------------------------------
#
# They cannot be pickled (each holds an OS lock), so a Worker that carries one already fails at
# ``start()``; these helpers are only called then, to name the object and its gilfree
# equivalent instead of printing pickle's "cannot pickle '_thread.lock' object". The happy path
# pays nothing.


def _thread_only_types() -> list[tuple[type, str, str]]:
    """``(type, what it is, the gilfree equivalent)``, most derived classes first."""
    import threading

    found: list[tuple[type, str, str]] = [
        (threading.BoundedSemaphore, "threading.BoundedSemaphore", "gilfree.BoundedSemaphore"),
        (threading.Semaphore, "threading.Semaphore", "gilfree.Semaphore"),
        (threading.Condition, "threading.Condition", "gilfree.Condition"),
        (threading.Event, "threading.Event", "gilfree.Event"),
        (threading.Barrier, "threading.Barrier", "gilfree.Barrier"),
        (type(threading.Lock()), "threading.Lock", "gilfree.Lock"),
        (type(threading.RLock()), "threading.RLock", "gilfree.RLock"),
        (threading.Thread, "threading.Thread", "a gilfree.Worker, or pass what it computes"),
        (threading.local, "threading.local", "gilfree.local (created inside run())"),
    ]
    py_rlock = getattr(threading, "_PyRLock", None)
    if isinstance(py_rlock, type):
        found.append((py_rlock, "threading.RLock", "gilfree.RLock"))
    queue = sys.modules.get("queue")
    if queue is not None:
        found.append((queue.Queue, "queue.Queue", "gilfree.Queue"))
        found.append((queue.SimpleQueue, "queue.SimpleQueue", "gilfree.Queue"))
    return found


def thread_only_hint(obj: Any) -> str | None:
    """If ``obj`` only works between threads of one process: ``"<what>, which ...; use
    <equivalent>"``; else ``None``."""
    if type(obj).__module__.startswith("gilfree"):
        return None  # gilfree.local and the like: they pickle
    for cls, what, instead in _thread_only_types():
        if isinstance(obj, cls):
            kind = type(obj).__qualname__
            if type(obj) is not cls and kind not in what:
                what = f"{type(obj).__module__}.{kind} (a {what})"
            return f"{what}, which works between the threads of one process only; use {instead}"
    return None


def find_thread_only(obj: Any, label: str, depth: int = 4) -> tuple[str, str] | None:
    """Searches ``obj`` (containers, instance attributes, a function's closure and the
    globals its code names) for an object that works between threads only.

    Returns ``(where, hint)``, ``where`` being a path such as ``"argument 0[2]"`` or
    ``"target's global 'lock'"``; ``None`` if there is none.
    """
    types_ = _thread_only_types()
    seen: set[int] = set()

    def hint(o: Any) -> str | None:
        for cls, _, _ in types_:
            if isinstance(o, cls) and not type(o).__module__.startswith("gilfree"):
                return thread_only_hint(o)
        return None

    def walk(o: Any, where: str, left: int) -> tuple[str, str] | None:
        if id(o) in seen or isinstance(o, str | bytes | int | float | type(None)):
            return None
        seen.add(id(o))
        found = hint(o)
        if found is not None:
            return where, found
        if left == 0:
            return None
        children: list[tuple[Any, str]] = []
        if isinstance(o, list | tuple):
            seq = cast("Sequence[Any]", o)
            children = [(v, f"{where}[{i}]") for i, v in enumerate(seq)]
        elif isinstance(o, set | frozenset):
            children = [(v, f"{where} (an element)") for v in cast("set[Any]", o)]
        elif isinstance(o, dict):
            mapping = cast("Mapping[Any, Any]", o)
            children = [(v, f"{where}[{k!r}]") for k, v in mapping.items()]
        elif isinstance(o, functools.partial):
            children = [(o.func, where), (o.args, f"{where} (partial args)")]
            children.append((o.keywords, f"{where} (partial keywords)"))
        elif isinstance(o, types.MethodType):
            children = [(o.__self__, f"{where} (its self)"), (o.__func__, where)]
        elif isinstance(o, types.FunctionType):
            code = o.__code__
            for name, cell in zip(code.co_freevars, o.__closure__ or (), strict=False):
                try:
                    children.append((cell.cell_contents, f"{where}'s closure variable {name!r}"))
                except ValueError:  # an empty cell
                    pass
            names = code_names(code)
            children += [
                (o.__globals__[n], f"{where}'s global {n!r}") for n in names if n in o.__globals__
            ]
        elif isinstance(o, type):
            children = [
                (v, f"{where}'s class attribute {k!r}")
                for k, v in vars(o).items()
                if not k.startswith("__")
            ]
        else:
            attrs = getattr(o, "__dict__", None)
            if isinstance(attrs, dict):
                items = cast("dict[str, Any]", attrs).items()
                children = [(v, f"{where}.{k}") for k, v in items]
        for child, child_where in children:
            found_child = walk(child, child_where, left - 1)
            if found_child is not None:
                return found_child
        return None

    return walk(obj, label, depth)


def code_names(code: types.CodeType) -> set[str]:
    """Every name in ``co_names`` of ``code`` and of the code objects nested in it (lambdas,
    comprehensions, inner functions)."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= code_names(const)
    return found
