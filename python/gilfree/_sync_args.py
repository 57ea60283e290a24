"""Every timeout rule gilfree applies, in one place, and ``threading``'s and ``queue``'s other
argument rules for the shared primitives, with their messages.

Timeouts, by the call that takes them:

- the shared primitives (``Lock.acquire``, ``Event.wait``, ``Queue.get``, ...): ``threading``'s
  and ``queue``'s rules, each call's own (:func:`lock_wait`, :func:`wait`,
  :func:`semaphore_wait`, :func:`queue_wait`);
- ``Worker.join``/``Worker.result``: ``threading.Thread.join``'s (:func:`join_wait`);
- a Pool task's time limit (``submit``/``map``/``imap``/``gilfree.map`` ``timeout=``): the
  engine's (:func:`task_limit`), or a refusal on a backend that cannot stop a running task
  (:func:`refuse_task_limit`). (``Future.result(timeout=)`` is ``concurrent.futures``'s own.)

The native glue takes only values checked here and converts them: a wait of ``None`` (forever)
or a finite number of seconds in ``0 .. TIMEOUT_MAX`` (``0``: do not wait), and a count of at
least one.
"""

from __future__ import annotations

import math
import operator
import sys
import threading
from typing import SupportsFloat, cast

__all__ = [
    "MESSAGES",
    "TIMEOUT_MAX",
    "join_wait",
    "lock_wait",
    "queue_wait",
    "refuse_task_limit",
    "release_count",
    "semaphore_wait",
    "task_limit",
    "wait",
]

#: ``threading.TIMEOUT_MAX``: longer timeouts raise ``OverflowError``, as ``threading``'s do.
TIMEOUT_MAX: float = threading.TIMEOUT_MAX

#: The words of the errors the native glue raises for a refused release (or ``task_done``), by name (it picks the
#: exception type and reads the text here, on the error path only, so that a release that
#: succeeds runs no Python code).
MESSAGES: dict[str, str] = {
    "release_unlocked": "release unlocked lock",
    "release_unacquired": "cannot release un-acquired lock",
    "release_not_owner": (
        "cannot release a gilfree.Lock held by another thread or process "
        "(unlike threading.Lock, only the owner may release it)"
    ),
    "semaphore_released_too_many": "Semaphore released too many times",
    "task_done_too_many": "task_done() called too many times",
}

_NAN = "Invalid value NaN (not a number)"
_TOO_LARGE = "timeout value is too large"


def lock_wait(blocking: bool, timeout: float) -> float | None:
    """``Lock.acquire(blocking, timeout)`` as ``threading`` takes it (``-1``: forever;
    ``blocking`` an integer before CPython 3.13, which reads it as a truth value)."""
    blocking = bool(blocking) if sys.version_info >= (3, 13) else operator.index(blocking) != 0
    if math.isnan(timeout):
        raise ValueError(_NAN)
    # `threading` converts the timeout to its clock type first, so a huge negative one
    # overflows too.
    if abs(timeout) > TIMEOUT_MAX:
        raise OverflowError(_TOO_LARGE)
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    if timeout == -1:
        return None
    if timeout < 0:
        # CPython 3.13 reworded this message; the running interpreter's wording is the one.
        if sys.version_info >= (3, 13):
            raise ValueError("timeout value must be a non-negative number")
        raise ValueError("timeout value must be positive")
    return float(timeout)


def wait(timeout: float | None) -> float | None:
    """The timeout of ``Event.wait``, ``Condition.wait``, ``Barrier.wait``: ``threading``
    computes a remaining time and stops once it is not positive, so a negative (or NaN)
    timeout does not wait at all."""
    if timeout is None:
        return None
    if not timeout > 0:  # NaN too
        return 0.0
    if timeout > TIMEOUT_MAX:
        raise OverflowError(_TOO_LARGE)
    return float(timeout)


def semaphore_wait(blocking: bool, timeout: float | None) -> float | None:
    """``Semaphore.acquire(blocking, timeout)``."""
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        return 0.0
    return wait(timeout)


def release_count(n: int) -> int:
    """``Semaphore.release(n)``."""
    if n < 1:
        raise ValueError("n must be one or more")
    return n


def queue_wait(block: bool, timeout: float | None) -> float | None:
    """``queue.Queue.put``/``get``'s timeout: ignored when not blocking, negative is an error."""
    if not block or timeout is None:
        return None
    if math.isnan(timeout):
        raise ValueError(_NAN)
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    if timeout > TIMEOUT_MAX:
        raise OverflowError(_TOO_LARGE)
    return float(timeout)


def join_wait(timeout: float | None) -> float | None:
    """``Worker.join(timeout)`` and ``Worker.result(timeout)``, as ``threading.Thread.join``
    takes it: a negative timeout does not wait, NaN is a ``ValueError``, beyond
    :data:`TIMEOUT_MAX` an ``OverflowError``."""
    if timeout is None:
        return None
    if timeout < 0:
        return 0.0
    if math.isnan(timeout):
        raise ValueError(_NAN)
    if timeout > TIMEOUT_MAX:
        raise OverflowError(_TOO_LARGE)
    return float(timeout)


def task_limit(timeout: float | None) -> float | None:
    """A Pool task's time limit (``timeout=`` of ``submit``, ``map``, ``imap``,
    ``gilfree.map``), checked at the call, before anything is queued: ``None`` or one beyond
    :data:`TIMEOUT_MAX` (infinity included) is no limit; negative or NaN is a ``ValueError``;
    anything but a real number a ``TypeError``."""
    if timeout is None:
        return None
    secs = _real(timeout, "timeout")
    if math.isnan(secs) or secs < 0:
        raise ValueError("timeout value must be a non-negative number")
    if secs > TIMEOUT_MAX:
        return None
    return secs


def refuse_task_limit(timeout: float | None, call: str, backend: str, why: str) -> None:
    """Refuses a task time limit on a backend that cannot stop a running task (``why`` says
    what it cannot do)."""
    if timeout is not None:
        from gilfree._backends import UnsupportedByBackend

        raise UnsupportedByBackend(
            f"{call} with a per-task timeout= is not available on the {backend!r} backend: "
            f"{why} (Future.result(timeout=) still bounds how long you wait.) "
            "Use backend='process' for it."
        )


def _real(value: object, name: str) -> float:
    """``value`` as a float, converted as CPython converts a ``double`` argument (a ``float``,
    or anything with ``__float__`` or ``__index__``: ``True`` is ``1.0``), with its message."""
    kind = type(value)
    if not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"argument {name!r}: must be real number, not {kind.__name__}")
    return float(cast("SupportsFloat", value))
