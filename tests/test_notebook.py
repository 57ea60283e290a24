"""gilfree in a real Jupyter kernel: ipykernel runs ``tests/notebooks/*.ipynb`` through nbclient.

The kernel is this venv's interpreter (``sys.executable -m ipykernel_launcher``), from a kernelspec
written to a temporary folder; every Jupyter and IPython folder points into that temporary folder
too, so nothing is written to the user's home. We own the kernel manager so that we, not nbclient,
shut the kernel down, and can then check how the kernel process ended and that every process it
started is gone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import run_code, wait_gone

# Free-threaded CPython 3.13t (make test-ft) has no wheel of pyzmq (the kernel's transport) nor of
# rpds-py (nbformat's validator), and neither builds there without the network: requirements/ft.txt
# leaves Jupyter out, and these tests run on every interpreter with the GIL.
nbclient = pytest.importorskip(
    "nbclient", reason="Jupyter (pyzmq, rpds-py) cannot be installed here"
)
nbformat = pytest.importorskip(
    "nbformat", reason="Jupyter (pyzmq, rpds-py) cannot be installed here"
)
# Found, not imported: the suite's own process has no reason to load it.
if importlib.util.find_spec("ipykernel") is None:
    pytest.skip("Jupyter (pyzmq, rpds-py) cannot be installed here", allow_module_level=True)

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from jupyter_core.utils import run_sync  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
KERNEL_NAME = "gilfree-test"
# nbclient's per-cell watchdog: a cell that runs longer has hung (the test fails, not freezes).
CELL_TIMEOUT = 40
# How long the kernel may take to start. Generous: the test machine is shared and busy.
STARTUP_TIMEOUT = 60
# After a shutdown request the kernel manager waits half of this for the kernel to exit, then
# sends SIGTERM, waits the other half, then SIGKILL: a kernel still there after 10 s has hung.
SHUTDOWN_WAIT = 20.0

pytestmark = [
    # A kernel start, three cells of workers and a graceful shutdown on a busy 2-core machine: more
    # than the suite's 60 s default may be needed, but never more than this.
    pytest.mark.timeout(180),
]


def write_kernelspec(home: Path) -> Path:
    """A kernelspec that runs this interpreter, in ``home/kernels``; returns that folder."""
    kernels = home / "kernels"
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gilfree test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return kernels


@contextmanager
def jupyter_home(tmp: Path) -> Iterator[Path]:
    """Points every folder Jupyter and IPython write to (the kernel inherits this environment)
    into ``tmp``, for the duration."""
    home = tmp / "jupyter"
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in [
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("IPYTHONDIR", "ipython"),
        ]:
            (home / sub).mkdir(parents=True)
            mp.setenv(var, str(home / sub))
        yield home


@dataclass
class Ended:
    """How a notebook's kernel ended."""

    returncode: int | None
    shutdown_status: str


def read_notebook(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def run_notebook(nb: Any, home: Path, cwd: Path, **client_options: Any) -> Ended:
    """Executes ``nb`` in a fresh kernel (its outputs are filled in, in place), shuts the
    kernel down gracefully and returns how the kernel process ended. A cell that raises or
    runs past its timeout raises here, after the kernel is shut down."""
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(write_kernelspec(home))]),
        shutdown_wait_time=SHUTDOWN_WAIT,
    )
    options: dict[str, Any] = {"timeout": CELL_TIMEOUT, **client_options}
    client = nbclient.NotebookClient(
        nb,
        km=km,
        startup_timeout=STARTUP_TIMEOUT,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(cwd)}},
        **options,
    )
    process = None
    try:
        with client.setup_kernel():
            assert km.provisioner is not None
            process = km.provisioner.process  # type: ignore[attr-defined]
            client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=False)
    assert process is not None
    return Ended(process.returncode, km._shutdown_status.value)


