"""Shared fixtures: a process-table check after the suite, and helpers for subprocess tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"

# A subprocess test that runs longer than this has hung: fail it rather than freeze the suite.
WATCHDOG = 60.0


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After the whole suite, no worker process of ours may still be running."""
    yield
    from gilfree import _runtime

    _runtime.shutdown()
    children = psutil.Process().children(recursive=True)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes left behind: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture(autouse=True)
def process_backend_by_default(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test that does not take the ``backend`` fixture runs with ``GILFREE_BACKEND=process``.

    Those tests are about the process engine (crashes, kills, shared memory across processes).
    On a free-threaded interpreter ``"auto"`` would give them the thread backend instead; this
    keeps them on processes there (``make test-ft``), while the ``backend`` fixture's tests cover
    both backends. On an interpreter with the GIL ``"auto"`` is ``"process"`` already. Tests that
    check the default itself clear or set the variable themselves; subprocesses inherit it.
    """
    if "backend" not in request.fixturenames:
        monkeypatch.setenv("GILFREE_BACKEND", "process")


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``tests/scripts/<name>`` in a fresh interpreter, with a watchdog."""
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        env=full_env,
        cwd=cwd,
    )


def run_code(code: str, env: dict[str, str] | None = None) -> str:
    """Runs ``code`` (``python -c``) in a fresh interpreter with a watchdog, ``tests/`` importable
    (for ``helpers``); checks that it exited 0 and returns its stdout, stripped."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    if env:
        full_env.update(env)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG, env=full_env
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def imported_by(code: str) -> set[str]:
    """The modules that running ``code`` imports in a fresh interpreter (``-X importtime``)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
    )
    assert res.returncode == 0, res.stderr
    names = set()
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def wait_main_thread_asleep(pid: int, timeout: float = WATCHDOG) -> None:
    """Waits until the main thread of process ``pid`` sleeps in the kernel (state ``S``: blocked,
    as in a lock's wait), or the process is gone. Polled: the kernel tells no one when a thread's
    state changes.

    Why: a Ctrl-C test means "Ctrl-C while the program waits". A script says ``ready`` just
    before it blocks, and on free-threaded CPython (3.13t) a blocking lock acquire first spins
    for a while (``sched_yield``) before it parks: a SIGINT that lands then is handled by the C
    handler, but the lock's wait does not look at it and parks anyway, so the program sleeps on
    until a second SIGINT. A SIGINT sent once the thread is parked wakes it (``EINTR``) and raises
    ``KeyboardInterrupt`` at once, as on every build.
    """
    import time

    stat = Path(f"/proc/{pid}/task/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone (or going)
            return
        if state in ("S", "Z", "X"):
            return
        time.sleep(0.0005)  # poll interval; what is awaited is the state read above
    raise AssertionError(f"the main thread of {pid} never blocked within {timeout} s")


def interrupt_script(name: str, *args: str, ready: str) -> tuple[list[int], str, str, int]:
    """Runs ``tests/scripts/<name>``, waits for its ``ready`` line and for its main thread to
    block (:func:`wait_main_thread_asleep`), sends it SIGINT (Ctrl-C), and returns the pids
    from a ``pid``/``pids`` line printed before it (if any), its stdout, its stderr and its exit
    status. Watchdogged."""
    import signal

    with subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            pids: list[int] = []
            while (line := proc.stdout.readline().strip()) != ready:
                assert line, f"{name} ended before printing {ready!r}"
                if line.split()[0] in ("pid", "pids"):
                    pids = [int(p) for p in line.split()[1:]]
            wait_main_thread_asleep(proc.pid)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=WATCHDOG)
        finally:
            proc.kill()
    return pids, out, err, proc.returncode


def crash_mid_map(
    pool: Any, log: Path, n: int, crash_at: int, chunksize: int | None = None
) -> list[int]:
    """Maps ``helpers.record_then`` over ``n`` items on ``pool``, item ``crash_at`` killing its
    worker: checks the results before it and the ``WorkerCrashedError`` at it, lets the items
    behind it finish through a later map on the same pool, and returns the items' runs as
    ``record_then`` logged them in ``log`` (one per run)."""
    import gilfree

    import helpers

    it = pool.map(
        helpers.record_then, [str(log)] * n, range(n), [crash_at] * n, chunksize=chunksize
    )
    got = [next(it) for _ in range(crash_at)]
    assert got == [2 * i for i in range(crash_at)]
    with pytest.raises(gilfree.WorkerCrashedError):
        next(it)
    # Let the rest finish through a fresh map call on the same pool (the first stopped).
    list(pool.map(helpers.square, range(4)))
    return [int(line) for line in log.read_text().split()]


