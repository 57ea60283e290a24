"""``python -m gilfree``: the command line.

``python -m gilfree demo`` runs the threading tutorial on gilfree, then its limit, measured;
``python -m gilfree bench`` runs the benchmark suite (the same as ``benchmarks/run.py``).

The benchmarks (:mod:`gilfree._bench`) are imported only when ``bench`` runs: the parser here
names the command, and hands everything after it to the suite's own parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gilfree import _demo


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser of ``python -m gilfree`` and its subcommands.

    Returns:
        The parser; ``demo`` sets ``func``, which takes the parsed arguments and returns an
        exit status. ``bench`` sets ``func`` to ``None``: :func:`main` passes its arguments,
        unparsed, to :func:`gilfree._bench.cli`.
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
    sub.add_parser(
        "bench",
        add_help=False,  # `bench --help` is the suite's own, with its options
        help="benchmark gilfree beside threading, multiprocessing and peers"
        " (`bench --help` for its options)",
    ).set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``python -m gilfree``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if args.func is None:
        from gilfree._bench import cli  # the benchmarks load for this command only

        return cli(rest, prog="python -m gilfree bench")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
