"""``gilfree.SharedList`` and ``gilfree.SharedDict``: a list and a dict that every process sees.

Create one in the parent and hand it to Workers and Pool tasks (as an argument, an attribute,
a return value): it is pickled as a small handle, and every holder reads and mutates the same
contents, with no server process and no round trip to one.

How they are stored, and what each operation costs:

- The contents live in the shared heap of the engine's arena (a ``Blob``,
  ``crates/gilfree-core/src/ipc/blob.rs``), as a log of operations: a snapshot of the contents,
  then one small pickled record per change (``("a", item)`` for an append, ``("s", key,
  value)`` for ``d[key] = value``, ...). Every item is pickled on its own, so reading one item
  unpickles that item only.
- A change takes the container's lock (a :class:`gilfree.RLock`), checks and applies it to this
  process's copy, and appends its record to the log: O(size of the change), plus what the same
  change costs on a local list or dict (``insert(0, x)`` moves every item, as it does there).
  When the log has grown to twice its last snapshot (plus 64 KiB), the change writes a fresh
  snapshot instead (O(size of the contents), once per that many changes: amortised O(1)).
- Each process keeps a copy with the log position it has read. A read (``len``, ``[i]``,
  ``in``, iteration, ``get``) first compares the shared version with its own (one atomic load):
  when nothing changed it costs what the same read of a local list or dict costs, plus
  unpickling the item it returns. After other processes wrote, the first read replays only
  their new records (or, after a new snapshot, the whole log once).
- A record is written first and published with one store, so a process killed in the middle of
  a change leaves the contents with the whole change or without it, never half of it. The next process that takes the
  lock gets an :class:`gilfree.OwnerDiedError` warning (an exception, if warnings are errors:
  the lock is released first), and the container is usable.

Differences from ``list`` and ``dict``:

- Items are copies. ``shared[0].append(x)`` changes a copy that is thrown away; write the item
  back (``item = shared[0]; item.append(x); shared[0] = item``), under ``get_lock()`` if other
  processes may write it too.
- Each call is atomic, but ``shared[k] += 1`` is a read and a write: guard it with
  ``with shared.get_lock():``, as with ``multiprocessing`` proxies.
- Iteration walks a snapshot taken when it starts; ``keys()``, ``values()`` and ``items()``
  return views of such a snapshot, not live views. Slicing returns a plain list.
- Items must be picklable (with the standard ``pickle``). Each process rebuilds a SharedDict's
  keys by unpickling them, so a key must equal its pickled copy (``str``, ``bytes``, numbers and
  tuples of them do). A gilfree primitive stored as an item travels as a handle that does not
  keep it alive: keep the primitive itself alive somewhere while the container holds it.
- A container exists while some process holds it: keep it alive in the parent while workers
  use it. Its memory is freed when the last handle in any process is gone.
"""

from __future__ import annotations

import io
import operator
import pickle
import threading
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Generic, SupportsIndex, TypeVar, cast, overload

from gilfree import _engine, _runtime
from gilfree.exceptions import OwnerDiedError
from gilfree.sync import RLock

__all__ = ["SharedDict", "SharedList"]

_T = TypeVar("_T")
_K = TypeVar("_K")
_V = TypeVar("_V")
_D = TypeVar("_D")

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_MISSING: Any = object()
_UNKNOWN_EPOCH = 2**64 - 1
# A process compacts the log when it is this much longer than twice its last snapshot.
_COMPACT_SLACK = 64 << 10


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, _PROTOCOL)


