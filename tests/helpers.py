"""Code that runs inside worker processes during the tests (importable by name there, since
workers adopt the parent's sys.path, which pytest extended with this folder)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

import gilfree

WATCHDOG = 60.0


def rendezvous_wait(port: int) -> int:
    """Worker side of ``conftest.Rendezvous``: connect, wait for 'go', return this pid."""
    with socket.create_connection(("127.0.0.1", port), timeout=WATCHDOG) as s:
        s.settimeout(WATCHDOG)
        assert s.recv(2) == b"go"
    return os.getpid()


def block_forever() -> None:
    """Blocks on an event nobody sets: a Worker that only terminate() ends."""
    threading.Event().wait()


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def getpid() -> int:
    return os.getpid()


def die(how: str) -> None:
    if how == "exit3":
        os._exit(3)
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(how)


class Squares(gilfree.Worker):
    """The tutorial's shape: a Worker subclass taking data, keeping state on self."""

    def __init__(self, data: list[int]) -> None:
        super().__init__()
        self.data = data
        self.seen: list[int] = []

    def run(self) -> int:
        total = 0
        for x in self.data:
            total += x * x
            self.seen.append(x)
        self.total = total
        return total


class OldStyle(gilfree.Worker):
    def __init__(self, n: int) -> None:
        super(OldStyle, self).__init__()  # noqa: UP008 - the tutorial's spelling
        self.n = n

    def run(self) -> int:
        return self.n * 10


class Printer(gilfree.Worker):
    def __init__(self, tag: str, lines: int) -> None:
        super().__init__()
        self.tag = tag
        self.lines = lines

    def run(self) -> None:
        import sys

        for i in range(self.lines):
            print(f"{self.tag} {i}")
        print(f"{self.tag} err", file=sys.stderr)


class Failing(gilfree.Worker):
    def run(self) -> None:
        self.before = "set"
        raise KeyError("missing-key-in-worker")


class Mutator(gilfree.Worker):
    def __init__(self) -> None:
        super().__init__()
        self.items = [1, 2]
        self.untouched = "same"
        self.doomed = 1

    def run(self) -> None:
        self.items.append(3)
        self.new = {"a": 1}
        del self.doomed
        self.lock = threading.Lock()  # cannot be pickled: skipped with a warning


class Unpicklable(gilfree.Worker):
    def __init__(self) -> None:
        super().__init__()
        self.handle = threading.Lock()


class ReturnsLock(gilfree.Worker):
    def run(self) -> object:
        return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)  # args don't match __init__: unpickling fails
        self.b = b


def raise_unpicklable() -> None:
    raise UnpicklableError(1, 2)


def square(x: int) -> int:
    return x * x


def spin(n: int) -> int:
    """Busy work proportional to n (a CPU-bound task of known cost; no sleeping)."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def record_then(path: str, x: int, crash_at: int) -> int:
    """Appends x to a file (one line per run, O_APPEND), then crashes if x == crash_at."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def connect_and_block(port: int) -> None:
    """Tells the test it is running (by connecting), then blocks until killed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=WATCHDOG)
    s.sendall(str(os.getpid()).encode() + b"\n")
    s.recv(1)  # the test never sends: blocks until the worker is killed
    threading.Event().wait()


def fail_init() -> None:
    raise OSError("init failed on purpose")


_initialized: list[str] = []


def set_marker(value: str) -> None:
    _initialized.append(value)


def get_marker() -> list[str]:
    return list(_initialized)


def raise_value_error(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def spin_or_block(n: int) -> int:
    if n < 0:
        block_forever()
    return spin(n)


def die_when_set(ev: gilfree.Event, i: int) -> int:
    """Item 0 waits for ``ev``, then SIGKILLs its own worker; the other items return."""
    if i == 0:
        assert ev.wait(WATCHDOG)
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def pid_of(_x: object) -> int:
    """The worker process's pid (an item-taking task)."""
    return os.getpid()


def raise_at_three_else_pid(x: int) -> int:
    """Raises for the item 3; else the worker process's pid."""
    if x == 3:
        raise ValueError(f"bad item {x}")
    return os.getpid()


def pick(values: list[Any], i: int) -> Any:
    """``values[i]`` (a two-argument call: ``fn(*item)``)."""
    return values[i]


def fail_at_7(x: int) -> int:
    """``x * x``, except that item 7 raises."""
    if x == 7:
        raise ValueError(f"item {x}")
    return x * x


def stop_at_3(x: int) -> int:
    """``x``, except that item 3 raises StopIteration."""
    if x == 3:
        raise StopIteration(x)
    return x


def wait_then_square(ev: gilfree.Event, x: int) -> int:
    """``x * x`` once ``ev`` is set (a two-argument call: ``fn(*item)``)."""
    assert ev.wait(WATCHDOG)
    return x * x
