"""Program start (issue 10): what ``import gilfree`` costs a program that then starts Workers.

Each test runs a fresh interpreter with a watchdog."""

from __future__ import annotations

import subprocess
import sys

from conftest import WATCHDOG, imported_by


def test_import_gilfree_loads_no_threading_nor_collections() -> None:
    """``threading`` (with ``functools`` and ``collections``) was most of what ``import
    gilfree`` cost; the first Worker or Pool imports it."""
    names = imported_by("import gilfree")
    assert "gilfree._runtime" in names  # the parse saw the template being started
    assert not names & {"threading", "functools", "collections", "collections.abc"}, sorted(names)


def test_the_engine_still_joins_workers_at_exit_through_threading() -> None:
    """The exit hook that joins non-daemon Workers is registered with ``threading`` when the
    engine starts, even though ``import gilfree`` did not import it: a Worker still running
    (most likely: it sleeps) at the end of the script is joined, and its output arrives,
    before the interpreter exits."""
    code = (
        "import gilfree, sys\n"
        "assert 'threading' not in sys.modules\n"
        "def slow():\n"
        "    import time\n"
        "    time.sleep(0.2)\n"
        "    print('worker done', flush=True)\n"
        "gilfree.Worker(target=slow).start()\n"
        "print('main done', flush=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["main done", "worker done"]