def _dump_fast(obj: Any) -> bytes:
    """Pickles without the memo (the snapshot is a flat list or dict of ``bytes``: nothing to
    share, and the memo is most of the cost)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, _PROTOCOL)
    pickler.fast = True
    pickler.dump(obj)
    return out.getvalue()


class _Shared:
    """What SharedList and SharedDict share: the log, its lock and this process's copy.

    The shared bytes are a log of pickled operations, each a tuple whose first item names it;
    it starts with a snapshot (``("S", contents)``) after every compaction. A process replays
    what was appended since it last looked; a change of epoch (a compaction, or a recovery
    after a writer died) makes it replay the whole log.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_blob",
        "_cache",
        "_epoch",
        "_local",
        "_lock",
        "_offset",
        "_version",
    )

    _blob: _engine.Blob
    _lock: RLock
    _local: threading.RLock
    _version: int
    _epoch: int
    _offset: int
    _base: int
    _cache: Any

    def _setup(self, blob: _engine.Blob, lock: RLock) -> None:
        self._blob = blob
        self._lock = lock
        # Guards this process's copy: a replay, or a change and its log position, is one step
        # for the other threads of the process.
        self._local = threading.RLock()
        self._forget()

    def _forget(self) -> None:
        """Drops this process's copy: the next read replays the whole log."""
        self._version = -1
        self._epoch = _UNKNOWN_EPOCH
        self._offset = 0
        self._base = 0
        self._cache = None

    def _empty(self) -> Any:
        raise NotImplementedError

    def _apply(self, cache: Any, op: tuple[Any, ...]) -> Any:
        """Applies ``op`` to ``cache``; raises, leaving it unchanged, if ``op`` is invalid."""
        raise NotImplementedError

    def _peek(self, read: Callable[[Any], _T]) -> _T:
        """``read`` applied to the up-to-date copy, with no other thread changing it."""
        with self._local:
            return read(self._fresh())

    def _fresh(self) -> Any:
        """This process's copy of the contents, brought up to date if another process wrote
        (the caller holds ``_local``)."""
        if self._blob.version == self._version:
            return self._cache
        version, epoch, start, data = self._blob.read_from(self._epoch, self._offset)
        cache = self._cache
        if cache is None or epoch != self._epoch or start != self._offset:
            cache, start = self._empty(), 0
        stream = io.BytesIO(data)
        unpickler = pickle.Unpickler(stream)
        while stream.tell() < len(data):
            before = stream.tell()
            op = unpickler.load()
            if op[0] == "S":
                self._base = stream.tell() - before
            self._apply(cache, op)
        self._cache, self._version, self._epoch = cache, version, epoch
        self._offset = start + len(data)
        return cache

    def _acquire(self) -> None:
        try:
            self._lock.acquire()
        except OwnerDiedError:
            # Warnings are errors here: the lock was taken (and made consistent) before the
            # warning was raised, so give it back before the error goes up.
            self._lock.release()
            raise

    def _mutate(self, op: tuple[Any, ...]) -> Any:
        """Applies ``op`` to the contents and appends it to the log, under the lock."""
        frame = _dump(op)
        self._acquire()
        try:
            with self._local:
                cache = self._fresh()
                result = self._apply(cache, op)  # an invalid op raises here, changing nothing
                try:
                    if self._offset + len(frame) > 2 * self._base + _COMPACT_SLACK:
                        self._blob.store(_dump_fast(("S", cache)))
                        self._forget()  # the next read replays the snapshot alone
                    else:
                        self._blob.append(frame)
                        self._offset += len(frame)
                        self._version = self._blob.version
                except BaseException:
                    self._forget()  # the copy is ahead of the shared contents: reload
                    raise
                return result
        finally:
            self._lock.release()

    def _publish_all(self, contents: Any) -> None:
        """Starts the log with a snapshot of ``contents`` (a new container)."""
        self._blob.store(_dump_fast(("S", contents)))

    def get_lock(self) -> RLock:
        """The lock that every change takes: hold it to make several calls one atomic step."""
        return self._lock

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._blob.handle, self._lock))

    __hash__ = None  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]


def _rebuild(cls: type[_Shared], handle: int, lock: RLock) -> _Shared:
    """Unpickles a container: attaches this process to the blob ``handle`` names."""
    obj = cls.__new__(cls)
    obj._setup(_engine.Blob(_runtime.arena(), handle=handle), lock)
    return obj


def _sorted_order(c: list[bytes], key: Callable[[Any], Any] | None, reverse: bool) -> list[int]:
    items = [pickle.loads(b) for b in c]
    if key is None:
        return sorted(range(len(items)), key=items.__getitem__, reverse=reverse)
    return sorted(range(len(items)), key=lambda i: key(items[i]), reverse=reverse)


def _apply_list(c: list[bytes], op: tuple[Any, ...]) -> Any:
    name = op[0]
    if name == "a":
        c.append(op[1])
    elif name == "e":
        c.extend(op[1])
    elif name == "i":
        c.insert(op[1], op[2])
    elif name == "s":
        c[op[1]] = op[2]
    elif name == "d":
        del c[op[1]]
    elif name == "p":
        return c.pop(op[1])
    elif name == "c":
        c.clear()
    elif name == "r":
        c.reverse()
    elif name == "o":
        c[:] = [c[i] for i in op[1]]
    elif name == "S":
        c[:] = op[1]
    else:  # pragma: no cover - a log written by another version
        raise RuntimeError(f"unknown SharedList operation {name!r}")
    return None


