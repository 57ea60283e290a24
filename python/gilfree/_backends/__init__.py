"""Backends: where Workers, Pools and ``gilfree.map`` run.

``process`` is the Rust engine's worker processes (the built-in path in ``worker.py`` and
``executor.py``); every other backend is a module of this package, imported on first use so that
``import gilfree`` stays light.

Choosing one, strongest first:

1. ``backend=`` given to ``Pool``, ``Worker`` or ``gilfree.map``;
2. the innermost ``with gilfree.config(backend=...)`` block (per thread and per asyncio task,
   like ``decimal.localcontext``);
3. the ``GILFREE_BACKEND`` environment variable;
4. ``"auto"``: ``"thread"`` when the interpreter runs without the GIL
   (``sys._is_gil_enabled()`` is false), ``"process"`` otherwise.

A backend module (``_backends/<name>.py``, registered in ``_MODULES``) provides:

- ``Pool``: a subclass of :class:`gilfree.Pool` taking the same constructor arguments (plus
  ``backend=``, which it ignores). ``gilfree.Pool(..., backend=name)`` returns an instance of it.
  It keeps the base class's typed ``submit``/``map``/``imap`` and overrides the hooks they call
  (``_submit``, ``_map``, ``_imap``), plus ``shutdown``, ``cancel`` and ``terminate``.
- ``WorkerRunner(worker)``: runs one :class:`gilfree.Worker`; methods ``start()``,
  ``wait(timeout) -> bool`` (on completion it calls ``worker._finish((ok, value_or_exc))``),
  ``is_alive()``, ``terminate()``, and properties ``ident`` and ``native_id``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
from collections.abc import Generator
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    # The names ``backend=`` takes (``NAMES``), for the checkers.
    BackendName: TypeAlias = Literal["auto", "process", "thread", "dask"]

__all__ = ["ENV_VAR", "NAMES", "UnsupportedByBackend", "choose", "config", "resolve"]

ENV_VAR = "GILFREE_BACKEND"

# Concrete backends and the module that implements each (None: the built-in process engine).
_MODULES: dict[str, str | None] = {
    "process": None,
    "thread": "gilfree._backends.thread",
    "dask": "gilfree._backends.dask",
}

NAMES = ("auto", *_MODULES)

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gilfree_backend", default=None
)


class UnsupportedByBackend(NotImplementedError):
    """What was asked cannot be done on this backend (e.g. killing a running thread)."""


def _check(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(
            f"{where}: unknown backend {name!r}; choose one of {', '.join(map(repr, NAMES))}"
        )
    return name


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def choose(backend: BackendName | None = None) -> str:
    """The concrete backend (``"process"``, ``"thread"``, ...) for a call given ``backend=``.

    Raises:
        ValueError: if the name (given, from ``config`` or from ``GILFREE_BACKEND``) is not a
            backend; the message says where it came from.
    """
    if backend is not None:
        name = _check(backend, "backend=")
    elif (block := _current.get()) is not None:
        name = block
    elif env := os.environ.get(ENV_VAR, "").strip():
        name = _check(env, f"the {ENV_VAR} environment variable")
    else:
        name = "auto"
    if name == "auto":
        return "process" if _gil_enabled() else "thread"
    return name


def resolve(name: BackendName | None = None) -> ModuleType | None:
    """The module implementing the backend chosen by ``name`` (see :func:`choose`), imported on
    first use; ``None`` for ``"process"``, the built-in engine.

    Raises:
        ValueError: for an unknown name, or a backend whose module is not available.
    """
    concrete = choose(name)
    module = _MODULES[concrete]
    if module is None:
        return None
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the backend is there; something it needs is missing
            raise ValueError(
                f"backend {concrete!r} needs a package that is not installed: {exc}"
            ) from exc
        raise ValueError(f"backend {concrete!r} is not available in this build") from exc


@contextlib.contextmanager
def config(*, backend: BackendName) -> Generator[None, None, None]:
    """Sets the default backend for the ``with`` block.

    Applies to ``Pool``, ``Worker`` and ``gilfree.map`` calls made in the block without
    ``backend=``, in this thread (and asyncio task). ``GILFREE_BACKEND`` sets the program's
    default the same way.

    Example::

        with gilfree.config(backend="thread"):
            results = gilfree.map(f, items)

    Raises:
        ValueError: if ``backend`` is not one of ``"auto"``, ``"process"``, ``"thread"``,
            ``"dask"``.
    """
    token = _current.set(_check(backend, "gilfree.config(backend=)"))
    try:
        yield
    finally:
        _current.reset(token)
