"""Pickling policy: how objects become bytes for the engine and back.

The engine only ever sees bytes. Code objects (targets, Worker subclasses, anything defined in
``__main__`` or a REPL) go through cloudpickle, which ships what cannot be imported by value.
Plain pickle (protocol 5) is tried first where it is enough, because it is much faster on large
containers; cloudpickle is the fallback.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any

import cloudpickle

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


def dumps(obj: Any) -> bytes:
    """Pickles ``obj``, by reference where possible and by value where needed.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``obj`` cannot be pickled at all.
    """
    buf = io.BytesIO()
    try:
        _PlainPickler(buf, PROTOCOL).dump(obj)
        return buf.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(obj, protocol=PROTOCOL)


loads = pickle.loads


def describe_failure(obj: Any, exc: BaseException) -> str:
    """A short, readable account of why ``obj`` could not be pickled."""
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(obj).__name__}): {type(exc).__name__}: {exc}"
