"""Module-level primitives: the same object in the parent and in every worker process.

A thread sees its module's ``lock = threading.Lock()``; a worker process that imports the module
would run that line again and make a lock of its own, and a program written for threads would
silently lose its mutual exclusion. So a gilfree primitive made by a module's top-level code is
registered by where it was made (``module:line:n``, ``n`` counting the objects made on that line)
in a shared dictionary; a worker process that imports the module and reaches the same line gets
the parent's object (attached by reference) instead of a new one.

``__main__`` is left out: a script's functions travel by value with their globals, and the
primitives in them pickle by reference already. The registry is made with the engine and named to
workers in ``GILFREE_MODULE_OBJECTS`` (its pickle, hex-encoded).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

ENV = "GILFREE_MODULE_OBJECTS"
_T = TypeVar("_T")
_SCRIPTS = frozenset({"__main__", "__mp_main__"})
_COMPREHENSIONS = frozenset({"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"})

_registry: Any = None  # a gilfree.SharedDict, made or attached on first use
_in_worker = False
_making = False  # the registry's own parts are made now: not registered
_counts: dict[tuple[str, int], int] = {}


def registry_env() -> str:
    """In the parent: the value of :data:`ENV` for workers (makes the registry)."""
    global _registry, _making
    if _registry is None:
        from gilfree.shared_containers import SharedDict

        _making = True
        try:
            _registry = SharedDict[str, Any]()
        finally:
            _making = False
    return pickle.dumps(_registry).hex()


def enter_worker() -> None:
    """In a worker process, before any task: primitives made at module level are looked up."""
    global _in_worker
    _in_worker = True


def _key() -> str | None:
    """``module:line:n`` if the caller's caller is a module's top-level code (not a script's)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("gilfree."):
        frame = frame.f_back  # a gilfree constructor making another (Condition's lock, say)
    while frame is not None and frame.f_code.co_name in _COMPREHENSIONS:
        frame = frame.f_back  # ``[Lock() for _ in range(n)]`` at top level: its own frame
    if frame is None or frame.f_code.co_name != "<module>":
        return None
    module = frame.f_globals.get("__name__")
    if not isinstance(module, str) or module in _SCRIPTS:
        return None
    where = (module, frame.f_lineno)
    n = _counts.get(where, 0)
    _counts[where] = n + 1
    return f"{module}:{frame.f_lineno}:{n}"


def shared(cls: type[_T], make: Callable[[], _T]) -> _T:
    """``make()``, unless a worker process is importing a module whose top-level code made this
    object in the parent: then the parent's object."""
    key = None if _making else _key()
    if key is None:
        return make()
    global _registry
    if _in_worker:
        found = _lookup(key)
        if type(found) is cls:
            return found
        return make()
    obj = make()
    registry_env()
    _registry[key] = obj
    return obj


def merge(obj: Any) -> None:
    """For a class built by ``__init__`` (Condition, Barrier, Value), called at its end: in a
    worker importing a module that made this object in the parent, ``obj`` takes the parent's
    state (its fresh shared slots are dropped); in the parent, ``obj`` is registered."""
    key = None if _making else _key()
    if key is None:
        return
    if _in_worker:
        found = _lookup(key)
        if type(found) is type(obj):
            obj.__dict__.update(found.__dict__)
        return
    registry_env()
    _registry[key] = obj


def _lookup(key: str) -> Any:
    global _registry
    if _registry is None:
        value = os.environ.get(ENV)
        if not value:
            return None
        _registry = pickle.loads(bytes.fromhex(value))
    return _registry.get(key)
