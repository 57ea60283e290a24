"""The dask backend (``gilfree._backends.dask``) on a real LocalCluster.

The session's LocalCluster (``dask_cluster`` in tests/conftest.py: two one-thread worker
processes on 127.0.0.1) serves these tests and the dask runs of the backend-neutral ones; the
pools here connect to it by address, except the tests that check a pool starts and closes a
cluster of its own. Task functions travel by value (cloudpickle), so the Dask workers never
import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import as_completed, wait
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
import dask  # noqa: E402

import gilfree  # noqa: E402
from gilfree._backends import dask as dask_backend  # noqa: E402

from conftest import DASK_WORKERS, WATCHDOG, poll_until  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_WORKERS = DASK_WORKERS


@pytest.fixture(autouse=True)
def address(dask_address: str) -> str:
    """The session's LocalCluster (tests/conftest.py), with all its workers up, and also
    ``GILFREE_DASK_ADDRESS`` for the test, so Workers (``default_pool``) run on it too."""
    return dask_address


@pytest.fixture(scope="module")
def pool(dask_cluster: str) -> Iterator[dask_backend.Pool]:
    with dask_backend.Pool(address=dask_cluster) as p:
        yield p


def _square(x: int) -> int:
    return x * x


class Boom(ValueError):
    pass


def _fail(x: int) -> int:
    if x == 3:
        raise Boom(f"bad item {x}")
    return x


def test_pool_is_an_executor_sized_by_the_cluster(pool: dask_backend.Pool) -> None:
    assert isinstance(pool, gilfree.Pool)
    assert pool.max_workers == N_WORKERS
    futures = [pool.submit(_square, i) for i in range(10)]
    assert sorted(f.result(timeout=30) for f in as_completed(futures, timeout=30)) == [
        i * i for i in range(10)
    ]
    done, not_done = wait(futures, timeout=30)
    assert len(done) == 10 and not not_done


def test_lambdas_kwargs_and_asyncio(pool: dask_backend.Pool) -> None:
    offset = 7
    assert pool.submit(lambda a, *, b: a + b + offset, 1, b=2).result(timeout=30) == 10

    async def main() -> int:
        return await asyncio.wrap_future(pool.submit(_square, 9))

    assert asyncio.run(main()) == 81


def test_exception_keeps_its_type_and_remote_traceback(pool: dask_backend.Pool) -> None:
    future = pool.submit(_fail, 3)
    with pytest.raises(Boom, match="bad item 3") as info:
        future.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, gilfree.RemoteTraceback)
    assert "_fail" in cause.tb and "Boom: bad item 3" in cause.tb


def test_unpicklable_argument_fails_at_submit(pool: dask_backend.Pool) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pool.submit(_square, threading.Lock())


def test_map_orders_results_over_chunks_and_raises_at_the_item(pool: dask_backend.Pool) -> None:
    assert list(pool.map(_square, range(50))) == [i * i for i in range(50)]
    assert list(pool.map(lambda a, b: a - b, range(5), range(5, 10), chunksize=2)) == [-5] * 5
    results = pool.map(_fail, range(6), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(Boom):
        next(results)


def test_imap_ordered_unordered_and_lazy(pool: dask_backend.Pool) -> None:
    assert list(pool.imap(_square, range(20), chunksize=3)) == [i * i for i in range(20)]
    assert sorted(pool.imap(_square, range(20), ordered=False)) == [i * i for i in range(20)]

    taken = 0

    def endless() -> Iterator[int]:
        nonlocal taken
        while True:
            taken += 1
            yield taken

    results = pool.imap(_square, endless())
    assert [next(results) for _ in range(5)] == [1, 4, 9, 16, 25]
    # Bounded look-ahead: a few chunks per worker thread, not the endless input.
    assert taken <= 5 + N_WORKERS * dask_backend._LOOKAHEAD_PER_WORKER + 1
    results.close()


def test_worker_output_reaches_the_callers_streams(
    pool: dask_backend.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    def chatty(x: int) -> int:
        print(f"hello from task {x}")
        print(f"warning from task {x}", file=sys.stderr)
        return x

    assert pool.submit(chatty, 1).result(timeout=30) == 1
    assert list(pool.map(chatty, [2, 3])) == [2, 3]
    out, err = capsys.readouterr()
    for x in (1, 2, 3):
        assert f"hello from task {x}\n" in out
        assert f"warning from task {x}\n" in err


def test_worker_death_fails_that_task_only_and_runs_it_once(
    pool: dask_backend.Pool, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"

    def die(path: str) -> None:
        with open(path, "a") as f:
            f.write("ran\n")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(gilfree.WorkerCrashedError, match="died"):
        pool.submit(die, str(runs)).result(timeout=60)
    assert runs.read_text() == "ran\n"  # not retried on another worker
    # The pool goes on (the nanny restarts the worker).
    assert list(pool.map(_square, range(8))) == [i * i for i in range(8)]
    assert pool.submit(_square, 5).result(timeout=60) == 25


def test_a_result_lost_with_its_worker_is_computed_again(pool: dask_backend.Pool) -> None:
    """A task finished, then its worker died before this process fetched the result: Dask
    computes it again, and the Future resolves with that result (it used to stay pending)."""
    # Keep Dask's one callback thread busy, so the task's Future cannot fetch its result yet.
    hold, entered = threading.Event(), threading.Event()
    plug = pool._client.submit(_square, 0, pure=False)
    plug.add_done_callback(lambda _: (entered.set(), hold.wait(WATCHDOG)))
    try:
        assert entered.wait(WATCHDOG)
        future = pool.submit(os.getpid)
        dfut = future._gilfree_dask  # type: ignore[attr-defined]
        # Finished on a worker, not fetched (``distributed.wait`` wants a default client).
        pool._client.sync(distributed.client._wait, [dfut], timeout=WATCHDOG)
        (holder,) = pool._client.who_has([dfut])[dfut.key]
        (victim,) = pool._client.run(os.getpid, workers=[holder]).values()
        os.kill(victim, signal.SIGKILL)
        # The holder is gone with the only copy of the result. (The Future's status cannot be
        # waited on here: the scheduler may notice the loss and compute it again between two
        # looks, so "lost" can come and go unseen.)
        with contextlib.suppress(psutil.NoSuchProcess):  # already reaped by its nanny
            psutil.Process(victim).wait(WATCHDOG)
    finally:
        hold.set()
    pid = future.result(timeout=WATCHDOG)
    assert isinstance(pid, int) and pid != victim


class _LostThenRecomputed:
    """A Dask future as the bridge's callback can find it: finished once, its result then
    lost with its worker (status "lost"), computed again while ``exception()`` waits."""

    status = "lost"

    def add_done_callback(self, callback: Any) -> None:
        self.callback = callback

    def exception(self) -> None:
        self.status = "finished"
        return None

    def result(self) -> int:
        assert self.status == "finished"
        return 42


def test_the_bridge_waits_for_a_lost_result_to_be_computed_again() -> None:
    dfut = _LostThenRecomputed()
    fut = dask_backend._bridge(dfut, lambda f, value: f.set_result(value))  # type: ignore[arg-type]
    dfut.callback(dfut)
    assert fut.result(timeout=0) == 42


def test_large_array_is_scattered_once_and_shared_by_tasks(pool: dask_backend.Pool) -> None:
    np = pytest.importorskip("numpy")
    big = np.arange(2 * dask_backend.SCATTER_BYTES // 8, dtype=np.int64)

    def where(arr: object, i: int) -> tuple[int, int, int]:
        return os.getpid(), id(arr), int(arr[i])  # type: ignore[index]

    futures = [pool.submit(where, big, i) for i in range(2 * N_WORKERS + 1)]
    seen: dict[int, set[int]] = {}
    for i, f in enumerate(futures):
        pid, ident, value = f.result(timeout=60)
        assert value == i
        seen.setdefault(pid, set()).add(ident)
    # Pigeonhole: some worker ran two tasks; every task on one worker got the same object.
    assert all(len(ids) == 1 for ids in seen.values()), seen
    assert len(pool._scattered) == 1
    # On the scheduler: every task depends on one and the same key, which holds the array,
    # and no task carries the array in itself.
    keys = [f._gilfree_dask.key for f in futures]  # type: ignore[attr-defined]
    deps, sizes = pool._client.run_on_scheduler(_dependencies, keys)
    (shared,) = {dep for task_deps in deps for dep in task_deps}
    assert all(task_deps == [shared] for task_deps in deps)
    assert sizes[shared] >= big.nbytes
    assert all(0 <= sizes[str(k)] < big.nbytes // 100 for k in keys), sizes
    # On the workers: a copy of the array at most once each.
    held = pool._client.run(_big_values, big.nbytes)
    assert all(len(keys_there) <= 1 for keys_there in held.values()), held
    assert {k for keys_there in held.values() for k in keys_there} == {shared}
    # An explicit handle works as an argument too.
    handle = pool.scatter(b"x" * 100)
    assert pool.submit(len, handle).result(timeout=30) == 100


def _dependencies(
    keys: list[Any], dask_scheduler: Any = None
) -> tuple[list[list[str]], dict[str, int]]:
    """On the scheduler: each task's dependencies, and the size of every key involved."""
    tasks = [dask_scheduler.tasks[k] for k in keys]
    deps = [sorted(str(d.key) for d in ts.dependencies) for ts in tasks]
    involved = {ts for t in tasks for ts in (t, *t.dependencies)}
    return deps, {str(ts.key): ts.nbytes for ts in involved}


