"""Finds the shared state a Worker changed in its worker process, so the parent can say so.

A thread shares its module's globals with the main thread; a Worker runs on copies (its
function's globals are pickled with it, or re-imported in the worker process). A threading
program that collects results in a module-level list therefore gets a silently wrong answer.
This module makes it loud, cheaply:

1. before ``run()``, :func:`watch` looks at the functions that will run (the target, or every
   method a Worker subclass defines, and the functions those name, a few levels deep, skipping
   the standard library) and records, for each global and closure variable their code names:
   a shallow copy of each ``list``/``dict``/``set``/``bytearray`` value, and the value itself
   for each global the code assigns (``global x; x = ...``) and each closure cell. Which
   variables to look at (the plan) is worked out once per imported function or Worker class;
   a function that travelled by value is looked at afresh each time;
2. after ``run()``, :meth:`Watch.changes` compares: an element replaced, added or removed (by
   identity, so no ``__eq__`` runs), or a variable rebound;
3. only the names that changed travel back with the reply; ``Worker.join()`` warns with
   :class:`gilfree.SharedStateWarning`.

What it does not see: changes nested deeper than the container's own elements
(``results[0].append(x)``), and state reached only through attributes (``module.x = 1``).
The cost is a dictionary lookup per name the code uses, plus a copy of each container it
names (O(n) in its length).
"""

from __future__ import annotations

import dis
import operator
import sys
import types
import weakref
from typing import Any

from gilfree._serialize import code_names

_CONTAINERS = (list, dict, set, bytearray)
_MISSING = object()
_DEPTH = 3
_SKIP_MODULES = frozenset(sys.stdlib_module_names) | {"gilfree", "cloudpickle", "numpy"}

# For each code object, by id: a weak reference to it (to tell a reused id), the names it and
# the code nested in it use (less dunders), and those it assigns with ``global``. Keyed by id because hashing
# a code object hashes its bytecode; an entry goes when its code object does.
_analysed: dict[int, tuple[weakref.ref[types.CodeType], frozenset[str], frozenset[str]]] = {}


def _analyse(code: types.CodeType) -> tuple[frozenset[str], frozenset[str]]:
    key = id(code)
    entry = _analysed.get(key)
    if entry is not None and entry[0]() is code:
        return entry[1], entry[2]
    names = frozenset(n for n in code_names(code) if not n.startswith("__"))
    stores = frozenset(_global_stores(code))
    ref = weakref.ref(code, lambda _, key=key: _analysed.pop(key, None))  # type: ignore[misc]
    _analysed[key] = (ref, names, stores)
    return names, stores


# This module inspects objects of any type (globals, closure cells, containers): where a
# type check narrows such an Any to a container, pyright strict calls the items unknown, and
# the ``# pyright: ignore[reportUnknown...]`` comments below say so on those lines.

# The opcodes that rebind a global, as bytes: a code object whose bytecode holds neither byte
# (at any offset, arguments included) has no such instruction, and needs no disassembly (the
# cost of a target that travelled by value, looked at afresh at each start).
_STORE_OPS = (bytes([dis.opmap["STORE_GLOBAL"]]), bytes([dis.opmap["DELETE_GLOBAL"]]))


def _global_stores(code: types.CodeType) -> set[str]:
    raw = code.co_code
    found: set[str]
    if any(op in raw for op in _STORE_OPS):
        found = {
            ins.argval
            for ins in dis.get_instructions(code)
            if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")
        }
    else:
        found = set()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _global_stores(const)
    return found


def _differs(before: Any, now: Any) -> bool:
    """Whether a container's content changed. ``==`` on lists and dicts compares elements by
    identity first, so an unchanged container costs no ``__eq__`` call; an element replaced by
    an equal one counts as unchanged. If ``==`` raises (a numpy array among the elements),
    elements are compared by identity alone."""
    try:
        return bool(before != now)
    except Exception:
        pass
    if len(before) != len(now):
        return True
    # The containers' elements are of any type (pyright: unknown once narrowed from Any).
    if isinstance(now, list):
        return not all(map(operator.is_, before, now))  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(now, dict):
        get = now.get  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return any(get(k, _MISSING) is not v for k, v in before.items())
    return True


def _unwrap(fn: Any) -> list[types.FunctionType]:
    """The plain functions behind a callable (a partial, a bound method, a callable object)."""
    for _ in range(4):
        if isinstance(fn, types.FunctionType):
            return [fn]
        if isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif hasattr(fn, "func") and hasattr(fn, "keywords"):  # functools.partial
            fn = fn.func
        elif fn is not None and not isinstance(fn, type):
            call = getattr(type(fn), "__call__", None)  # noqa: B004  # pyright: ignore[reportUnknownArgumentType]
            return _unwrap(call) if isinstance(call, types.FunctionType) else []
        else:
            return []
    return []


