"""Code that runs inside worker processes for test_dropin.py (importable by name there)."""

from __future__ import annotations

import threading

import gilfree

RESULTS = [0, 0, 0, 0]
BY_KEY: dict[str, int] = {}
SEEN: set[int] = set()
BUF = bytearray(4)
COUNTER = 0
READ_ONLY = [1, 2, 3]
LOCAL = gilfree.local()


def store_list(i: int) -> None:
    RESULTS[i] = i + 10


def store_dict(key: str) -> None:
    BY_KEY[key] = 1


def store_set(x: int) -> None:
    SEEN.add(x)


def store_bytearray() -> None:
    BUF[0] = 255


def bump(lock: gilfree.Lock) -> None:
    global COUNTER
    with lock:
        COUNTER += 1


def read_only() -> int:
    return sum(READ_ONLY)


def _helper_appends(x: int) -> None:
    RESULTS.append(x)


def calls_helper(x: int) -> None:
    _helper_appends(x)


def identity() -> tuple[str, str, str, int, int, bool]:
    me = gilfree.current_thread()
    return (
        me.name,
        threading.current_thread().name,
        threading.main_thread().name,
        gilfree.get_ident(),
        gilfree.get_native_id(),
        me is gilfree.main_thread(),
    )


def local_seen(value: str) -> object:
    """What LOCAL held when this Worker began, then sets it."""
    before = getattr(LOCAL, "value", None)
    LOCAL.value = value
    return before


def enumerate_names() -> tuple[list[str], int]:
    return [t.name for t in gilfree.enumerate()], gilfree.active_count()


def wait_for(event: gilfree.Event) -> None:
    event.wait()


def put(q: gilfree.Queue, item: object) -> None:
    q.put(item)


class AppendsGlobal(gilfree.Worker):
    def run(self) -> None:
        SEEN.add(99)
