"""``retries=``: a task whose worker process died is run again; nothing that may have finished,
or that raised, ever is. (Process backend; the one test taking ``backend`` runs on every
backend: threads accept ``retries=`` with nothing to retry, Dask refuses it.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_backends import cannot, refused

import gilfree


def _attempt(path: str) -> int:
    """Records one run in the file at ``path`` (one byte per run); returns the run's number."""
    with open(path, "ab") as f:
        f.write(b"x")
    return os.path.getsize(path)


def die_first(path: str, k: int) -> int:
    """Kills its own worker process on its first ``k`` runs; then returns its run number."""
    n = _attempt(path)
    if n <= k:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


def exit_first(path: str, k: int, value: int) -> int:
    """``os._exit(7)`` on the first ``k`` runs (counted in ``path``), then returns ``value``."""
    if _attempt(path) <= k:
        os._exit(7)
    return value


def raise_always(path: str) -> None:
    _attempt(path)
    raise ValueError("raised, not crashed")


def runs(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@pytest.fixture
def pool() -> gilfree.Pool:
    with gilfree.Pool(2) as p:
        yield p


@pytest.mark.parametrize("k", [1, 3])
def test_submit_with_enough_retries_succeeds(pool: gilfree.Pool, tmp_path: Path, k: int) -> None:
    counter = tmp_path / "runs"
    assert pool.submit(die_first, str(counter), k, retries=k).result() == k + 1
    assert runs(counter) == k + 1


@pytest.mark.parametrize("k", [1, 3])
def test_submit_with_too_few_retries_fails_with_the_attempt_count(
    pool: gilfree.Pool, tmp_path: Path, k: int
) -> None:
    counter = tmp_path / "runs"
    fut = pool.submit(die_first, str(counter), k, retries=k - 1)
    with pytest.raises(gilfree.WorkerCrashedError) as info:
        fut.result()
    assert info.value.attempts == k
    assert info.value.signal == signal.SIGKILL
    assert runs(counter) == k
    if k > 1:
        assert f"ran {k} times" in str(info.value)
    # The pool goes on.
    assert pool.submit(abs, -5).result() == 5


def test_without_retries_a_crash_runs_once(pool: gilfree.Pool, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    with pytest.raises(gilfree.WorkerCrashedError) as info:
        pool.submit(die_first, str(counter), 1).result()
    assert info.value.attempts == 1
    assert runs(counter) == 1


def test_a_task_that_raises_is_not_retried(backend: str, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    with gilfree.Pool(2, backend=backend) as pool:
        if cannot(backend, "retries") is not None:
            with refused(backend, "retries"):
                pool.submit(raise_always, str(counter), retries=3)
            with refused(backend, "retries"):
                list(pool.map(raise_always, [str(counter)], retries=1))
            with refused(backend, "retries"):
                gilfree.map(raise_always, [str(counter)], retries=1, backend=backend)
            assert runs(counter) == 0
            return
        with pytest.raises(ValueError, match="raised, not crashed"):
            pool.submit(raise_always, str(counter), retries=3).result()
    assert runs(counter) == 1


def test_a_retry_still_runs_when_shutdown_came_first(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    with gilfree.Pool(1) as p:
        fut = p.submit(die_first, str(counter), 2, retries=2)
    # The with block's shutdown(wait=True) returned: the retries ran before it did.
    assert fut.result(timeout=0) == 3
    assert runs(counter) == 3


def test_pool_map_retries_each_crashed_item(pool: gilfree.Pool, tmp_path: Path) -> None:
    paths = [str(tmp_path / f"item{i}") for i in range(8)]
    # Items 2 and 5 kill their worker twice each; the others never do. Several items per chunk,
    # so a crash mid-chunk keeps the items before it and re-runs only the rest.
    ks = [2 if i in (2, 5) else 0 for i in range(8)]
    got = list(pool.map(exit_first, paths, ks, range(8), chunksize=4, retries=2))
    assert got == list(range(8))
    assert [runs(Path(p)) for p in paths] == [3 if i in (2, 5) else 1 for i in range(8)]


def test_pool_map_exhausted_retries_fail_only_that_item(pool: gilfree.Pool, tmp_path: Path) -> None:
    paths = [str(tmp_path / f"item{i}") for i in range(6)]
    # Item 4 always kills its worker; it is mid-chunk, after item 3 finished. (Iteration ends
    # at the first error, as in Executor.map, so the items after it are checked by their runs.)
    ks = [5 if i == 4 else 0 for i in range(6)]
    it = pool.map(exit_first, paths, ks, range(6), chunksize=3, retries=1)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(gilfree.WorkerCrashedError) as info:
        next(it)
    assert info.value.attempts == 2
    assert info.value.exitcode == 7
    assert "ran 2 times" in str(info.value)
    assert [runs(Path(p)) for p in paths[:5]] == [1, 1, 1, 1, 2]


def test_imap_unordered_retries(pool: gilfree.Pool, tmp_path: Path) -> None:
    def call(i: int) -> int:
        return exit_first(str(tmp_path / f"item{i}"), 1 if i % 3 == 0 else 0, i)

    got = sorted(pool.imap(call, range(9), ordered=False, chunksize=2, retries=1))
    assert got == list(range(9))


def test_gilfree_map_retries(tmp_path: Path) -> None:
    def call(i: int) -> int:
        return exit_first(str(tmp_path / f"item{i}"), 1 if i == 4 else 0, i * 10)

    assert gilfree.map(call, range(6), workers=2, retries=1) == [i * 10 for i in range(6)]
    assert runs(tmp_path / "item4") == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_retries_are_refused_at_the_call(pool: gilfree.Pool, bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        pool.submit(abs, 1, retries=bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError)):
        pool.map(abs, [1], retries=bad)  # type: ignore[arg-type]
