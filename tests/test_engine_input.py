"""Bad input at the native module's entry points raises a Python exception, never a Rust panic
(pyo3's ``PanicException``, a ``BaseException`` that ``except Exception`` does not catch)."""

from __future__ import annotations

import sys

import pytest

from gilfree import _engine, _runtime
from gilfree.exceptions import WorkerCrashedError


def test_a_timeout_too_long_for_a_deadline_waits_without_one() -> None:
    lease = _runtime.engine().acquire()
    try:
        lease.kill()
        # 1e19 s fits a Duration but has no deadline representable as an instant: it waits
        # like None, and the worker's death ends the wait. (Beyond a Duration, 1e300 say, the
        # glue refuses it: tests/test_timeouts.py.)
        with pytest.raises(WorkerCrashedError):
            lease.recv(timeout=1e19)
    finally:
        lease.release()


@pytest.mark.parametrize("ring_capacity", [2**40, 2**62, 2**64 - 1])
def test_an_impossible_ring_capacity_is_an_error(ring_capacity: int) -> None:
    engine = _engine.Engine(
        sys.executable,
        ["-m", "gilfree._worker"],
        [],
        None,
        0,
        1.0,
        ring_capacity,
        lambda pid, stream, data: None,
    )
    try:
        with pytest.raises(OSError):
            engine.acquire()
    finally:
        engine.shutdown()
