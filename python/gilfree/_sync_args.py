"""``threading``'s and ``queue``'s argument rules for the shared primitives, with their messages.

The native glue takes only values checked here: a wait of ``None`` (forever) or a finite number
of seconds in ``0 .. TIMEOUT_MAX`` (``0``: do not wait), and a count of at least one.
"""

from __future__ import annotations

import math
import operator
import sys
import threading

__all__ = [
    "MESSAGES",
    "TIMEOUT_MAX",
    "lock_wait",
    "queue_wait",
    "release_count",
    "semaphore_wait",
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
