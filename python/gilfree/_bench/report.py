"""What every report of the suite shares: the machine it ran on, and the sections of
``benchmarks/results/RESULTS.md`` that one benchmark part can rewrite alone.

A part's section sits between its own ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers,
so ``python -m gilfree bench --only NAME`` replaces that section and leaves the rest as it was.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of the section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def merge(report: str, section: str, name: str) -> str:
    """``report`` with its ``name`` section replaced by ``section`` (or ``section`` added)."""
    start, end = markers(name)
    if start in report and end in report:
        head, rest = report.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        return head + section + ("\n" + tail if tail else "")
    return report.rstrip("\n") + "\n\n" + section


def write(out: Path, section: str, name: str) -> None:
    """Puts ``section`` into ``out/RESULTS.md`` in place of its old ``name`` section."""
    results = out / "RESULTS.md"
    old = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    results.write_text(merge(old, section, name), encoding="utf-8")


def machine_info(argv: Sequence[str]) -> dict[str, str]:
    """Describes the machine and the run, for the report.

    Args:
        argv: The command line's arguments.

    Returns:
        Labels to values.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        version = importlib.metadata.version("gilfree")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": platform.platform(),
        "gilfree": version,
        "load average at start (1, 5, 15 min)": load,
        "command": " ".join(["python -m gilfree bench", *argv]),
    }
