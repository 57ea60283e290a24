"""The cold-path benchmark (issue 10): the conditions it states, its script and its report."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

from gilfree._bench import cold
from gilfree._bench.latency import bytecode_state

from conftest import WATCHDOG


def test_bytecode_state_counts_only_up_to_date_pyc(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.py" for n in "abc")
    for f in (a, b, c):
        f.write_text("x = 1\n")
    assert bytecode_state(tmp_path).startswith("0 of 3 modules")
    py_compile.compile(str(a), doraise=True)
    py_compile.compile(str(b), doraise=True)
    assert bytecode_state(tmp_path).startswith("2 of 3 modules")
    # b changes after it was compiled: its .pyc no longer counts (size and mtime differ).
    b.write_text("x = 22\n")
    st = b.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert bytecode_state(tmp_path).startswith("1 of 3 modules")


def test_the_additional_worker_script_measures_each_backend(tmp_path: Path) -> None:
    """The script of ``bench --only cold``'s additional-worker measure runs on gilfree and on
    a peer and reports one ``start()`` and one start→join time per sample."""
    script = cold._script(tmp_path, "additional.py", cold._ADDITIONAL)
    for backend in ("gilfree", "fork"):
        res = subprocess.run(
            [sys.executable, script, backend, "2"],
            capture_output=True,
            text=True,
            timeout=WATCHDOG,
        )
        assert res.returncode == 0, res.stderr
        starts, joins = json.loads(res.stdout.strip().splitlines()[-1])
        assert len(starts) == len(joins) == 2
        assert all(0 < s <= j for s, j in zip(starts, joins, strict=True))


def test_the_cold_report_states_each_goal_beside_the_peers(tmp_path: Path) -> None:
    start = [("bare interpreter", 15.0, 14.0), ("gilfree: 2 Workers", 90.0, 80.0)]
    additional = [
        cold.Additional("gilfree.Worker", 4.5, 5.5, 6.0, 20),
        cold.Additional("threading.Thread", 0.2, 0.3, 0.3, 20),
    ]
    burst = [("gilfree.Worker", 0.5, 0.45), ("threading.Thread", 0.3, 0.3)]
    text = cold.render(start, additional, burst, "conditions here", None)
    assert "conditions here" in text
    assert "| gilfree: 2 Workers | 90.0 | 80.0 | +75.0 |" in text
    assert "| gilfree.Worker | 4.50 | 5.50 | 6.00 | 20 |" in text
    assert "| threading.Thread | 0.300 | 0.300 |" in text
    assert f"at most {cold.GOAL_START_EXTRA_MS:.0f} ms" in text
    assert f"within {cold.GOAL_ADDITIONAL_MS:.0f} ms" in text