def _big_values(nbytes: int, dask_worker: Any = None) -> list[str]:
    """On a worker: the keys of the values of ``nbytes`` or more it holds."""
    return [str(k) for k, v in dask_worker.data.items() if getattr(v, "nbytes", 0) >= nbytes]


def test_what_dask_cannot_do_is_refused_clearly(pool: dask_backend.Pool) -> None:
    with pytest.raises(NotImplementedError, match="'dask' backend"):
        pool.submit(_square, 1, timeout=1)
    with pytest.raises(NotImplementedError, match="'dask' backend"):
        list(pool.map(_square, [1], timeout=1))
    with pytest.raises(NotImplementedError, match="initializer"):
        dask_backend.Pool(address=pool.address, initializer=print)
    with pytest.raises(NotImplementedError, match="retries"):
        pool.submit(_square, 1, retries=2)
    with pytest.raises(NotImplementedError, match="retries"):
        list(pool.imap(_square, [1], retries=1))
    with pytest.raises(NotImplementedError, match="max_memory_per_worker"):
        dask_backend.Pool(address=pool.address, max_memory_per_worker="1GB")
    assert pool.submit(_square, 3, retries=0).result(timeout=30) == 9


def test_shutdown_with_address_leaves_the_cluster_running(address: str) -> None:
    p = dask_backend.Pool(address=address)
    assert p.submit(_square, 4).result(timeout=30) == 16
    p.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(_square, 1)
    with dask_backend.Pool(address=address) as again:
        assert again.submit(_square, 3).result(timeout=30) == 9


