"""``Pool(max_memory_per_worker=)``: a worker whose task took its peak resident memory over the
limit is replaced after that task; the task's result still arrives."""

from __future__ import annotations

import os
import signal

import pytest

import gilfree
from gilfree import executor

MB = 10**6


def rss_now() -> int:
    """This process's resident set in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def allocate(nbytes: int) -> tuple[int, int]:
    """Touches ``nbytes`` of fresh memory (then frees it); returns ``(pid, peak RSS)``."""
    block = b"x" * nbytes  # written, so resident
    del block
    return os.getpid(), peak_rss()


def allocate_up_to(target: int) -> tuple[int, int]:
    """Raises this process's peak resident set to about ``target`` bytes."""
    return allocate(max(0, target - rss_now()))


def baseline() -> tuple[int, int]:
    return os.getpid(), peak_rss()


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# Far above a fresh worker's resident set (tens of MB), far below the machine's memory.
LIMIT = 160 * MB
BIG = 256 * MB


def settle(pool: gilfree.Pool) -> int:
    """Runs no-op tasks until the pool's one worker is under the limit (the engine's idle
    workers are shared, and one that ran a big task for another pool may come first: this
    pool replaces it after its first task); returns that worker's pid."""
    for _ in range(100):
        pid, peak = pool.submit(baseline).result()
        if peak <= LIMIT:
            return pid
    raise AssertionError("never got a worker under the limit")


def test_a_task_over_the_limit_gets_its_worker_replaced_after_it() -> None:
    with gilfree.Pool(1, max_memory_per_worker=LIMIT) as pool:
        pid = settle(pool)
        # Under the limit: the worker stays.
        pid2, peak = pool.submit(allocate, 8 * MB).result()
        assert peak <= LIMIT
        assert pid2 == pid
        # Over it: the result arrives, then the worker is replaced.
        pid3, peak = pool.submit(allocate, BIG).result()
        assert peak > LIMIT
        assert pid3 == pid
        pid4, peak = pool.submit(baseline).result()
        assert pid4 != pid
        assert peak <= LIMIT
        # One slot: its new worker came after the old one was let go.
        assert pid not in pool._tp.pids()


def test_map_over_the_limit_replaces_the_worker_and_keeps_every_result() -> None:
    with gilfree.Pool(1, max_memory_per_worker=f"{LIMIT // MB}MB") as pool:
        pid = settle(pool)
        got = list(pool.map(allocate, [0, BIG, 0, 0], chunksize=1))
    assert [p for p, _ in got[:2]] == [pid, pid]
    assert got[1][1] > LIMIT
    # Task 2 may have been queued on that worker behind the big task already; task 3 was not
    # (no task is handed to a worker over the limit), so it ran on the replacement.
    assert got[3][0] != pid


def test_without_a_limit_the_worker_stays() -> None:
    # Replaced after these tasks all the same, so no other test gets this worker's peak.
    with gilfree.Pool(1, max_tasks_per_worker=3) as pool:
        pid, _ = pool.submit(baseline).result()
        assert pool.submit(allocate, BIG).result()[0] == pid
        assert pool.submit(baseline).result()[0] == pid


def test_a_sigkill_near_the_limit_says_it_likely_ran_out_of_memory() -> None:
    with gilfree.Pool(1, max_memory_per_worker=LIMIT) as pool:
        pid = settle(pool)
        got, peak = pool.submit(allocate_up_to, int(0.9 * LIMIT)).result()
        assert got == pid
        assert 0.8 * LIMIT <= peak <= LIMIT
        fut = pool.submit(die_by_sigkill)
        with pytest.raises(gilfree.WorkerCrashedError) as info:
            fut.result()
        assert info.value.signal == signal.SIGKILL
        assert info.value.pid == pid
        assert "likely ran out of memory" in str(info.value)
        assert "near the pool's max_memory_per_worker" in str(info.value)
        # The pool goes on.
        assert pool.submit(abs, -3).result() == 3


def test_a_sigkill_far_from_any_limit_still_hints_at_memory() -> None:
    with gilfree.Pool(1) as pool:
        with pytest.raises(gilfree.WorkerCrashedError) as info:
            pool.submit(die_by_sigkill).result()
    assert "near the pool's" not in str(info.value)
    assert "OOM killer" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5 kb", 1500), ("100", 100), (4096, 4096)],
)
def test_sizes_are_read(text: str | int, size: int) -> None:
    assert executor._memory_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "2 GiGs", "-1GB", 0, 2.5, True])
def test_bad_sizes_are_refused_at_construction(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="max_memory_per_worker"):
        gilfree.Pool(1, max_memory_per_worker=bad)  # type: ignore[arg-type]
