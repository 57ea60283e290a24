"""``python -m gilfree``: the command line.

``python -m gilfree demo`` runs the threading tutorial on gilfree, then its limit, measured;
``python -m gilfree bench`` runs the benchmark suite (the same as ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gilfree import _bench, _demo


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser of ``python -m gilfree`` and its subcommands.

    Returns:
        The parser; each subcommand sets ``func``, which takes the parsed arguments and
        returns an exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m gilfree",
        description="The worker-thread pattern without the GIL.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _demo.add_arguments(
        sub.add_parser(
            "demo",
            help="run the threading tutorial on gilfree, then time threading against gilfree",
            description="Run the threading tutorial's three workers on gilfree.Worker, then time"
            " one CPU-bound pure-Python job with threading.Thread and with gilfree.Worker.",
        )
    )
    _bench.add_arguments(
        sub.add_parser(
            "bench",
            help="benchmark gilfree beside threading, multiprocessing and peers",
            description="Measure start-to-join latency and CPU scaling of gilfree beside"
            " threading, multiprocessing, concurrent.futures, joblib and mpire; write"
            " RESULTS.md, results.json and PNG plots. See benchmarks/README.md.",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``python -m gilfree``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