def test_shutdown_cancel_futures_cancels_queued_tasks(address: str) -> None:
    p = dask_backend.Pool(address=address)
    name = f"gilfree-gate-{os.getpid()}"

    def gated(_: int) -> int:
        distributed.Event(name).wait(60)
        return 1

    # This client connects before the shutdown: a client that registers while the scheduler
    # broadcasts "cancelled-keys" for forgotten tasks may get that message batched with its
    # handshake reply, which distributed's `Client._ensure_connected` rejects with a bare
    # AssertionError (distributed 2026.8, seen once in CI).
    with distributed.Client(address, set_as_default=False) as client:
        futures = [p.submit(gated, i) for i in range(N_WORKERS * 6)]
        p.shutdown(wait=False, cancel_futures=True)
        # Left set, and this client kept until the tasks returned: the scheduler may drop an
        # Event that no client holds.
        distributed.Event(name, client=client).set()
        wait(futures, timeout=60)
    assert all(f.done() for f in futures), [f._state for f in futures]
    assert any(f.cancelled() for f in futures)


def test_cancel_refuses_a_running_task_and_cancels_a_queued_one(pool: dask_backend.Pool) -> None:
    gate = f"gilfree-gate-{os.getpid()}-cancel"

    def gated(i: int) -> int:
        distributed.Event(f"{gate}-started-{i}").set()
        distributed.Event(gate).wait(60)
        return i

    running = [pool.submit(gated, i) for i in range(N_WORKERS)]
    with distributed.Client(pool.address, set_as_default=False) as client:
        for i in range(N_WORKERS):  # handshake: both workers execute a gated task
            assert distributed.Event(f"{gate}-started-{i}", client=client).wait(60)
        queued = pool.submit(gated, 99)
        assert all(f.running() for f in running)
        assert not any(f.cancel() for f in running)
        assert not queued.running()
        assert queued.cancel() and queued.cancelled()
        distributed.Event(gate, client=client).set()
        assert [f.result(timeout=60) for f in running] == list(range(N_WORKERS))


