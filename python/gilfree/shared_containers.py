"""``gilfree.SharedList`` and ``gilfree.SharedDict``: a list and a dict that every process sees.

Create one in the parent and hand it to Workers and Pool tasks (as an argument, an attribute,
a return value): it is pickled as a small handle, and every holder reads and mutates the same
contents, with no server process and no round trip to one.

How they are stored, and what each operation costs:

- The contents live in one byte string in the shared heap of the engine's arena (a ``Blob``,
  ``crates/gilfree-core/src/ipc/blob.rs``): for a SharedList, the list of the items' pickles;
  for a SharedDict, the dict from each key to its value's pickle. Every item is pickled on its
  own, so reading one item unpickles that item only.
- Each process keeps the last contents it read, with their version. A read (``len``, ``[i]``,
  ``in``, iteration, ``get``) first compares the shared version with its own (one atomic load):
  when nothing changed it costs what the same operation on a local list or dict costs, plus
  unpickling the item it returns. After another process's write, the first read reloads the
  whole contents once: O(total size), a memory copy and the unpickling of a list of ``bytes``.
- Every mutation takes the container's lock (a :class:`gilfree.RLock`), applies the change to
  the local copy and publishes the whole contents again: O(total size) bytes copied (no item is
  re-pickled except the new ones). Appending to a large list is therefore not O(1); batch with
  ``extend``/``update``, or keep large numeric data in a :class:`gilfree.SharedArray`.
- A new version is written first and published with one store, so a process killed in the
  middle of a mutation leaves the old contents or the new ones, never a mix. The next process
  that takes the lock gets an :class:`gilfree.OwnerDiedError` warning (an exception, if
  warnings are errors: the lock is released first), and the container is usable.

Differences from ``list`` and ``dict``:

- Items are copies. ``shared[0].append(x)`` changes a copy that is thrown away; write the item
  back (``item = shared[0]; item.append(x); shared[0] = item``), under ``get_lock()`` if other
  processes may write it too.
- Each call is atomic, but ``shared[k] += 1`` is a read and a write: guard it with
  ``with shared.get_lock():``, as with ``multiprocessing`` proxies.
- Iteration walks a snapshot taken when it starts; ``keys()``, ``values()`` and ``items()``
  return views of such a snapshot, not live views. Slicing returns a plain list.
- Items must be picklable (with the standard ``pickle``). Keys of a SharedDict are compared by
  the pickled copy each process holds, so they must hash the same in every process (``str``,
  ``bytes`` and ``int`` keys do; Python's hash randomisation is per process for ``str``, which
  is fine, since every process hashes its own copy).
- A container exists while some process holds it: keep it alive in the parent while workers
  use it. Its memory is freed when the last handle in any process is gone.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, SupportsIndex, TypeVar

from gilfree import _engine, _runtime
from gilfree.exceptions import OwnerDiedError
from gilfree.sync import RLock

__all__ = ["SharedDict", "SharedList"]

_T = TypeVar("_T")
_K = TypeVar("_K")
_V = TypeVar("_V")

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MISSING: Any = object()


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, _PROTOCOL)


class _Shared:
    """What SharedList and SharedDict share: the blob, its lock and this process's copy."""

    __slots__ = ("__weakref__", "_blob", "_cache", "_lock", "_version")

    _blob: _engine.Blob
    _lock: RLock
    _version: int
    _cache: Any

    def _setup(self, blob: _engine.Blob, lock: RLock) -> None:
        self._blob = blob
        self._lock = lock
        self._version = -1
        self._cache = None

    def _empty(self) -> Any:
        raise NotImplementedError

    def _fresh(self) -> Any:
        """This process's copy of the contents, reloaded if another process changed them."""
        if self._blob.version != self._version:
            version, data = self._blob.read()
            self._cache = pickle.loads(data) if data else self._empty()
            self._version = version
        return self._cache

    def _acquire(self) -> None:
        try:
            self._lock.acquire()
        except OwnerDiedError:
            # Warnings are errors here: the lock was taken (and made consistent) before the
            # warning was raised, so give it back before the error goes up.
            self._lock.release()
            raise

    def _mutate(self, change: Callable[[Any], _T]) -> _T:
        """Applies ``change`` to the current contents and publishes them, under the lock."""
        self._acquire()
        try:
            cache = self._fresh()
            try:
                result = change(cache)
                self._blob.store(_dump(cache))
            except BaseException:
                self._version = -1  # the local copy may be half-changed: reload next time
                raise
            self._version = self._blob.version
            return result
        finally:
            self._lock.release()

    def get_lock(self) -> RLock:
        """The lock that every mutation takes: hold it to make several calls one atomic step."""
        return self._lock

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._blob.handle, self._lock))

    __hash__ = None  # type: ignore[assignment]


