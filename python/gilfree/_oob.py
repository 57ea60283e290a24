"""Zero-copy transport of large buffers: pickle protocol 5 out-of-band buffers in memfd segments.

``_serialize.dumps`` hands every out-of-band ``PickleBuffer`` (numpy arrays, ``bytearray``,
``memoryview``, :class:`gilfree.SharedArray`) to :class:`Session`. A buffer of at least
:data:`THRESHOLD` bytes is copied once into a free segment of this process's *bulk arena*; a
buffer that already lives in a shared segment (an array this process received, or a
``SharedArray``) is sent by reference, with no copy at all. The blob then carries a small
descriptor table instead of the bytes, and the receiver maps the segment and hands pickle a
``memoryview`` of it, so numpy builds its array as a view of shared memory (no copy on the
receiving side). Small buffers stay in-band, on the inline path.

Everything here is stdlib (``os.memfd_create``, ``mmap`` with ``MAP_POPULATE``, ``flock``):
the kernel keeps the state that must survive a crash, so no unsafe code and no shared atomics
are needed.

# Layout

A *segment* is one memfd, mapped whole, shared read-write::

    page 0   header: b"GFBULK01" | token u64 | generation u64 | kind u8   (little-endian)
    page 1.. data: one blob's buffers, each at a 64-byte aligned offset (arena); or a
             SharedArray's bytes (kind SHARED)

A *ticket board* is one 4096-byte memfd per process: slot ``i`` is one byte.

# Who writes what

1. The owner (the process that created the memfd) writes the header: token and kind at
   creation, the generation each time it reuses the segment, always while holding
   ``flock(LOCK_EX)`` on its own descriptor.
2. Data bytes: the owner copies a buffer in while holding ``LOCK_EX``; afterwards anyone that
   maps it may write (a worker writing into a received array writes shared memory, as a
   thread writing into a shared array would).
3. Ticket slot ``i`` of process P: P writes the sequence byte ``seq`` (1..127) when it puts the
   ticket in a blob; the first *other* process that loads the blob writes ``seq | 0x80``. Single
   bytes, so no torn values.

# States of an arena segment (seen by its owner)

- *busy, pinned*: a blob that names it was made and no other process has loaded it yet (its
  ticket is unclaimed). The owner keeps it; a borrower that re-sent a segment by reference keeps
  its mapping (and so its lock, below) alive instead.
- *busy, mapped*: some process holds a mapping of it. Every receiver opens its own file
  description (``/proc/<sender>/fd/<n>``), takes ``flock(LOCK_SH)`` on it and maps it; the lock
  lives exactly as long as that description, which the mapping keeps alive, i.e. as long as any
  view (numpy array, memoryview) of it lives in that process.
- *free*: no pin and ``flock(LOCK_EX | LOCK_NB)`` succeeds, so no process maps it. The owner may
  reuse it: bump the generation, copy, unlock. Segments are recycled, never made per task, and
  are pre-touched once (``MAP_POPULATE``): first touch of fresh shared memory costs far more than
  the copy itself. At most :data:`MAX_FREE` free segments are kept.

# Protocol of one transfer

1. Sender: pickle with ``buffer_callback``; collect the out-of-band buffers (nothing is copied
   yet, so a pickler that fails and falls back to cloudpickle leaves nothing behind).
2. Sender: for each large buffer: by reference if it lies in a mapped segment, else copy it into
   a free arena segment. Pin every segment named, under one new ticket; emit
   ``MAGIC | len | (ticket, names, buffers) | pickle``.
3. Receiver: for each segment named: open ``/proc/<pid>/fd/<fd>``, check the inode, take
   ``LOCK_SH | LOCK_NB`` (failure means the owner is rewriting it: the blob is stale), check
   token and generation, map. Mappings are cached while alive, keyed by (inode, token).
4. Receiver: unpickle with ``buffers=`` views of the mappings; then claim the ticket (skipped
   when the receiver is the sender itself: its own trial load does not count).
5. Sender, whenever it next pickles large buffers or loads anything: release the pins of
   claimed tickets. (So an idle process keeps, until its next task, the mappings it re-sent by
   reference in its last one: a bounded number, which keeps those segments busy meanwhile.)

# Guarantees and limits

- A view is never overwritten while it lives: the owner reuses only segments nobody maps.
- A blob can be loaded once for sure; later loads of the same blob succeed while a view from an
  earlier load is alive (say, a Pool's function, cached by each worker). A load that comes too
  late raises :class:`StaleBufferError`, never returns other data: the generation is checked.
- A blob that is never loaded (a queued task that is cancelled, a worker that dies before
  reading its task) keeps its pins until :data:`MAX_PINS` newer ones exist; then the oldest are
  released. Callers that know a blob is dead may call :func:`discard`.
- A process that dies: the kernel closes its file descriptions, which releases its locks (its
  views) and, with the last mapping, frees the memory of its own segments. Nothing lives in
  ``/dev/shm``; nothing needs cleaning up.
- Receivers open ``/proc/<pid>/fd/<n>``, which needs ptrace-read access to the sender: same user,
  and no Yama ``ptrace_scope`` above 0 (a worker reading its parent's fds). Set
  ``GILFREE_ZERO_COPY=0`` to keep everything in-band where that does not hold.
- Large ``bytes`` stay in-band: pickle does not let a reducer see exact ``bytes`` objects.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import mmap
import os
import pickle
import secrets
import struct
import sys
import threading
import weakref
from typing import Any

MAGIC = b"GFZC"
_LEN = struct.Struct("<I")
_HEADER = struct.Struct("<8sQQB")
_HEADER_MAGIC = b"GFBULK01"
PAGE = mmap.PAGESIZE
_ALIGN = 64

# Out-of-band buffers smaller than this stay in-band.
THRESHOLD = 64 * 1024
# Free arena segments kept for reuse beyond this many are unmapped (oldest first).
MAX_FREE = 4
# Unclaimed tickets kept beyond this many are released, oldest first.
MAX_PINS = 1024
_BOARD_SLOTS = 4096

KIND_ARENA = 0
KIND_SHARED = 1

ENABLED = os.environ.get("GILFREE_ZERO_COPY", "1") != "0"


class StaleBufferError(RuntimeError):
    """A blob names a shared segment that was recycled or freed before this load."""


# Every memfd here is sealed against resizing once it has its size: a peer that shrank one
# under another process's mapping would turn that process's reads into SIGBUS.
_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _sealed_memfd(name: str, size: int) -> int:
    """A close-on-exec memfd of ``size`` bytes whose size can never change."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _size_sealed(fd: int) -> bool:
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False
    return seals & _SIZE_SEALS == _SIZE_SEALS