class Counter(gilfree.Worker):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def run(self) -> int:
        print(f"counter {self.n} runs")
        self.total = sum(range(self.n))
        return self.n * 2


def _run(worker: gilfree.Worker) -> dask_backend.WorkerRunner:
    runner = dask_backend.WorkerRunner(worker)
    runner.start()
    assert runner.wait(60)
    return runner


def test_worker_runs_as_a_task_with_return_value_and_attributes(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    w = Counter(10)
    runner = _run(w)
    assert not runner.is_alive()
    assert w._outcome() == 20
    assert w.total == 45
    assert runner.ident is not None and runner.ident != os.getpid()

    def whoami() -> tuple[int, str]:
        return os.getpid(), threading.current_thread().name

    named = gilfree.Worker(target=whoami, name="crunch")
    runner = _run(named)
    assert named._outcome() == (runner.ident, "crunch")
    assert "counter 10 runs\n" in capsys.readouterr().out


def test_worker_exception_and_crash(address: str) -> None:
    def bad() -> None:
        raise Boom("from run")

    w = gilfree.Worker(target=bad)
    _run(w)
    with pytest.raises(Boom) as info:
        w._outcome()
    assert "from run" in str(info.value.__cause__)

    w = gilfree.Worker(target=lambda: os.kill(os.getpid(), signal.SIGKILL), name="dies")
    _run(w)
    with pytest.raises(gilfree.WorkerCrashedError, match="dies"):
        w._outcome()


def test_pool_without_address_uses_the_environment_variable(address: str) -> None:
    with dask_backend.Pool() as p:
        assert p.address == address
        assert p._cluster is None  # connected, not started
        assert p.submit(_square, 2).result(timeout=30) == 4


@contextlib.contextmanager
def _pre_spawn_marker() -> Iterator[str]:
    """A variable that only the nannies of clusters made in the block set for their workers'
    spawns (Dask's ``distributed.nanny.pre-spawn-environ``, beside its defaults): the session
    cluster's nannies, which may restart a worker at any moment, never write it."""
    marker = f"GILFREE_TEST_PRE_SPAWN_{os.getpid()}"
    assert marker not in os.environ
    key = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({key: {**dask.config.get(key), marker: "set"}}):
        yield marker


def test_pool_without_address_starts_and_closes_its_own_cluster(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(dask_backend.ADDRESS_ENV)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the caller's own setting
    with _pre_spawn_marker() as marker, dask_backend.Pool(max_workers=1) as p:
        assert p.address != address
        assert p.address.startswith("tcp://127.0.0.1:")
        assert p.max_workers == 1
        assert p.submit(_square, 6).result(timeout=60) == 36
        # What the nanny set for its worker's spawn reached the worker, a setting of the caller
        # winning (as in distributed); this process's environment does not keep it
        # (distributed's nannies leave OMP_NUM_THREADS=1, PYTHONHASHSEED, ... there).
        seen = p.submit(lambda: (os.environ.get(marker), os.environ.get("MKL_NUM_THREADS")))
        assert seen.result(timeout=60) == ("set", "3")
        assert marker not in os.environ
        assert os.environ["MKL_NUM_THREADS"] == "3"
        pids = list(p._client.run(os.getpid).values())
        assert len(pids) == 1
        workers = [psutil.Process(pid) for pid in pids]
        assert all(w.ppid() == os.getpid() for w in workers)  # our own cluster's worker
        # Bound to the loopback interface: every socket the cluster listens on (its scheduler
        # in this process, its nanny and worker processes) is on 127.0.0.1, none on 0.0.0.0.
        cluster_procs = [psutil.Process(), *workers, *(w.parent() for w in workers)]
        listening = [
            conn.laddr
            for proc in cluster_procs
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert any(addr.port == int(p.address.rsplit(":", 1)[1]) for addr in listening)
        assert all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert p._client is None and p._cluster is None
    # Generous: on a loaded machine a Dask worker takes a while to wind down.
    _gone, alive = psutil.wait_procs(workers, timeout=90)
    assert not alive, [(w.pid, w.ppid(), w.cmdline()) for w in alive]


@pytest.mark.timeout(240)
def test_a_worker_restarted_by_its_nanny_is_kept(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool's own LocalCluster keeps a worker its nanny restarts. Dask's SpecCluster closes
    the nanny of a worker that left the scheduler once ``lost-worker-timeout`` has passed with
    no worker of its name registered; a restart that outlasts the timer (here 50 ms, by default
    15 s after an earlier death) then loses the worker for good."""
    monkeypatch.delenv(dask_backend.ADDRESS_ENV)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "50ms"}):
        with _pre_spawn_marker() as marker, dask_backend.Pool(max_workers=2) as p:
            p._client.wait_for_workers(2, timeout=WATCHDOG)
            before = set(p._client.run(os.getpid).values())
            assert marker not in os.environ
            with pytest.raises(gilfree.WorkerCrashedError):
                p.submit(lambda: os.kill(os.getpid(), signal.SIGKILL)).result(timeout=WATCHDOG)
            # Back to two, and they stay two after the timer had its chance (a second look
            # once a task has run on the restarted worker).
            p._client.wait_for_workers(2, timeout=WATCHDOG)
            assert list(p.map(_square, range(20))) == [i * i for i in range(20)]
            after = set(p._client.run(os.getpid).values())
            assert len(after) == 2 and after != before
            assert len(p._cluster.workers) == 2  # type: ignore[union-attr]
            # The restart's spawn set the marker again, and it is taken back once that start
            # is over (the nanny's start ends a moment after the scheduler sees the worker:
            # a state, polled under a watchdog).
            assert poll_until(lambda: marker not in os.environ, 0.01)


@pytest.mark.timeout(240)
def test_pool_left_open_is_closed_at_interpreter_exit() -> None:
    code = (
        "import os\n"
        "from gilfree._backends import dask as d\n"
        "p = d.Pool(max_workers=1)\n"
        "assert p._cluster is not None\n"
        "print(*p._client.run(os.getpid).values(), flush=True)\n"
    )
    env = dict(os.environ)
    env[dask_backend.ADDRESS_ENV] = ""  # empty: the child starts a cluster of its own
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    pids = [int(pid) for pid in proc.stdout.split()]
    assert pids, proc.stderr[-2000:]
    workers = []
    for pid in pids:
        try:
            workers.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    # Generous: on a loaded machine a Dask worker takes a while to wind down.
    _gone, alive = psutil.wait_procs(workers, timeout=90)
    assert not alive, [(w.pid, w.ppid(), w.cmdline()) for w in alive]


def test_bench_part_is_skipped_by_name_without_distributed(tmp_path: Path) -> None:
    from test_cli import run_gilfree

    out = tmp_path / "out"
    proc = run_gilfree(
        "bench",
        "--quick",
        "--only",
        "dask",
        "--out",
        str(out),
        blocked=("distributed",),
        tmp=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dask: skipped (distributed is not installed" in proc.stdout
    assert not (out / "RESULTS.md").exists()
