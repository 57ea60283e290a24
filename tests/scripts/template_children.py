"""For the probe scripts: which children of this process are templates."""

import psutil

from gilfree import _runtime


def templates() -> list[int]:
    """Our children that run the template's command line and are not workers (which the
    template forked, keeping its command line), oldest first; a child that ends while we look
    is skipped. Call when no fork is under way: a worker is in ``worker_pids()`` from its
    fork's round on, and a fork before that would look like a template here."""
    workers = set(_runtime.worker_pids())
    found = []
    for child in psutil.Process().children():
        try:
            if "--template" in child.cmdline() and child.pid not in workers:
                found.append((child.create_time(), child.pid))
        except psutil.Error:
            pass
    return [pid for _, pid in sorted(found)]
