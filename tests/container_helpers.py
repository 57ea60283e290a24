"""Code that runs inside worker processes in tests/test_shared_containers.py (workers adopt
the parent's sys.path, so they can import it by name)."""

from __future__ import annotations

from typing import Any

import gilfree

WATCHDOG = 60.0


def count_up(counts: gilfree.SharedDict, log: gilfree.SharedList, me: int, times: int) -> None:
    """Adds 1 to ``counts["n"]`` and to ``counts[me]`` ``times`` times, each step one atomic
    read-modify-write under the container's lock, and appends ``me`` to ``log`` each time."""
    for _ in range(times):
        with counts.get_lock():
            counts["n"] = counts["n"] + 1
            counts[me] = counts.get(me, 0) + 1
        log.append(me)


def append_all(shared: gilfree.SharedList, items: list[Any]) -> int:
    for x in items:
        shared.append(x)
    return len(shared)


def length(shared: Any) -> int:
    return len(shared)


def hold_lock_and_wait(shared: Any, ready: gilfree.Event, go: gilfree.Event) -> None:
    """Publishes one change, then keeps the container's lock while waiting on ``go`` (the test
    kills the process there)."""
    with shared.get_lock():
        shared.append("committed")
        ready.set()
        go.wait(WATCHDOG)


class Filler(gilfree.Worker):
    """A Worker that gets a container as an attribute and mutates it in ``run()``."""

    def __init__(self, shared: gilfree.SharedDict) -> None:
        super().__init__()
        self.shared = shared

    def run(self) -> int:
        self.shared["from_worker"] = [1, 2, 3]
        self.shared.setdefault("counter", 0)
        return len(self.shared)