def cell(nb: Any, tag: str) -> Any:
    (found,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return found


def stream(c: Any, name: str) -> str:
    """The text a cell wrote to ``name`` ("stdout" or "stderr")."""
    return "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == name)


def errors(nb: Any) -> list[str]:
    return [
        f"{o.ename}: {o.evalue}"
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]


@dataclass
class Workers:
    nb: Any
    ended: Ended
    report: dict[str, Any]
    alive_after: list[int]


@pytest.fixture(scope="module")
def workers_notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """workers.ipynb, run once for the tests that check its parts."""
    tmp = tmp_path_factory.mktemp("workers-notebook")
    with jupyter_home(tmp) as home:
        nb = read_notebook("workers.ipynb")
        ended = run_notebook(nb, home, tmp)
        (line,) = stream(cell(nb, "report"), "stdout").splitlines()
        report = json.loads(line)
        started = [report["kernel_pid"], *report["descendants"]]
        yield Workers(nb, ended, report, wait_gone(started))


def test_worker_subclass_defined_in_a_cell_runs_and_prints_into_its_cell(
    workers_notebook: Workers,
) -> None:
    nb, report = workers_notebook.nb, workers_notebook.report
    assert report["executable"] == sys.executable, "the kernel runs this venv's interpreter"
    ns = (10, 200, 3000)
    assert report["totals"] == [sum(i * i for i in range(n)) for n in ns]
    pids = report["worker_pids"]
    assert len(set(pids)) == 3, "three workers run at once, so in three processes"
    assert report["kernel_pid"] not in pids
    # Each worker's print is in the output of the cell that started and joined it, and only there.
    printed = stream(cell(nb, "run-workers"), "stdout").splitlines()
    expected = [
        f"worker n={n} pid={pid} total={total}"
        for n, pid, total in zip(ns, pids, report["totals"], strict=True)
    ]
    assert sorted(printed) == sorted(expected)
    for other in nb.cells:
        if other.cell_type == "code" and other is not cell(nb, "run-workers"):
            assert "worker n=" not in stream(other, "stdout")


def test_map_with_progress_bar_in_a_kernel(workers_notebook: Workers) -> None:
    nb, report = workers_notebook.nb, workers_notebook.report
    # A lambda defined in a cell, closing over a cell variable, ran in worker processes.
    assert [value for value, _pid in report["mapped"]] == [x * x + 7 for x in range(40)]
    assert report["kernel_pid"] not in {pid for _value, pid in report["mapped"]}
    # Without ipywidgets tqdm.auto warns and falls back to its text bar on stderr; with it the
    # bar is a widget, shown as display_data. Either way the bar is in the map cell's output.
    c = cell(nb, "map-progress")
    if widgets_installed():
        (view,) = [
            o.data["application/vnd.jupyter.widget-view+json"]["model_id"]
            for o in c.outputs
            if o.output_type == "display_data"
            and "application/vnd.jupyter.widget-view+json" in o.data
        ]
        assert progress_widget(nb, view) == {"value": 40, "max": 40, "bar_style": "success"}
    else:
        err = stream(c, "stderr")
        assert "IProgress not found" in err
        assert "40/40" in err
    assert stream(c, "stdout") == ""


def test_pool_and_lambdas_defined_in_cells(workers_notebook: Workers) -> None:
    nb, report = workers_notebook.nb, workers_notebook.report
    assert report["products"] == [i * (i + 1) + 7 for i in range(10)]
    assert report["shouted"] == ["AB", "CD", "EF"]
    printed = stream(cell(nb, "pool"), "stdout").splitlines()
    assert sorted(line.split(" pid=")[0] for line in printed) == [
        "task ab",
        "task cd",
        "task ef",
    ]
    assert report["kernel_pid"] not in {int(line.split("pid=")[1]) for line in printed}


def test_no_process_outlives_the_kernel(workers_notebook: Workers) -> None:
    report = workers_notebook.report
    worker_pids = set(report["worker_pids"]) | {pid for _value, pid in report["mapped"]}
    # The pids checked below include every worker process that ran a cell's code.
    assert worker_pids <= set(report["descendants"])
    assert workers_notebook.alive_after == []
    assert not errors(workers_notebook.nb)


def test_kernel_exits_by_itself_on_shutdown(workers_notebook: Workers) -> None:
    # The kernel exited after the shutdown request (its own and gilfree's exit hooks ran and
    # returned), rather than being sent SIGTERM or SIGKILL by the kernel manager.
    ended = workers_notebook.ended
    assert (ended.shutdown_status, ended.returncode) == ("ShutdownRequest", 0)


def test_a_pool_left_open_lets_the_kernel_exit_by_itself(tmp_path: Path) -> None:
    # A notebook that never shuts its Pool down (the common case): on the shutdown request
    # ipykernel signals its process group's children until none is left; the pool's workers
    # are not in that group (they were replaced as fast as they were killed, and the kernel
    # was SIGTERMed by its manager after its wait), so the kernel exits, and its exit hook
    # stops them.
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import json, os, psutil, gilfree\n"
            "pool = gilfree.Pool(2)\n"
            "assert sorted(pool.map(abs, range(-3, 0))) == [1, 2, 3]\n"
            "me = psutil.Process()\n"
            "children = []\n"
            "for p in me.children(recursive=True):\n"
            "    try:\n"
            "        children.append((p.pid, os.getpgid(p.pid)))\n"
            "    except ProcessLookupError:  # gone since the listing\n"
            "        pass\n"
            "print(json.dumps({'kernel_pid': me.pid, 'pgid': os.getpgrp(), 'children': children}))\n"
        )
    ]
    with jupyter_home(tmp_path) as home:
        ended = run_notebook(nb, home, tmp_path)
    (line,) = stream(nb.cells[0], "stdout").splitlines()
    report = json.loads(line)
    assert report["children"]
    assert all(pgid != report["pgid"] for _pid, pgid in report["children"]), report
    assert (ended.shutdown_status, ended.returncode) == ("ShutdownRequest", 0)
    assert wait_gone([report["kernel_pid"], *(pid for pid, _ in report["children"])]) == []


