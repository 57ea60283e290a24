"""Runs gilfree's benchmark suite: ``python benchmarks/run.py [--quick] [--out DIR]``.

The same as ``python -m gilfree bench``; the logic lives in the ``gilfree._bench`` package so
that the installed package can run it too. See ``benchmarks/README.md``.
"""

import sys

from gilfree._bench import cli

if __name__ == "__main__":
    sys.exit(cli())
