"""``gilfree.SharedArray``: a buffer in shared memory that every process views without a copy.

A SharedArray is a thin wrapper over one shared segment of the engine (a sealed memfd made by
``gilfree_core::shm::bulk::hub::shared``; see ``_oob``). Passing it to a Worker or a Pool task
(as an argument, an attribute, a return value) sends a handle, never the bytes: the receiver
maps the same memory, so a worker's writes are visible to the parent and to every other holder
at once, as a thread's would be. (A ``gilfree.Queue`` item travels in-band, so a SharedArray put
in a Queue arrives as a private copy.)

Its memory is freed when the last handle in any process is gone: the kernel keeps a memfd while
some process holds a descriptor or a mapping of it, and drops it when the last one goes,
including when processes are killed. Nothing is ever left in ``/dev/shm``.

numpy is optional: :attr:`SharedArray.array` (and ``numpy.asarray(shared)``) needs it;
:attr:`SharedArray.memoryview` does not.
"""

from __future__ import annotations

import math
import pickle
import struct
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # numpy is optional at run time (gilfree[numpy]); for the checkers it types the views.
    from numpy.typing import DTypeLike, NDArray

from gilfree import _oob

__all__ = ["SharedArray"]

# Without numpy, the dtypes a SharedArray understands: name -> (numpy's str, struct format).
_PLAIN_DTYPES = {
    "bool": ("|b1", "?"),
    "int8": ("|i1", "b"),
    "uint8": ("|u1", "B"),
    "int16": ("<i2", "h"),
    "uint16": ("<u2", "H"),
    "int32": ("<i4", "i"),
    "uint32": ("<u4", "I"),
    "int64": ("<i8", "q"),
    "uint64": ("<u8", "Q"),
    "float32": ("<f4", "f"),
    "float64": ("<f8", "d"),
}
_BY_STR = {v[0]: (k, v[1]) for k, v in _PLAIN_DTYPES.items()}


def _numpy() -> Any:
    np = sys.modules.get("numpy")
    if np is None:
        try:
            import numpy as np
        except ImportError:
            return None
    return np


def _dtype(dtype: Any) -> tuple[Any, int, str | None]:
    """``(dtype, itemsize, struct format or None)``; a numpy dtype where numpy is present."""
    np = _numpy()
    if np is not None:
        dt = np.dtype(dtype)
        fmt = _BY_STR.get(dt.str, (None, None))[1]
        return dt, dt.itemsize, fmt
    key = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", str(dtype))
    if key in _BY_STR:
        key = _BY_STR[key][0]
    if key not in _PLAIN_DTYPES:
        raise TypeError(f"dtype {dtype!r} needs numpy (pip install gilfree[numpy])")
    fmt = _PLAIN_DTYPES[key][1]
    return key, struct.calcsize(fmt), fmt


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    dims = tuple(int(n) for n in shape)
    if any(n < 0 for n in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    return dims


class SharedArray:
    """An n-dimensional buffer in shared memory, passed between processes by handle.

    Args:
        shape: The array's shape (an int for one dimension).
        dtype: Its element type: anything ``numpy.dtype`` accepts, or without numpy one of
            ``bool``, ``int8`` .. ``int64``, ``uint8`` .. ``uint64``, ``float32``, ``float64``.

    The memory starts zero-filled. Give the object (not ``.array``) to Workers and Pool tasks:
    each receives a SharedArray over the same memory.

    Example:
        >>> shared = SharedArray.zeros((2, 3), "int64")
        >>> shared.shape, shared.nbytes
        ((2, 3), 48)
    """

    __slots__ = ("_data", "_dtype", "_fmt", "_itemsize", "_shape", "_whole")

    def __init__(self, shape: int | Iterable[int], dtype: DTypeLike = "float64") -> None:
        shape = _shape(shape)
        dt, itemsize, fmt = _dtype(dtype)
        nbytes = math.prod(shape) * itemsize
        self._setup(_oob.new_shared(nbytes), shape, dt, itemsize, fmt)

    def _setup(
        self,
        whole: memoryview,
        shape: tuple[int, ...],
        dt: Any,
        itemsize: int,
        fmt: str | None,
    ) -> None:
        self._whole = whole
        self._shape = shape
        self._dtype = dt
        self._itemsize = itemsize
        self._fmt = fmt
        self._data = whole[: math.prod(shape) * itemsize]

    @classmethod
    def zeros(cls, shape: int | Iterable[int], dtype: DTypeLike = "float64") -> SharedArray:
        """A new zero-filled SharedArray (the same as the constructor)."""
        return cls(shape, dtype)

    @classmethod
    def from_array(cls, a: Any) -> SharedArray:
        """A new SharedArray holding a copy of ``a`` (anything ``numpy.asarray`` accepts)."""
        np = _numpy()
        if np is None:
            raise TypeError("SharedArray.from_array needs numpy (pip install gilfree[numpy])")
        a = np.asarray(a)
        shared = cls(a.shape, a.dtype)
        shared.array[...] = a
        return shared

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self._shape

    @property
    def dtype(self) -> Any:
        """The element type: a ``numpy.dtype`` where numpy is installed, else its name."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """The size of the data in bytes."""
        return self._data.nbytes

    @property
    def memoryview(self) -> memoryview:
        """A writable memoryview of the shared bytes, shaped and typed where the struct
        module can express the dtype, else flat bytes."""
        if self._fmt is not None and self._shape and 0 not in self._shape:
            # The format comes from the dtype at run time; typeshed types cast() per literal.
            return self._data.cast(self._fmt, self._shape)  # type: ignore[call-overload,no-any-return]  # pyright: ignore[reportCallIssue, reportArgumentType, reportUnknownVariableType]
        return self._data

    @property
    def array(self) -> NDArray[Any]:
        """A numpy array that views the shared memory (no copy); writes go to every holder."""
        np = _numpy()
        if np is None:
            raise TypeError("SharedArray.array needs numpy (pip install gilfree[numpy])")
        view: NDArray[Any] = np.frombuffer(self._data, dtype=self._dtype).reshape(self._shape)
        return view

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        a = self.array
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[key] = value

    def __repr__(self) -> str:
        return f"SharedArray(shape={self._shape}, dtype={self._dtype})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The whole segment goes as one out-of-band buffer; gilfree's pickler recognises it as
        # shared memory and sends a handle (see _oob). Plain pickle would copy it in-band.
        return _attach, (pickle.PickleBuffer(self._whole), self._shape, self._dtype)


def _attach(whole: Any, shape: tuple[int, ...], dtype: Any) -> SharedArray:
    """Rebuilds a SharedArray over a received mapping."""
    view = memoryview(whole)
    if view.readonly:  # it came in-band (plain pickle): a private copy
        view = memoryview(bytearray(view))
    dt, itemsize, fmt = _dtype(dtype)
    shared = SharedArray.__new__(SharedArray)
    shared._setup(view, tuple(shape), dt, itemsize, fmt)
    return shared
