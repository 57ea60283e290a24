"""``gilfree.Queue``: a process-shared ``queue.Queue``.

Items are pickled and stored in shared memory (chunks of a memfd heap that every worker
process inherits, guarded by a robust process-shared mutex), so a queue created in the parent
works from every :class:`gilfree.Worker` and :class:`gilfree.Pool` task it is handed to, with no
feeder thread and no server process. ``put``/``get`` wait on futexes with the GIL released and
stay interruptible with Ctrl-C.

Differences from ``queue.Queue`` (all come from being shared between processes):

- Items are pickled on ``put`` and unpickled on ``get``: a consumer gets a copy, and an item
  must be picklable (cloudpickle: lambdas and ``__main__`` classes work).
- Besides ``maxsize`` (items), the queue has a byte capacity, ``maxbytes`` (64 MiB by
  default): a ``put`` whose pickle would take the queue above it waits as if ``maxsize`` were
  reached (or raises ``queue.Full``). An empty queue takes an item of any size, so no item is
  refused for being large; only one larger than the whole shared heap (1 GiB) raises
  ``MemoryError``.
- A process killed in the middle of ``put`` loses only its own item: the next user of the
  queue discards the half-written item, and every other item is kept, in order.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from gilfree import _engine, _module_objects, _runtime, _serialize, _sync_args

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Queue"]

# The type of the items: ``gilfree.Queue[int]()`` (any picklable object travels).
_T = TypeVar("_T")

# The default byte capacity (pickled items plus an 8-byte header each).
DEFAULT_MAXBYTES = 64 << 20


def _rebuild(cls: type[Queue[Any]], handle: int) -> Queue[Any]:
    return _engine.Queue.__new__(cls, _runtime.arena(), handle=handle)


class Queue(_engine.Queue, Generic[_T]):
    """A process-shared FIFO queue with ``queue.Queue``'s API.

    Args:
        maxsize: The most items the queue holds (``<= 0``: no item limit, and ``maxsize``
            then reads 0).
        maxbytes: The byte capacity of the pickled items (see the module doc).

    ``put(item, block=True, timeout=None)``, ``get(block=True, timeout=None)``,
    ``put_nowait``, ``get_nowait``, ``qsize``, ``empty``, ``full``, ``task_done`` and ``join``
    behave as in ``queue.Queue`` (raising ``queue.Empty`` / ``queue.Full``), from any thread
    of any process.
    """

    __slots__ = ()

    def __new__(cls, maxsize: int = 0, *, maxbytes: int = DEFAULT_MAXBYTES) -> Self:
        if maxbytes < 1:
            raise ValueError("maxbytes must be positive")
        make = super().__new__
        size = max(maxsize, 0)
        return _module_objects.shared(cls, lambda: make(cls, _runtime.arena(), size, maxbytes))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.handle))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: "
            f"maxsize={self.maxsize}, qsize={self.qsize()}>"
        )

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        """Puts ``item`` at the back, waiting for room if ``block`` (at most ``timeout`` s).

        Raises:
            queue.Full: No room (``block`` false, or the timeout passed).
        """
        # In-band: a queue item does not travel over a channel, which is how shared segments
        # reach another process (see _oob).
        data = _serialize.dumps(item, inband=True)
        if not self._put(data, block, _sync_args.queue_wait(block, timeout)):
            raise queue.Full

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Removes and returns the item at the front, waiting for one if ``block``.

        Raises:
            queue.Empty: No item (``block`` false, or the timeout passed).
        """
        data = self._get(block, _sync_args.queue_wait(block, timeout))
        if data is None:
            raise queue.Empty
        return cast("_T", _serialize.loads(data))

    def put_nowait(self, item: _T) -> None:
        """``put(item, block=False)``."""
        self.put(item, False)

    def get_nowait(self) -> _T:
        """``get(block=False)``."""
        return self.get(False)

    def empty(self) -> bool:
        """Whether the queue is empty right now."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items right now."""
        return 0 < self.maxsize <= self.qsize()
