"""Sections of ``benchmarks/results/RESULTS.md`` that one benchmark part can rewrite alone.

A part's section sits between its own ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers,
so ``python -m gilfree bench --only NAME`` replaces that section and leaves the rest as it was.
"""

from __future__ import annotations

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
