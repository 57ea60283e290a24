"""Timing a whole child program: start, run, exit.

``subprocess.run(..., timeout=...)`` must not be used for this: with a timeout, CPython's
``Popen.wait`` polls with sleeps that double from 0.5 ms up to 50 ms, so every measured
duration lands on one of 15.5, 31.5, 63.5, 113.5, 163.5, ... ms and programs 40 ms apart read
the same (seen here: ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` cold starts both
"114.7 ms"). :func:`timed_run` waits with a blocking ``waitpid`` instead and keeps the time
limit with a watchdog thread that kills the child.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence

#: Longest a measured program may run before the watchdog kills it.
LIMIT_S = 120.0


def timed_run(
    args: Sequence[str], *, limit: float = LIMIT_S, capture: bool = False
) -> tuple[float, str]:
    """Runs ``args`` to its end and times it (wall seconds, from just before the start to the
    exit as ``waitpid`` reports it).

    Args:
        args: The command line.
        limit: Seconds after which the child is killed and ``TimeoutError`` raised.
        capture: Return the child's stdout (decoded) instead of letting it through.

    Returns:
        ``(seconds, stdout)`` (``stdout`` is ``""`` unless ``capture``).

    Raises:
        subprocess.CalledProcessError: The child exited with a non-zero status.
        TimeoutError: The child ran past ``limit``.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE if capture else None)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    watchdog = threading.Timer(limit, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        out = proc.stdout.read() if proc.stdout is not None else b""
        rc = proc.wait()  # no timeout: a blocking waitpid, exact to the exit
        elapsed = time.perf_counter() - t0
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if killed.is_set():
        raise TimeoutError(f"{list(args)} ran past {limit} s")
    if rc:
        raise subprocess.CalledProcessError(rc, list(args), out)
    return elapsed, out.decode()
