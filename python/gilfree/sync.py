"""Process-shared synchronisation primitives with the ``threading`` API.

``Lock``, ``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Barrier``
and ``Value`` live in shared memory (a memfd arena that every worker process inherits) and wait
on futexes, so they work between the parent and every :class:`gilfree.Worker` or
:class:`gilfree.Pool` task, with no server process and no round trip per operation. Create one
in the parent, then hand it to workers as a constructor argument, an attribute or a task
argument: it is pickled as a small handle, and every process sees the same object.

Differences from ``threading`` (all come from being shared between processes):

- Only the thread that acquired a ``Lock`` may release it (``threading.Lock`` lets any thread
  release it); others get ``RuntimeError``.
- If a process dies holding a ``Lock`` or ``RLock``, the next ``acquire`` gets the lock and an
  :class:`gilfree.OwnerDiedError` warning. If a worker dies holding ``Semaphore`` permits, they
  are given back (never above the initial value); if it dies while holding a ``Barrier``, the
  barrier is broken (waiters get ``threading.BrokenBarrierError``), so no wait blocks forever.
- ``Condition.notify(n)`` wakes ``n`` waiters, not necessarily the ones that waited longest.
  A ``Condition`` needs a gilfree ``Lock`` or ``RLock`` (a ``threading.Lock`` exists in one
  process only).
- Timeouts follow ``threading``'s rules (``ValueError`` for a negative one where ``threading``
  raises it, ``OverflowError`` beyond ``threading.TIMEOUT_MAX``), except that a NaN timeout
  does not wait where ``threading`` would spin forever (``Semaphore``, ``wait_for``,
  ``Barrier``), and ``Queue`` rejects it.
- ``_at_fork_reinit`` does not exist: a forked child shares the primitives with its parent.
- A primitive exists while some process holds it: keep it alive in the parent while workers use
  it (passing a handle whose every holder is gone raises ``RuntimeError`` on arrival).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

if TYPE_CHECKING:
    import ctypes
    from typing import Literal, TypeAlias

    # The typecodes and ctypes scalars gilfree.Value takes, by the Python type they hold.
    _IntCode: TypeAlias = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "n", "N"]
    _IntCType: TypeAlias = (
        ctypes.c_byte
        | ctypes.c_ubyte
        | ctypes.c_short
        | ctypes.c_ushort
        | ctypes.c_int
        | ctypes.c_uint
        | ctypes.c_long
        | ctypes.c_ulong
        | ctypes.c_longlong
        | ctypes.c_ulonglong
    )
    _FloatCode: TypeAlias = Literal["e", "f", "d"]

from gilfree import _engine, _module_objects, _runtime, _sync_args

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "Value",
]

# What a Condition.wait_for predicate returns.
_R = TypeVar("_R")
# What a Value holds: int, float, bool or bytes, from its typecode.
_S = TypeVar("_S")


def _rebuild(cls: type[Any], handle: int) -> Any:
    """Unpickles a primitive: attaches this process to the slot ``handle`` names."""
    base: Any = next(b for b in cls.__mro__ if b.__module__ == "gilfree._engine")
    return base.__new__(cls, _runtime.arena(), handle=handle)


def _state(locked: bool) -> str:
    return "locked" if locked else "unlocked"


def _lock_acquire(self: _engine.Lock, blocking: bool = True, timeout: float = -1) -> bool:
    """Takes the lock, waiting as ``threading.Lock.acquire`` would (``timeout=-1``: forever).

    Returns:
        Whether the lock was taken.
    """
    return self._acquire(_sync_args.lock_wait(blocking, timeout))


def _name(obj: object) -> str:
    """``gilfree.Event`` for our classes (as ``threading.Event``), the full name for others."""
    cls = type(obj)
    module = "gilfree" if cls.__module__ == __name__ else cls.__module__
    return f"{module}.{cls.__qualname__}"


class Lock(_engine.Lock):
    """A process-shared ``threading.Lock``.

    ``acquire(blocking=True, timeout=-1)``, ``release()``, ``locked()`` and ``with`` behave as
    in ``threading``, from any thread of any process. Waits release the GIL and can be
    interrupted with Ctrl-C.

    Unlike ``threading.Lock``, only the thread that acquired the lock may release it. If the
    process holding it dies, the next ``acquire`` gets it and issues
    :class:`gilfree.OwnerDiedError` (a warning).
    """

    __slots__ = ()

    def __new__(cls) -> Lock:
        make = super().__new__
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena()))

    acquire = _lock_acquire

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.handle))

    def __repr__(self) -> str:
        return f"<{_state(self.locked())} {type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"


class RLock(_engine.Lock):
    """A process-shared ``threading.RLock``: the owning thread may acquire it again.

    Each ``acquire`` must be matched by a ``release`` from the same thread. If the process
    holding it dies, the next ``acquire`` gets it (at depth 1) and issues
    :class:`gilfree.OwnerDiedError`.
    """

    __slots__ = ()

    def __new__(cls) -> RLock:
        make = super().__new__
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena(), None, True))

    acquire = _lock_acquire

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.handle))

    def __repr__(self) -> str:
        return f"<{_state(self.locked())} {type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"


class Event(_engine.Event):
    """A process-shared ``threading.Event``: ``set``, ``clear``, ``is_set``, ``wait(timeout)``.

    ``wait`` returns the flag (``False`` only on timeout); it releases the GIL and can be
    interrupted with Ctrl-C.
    """

    __slots__ = ()

    def __new__(cls) -> Event:
        make = super().__new__
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena()))

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the flag is set or ``timeout`` seconds pass.

        Returns:
            The flag (``False`` only on timeout).
        """
        if self.is_set():
            return True
        return self._wait(_sync_args.wait(timeout))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.handle))

    def __repr__(self) -> str:
        state = "set" if self.is_set() else "unset"
        return f"<{_name(self)} at {id(self):#x}: {state}>"