def poll_until(done: Callable[[], bool], interval: float, timeout: float = WATCHDOG) -> bool:
    """Whether ``done()`` came true within ``timeout``, read every ``interval`` seconds: for a
    state nothing announces (the poll is the wait, never a stand-in for an event)."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # poll interval; what is awaited is done()
    return True


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Waits (event-driven, via psutil) until the processes exit; returns those still alive."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


class Rendezvous:
    """A barrier for N workers through a socket: the parent releases them only after all N
    have connected, so it completes only if all N run at the same time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WATCHDOG)
        self.port = self.server.getsockname()[1]

    def release_all(self) -> None:
        conns = [self.server.accept()[0] for _ in range(self.n)]
        for c in conns:
            c.sendall(b"go")
            c.close()
        self.server.close()


# The backends the public-API tests run on (tests/test_backends.py and the public-API test
# files). The thread backend runs everywhere (its tasks run in parallel only on a free-threaded
# build); "dask" runs against one LocalCluster per session (``dask_cluster``); a backend joins
# the suite by adding its name here.
BACKENDS = ["process", "thread", "dask"]
# Worker processes of the session's LocalCluster (one thread each).
DASK_WORKERS = 2


class DaskCluster:
    """The session's LocalCluster: its address, and a client the fixtures use to see it."""

    def __init__(self, address: str, client: Any) -> None:
        self.address = address
        self.client = client


@pytest.fixture(scope="session")
def dask_session() -> Iterator[DaskCluster]:
    """One LocalCluster for the whole session, started on first use (so a run that selects no
    dask test pays nothing) and closed at the end; pools made on it with ``address=`` leave it
    running. Skips where the dask extra is not installed."""
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    from multiprocessing import resource_tracker

    from gilfree._backends import dask as dask_backend

    tracker = resource_tracker._resource_tracker
    tracker_was_running = tracker._fd is not None
    environ = dict(os.environ)
    # Its nannies give back the variables they set for their workers' spawns (OMP_NUM_THREADS,
    # PYTHONHASHSEED, ...: dask_backend._Nanny), so the other backends' tests see none of them.
    cluster = dask_backend._local_cluster(DASK_WORKERS)
    client = None
    try:
        client = distributed.Client(cluster.scheduler_address, set_as_default=False)
        yield DaskCluster(cluster.scheduler_address, client)
    finally:
        dask_backend.close_default_pool()
        if client is not None:
            client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)
        # The nannies' spawn start method started the stdlib's resource tracker, which lives as
        # long as this interpreter; stop it so the suite's process check holds.
        if not tracker_was_running:
            tracker._stop()


@pytest.fixture(scope="session")
def dask_cluster(dask_session: DaskCluster) -> str:
    """The address of the session's LocalCluster (see ``dask_session``)."""
    return dask_session.address


@pytest.fixture
def dask_address(dask_session: DaskCluster) -> Iterator[str]:
    """The session cluster's address, also set as ``GILFREE_DASK_ADDRESS`` for the test: a
    ``Pool(backend="dask")`` or ``Worker(backend="dask")`` without ``address=`` runs on it.

    Every worker is up when the test starts (one a previous test killed has been restarted),
    so a pool made now counts them all. The environment is restored after the test: the
    nannies set their variables (OMP_NUM_THREADS, PYTHONHASHSEED, ...) in this process, at
    start and again whenever they restart a worker, and the other backends' tests must not
    inherit them."""
    from gilfree._backends import dask as dask_backend

    environ = dict(os.environ)
    dask_session.client.wait_for_workers(DASK_WORKERS, timeout=WATCHDOG)
    os.environ[dask_backend.ADDRESS_ENV] = dask_session.address
    try:
        yield dask_session.address
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of each backend in turn, for a test written once against the public API.
    For "dask", the session's LocalCluster is the one every pool and Worker of the test uses."""
    if request.param == "dask":
        request.getfixturevalue("dask_address")
    return request.param