def _rebuild(cls: type[_Shared], handle: int, lock: RLock) -> _Shared:
    """Unpickles a container: attaches this process to the blob ``handle`` names."""
    obj = cls.__new__(cls)
    obj._setup(_engine.Blob(_runtime.arena(), handle=handle), lock)
    return obj


class SharedList(_Shared, Generic[_T]):
    """A list in shared memory, passed to workers by handle (see the module doc for costs).

    Args:
        iterable: The initial items.

    Example:
        >>> shared = SharedList([1, 2])
        >>> shared.append(3)
        >>> shared == [1, 2, 3], len(shared), shared.copy()
        (True, 3, [1, 2, 3])
    """

    __slots__ = ()

    def __init__(self, iterable: Iterable[_T] = ()) -> None:
        self._setup(_engine.Blob(_runtime.arena()), RLock())
        items = [_dump(x) for x in iterable]
        if items:
            self._mutate(lambda c: c.extend(items))

    def _empty(self) -> list[bytes]:
        return []

    def copy(self) -> list[_T]:
        """A plain list holding a copy of every item."""
        return [pickle.loads(b) for b in self._fresh()]

    def __len__(self) -> int:
        return len(self._fresh())

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return [pickle.loads(b) for b in self._fresh()[index]]
        return pickle.loads(self._fresh()[index])

    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            new = [_dump(x) for x in value]

            def assign(c: list[bytes]) -> None:
                c[index] = new

            self._mutate(assign)
        else:
            item = _dump(value)
            self._mutate(lambda c: c.__setitem__(index, item))

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        self._mutate(lambda c: c.__delitem__(index))

    def __iter__(self) -> Iterator[_T]:
        return (pickle.loads(b) for b in self._fresh())

    def __reversed__(self) -> Iterator[_T]:
        return (pickle.loads(b) for b in reversed(self._fresh()))

    def __contains__(self, value: object) -> bool:
        return any(x is value or x == value for x in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedList):
            return self.copy() == other.copy()
        if isinstance(other, list):
            return self.copy() == other
        return NotImplemented

    def __add__(self, other: Iterable[_T]) -> list[_T]:
        return self.copy() + list(other)

    def __iadd__(self, other: Iterable[_T]) -> SharedList[_T]:
        self.extend(other)
        return self

    def __repr__(self) -> str:
        return f"SharedList({self.copy()!r})"

    def append(self, value: _T) -> None:
        """Appends ``value``."""
        item = _dump(value)
        self._mutate(lambda c: c.append(item))

    def extend(self, values: Iterable[_T]) -> None:
        """Appends every item of ``values`` (one publish for all of them)."""
        items = [_dump(x) for x in values]
        self._mutate(lambda c: c.extend(items))

    def insert(self, index: SupportsIndex, value: _T) -> None:
        """Inserts ``value`` before ``index``."""
        item = _dump(value)
        self._mutate(lambda c: c.insert(index, item))

    def pop(self, index: SupportsIndex = -1) -> _T:
        """Removes and returns the item at ``index`` (the last by default)."""
        return pickle.loads(self._mutate(lambda c: c.pop(index)))

    def remove(self, value: _T) -> None:
        """Removes the first item equal to ``value`` (``ValueError`` if there is none)."""

        def remove(c: list[bytes]) -> None:
            for i, b in enumerate(c):
                x = pickle.loads(b)
                if x is value or x == value:
                    del c[i]
                    return
            raise ValueError("SharedList.remove(x): x not in list")

        self._mutate(remove)

    def clear(self) -> None:
        """Removes every item."""
        self._mutate(lambda c: c.clear())

    def index(self, value: _T, start: SupportsIndex = 0, stop: SupportsIndex = 2**63 - 1) -> int:
        """The position of the first item equal to ``value``."""
        return self.copy().index(value, start, stop)

    def count(self, value: _T) -> int:
        """How many items equal ``value``."""
        return self.copy().count(value)

    def reverse(self) -> None:
        """Reverses the list in place."""
        self._mutate(lambda c: c.reverse())

    def sort(self, *, key: Callable[[_T], Any] | None = None, reverse: bool = False) -> None:
        """Sorts the list in place (stable, like ``list.sort``)."""

        def sort(c: list[bytes]) -> None:
            items = [pickle.loads(b) for b in c]
            order = sorted(
                range(len(items)),
                key=(lambda i: items[i]) if key is None else (lambda i: key(items[i])),
                reverse=reverse,
            )
            c[:] = [c[i] for i in order]

        self._mutate(sort)