def test_outside_a_kernel_workers_stay_in_the_callers_process_group() -> None:
    # A program that merely imports ipykernel (a library may) is not a kernel: its workers
    # (and the template) stay in its process group, so a terminal's job control reaches them.
    out = run_code(
        "import os, ipykernel.kernelapp, psutil, gilfree, gilfree._runtime\n"
        "def group(pid):\n"
        "    try:\n"
        "        return os.getpgid(pid)\n"
        "    except ProcessLookupError:  # gone since the listing: no group to compare\n"
        "        return os.getpgrp()\n"
        "with gilfree.Pool(2) as pool:\n"
        "    pids = set(pool.map(lambda _: os.getpid(), range(8), chunksize=1))\n"
        "    kids = [p.pid for p in psutil.Process().children()]\n"
        "    print(gilfree._runtime.in_kernel(), pids <= set(kids),\n"
        "          {group(pid) for pid in kids} == {os.getpgrp()})\n"
    )
    assert out == "False True True"


def progress_widget(nb: Any, box_id: str) -> dict[str, Any]:
    """The final state of the bar in tqdm's widget (a box of text, bar, text), as nbclient
    stored it in the notebook's metadata."""
    models = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    (bar,) = [
        models[child.removeprefix("IPY_MODEL_")]["state"]
        for child in models[box_id]["state"]["children"]
        if models[child.removeprefix("IPY_MODEL_")]["model_name"] == "FloatProgressModel"
    ]
    return {key: bar[key] for key in ("value", "max", "bar_style")}


def widgets_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def start_report(nb: Any) -> dict[str, Any]:
    (line,) = stream(cell(nb, "start"), "stdout").splitlines()
    report: dict[str, Any] = json.loads(line)
    assert report["worker_pid"] in report["descendants"]
    return report


def test_a_hung_cell_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    # The watchdog: a cell that never ends fails the run (nbclient's timeout) instead of hanging
    # it, and shutting the kernel down then still stops the worker the cell was waiting for.
    nb = read_notebook("hang.ipynb")
    with jupyter_home(tmp_path) as home, pytest.raises(nbclient.exceptions.CellTimeoutError):
        run_notebook(
            nb,
            home,
            tmp_path,
            # Only the cell that never ends gets a short timeout; its length changes nothing
            # but how long the test takes.
            timeout_func=lambda c: 3 if "hang" in c.metadata.get("tags", []) else CELL_TIMEOUT,
        )
    report = start_report(nb)
    assert wait_gone([report["kernel_pid"], *report["descendants"]]) == []


def test_workers_die_with_a_killed_kernel(tmp_path: Path) -> None:
    # A kernel that dies without running any exit hook (SIGKILL, as the OOM killer would) takes
    # its workers with it, including one busy in a cell's Worker.
    nb = read_notebook("hang.ipynb")
    killed: list[int] = []

    def kill_kernel_after_start(cell: Any, cell_index: int, execute_reply: Any) -> None:
        if "start" in cell.metadata.get("tags", []):
            pid = start_report(nb)["kernel_pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with jupyter_home(tmp_path) as home, pytest.raises(nbclient.exceptions.DeadKernelError):
        run_notebook(nb, home, tmp_path, on_cell_executed=kill_kernel_after_start)
    assert killed, "the kernel ran the start cell"
    report = start_report(nb)
    assert wait_gone([report["kernel_pid"], *report["descendants"]]) == []


def test_interrupting_a_wait_on_a_worker_keeps_the_kernel_usable(tmp_path: Path) -> None:
    # The notebook's "interrupt the kernel" button (SIGINT to the kernel) while a cell waits in
    # Worker.join(): the cell raises KeyboardInterrupt, the worker can still be terminated (its
    # join() then raises WorkerCrashedError, as documented), and the next cells use gilfree as
    # usual.
    nb = read_notebook("hang.ipynb")
    with jupyter_home(tmp_path) as home:
        run_notebook(
            nb,
            home,
            tmp_path,
            interrupt_on_timeout=True,
            # The timeout is when the button is pressed; its length changes nothing but how
            # long the test takes.
            timeout_func=lambda c: 3 if "hang" in c.metadata.get("tags", []) else CELL_TIMEOUT,
        )
    assert [o.ename for o in cell(nb, "hang").outputs if o.output_type == "error"] == [
        "KeyboardInterrupt"
    ]
    (line,) = stream(cell(nb, "after"), "stdout").splitlines()
    assert json.loads(line) == {"signal": signal.SIGKILL, "alive": False, "answer": [42]}
    report = start_report(nb)
    assert wait_gone([report["kernel_pid"], *report["descendants"]]) == []
