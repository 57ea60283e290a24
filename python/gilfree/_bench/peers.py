"""The benchmarks' optional peers: libraries from ``requirements/bench.txt`` (loky, joblib, mpire,
numpy, matplotlib) that a benchmark uses when they import, and skips by name when they do not.

Nothing in the suite imports a peer any other way, so a missing one costs its rows or its plot,
never the run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

#: What to run to get every peer.
INSTALL = "pip install -r requirements/bench.txt"
#: The peers skipped so far in this run, in the order they were first missed (for the report).
skipped_names: list[str] = []


def skipped(name: str, what: str) -> None:
    """Prints the line that says ``what`` is left out because ``name`` does not import.

    Args:
        name: The peer's import name.
        what: What is left out without it, e.g. ``"the mpire rows of CPU scaling"``.
    """
    print(f"  skipped: {what}: {name} is not installed (to install it: {INSTALL})", flush=True)
    if name not in skipped_names:
        skipped_names.append(name)


def optional(name: str, what: str) -> ModuleType | None:
    """Imports the peer ``name``, or says what is skipped without it.

    Args:
        name: The peer's import name (``"mpire"``, ``"numpy"``...).
        what: What is left out without it, for the printed line.

    Returns:
        The module, or ``None`` if it cannot be imported.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        skipped(name, what)
        return None


def save(plt: ModuleType, fig: Any, path: Path, dpi: int = 120) -> str:
    """Lays ``fig`` out, writes it to ``path`` as PNG and closes it; returns the file's name
    (what a report links to).

    Args:
        plt: The ``pyplot`` of :func:`pyplot`.
        fig: The figure.
        path: Where to write it.
        dpi: Its resolution.
    """
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path.name


def pyplot(what: str) -> ModuleType | None:
    """matplotlib's ``pyplot`` on the Agg backend (files only, no display), or ``None``.

    Args:
        what: The plot left out without matplotlib, for the printed line.

    Returns:
        ``matplotlib.pyplot``, or ``None`` if matplotlib cannot be imported.
    """
    matplotlib = optional("matplotlib", what)
    if matplotlib is None:
        return None
    matplotlib.use("Agg")
    try:
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        skipped("matplotlib.pyplot", what)
        return None