def _populate_flags() -> int:
    return mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class _Segment:
    """One memfd this process created (an arena segment or a SharedArray's memory)."""

    __slots__ = ("__weakref__", "addr", "fd", "gen", "ino", "kind", "mm", "pins", "size", "token")

    def __init__(self, data_size: int, kind: int, populate: bool) -> None:
        size = PAGE + -(-data_size // PAGE) * PAGE
        fd = _sealed_memfd("gilfree-bulk" if kind == KIND_ARENA else "gilfree-array", size)
        try:
            flags = _populate_flags() if populate else mmap.MAP_SHARED
            self.mm = mmap.mmap(fd, size, flags=flags)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size
        self.kind = kind
        self.token = secrets.randbits(63)
        self.gen = 1
        self.ino = os.fstat(fd).st_ino
        self.pins = 0
        _HEADER.pack_into(self.mm, 0, _HEADER_MAGIC, self.token, self.gen, kind)
        self.addr = _address(self.mm)
        # The fd goes with the mapping: whoever holds the last view frees both.
        weakref.finalize(self.mm, os.close, fd)
        _register(self.mm, self.addr, size, self.name, kind)

    @property
    def name(self) -> tuple[int, int, int, int, int, int]:
        return (os.getpid(), self.fd, self.ino, self.token, self.gen, self.kind)

    @property
    def capacity(self) -> int:
        return self.size - PAGE

    def try_lock(self) -> bool:
        """Takes ``LOCK_EX`` if nobody else maps this segment."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def bump(self) -> None:
        self.gen += 1
        _HEADER.pack_into(self.mm, 0, _HEADER_MAGIC, self.token, self.gen, self.kind)
        _regions[id(self.mm)].name = self.name


def _address(buf: Any) -> int:
    """The address of a writable buffer's first byte."""
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c


class _Region:
    """A mapping of a segment in this process: where it is and how to name it to others."""

    __slots__ = ("end", "kind", "mm_ref", "name", "start")

    def __init__(self, mm: mmap.mmap, start: int, size: int, name: tuple, kind: int) -> None:
        self.mm_ref = weakref.ref(mm)
        self.start = start
        self.end = start + size
        self.name = name
        self.kind = kind


# Every live mapping of a segment in this process, by id(mmap): own segments and borrowed ones.
_regions: dict[int, _Region] = {}
_lock = threading.RLock()


def _register(mm: mmap.mmap, addr: int, size: int, name: tuple, kind: int) -> None:
    key = id(mm)
    _regions[key] = _Region(mm, addr, size, name, kind)
    weakref.finalize(mm, _regions.pop, key, None)


def _buffer_address(raw: memoryview) -> int | None:
    np = sys.modules.get("numpy")
    if np is not None:
        return int(np.frombuffer(raw, np.uint8).__array_interface__["data"][0])
    if raw.readonly or not raw.nbytes:
        return None
    return _address(raw)


def _find_region(raw: memoryview) -> tuple[_Region, mmap.mmap, int] | None:
    """The live mapping ``raw`` lies in, and its offset there; None if it is private memory."""
    if not _regions:
        return None
    addr = _buffer_address(raw)
    if addr is None:
        return None
    end = addr + raw.nbytes
    for region in list(_regions.values()):
        if region.start <= addr and end <= region.end:
            mm = region.mm_ref()
            if mm is not None:
                return region, mm, addr - region.start
    return None


# -- tickets -----------------------------------------------------------------------------------


class _Board:
    """This process's ticket board and its pins."""

    def __init__(self) -> None:
        self.fd = _sealed_memfd("gilfree-tickets", _BOARD_SLOTS)
        self.mm = mmap.mmap(self.fd, _BOARD_SLOTS)
        self.ino = os.fstat(self.fd).st_ino
        self.free = list(range(_BOARD_SLOTS - 1, -1, -1))
        self.seq = bytearray(_BOARD_SLOTS)
        # slot -> what the ticket keeps alive: own segments (pinned) and borrowed mappings.
        self.pins: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()

    def issue(self, holds: list[Any]) -> tuple[int, int, int, int, int]:
        if not self.free or len(self.pins) >= MAX_PINS:
            self.release(next(iter(self.pins)))
        slot = self.free.pop()
        seq = self.seq[slot] % 127 + 1
        self.seq[slot] = seq
        self.mm[slot] = seq
        for h in holds:
            if isinstance(h, _Segment):
                h.pins += 1
        self.pins[slot] = holds
        return (os.getpid(), self.fd, self.ino, slot, seq)

    def release(self, slot: int) -> None:
        holds = self.pins.pop(slot)
        for h in holds:
            if isinstance(h, _Segment):
                h.pins -= 1
        self.mm[slot] = 0
        self.free.append(slot)

    def reap(self) -> None:
        mm = self.mm
        seq = self.seq
        for slot in [s for s in self.pins if mm[s] == seq[s] | 0x80]:
            self.release(slot)


# Other processes' boards this process claimed tickets on, by (pid, inode); a few kept open.
_boards_seen: collections.OrderedDict[tuple[int, int], mmap.mmap] = collections.OrderedDict()


def _claim(ticket: tuple[int, int, int, int, int]) -> None:
    pid, fd, ino, slot, seq = ticket
    if pid == os.getpid():
        return
    key = (pid, ino)
    mm = _boards_seen.get(key)
    if mm is None:
        try:
            bfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        except OSError:
            return  # the sender is gone; nothing to release
        try:
            if os.fstat(bfd).st_ino != ino or not _size_sealed(bfd):
                return
            mm = mmap.mmap(bfd, _BOARD_SLOTS)
        finally:
            os.close(bfd)
        _boards_seen[key] = mm
        if len(_boards_seen) > 32:
            _boards_seen.popitem(last=False)[1].close()
    if mm[slot] == seq:
        mm[slot] = seq | 0x80


# -- the arena -----------------------------------------------------------------------------------


class _Arena:
    def __init__(self) -> None:
        self.segments: list[_Segment] = []
        self.board = _Board()

    def take(self, n: int) -> _Segment:
        """A free segment with room for ``n`` bytes, locked ``LOCK_EX``; made if none fits."""
        self.board.reap()
        best: _Segment | None = None
        for seg in self.segments:
            cap = seg.capacity
            if n <= cap <= 2 * n + (1 << 20) and (best is None or cap < best.capacity):
                if seg.pins == 0 and seg.try_lock():
                    if best is not None:
                        best.unlock()
                    best = seg
        if best is not None:
            self.segments.remove(best)
            self.segments.append(best)  # most recently used last
            best.bump()
            self.trim(MAX_FREE, skip=best)
            return best
        self.trim(MAX_FREE - 1)
        seg = _Segment(n, KIND_ARENA, populate=True)
        seg.try_lock()
        self.segments.append(seg)
        return seg

    def trim(self, keep: int, skip: _Segment | None = None) -> None:
        """Unmaps free segments beyond ``keep``, least recently used first."""
        free = [s for s in self.segments if s is not skip and s.pins == 0 and s.try_lock()]
        for seg in free[: max(0, len(free) - keep)]:
            self.segments.remove(seg)
            _regions.pop(id(seg.mm), None)
            seg.unlock()
            try:
                seg.mm.close()
            except BufferError:  # a view of our own in this process; it frees it later
                pass
        for seg in free[max(0, len(free) - keep) :]:
            seg.unlock()


_arena: _Arena | None = None


def _the_arena() -> _Arena:
    global _arena
    if _arena is None:
        _arena = _Arena()
    return _arena


def _forget_after_fork() -> None:
    """A fork() child owns none of its parent's pins or tickets. It inherited the descriptors
    and mappings, so it names them with its own pid from now on."""
    global _arena, _lock
    _arena = None
    _lock = threading.RLock()
    _boards_seen.clear()
    pid = os.getpid()
    for region in list(_regions.values()):
        region.name = (pid, *region.name[1:])


os.register_at_fork(after_in_child=_forget_after_fork)


# -- pickling side -------------------------------------------------------------------------------


class Session:
    """Collects one ``dumps`` call's out-of-band buffers, then places them (see the module doc)."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[tuple[memoryview, Any]] = []

    def callback(self, pb: pickle.PickleBuffer) -> bool:
        """``buffer_callback``: True keeps the buffer in-band, False sends it out-of-band."""
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickle copies it in-band
            return True
        found = _find_region(raw)
        if found is None and (not ENABLED or raw.nbytes < THRESHOLD):
            return True
        self.buffers.append((raw, found))
        return False

    def finish(self, stream: Any) -> bytes:
        """The blob: the descriptor table, then the pickle stream."""
        names: list[tuple] = []
        index: dict[tuple, int] = {}
        holds: list[Any] = []
        descs: list[tuple[int, int, int]] = []
        with _lock:
            arena = _the_arena()
            copies = [raw for raw, found in self.buffers if found is None]
            target: _Segment | None = None
            if copies:
                total = sum(-(-r.nbytes // _ALIGN) * _ALIGN for r in copies)
                target = arena.take(total)
            try:
                at = PAGE
                for raw, found in self.buffers:
                    if found is None:
                        assert target is not None
                        name = target.name
                        hold: Any = target
                        n = raw.nbytes
                        target.mm[at : at + n] = raw
                        offset = at
                        at += -(-n // _ALIGN) * _ALIGN
                    else:
                        region, mm, offset = found
                        name = region.name
                        # An own segment is pinned by count; a borrowed one by its mapping.
                        hold = _own_segment(mm) or mm
                    i = index.get(name)
                    if i is None:
                        i = index[name] = len(names)
                        names.append(name)
                        holds.append(hold)
                    descs.append((i, offset, raw.nbytes))
            finally:
                if target is not None:
                    target.unlock()
            ticket = arena.board.issue(holds)
        head = pickle.dumps((ticket, names, descs), 5)
        return b"".join((MAGIC, _LEN.pack(len(head)), head, stream))


def _own_segment(mm: mmap.mmap) -> _Segment | None:
    arena = _arena
    if arena is not None:
        for seg in arena.segments:
            if seg.mm is mm:
                return seg
    return _shared_owned.get(id(mm))


# SharedArray segments this process created, by id(mmap), while they live.
_shared_owned: weakref.WeakValueDictionary[int, _Segment] = weakref.WeakValueDictionary()


def new_shared(nbytes: int) -> tuple[_Segment, memoryview]:
    """A fresh SharedArray segment (zero-filled) and a view of its data bytes."""
    seg = _Segment(nbytes, KIND_SHARED, populate=False)
    _shared_owned[id(seg.mm)] = seg
    return seg, memoryview(seg.mm)


# -- loading side ----------------------------------------------------------------------------------

# Mappings of other segments in this process, by (inode, token), while any view of them lives.
_mapped: weakref.WeakValueDictionary[tuple[int, int], mmap.mmap] = weakref.WeakValueDictionary()


def _map(name: tuple[int, int, int, int, int, int]) -> mmap.mmap:
    pid, fd, ino, token, gen, kind = name
    mm = _mapped.get((ino, token))
    if mm is not None:
        if _HEADER.unpack_from(mm, 0)[2] != gen:
            raise StaleBufferError(
                "a shared buffer in this message was recycled before it was read"
            )
        return mm
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    except FileNotFoundError:
        raise StaleBufferError(
            f"a shared buffer in this message was freed before it was read (process {pid})"
        ) from None
    try:
        st = os.fstat(own)
        if st.st_ino != ino:
            raise StaleBufferError("a shared buffer in this message was freed before it was read")
        if not _size_sealed(own):
            raise StaleBufferError("a shared buffer in this message is not sealed against resizing")
        try:
            fcntl.flock(own, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StaleBufferError(
                "a shared buffer in this message was recycled before it was read"
            ) from None
        mm = mmap.mmap(own, st.st_size)
    except BaseException:
        os.close(own)
        raise
    weakref.finalize(mm, os.close, own)
    magic, tok, g, _ = _HEADER.unpack_from(mm, 0)
    if magic != _HEADER_MAGIC or tok != token or g != gen:
        raise StaleBufferError("a shared buffer in this message was recycled before it was read")
    # Re-sent from here, it is named by this process's descriptor.
    _register(mm, _address(mm), st.st_size, (os.getpid(), own, ino, token, gen, kind), kind)
    _mapped[(ino, token)] = mm
    return mm


def loads(data: Any) -> Any:
    """Unpickles a blob made by :meth:`Session.finish`."""
    view = memoryview(data)
    (n,) = _LEN.unpack_from(view, len(MAGIC))
    at = len(MAGIC) + _LEN.size
    ticket, names, descs = pickle.loads(view[at : at + n])
    with _lock:
        if _arena is not None:
            _arena.board.reap()
        maps = [_map(name) for name in names]
    try:
        buffers = [memoryview(maps[i])[off : off + length] for i, off, length in descs]
        return pickle.loads(view[at + n :], buffers=buffers)
    finally:
        _claim(ticket)


def reap() -> None:
    """Releases the pins whose tickets were claimed (cheap when there are none). Called on every
    load, so an idle worker lets go of what it re-sent by reference as soon as it gets work."""
    arena = _arena
    if arena is not None and arena.board.pins:
        with _lock:
            arena.board.reap()


def discard(blob: bytes) -> None:
    """Releases the pins of a blob this process made and will never send."""
    if blob[:4] != MAGIC:
        return
    (n,) = _LEN.unpack_from(blob, len(MAGIC))
    at = len(MAGIC) + _LEN.size
    ticket = pickle.loads(blob[at : at + n])[0]
    pid, _fd, ino, slot, seq = ticket
    with _lock:
        arena = _arena
        if arena is None or pid != os.getpid() or ino != arena.board.ino:
            return
        if slot in arena.board.pins and arena.board.seq[slot] == seq:
            arena.board.release(slot)


def stats() -> dict[str, int]:
    """This process's arena, for tests and diagnostics.

    Keys: ``segments`` (arena segments held), ``bytes`` (their total size), ``free`` (those no
    one maps and no ticket pins), ``pinned`` (unclaimed tickets), ``mapped`` (other processes'
    segments, and SharedArrays, mapped here now).
    """
    with _lock:
        arena = _arena
        if arena is None:
            return {"segments": 0, "bytes": 0, "free": 0, "pinned": 0, "mapped": len(_mapped)}
        arena.board.reap()
        free = 0
        for seg in arena.segments:
            if seg.pins == 0 and seg.try_lock():
                seg.unlock()
                free += 1
        return {
            "segments": len(arena.segments),
            "bytes": sum(s.size for s in arena.segments),
            "free": free,
            "pinned": len(arena.board.pins),
            "mapped": len(_mapped),
        }


# -- reducers for buffers pickle keeps in-band by default -------------------------------------------


def _rebuild_bytearray(buf: Any) -> bytearray:
    return bytearray(buf)


def _rebuild_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buf)
    if fmt != "B" or len(shape) != 1:
        view = view.cast("B").cast(fmt, shape)
    return view


def reduce_buffer(obj: Any) -> Any:
    """A protocol-5 reduction of a large ``bytearray`` or ``memoryview``; NotImplemented for
    anything else (pickle's own rule then applies)."""
    t = type(obj)
    if t is bytearray:
        if len(obj) >= THRESHOLD:
            return _rebuild_bytearray, (pickle.PickleBuffer(obj),)
    elif t is memoryview:
        if obj.c_contiguous:
            return _rebuild_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape)
    return NotImplemented
