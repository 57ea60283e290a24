"""Large buffers through shared memory (``_oob`` over the engine's bulk segments) and
``gilfree.SharedArray``."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import gilfree
from gilfree import _oob, _serialize

from conftest import WATCHDOG

np = pytest.importorskip("numpy")

BIG = 1 << 20  # elements: 8 MB of float64, far above the threshold


def identity(x):
    return x


def write_first(a, value):
    a[0] = value
    return int(a[1])


def shares(a) -> bool:
    """Whether ``a`` views a mapping of a shared segment (not private memory)."""
    return _oob.is_shared(np.ascontiguousarray(a))


def held_segments(kind: str = "gilfree-array") -> set[tuple[int, int]]:
    """(device, inode) of every gilfree memfd of ``kind`` this process has open (SharedArray
    memory by default; ``gilfree-bulk`` for the recycled segments of large buffers)."""
    seen = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:{kind} "):
            st = os.stat(f"/proc/self/fd/{fd}")
            seen.add((st.st_dev, st.st_ino))
    return seen


@pytest.fixture(scope="module")
def pool():
    # Made before the per-test ``GILFREE_BACKEND=process`` (conftest.py) applies, so it names its
    # backend: these tests are about memory shared between processes, and on a free-threaded
    # interpreter ``"auto"`` would give the thread backend, where nothing crosses over at all.
    with gilfree.Pool(2, backend="process") as p:
        yield p


# -- the format --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "int8", "uint16", "int64", "complex128", "bool"]
)
def test_round_trip_dtypes_in_process(dtype):
    a = (np.arange(BIG) % 7).astype(dtype)
    blob = _serialize.dumps(a)
    assert isinstance(blob, bytes) and len(blob) < 1000  # the bytes travel out-of-band
    b = _serialize.loads(blob)
    assert b.dtype == a.dtype and np.array_equal(a, b)
    assert shares(b)


def test_small_buffers_stay_inline():
    a = np.arange(100)
    blob = _serialize.dumps(a)
    assert blob[:4] != _oob.MAGIC
    assert np.array_equal(_serialize.loads(blob), a)


def test_non_contiguous_falls_back_to_a_copy():
    a = np.arange(4 * BIG, dtype=np.int32).reshape(2 * BIG, 2)[:, 1]
    b = _serialize.loads(_serialize.dumps(a))
    assert np.array_equal(a, b) and not shares(b)


def test_fortran_order_and_empty():
    a = np.asfortranarray(np.arange(BIG, dtype=np.float64).reshape(1024, -1))
    b = _serialize.loads(_serialize.dumps(a))
    assert np.array_equal(a, b) and b.flags.f_contiguous
    e = np.zeros((0, 5))
    assert _serialize.loads(_serialize.dumps(e)).shape == (0, 5)


def test_bytearray_memoryview_and_bytes():
    ba = bytearray(os.urandom(200_000))
    assert _serialize.loads(_serialize.dumps(ba)) == ba
    mv = memoryview(bytearray(os.urandom(300_000))).cast("i")
    back = _serialize.loads(_serialize.dumps(mv))
    assert isinstance(back, memoryview) and back.tolist() == mv.tolist()
    by = os.urandom(200_000)
    assert _serialize.loads(_serialize.dumps(by)) == by
    assert _serialize.loads(_serialize.dumps(bytearray(b"small"))) == bytearray(b"small")


# -- through Workers and Pools -------------------------------------------------------------------


class Holder(gilfree.Worker):
    def __init__(self, data):
        super().__init__()
        self.data = data

    def run(self):
        self.out = self.data * 2
        self.small = b"x" * 10
        return self.data.sum()


@pytest.mark.timeout(60)
def test_worker_arguments_attributes_and_results():
    a = np.arange(BIG, dtype=np.float64)
    w = Holder(a)
    w.start()
    assert w.join() == a.sum()
    assert np.array_equal(w.out, a * 2) and shares(w.out)
    assert np.array_equal(w.data, a)
    w2 = gilfree.Worker(target=identity, args=(a,))
    w2.start()
    back = w2.join()
    assert np.array_equal(back, a) and shares(back)


@pytest.mark.timeout(60)
def test_pool_submit_and_map(pool):
    arrays = [np.full(BIG, i, dtype=np.int64) for i in range(4)]
    for a in arrays:
        r = pool.submit(identity, a).result()
        assert np.array_equal(r, a) and shares(r)
    results = list(pool.map(identity, arrays))
    assert all(np.array_equal(r, a) for r, a in zip(results, arrays, strict=True))
    small = [np.arange(10), bytearray(300_000), os.urandom(100_000)]
    assert [type(x) for x in pool.map(identity, small)] == [np.ndarray, bytearray, bytes]


@pytest.mark.timeout(60)
def test_receiver_views_shared_memory_without_copy(pool):
    # A task writes into the array it received; the result it returns is the same memory, so
    # the parent sees the write through the returned array: nothing was copied on the way.
    a = np.zeros(BIG, dtype=np.int64)
    a[1] = 5

    def write_and_return(x):
        x[0] = 42
        return x

    r = pool.submit(write_and_return, a).result()
    assert r[0] == 42 and r[1] == 5 and a[0] == 0  # the caller's own array is untouched
    assert shares(r)


@pytest.mark.timeout(120)
def test_segments_are_recycled(pool):
    a = np.ones(BIG)
    for _ in range(3):
        pool.submit(identity, a).result()
    gc.collect()
    before = _oob.stats()
    for _ in range(50):
        r = pool.submit(identity, a).result()
        assert r[0] == 1.0
    del r
    gc.collect()
    after = _oob.stats()
    # Fifty 8 MB round trips reuse the same few segments (one in flight, one the last result
    # viewed, one an idle worker still maps until its next task).
    assert after["segments"] <= before["segments"] + 2
    assert after["bytes"] < 50 * a.nbytes // 4


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="free-threaded CPython frees an object another thread made (the result, decoded by the"
    " Pool's collector thread) only when that thread next runs Python (biased reference"
    " counting), so the dropped result still pins its segment at the next submit there",
)
def test_one_segment_serves_a_sequence_of_new_arrays():
    # What a program's first transfers do: each round trip sends a new array of one size,
    # through either worker. The worker lets go of what it received, the parent of the result
    # it dropped, so the next array refills the same segment: no new segment (whose pages
    # cost most of a first transfer) after the first. A size no other test uses.
    n = BIG + 3 * 4096
    with gilfree.Pool(2) as p:
        p.submit(identity, 0).result()
        gc.collect()
        before = held_segments("gilfree-bulk")
        where = set()
        for i in range(6):
            a = np.full(n, float(i))
            r = p.submit(identity, a).result()
            assert r[0] == float(i) and r[-1] == float(i) and shares(r)
            # The result views this process's own mapping of the segment that carried it.
            where.add(r.__array_interface__["data"][0])
            del r, a
        assert len(where) == 1, "every round trip refilled the same segment"
        assert len(held_segments("gilfree-bulk") - before) == 1


@pytest.mark.timeout(60)
def test_a_killed_receiver_frees_what_it_held():
    a = np.ones(5 * BIG // 2)  # 20 MB: a segment of its own

    def hold_and_die(x):
        assert x[0] == 1.0  # mapped and viewed, then the process dies holding the view
        os.kill(os.getpid(), 9)

    with gilfree.Pool(1) as p:
        with pytest.raises(gilfree.WorkerCrashedError):
            p.submit(hold_and_die, a).result()
        # The dead worker's pin is taken back (its process is gone) and its load claimed the
        # ticket: the segment it held is reused. Round trips in a row need two segments (the
        # new worker keeps its view of the last one until its next task), so at most one new
        # segment appears; with the dead worker's pin kept, two would.
        held = held_segments("gilfree-bulk")
        for _ in range(5):
            r = p.submit(identity, a).result()
            assert r[0] == 1.0
            del r
        assert len(held_segments("gilfree-bulk") - held) <= 1


# -- SharedArray ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shared_array_worker_writes_are_seen():
    shared = gilfree.SharedArray((4, 5), "int32")
    assert shared.shape == (4, 5) and shared.nbytes == 80
    assert np.all(shared.array == 0)

    def fill(s):
        s.array[:] = np.arange(20).reshape(4, 5)
        return s

    w = gilfree.Worker(target=fill, args=(shared,))
    w.start()
    back = w.join()
    assert np.array_equal(shared.array, np.arange(20).reshape(4, 5))
    back.array[0, 0] = -1  # the returned handle is the same memory too
    assert shared.array[0, 0] == -1


@pytest.mark.timeout(60)
def test_shared_array_through_pool_tasks(pool):
    shared = gilfree.SharedArray.from_array(np.zeros(8, dtype=np.float64))
    futures = [pool.submit(write_first_at, shared, i) for i in range(8)]
    assert [f.result() for f in futures] == list(range(8))
    assert np.array_equal(np.asarray(shared), np.arange(8, dtype=np.float64))


def write_first_at(s, i):
    s[i] = i
    return i


@pytest.mark.timeout(60)
def test_shared_array_freed_with_the_last_handle(pool):
    gc.collect()
    baseline = held_segments()
    shared = gilfree.SharedArray.zeros(1000)
    assert len(held_segments() - baseline) == 1
    assert pool.submit(write_first_at, shared, 3).result() == 3
    view = shared.array
    del shared
    gc.collect()
    assert len(held_segments() - baseline) == 1  # the view keeps it
    assert view[3] == 3
    del view
    gc.collect()
    assert held_segments() == baseline


def test_shared_array_memoryview_and_plain_pickle():
    shared = gilfree.SharedArray(3, "float64")
    mv = shared.memoryview
    mv[1] = 2.5
    assert shared.array[1] == 2.5
    copy = pickle.loads(pickle.dumps(shared, protocol=5))  # outside gilfree: a private copy
    copy.array[1] = 0
    assert shared.array[1] == 2.5
    assert repr(shared).startswith("SharedArray(")


def _prints_ok(script: str) -> None:
    """Runs ``script`` in a fresh interpreter (with a watchdog): it exits 0 and prints ``ok``."""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(60)
def test_shared_array_without_numpy():
    script = (
        "import sys; sys.modules['numpy'] = None\n"
        "import gilfree\n"
        "s = gilfree.SharedArray(4, 'int64')\n"
        "def f(x):\n"
        "    x.memoryview[2] = 9\n"
        "    return x.memoryview.tolist()\n"
        "w = gilfree.Worker(target=f, args=(s,)); w.start()\n"
        "assert w.join() == [0, 0, 9, 0]\n"
        "assert s.memoryview.tolist() == [0, 0, 9, 0]\n"
        "print('ok')\n"
    )
    _prints_ok(script)


def test_cancelled_task_frees_the_shared_memory_its_arguments_pinned() -> None:
    big = np.arange(1 << 20, dtype=np.int64)  # 8 MB: goes through shared memory
    with gilfree.Pool(1) as p:
        started, gate = gilfree.Event(), gilfree.Event()
        blocker = p.submit(lambda s, g: (s.set(), g.wait())[1], started, gate)
        assert started.wait(60)
        # Queued behind the blocker (and the one pipelined behind it): never loaded by a worker.
        queued = [p.submit(len, big) for _ in range(3)]
        before = _oob.stats()["pinned"]
        assert before >= 1
        assert queued[-1].cancel()
        p.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert blocker.result(timeout=60) is True
    assert _oob.stats()["pinned"] < before


def test_shared_segments_cannot_be_resized() -> None:
    # A peer that shrank a segment under another process's mapping would turn that process's
    # reads into SIGBUS: every memfd is sealed against resizing once it has its size.
    shared = gilfree.SharedArray.zeros(1 << 17)  # 1 MB
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:gilfree-array "):
                fds.append(int(fd))
        except OSError:  # the listing's own fd, closed by now
            pass
    assert fds
    for fd in fds:
        size = os.fstat(fd).st_size
        for new in (0, size // 2, size * 2):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, new)
    del shared


_NO_PROC_SCRIPT = textwrap.dedent(
    """
    import ctypes, os, sys
    import numpy as np
    import gilfree
    from gilfree import _oob

    # The parent cannot be inspected through /proc: non-dumpable, and (as root) the worker
    # gives up root, so neither ptrace rights nor capabilities let it open our fds.
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE, 0
    parent = os.getpid()

    def lock_out():
        def hook(event, args):
            if event == "open" and isinstance(args[0], str) and "/proc/" in args[0] \
                    and "/fd" in args[0]:
                raise PermissionError("no /proc/<pid>/fd in this test: " + args[0])
        import numpy  # noqa: F401  (imported while its files are still readable)
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            os.listdir(f"/proc/{parent}/fd")
        except PermissionError:
            pass
        else:
            raise AssertionError("the parent's /proc/<pid>/fd is still readable")
        sys.addaudithook(hook)

    def touch(x):
        x[0] = 42
        return x

    def fill(s):
        s.array[:] = 7
        return s

    with gilfree.Pool(1, initializer=lock_out) as pool:
        a = np.arange(1 << 20, dtype=np.int64)
        for _ in range(3):
            r = pool.submit(touch, a).result()
            assert r[0] == 42 and r[1] == 1 and a[0] == 0
            assert _oob.is_shared(r)
        shared = gilfree.SharedArray.zeros(1000, "int64")
        back = pool.submit(fill, shared).result()
        assert (shared.array == 7).all()
        back.array[3] = -1
        assert shared.array[3] == -1
        del r, back, shared
    print("ok")
    """
)


@pytest.mark.timeout(60)
def test_zero_copy_works_with_proc_unreadable() -> None:
    # Segments reach the worker over its channel's socket (SCM_RIGHTS): a worker that cannot
    # open the parent's /proc/<pid>/fd still gets every array without a copy, and writes to a
    # SharedArray are seen.
    _prints_ok(_NO_PROC_SCRIPT)


_OUTLIVE_SCRIPT = textwrap.dedent(
    """
    import gc, os
    import numpy as np
    import gilfree
    from gilfree import _runtime

    def memfds(kind):
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{kind} "):
                    found.append(fd)
            except OSError:
                pass
        return found

    def identity(x):
        return x

    def write_first_at(s, i):
        s[i] = i
        return i

    a = np.ones(1 << 20)
    with gilfree.Pool(2) as p:
        for _ in range(3):
            r = p.submit(identity, a).result()
        shared = gilfree.SharedArray.zeros(1000)
        assert p.submit(write_first_at, shared, 1).result() == 1
        assert memfds("gilfree-bulk") and memfds("gilfree-array")
    del r, shared
    _runtime.shutdown()  # the engine goes (its workers and channels with it)
    gc.collect()
    assert memfds("gilfree-bulk") == [], memfds("gilfree-bulk")
    assert memfds("gilfree-array") == [], memfds("gilfree-array")
    assert not [n for n in os.listdir("/dev/shm") if "gilfree" in n]
    print("ok")
    """
)


@pytest.mark.timeout(60)
def test_no_segment_outlives_the_engine() -> None:
    # Once the pool is closed and the engine is gone, the parent holds no segment: recycled
    # ones went with the last channel, a SharedArray with its last handle; nothing of ours is
    # in /dev/shm. (Idle workers outlive a Pool by design, and may view its last segments.)
    _prints_ok(_OUTLIVE_SCRIPT)