class Semaphore(_engine.Semaphore):
    """A process-shared ``threading.Semaphore``.

    Args:
        value: The initial number of permits (>= 0).

    ``acquire(blocking=True, timeout=None)``, ``release(n=1)`` and ``with`` behave as in
    ``threading``. Permits held by a worker process that dies are given back (never above
    ``value``), so a wait never blocks forever because of a death.
    """

    __slots__ = ()

    def __new__(cls, value: int = 1) -> Semaphore:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        make = super().__new__
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena(), value, False))

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Takes a permit, waiting as ``threading.Semaphore.acquire`` would.

        Returns:
            Whether a permit was taken.
        """
        if not blocking:
            _sync_args.semaphore_wait(False, timeout)  # refuses a timeout
            return self._try_acquire()
        # As in `threading`, the timeout matters (and is checked) only if we must wait.
        return self._try_acquire() or self._acquire(_sync_args.semaphore_wait(True, timeout))

    def release(self, n: int = 1) -> None:
        """Gives back ``n`` permits, waking as many waiters."""
        self._release(_sync_args.release_count(n))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.handle))

    def __repr__(self) -> str:
        return f"<{_name(self)} at {id(self):#x}: value={self._value}>"


class BoundedSemaphore(Semaphore):
    """A process-shared ``threading.BoundedSemaphore``: releasing above the initial value
    raises ``ValueError``.

    Args:
        value: The initial (and maximum) number of permits (>= 0).
    """

    __slots__ = ()

    def __new__(cls, value: int = 1) -> BoundedSemaphore:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        make = _engine.Semaphore.__new__
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena(), value, True))

    def __repr__(self) -> str:
        return f"<{_name(self)} at {id(self):#x}: value={self._value}/{self._initial_value}>"


class Condition:
    """A process-shared ``threading.Condition``.

    Args:
        lock: A :class:`gilfree.Lock` or :class:`gilfree.RLock` (a new ``RLock`` if omitted).

    ``wait``, ``wait_for``, ``notify``, ``notify_all`` and ``with`` behave as in ``threading``
    (the caller must hold the lock), except that ``notify(n)`` wakes ``n`` waiters that are not
    necessarily the longest-waiting ones.
    """

    def __init__(self, lock: Lock | RLock | None = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, _engine.Lock):
            raise TypeError("gilfree.Condition needs a gilfree.Lock or gilfree.RLock")
        self._setup(lock, _engine.Condition(_runtime.arena()))
        _module_objects.merge(self)

    def _setup(self, lock: Lock | RLock, word: _engine.Condition) -> None:
        self._lock = lock
        self._word = word
        self.acquire = lock.acquire
        self.release = lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.__exit__(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_condition, (self._lock, self._word.handle))

    def __repr__(self) -> str:
        return f"<gilfree.Condition({self._lock!r})>"

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock, waits for a notify or ``timeout`` seconds, takes the lock again.

        Returns:
            ``True`` if notified, ``False`` on timeout.
        """
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        return self._word._wait(self._lock, _sync_args.wait(timeout))

    def wait_for(self, predicate: Callable[[], _R], timeout: float | None = None) -> _R:
        """Waits until ``predicate()`` is true (or ``timeout`` passes); returns its last value."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if not waittime > 0:  # NaN too: never wait forever in a busy loop
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wakes up to ``n`` waiting threads (of any process)."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        if n > 0:
            self._word._notify(min(n, 0xFFFFFFFF))

    def notify_all(self) -> None:
        """Wakes every waiting thread."""
        self.notify(0xFFFFFFFF)


def _rebuild_condition(lock: Lock | RLock, handle: int) -> Condition:
    cond = Condition.__new__(Condition)
    cond._setup(lock, _engine.Condition(_runtime.arena(), handle=handle))
    return cond


class Barrier:
    """A process-shared ``threading.Barrier``.

    Args:
        parties: How many threads (of any processes) must call ``wait`` to trip it.
        action: Called by one of them (the last to arrive) before the others are released;
            if it raises, the barrier breaks. It must be picklable to reach other processes.
        timeout: The default timeout of ``wait``.

    A worker process that dies while it holds the barrier breaks it, so the others get
    ``threading.BrokenBarrierError`` instead of waiting forever.
    """

    def __init__(
        self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None
    ) -> None:
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._setup(_engine.Barrier(_runtime.arena(), parties), action, timeout)
        _module_objects.merge(self)

    def _setup(
        self, raw: _engine.Barrier, action: Callable[[], Any] | None, timeout: float | None
    ) -> None:
        self._raw = raw
        self._action = action
        self._timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_barrier, (self._raw.handle, self._action, self._timeout))

    def __repr__(self) -> str:
        if self.broken:
            return f"<{_name(self)} at {id(self):#x}: broken>"
        return f"<{_name(self)} at {id(self):#x}: waiters={self.n_waiting}/{self.parties}>"

    def wait(self, timeout: float | None = None) -> int:
        """Waits until ``parties`` threads are waiting; returns this thread's arrival index.

        Raises:
            threading.BrokenBarrierError: The barrier is or became broken (aborted, reset, a
                timeout, the action raised, or a process holding it died).
        """
        if timeout is None:
            timeout = self._timeout
        index, last = self._raw._wait(_sync_args.wait(timeout))
        if last:
            try:
                if self._action is not None:
                    self._action()
            except BaseException:
                self._raw._finish(False)
                raise
            self._raw._finish(True)
        return index

    def reset(self) -> None:
        """Returns the barrier to its empty state; current waiters get ``BrokenBarrierError``."""
        self._raw.reset()

    def abort(self) -> None:
        """Breaks the barrier: current and future waits raise ``BrokenBarrierError``."""
        self._raw.abort()

    @property
    def parties(self) -> int:
        """The number of threads needed to trip the barrier."""
        return self._raw.parties

    @property
    def n_waiting(self) -> int:
        """The number of threads waiting for the barrier to fill."""
        return self._raw.n_waiting

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        return self._raw.broken


def _rebuild_barrier(
    handle: int, action: Callable[[], Any] | None, timeout: float | None
) -> Barrier:
    barrier = Barrier.__new__(Barrier)
    barrier._setup(_engine.Barrier(_runtime.arena(), handle=handle), action, timeout)
    return barrier


class Value(Generic[_S]):
    """A process-shared scalar, like ``multiprocessing.Value``.

    Generic in the Python type of ``.value``, which the checkers take from the typecode:
    ``Value("i")`` is a ``Value[int]``, ``Value("d")`` a ``Value[float]``, ``Value("?")`` a
    ``Value[bool]``, ``Value("c")`` a ``Value[bytes]`` (likewise for ctypes scalars).

    Args:
        typecode_or_type: A ``struct``/``array`` typecode of at most 8 bytes (``"i"``, ``"d"``,
            ``"q"``, ``"b"``, ...) or a ctypes scalar type (``ctypes.c_int``).
        value: The initial value (zero by default).
        lock: ``True`` (a new :class:`RLock`), a :class:`Lock`/:class:`RLock` to use, or
            ``False`` for no lock.

    Reading or writing ``.value`` takes the lock; ``counter.value += 1`` is still two steps,
    so guard it with ``with counter.get_lock():`` as with multiprocessing.
    """

    @overload
    def __init__(
        self: Value[int],
        typecode_or_type: _IntCode | type[_IntCType],
        value: int = ...,
        /,
        *,
        lock: bool | Lock | RLock = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Value[float],
        typecode_or_type: _FloatCode | type[ctypes.c_float | ctypes.c_double],
        value: float = ...,
        /,
        *,
        lock: bool | Lock | RLock = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Value[bool],
        typecode_or_type: Literal["?"] | type[ctypes.c_bool],
        value: bool = ...,
        /,
        *,
        lock: bool | Lock | RLock = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Value[bytes],
        typecode_or_type: Literal["c"] | type[ctypes.c_char],
        value: bytes = ...,
        /,
        *,
        lock: bool | Lock | RLock = True,
    ) -> None: ...
    @overload
    def __init__(
        self: Value[Any],
        typecode_or_type: str | type[Any],
        value: Any = ...,
        /,
        *,
        lock: bool | Lock | RLock = True,
    ) -> None: ...
    def __init__(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> None:
        code = getattr(typecode_or_type, "_type_", typecode_or_type)
        fmt = struct.Struct("=" + code)
        if fmt.size > 8:
            raise TypeError(f"gilfree.Value holds at most 8 bytes, not {code!r}")
        if lock is True:
            lock = RLock()
        elif lock is False:
            lock = None
        elif not isinstance(lock, _engine.Lock):
            raise TypeError("lock must be True, False, or a gilfree.Lock/RLock")
        initial = args[0] if args else fmt.unpack(bytes(fmt.size))[0]
        cell = _engine.Cell(_runtime.arena(), self._pack(fmt, initial))
        self._setup(code, cell, lock)
        _module_objects.merge(self)

    def _setup(self, code: str, cell: _engine.Cell, lock: _engine.Lock | None) -> None:
        self._code = code
        self._fmt = struct.Struct("=" + code)
        self._cell = cell
        self._lock = lock

    @staticmethod
    def _pack(fmt: struct.Struct, value: Any) -> int:
        return int.from_bytes(fmt.pack(value).ljust(8, b"\0"), "little")

    def _unpack(self, bits: int) -> _S:
        item: _S = self._fmt.unpack(bits.to_bytes(8, "little")[: self._fmt.size])[0]
        return item

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_value, (self._code, self._cell.handle, self._lock))

    def __repr__(self) -> str:
        return f"<gilfree.Value({self._code!r}, {self.value!r})>"

    @property
    def value(self) -> _S:
        """The current value (read under the lock, if any)."""
        if self._lock is None:
            return self._unpack(self._cell._load())
        with self._lock:
            return self._unpack(self._cell._load())

    @value.setter
    def value(self, new: _S) -> None:
        bits = self._pack(self._fmt, new)
        if self._lock is None:
            self._cell._store(bits)
            return
        with self._lock:
            self._cell._store(bits)

    def get_lock(self) -> Lock | RLock:
        """The lock that guards the value."""
        if self._lock is None:
            raise AttributeError("this gilfree.Value was created with lock=False")
        # _setup's lock is the engine's base class; Value only ever stores a Lock or an RLock.
        return self._lock  # type: ignore[return-value]  # pyright: ignore[reportReturnType]

    def get_obj(self) -> Value[_S]:
        """The value itself (for ``multiprocessing.Value`` compatibility)."""
        return self


def _rebuild_value(code: str, handle: int, lock: _engine.Lock | None) -> Value[Any]:
    value: Value[Any] = Value.__new__(Value)  # pyright: ignore[reportUnknownVariableType]  (Value[Unknown], bare __new__)
    value._setup(code, _engine.Cell(_runtime.arena(), handle=handle), lock)
    return value
