"""The cold-path benchmark says under which conditions it measured (issue 10)."""

from __future__ import annotations

import os
import py_compile
from pathlib import Path

from gilfree._bench.latency import bytecode_state


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