class SharedDict(_Shared, Generic[_K, _V]):
    """A dict in shared memory, passed to workers by handle (see the module doc for costs).

    Takes what ``dict()`` takes.

    Example:
        >>> shared = SharedDict(a=1)
        >>> shared["b"] = 2
        >>> shared == {"a": 1, "b": 2}, shared.get("c", 0), shared.copy()
        (True, 0, {'a': 1, 'b': 2})
    """

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._setup(_engine.Blob(_runtime.arena()), RLock())
        if args or kwargs:
            self.update(*args, **kwargs)

    def _empty(self) -> dict[Any, bytes]:
        return {}

    def copy(self) -> dict[_K, _V]:
        """A plain dict holding a copy of every item."""
        return {k: pickle.loads(b) for k, b in self._fresh().items()}

    def __len__(self) -> int:
        return len(self._fresh())

    def __getitem__(self, key: _K) -> _V:
        return pickle.loads(self._fresh()[key])

    def __setitem__(self, key: _K, value: _V) -> None:
        item = _dump(value)
        self._mutate(lambda c: c.__setitem__(key, item))

    def __delitem__(self, key: _K) -> None:
        self._mutate(lambda c: c.__delitem__(key))

    def __iter__(self) -> Iterator[_K]:
        return iter(list(self._fresh()))

    def __contains__(self, key: object) -> bool:
        return key in self._fresh()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedDict):
            return self.copy() == other.copy()
        if isinstance(other, dict):
            return self.copy() == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"SharedDict({self.copy()!r})"

    def keys(self) -> Any:
        """The keys of a snapshot (a plain ``dict_keys``)."""
        return dict.fromkeys(self._fresh()).keys()

    def values(self) -> Any:
        """The values of a snapshot (a plain ``dict_values``)."""
        return self.copy().values()

    def items(self) -> Any:
        """The items of a snapshot (a plain ``dict_items``)."""
        return self.copy().items()

    def get(self, key: _K, default: Any = None) -> Any:
        """``self[key]`` if ``key`` is there, else ``default``."""
        b = self._fresh().get(key, _MISSING)
        return default if b is _MISSING else pickle.loads(b)

    def setdefault(self, key: _K, default: Any = None) -> Any:
        """``self[key]``, after setting it to ``default`` if it was missing (atomically)."""
        item = _dump(default)
        return pickle.loads(self._mutate(lambda c: c.setdefault(key, item)))

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Adds every item, as ``dict.update`` does (one publish for all of them)."""
        new = {k: _dump(v) for k, v in dict(*args, **kwargs).items()}
        self._mutate(lambda c: c.update(new))

    def pop(self, key: _K, default: Any = _MISSING) -> Any:
        """Removes ``key`` and returns its value (``default``, or ``KeyError``, if missing)."""
        b = self._mutate(lambda c: c.pop(key, _MISSING))
        if b is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return pickle.loads(b)

    def popitem(self) -> tuple[_K, _V]:
        """Removes and returns the last item inserted (``KeyError`` if empty)."""
        key, b = self._mutate(lambda c: c.popitem())
        return key, pickle.loads(b)

    def clear(self) -> None:
        """Removes every item."""
        self._mutate(lambda c: c.clear())