def _apply_dict(c: dict[Any, bytes], op: tuple[Any, ...]) -> Any:
    name = op[0]
    if name == "s":
        c[op[1]] = op[2]
    elif name == "d":
        return c.pop(op[1])
    elif name == "u":
        c.update(op[1])
    elif name == "P":
        return c.popitem()
    elif name == "c":
        c.clear()
    elif name == "S":
        c.clear()
        c.update(op[1])
    else:  # pragma: no cover - a log written by another version
        raise RuntimeError(f"unknown SharedDict operation {name!r}")
    return None


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
        self._publish_all([_dump(x) for x in iterable])

    def _empty(self) -> list[bytes]:
        return []

    def _apply(self, cache: list[bytes], op: tuple[Any, ...]) -> Any:
        return _apply_list(cache, op)

    def copy(self) -> list[_T]:
        """A plain list holding a copy of every item."""
        return [pickle.loads(b) for b in self._peek(list)]

    def __len__(self) -> int:
        return self._peek(len)

    @overload
    def __getitem__(self, index: SupportsIndex) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [pickle.loads(b) for b in self._peek(operator.itemgetter(index))]
        return cast("_T", pickle.loads(self._peek(operator.itemgetter(operator.index(index)))))

    @overload
    def __setitem__(self, index: SupportsIndex, value: _T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[_T]) -> None: ...
    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            self._mutate(("s", index, [_dump(x) for x in value]))
        else:
            self._mutate(("s", operator.index(index), _dump(value)))

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        self._mutate(("d", index if isinstance(index, slice) else operator.index(index)))

    def __iter__(self) -> Iterator[_T]:
        return (pickle.loads(b) for b in self._peek(list))

    def __reversed__(self) -> Iterator[_T]:
        return (pickle.loads(b) for b in reversed(self._peek(list)))

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
        self._mutate(("a", _dump(value)))

    def extend(self, values: Iterable[_T]) -> None:
        """Appends every item of ``values`` (one publish for all of them)."""
        self._mutate(("e", [_dump(x) for x in values]))

    def insert(self, index: SupportsIndex, value: _T) -> None:
        """Inserts ``value`` before ``index``."""
        self._mutate(("i", operator.index(index), _dump(value)))

    def pop(self, index: SupportsIndex = -1) -> _T:
        """Removes and returns the item at ``index`` (the last by default)."""
        return cast("_T", pickle.loads(self._mutate(("p", operator.index(index)))))

    def remove(self, value: _T) -> None:
        """Removes the first item equal to ``value`` (``ValueError`` if there is none)."""
        self._acquire()
        try:
            for i, b in enumerate(self._peek(list)):
                x = pickle.loads(b)
                if x is value or x == value:
                    self._mutate(("d", i))
                    return
            raise ValueError("SharedList.remove(x): x not in list")
        finally:
            self._lock.release()

    def clear(self) -> None:
        """Removes every item."""
        self._mutate(("c",))

    def index(self, value: _T, start: SupportsIndex = 0, stop: SupportsIndex = 2**63 - 1) -> int:
        """The position of the first item equal to ``value``."""
        return self.copy().index(value, start, stop)

    def count(self, value: _T) -> int:
        """How many items equal ``value``."""
        return self.copy().count(value)

    def reverse(self) -> None:
        """Reverses the list in place."""
        self._mutate(("r",))

    def sort(self, *, key: Callable[[_T], Any] | None = None, reverse: bool = False) -> None:
        """Sorts the list in place (stable, like ``list.sort``)."""
        self._acquire()
        try:
            self._mutate(("o", _sorted_order(self._peek(list), key, reverse)))
        finally:
            self._lock.release()


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

    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self: SharedDict[str, _V], **kwargs: _V) -> None: ...  # pyright: ignore[reportInvalidTypeVarUse]
    @overload
    def __init__(self, mapping: Mapping[_K, _V], /) -> None: ...
    @overload
    def __init__(self: SharedDict[str, _V], mapping: Mapping[str, _V], /, **kwargs: _V) -> None: ...  # pyright: ignore[reportInvalidTypeVarUse]
    @overload
    def __init__(self, iterable: Iterable[tuple[_K, _V]], /) -> None: ...
    # mypy misreads the self-typed overloads as ones this signature does not accept.
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        self._setup(_engine.Blob(_runtime.arena()), RLock())
        self._publish_all({k: _dump(v) for k, v in dict(*args, **kwargs).items()})

    def _empty(self) -> dict[Any, bytes]:
        return {}

    def _apply(self, cache: dict[Any, bytes], op: tuple[Any, ...]) -> Any:
        return _apply_dict(cache, op)

    def copy(self) -> dict[_K, _V]:
        """A plain dict holding a copy of every item."""
        # dict.copy of the cache, whose keys pyright cannot know here.
        snapshot: dict[_K, bytes] = self._peek(dict.copy)  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType, reportUnknownArgumentType]
        return {k: pickle.loads(b) for k, b in snapshot.items()}

    def __len__(self) -> int:
        return self._peek(len)

    def __getitem__(self, key: _K) -> _V:
        return cast("_V", pickle.loads(self._peek(operator.itemgetter(key))))

    def __setitem__(self, key: _K, value: _V) -> None:
        self._mutate(("s", key, _dump(value)))

    def __delitem__(self, key: _K) -> None:
        self._mutate(("d", key))

    def __iter__(self) -> Iterator[_K]:
        return iter(self._peek(list))

    def __contains__(self, key: object) -> bool:
        return self._peek(lambda c: key in c)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedDict):
            return self.copy() == other.copy()
        if isinstance(other, dict):
            return self.copy() == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"SharedDict({self.copy()!r})"

    def keys(self) -> KeysView[_K]:
        """The keys of a snapshot (a plain ``dict_keys``)."""
        return self._peek(dict.fromkeys).keys()

    def values(self) -> ValuesView[_V]:
        """The values of a snapshot (a plain ``dict_values``)."""
        return self.copy().values()

    def items(self) -> ItemsView[_K, _V]:
        """The items of a snapshot (a plain ``dict_items``)."""
        return self.copy().items()

    @overload
    def get(self, key: _K, /) -> _V | None: ...
    @overload
    def get(self, key: _K, default: _V | _D, /) -> _V | _D: ...
    def get(self, key: _K, default: Any = None) -> Any:
        """``self[key]`` if ``key`` is there, else ``default``."""
        b = self._peek(lambda c: c.get(key, _MISSING))
        return default if b is _MISSING else pickle.loads(b)

    @overload
    def setdefault(
        self: SharedDict[_K, _T | None], key: _K, default: None = None, /
    ) -> _T | None: ...
    @overload
    def setdefault(self, key: _K, default: _V, /) -> _V: ...
    def setdefault(self, key: _K, default: Any = None) -> Any:
        """``self[key]``, after setting it to ``default`` if it was missing (atomically)."""
        item = _dump(default)
        self._acquire()
        try:
            b = self._peek(lambda c: c.get(key, _MISSING))
            if b is _MISSING:
                self._mutate(("s", key, item))
                return pickle.loads(item)
            return pickle.loads(b)
        finally:
            self._lock.release()

    def update(self, *args: Mapping[_K, _V] | Iterable[tuple[_K, _V]], **kwargs: _V) -> None:
        """Adds every item, as ``dict.update`` does (one publish for all of them)."""
        self._mutate(("u", {k: _dump(v) for k, v in dict(*args, **kwargs).items()}))

    @overload
    def pop(self, key: _K, /) -> _V: ...
    @overload
    def pop(self, key: _K, default: _V | _D, /) -> _V | _D: ...
    def pop(self, key: _K, default: Any = _MISSING) -> Any:
        """Removes ``key`` and returns its value (``default``, or ``KeyError``, if missing)."""
        self._acquire()
        try:
            if default is not _MISSING and key not in self:
                return default
            return pickle.loads(self._mutate(("d", key)))
        finally:
            self._lock.release()

    def popitem(self) -> tuple[_K, _V]:
        """Removes and returns the last item inserted (``KeyError`` if empty)."""
        key, b = self._mutate(("P",))
        return key, pickle.loads(b)

    def clear(self) -> None:
        """Removes every item."""
        self._mutate(("c",))