class Watch:
    """What :func:`watch` recorded before ``run()``."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        # (where, name, holder, before, copy or None, watch rebinding)
        self.entries: list[tuple[str, str, Any, Any, Any, bool]] = []

    def changes(self) -> list[tuple[str, str, str, str]]:
        """``(what changed, scope, where, name)``: what is ``"list"``, ``"dict"``, ``"set"``,
        ``"bytearray"`` (its content changed) or ``"rebound"``; scope is ``"global"`` (where
        is the module) or ``"closure"`` (where is the function that captured it)."""
        found: list[tuple[str, str, str, str]] = []
        if not self.entries:
            return found
        now: Any
        for where, name, holder, before, copied, rebind in self.entries:
            if isinstance(holder, dict):
                now = holder.get(name, _MISSING)  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
                kind = "global"
            else:
                try:
                    now = holder.cell_contents
                except ValueError:
                    now = _MISSING
                kind = "closure"
            if now is not before:
                if rebind:
                    found.append(("rebound", kind, where, name))
            elif copied is not None and _differs(copied, now):
                found.append((type(now).__name__, kind, where, name))  # pyright: ignore[reportUnknownArgumentType]
        return found


def _methods(cls: type, stop: type) -> list[types.FunctionType]:
    found: list[types.FunctionType] = []
    value: Any
    for klass in cls.__mro__:
        if klass is stop or klass is object:
            break
        for value in vars(klass).values():
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
            elif isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                found.append(value)
    return found


# A plan: the variables to look at for one root (a target, or a Worker subclass), as
# ``(where, name, holder, rebind)``, holder being a globals dict or a closure cell. Worked out
# once per root whose globals are a module's own (an imported function, a Worker subclass:
# both live as long as the process), by id. A function that travelled by value comes with
# fresh globals each time: its plan is worked out each time, and never kept (it would keep
# those globals, and whatever data they hold, alive).
_Plan = tuple[tuple[str, str, Any, bool], ...]
_plans: dict[int, tuple[Any, _Plan]] = {}
_PLANS_MAX = 256
_NOTHING = Watch()


def watch(worker: Any, base: type[Any]) -> Watch:
    """Records the state ``worker.run()`` could change without the parent seeing it.

    A diagnostic: if looking fails (an object whose ``copy`` raises, say), nothing is
    watched and the Worker runs as it would have."""
    try:
        target = worker.__dict__.get("_target")
        cls: type[Any] = type(worker)  # pyright: ignore[reportUnknownVariableType]
        plan: _Plan = _plan(target, base) if target is not None else ()
        if cls.run is not base.run:
            plan += _plan(cls, base)
        if not plan:
            return _NOTHING
        w = Watch()
        value: Any
        for where, name, holder, rebind in plan:
            if type(holder) is dict:
                value = holder.get(name, _MISSING)  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
            else:
                try:
                    value = holder.cell_contents
                except ValueError:
                    value = _MISSING
            if type(value) in _CONTAINERS:  # pyright: ignore[reportUnknownArgumentType]
                w.entries.append((where, name, holder, value, value.copy(), rebind))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            elif rebind:
                w.entries.append((where, name, holder, value, None, True))  # pyright: ignore[reportUnknownArgumentType]
        return w
    except Exception:
        return Watch()


def _plan(root: Any, base: type) -> _Plan:
    """The plan for a target, or for a Worker subclass (``root``, a class)."""
    entry = _plans.get(id(root))
    if entry is not None and entry[0] is root:
        return entry[1]
    plan = _make_plan(_methods(root, base) if isinstance(root, type) else _unwrap(root))
    if isinstance(root, type) or (
        isinstance(root, types.FunctionType)
        and getattr(sys.modules.get(root.__module__), "__dict__", None) is root.__globals__
    ):
        if len(_plans) >= _PLANS_MAX:
            del _plans[next(iter(_plans))]
        _plans[id(root)] = (root, plan)  # keeps root alive, so its id is not reused
    return plan


def _make_plan(roots: list[types.FunctionType]) -> _Plan:
    plan: list[tuple[str, str, Any, bool]] = []
    seen_fns: set[int] = set()
    seen_vars: set[tuple[int, str]] = set()
    todo = [(fn, 0) for fn in roots]
    while todo:
        fn, depth = todo.pop()
        if id(fn) in seen_fns:
            continue
        seen_fns.add(id(fn))
        code = fn.__code__
        module = fn.__module__ or "?"
        g = fn.__globals__
        names, stores = _analyse(code)
        for name in names:
            value = g.get(name, _MISSING)
            rebind = name in stores
            if (value is _MISSING and not rebind) or (id(g), name) in seen_vars:
                continue
            seen_vars.add((id(g), name))
            if rebind or type(value) in _CONTAINERS:
                plan.append((module, name, g, rebind))
            elif isinstance(value, types.FunctionType) and depth < _DEPTH:
                home = (value.__module__ or "").partition(".")[0]
                if home not in _SKIP_MODULES:
                    todo.append((value, depth + 1))
        closure = fn.__closure__
        if not closure:
            continue
        for name, cell in zip(code.co_freevars, closure, strict=True):
            if name.startswith("__") or (id(cell), name) in seen_vars:
                continue
            seen_vars.add((id(cell), name))
            plan.append((fn.__qualname__, name, cell, True))
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if isinstance(value, types.FunctionType) and depth < _DEPTH:
                todo.append((value, depth + 1))
    return tuple(plan)
