"""``python -m gilfree bench`` (also ``benchmarks/run.py``): gilfree beside its peers, in one run.

This package is imported only by that command: ``python -m gilfree`` and ``demo`` never load it.
One module per part of the suite, each measured side by side in one process so that the ratios
mean something on a busy machine:

1. :mod:`~gilfree._bench.latency`: start→join latency of one trivial worker;
2. :mod:`~gilfree._bench.scaling`: CPU scaling of the demo's job over W workers;
3. :mod:`~gilfree._bench.primitives`: uncontended Lock and Queue round trips;
4. :mod:`~gilfree._bench.arrays`: a large numpy array through an identity task;
5. :mod:`~gilfree._bench.pool`: ``gilfree.Pool`` beside the stdlib and peer pools;
6. :mod:`~gilfree._bench.containers`: ``SharedList``/``SharedDict`` beside Manager proxies.
7. :mod:`~gilfree._bench.blas`: a numpy matmul map with the workers' BLAS pools capped and not.
8. :mod:`~gilfree._bench.dask`: the dask backend beside the process backend (``--only dask``;
   skipped by name when ``distributed`` is not installed).
9. :mod:`~gilfree._bench.ft`: on a free-threaded CPython, the thread backend beside the process
   backend and ``threading`` (``--only ft``, writes ``FREE_THREADED.md``; skipped by name on an
   interpreter with the GIL).
10. :mod:`~gilfree._bench.cold`: the cold paths beside peers, in fresh interpreters: a program's
    start, an additional worker when none is spare, a burst of 40 (writes ``COLD.md``).

Parts 1 and 2 make ``RESULTS.md`` and ``results.json`` (:mod:`~gilfree._bench.summary`); 3, 4
and 6 add their sections to it (:mod:`~gilfree._bench.report`); 5 writes ``POOL.md``, 7
``BLAS.md``. Plots are PNG
files beside them. Peers that are not installed are skipped by name (:mod:`~gilfree._bench.peers`).
The goals are recorded, never asserted: a slow run is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gilfree import _demo

#: The parts of the suite, in the order a full run measures them.
SECTIONS = (
    "latency",
    "scaling",
    "primitives",
    "arrays",
    "pool",
    "containers",
    "blas",
    "dask",
    "ft",
    "cold",
)
#: Parts that ``--only`` runs on their own, rewriting only their own section or file.
STANDALONE = ("primitives", "arrays", "pool", "containers", "blas", "dask", "ft", "cold")


def default_out(quick: bool) -> Path:
    """Where results go by default: ``benchmarks/results`` of the source checkout.

    A ``--quick`` run writes to ``benchmarks/results/quick.tmp`` (ignored by git) so that a smoke
    run never overwrites the real results. Outside a checkout, the current folder is used.

    Args:
        quick: Whether this is a ``--quick`` run.

    Returns:
        The output folder.
    """
    root = Path(__file__).resolve().parents[3]
    if (root / "benchmarks").is_dir() and (root / "pyproject.toml").is_file():
        base = root / "benchmarks" / "results"
    else:
        base = Path.cwd() / "gilfree-bench-results"
    return base / "quick.tmp" if quick else base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` options to ``parser``.

    Args:
        parser: The ``bench`` command's parser.
    """
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small data sets, few reps, W = 1 2, one run per cell;"
        " writes to benchmarks/results/quick.tmp unless --out is given",
    )
    parser.add_argument("--out", type=Path, help="folder for RESULTS.md, results.json and plots")
    parser.add_argument(
        "--size",
        type=_demo.positive_int,
        help=f"integers in the scaling data set (default {_demo.DEFAULT_SIZE:,}; 20,000 with --quick)",
    )
    parser.add_argument(
        "--workers",
        type=_demo.positive_int,
        nargs="+",
        metavar="W",
        help="worker counts of the scaling part (default: 1 2 4 and nproc; 1 2 with --quick)",
    )
    parser.add_argument(
        "--reps", type=_demo.positive_int, help="latency repetitions (default 300; 50 with --quick)"
    )
    parser.add_argument(
        "--repeat",
        type=_demo.positive_int,
        help="runs per scaling cell, best kept (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--skip", choices=SECTIONS, action="append", default=[], help="skip a part (repeatable)"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        help="run only this part; primitives, arrays, containers and dask replace their own"
        " section of an existing RESULTS.md, pool rewrites POOL.md, blas rewrites BLAS.md,"
        " ft (free-threaded CPython only; --size, --workers, --repeat, --reps apply) rewrites"
        " FREE_THREADED.md, cold rewrites COLD.md,"
        " latency and scaling"
        " rewrite RESULTS.md"
        " and results.json",
    )
    parser.set_defaults(func=main)


def _run_alone(part: str, out: Path, quick: bool) -> int:
    from gilfree._bench import arrays, blas, containers, pool, primitives

    if part == "blas":
        print("blas: a numpy matmul map, workers' BLAS pools capped and uncapped", flush=True)
        return blas.run(out, quick)
    if part == "cold":
        from gilfree._bench import cold

        print("cold: program start, an additional worker and a burst, beside peers", flush=True)
        return cold.run(out, quick)
    if part == "dask":
        from gilfree._bench import dask

        print("dask: the dask backend beside the process backend", flush=True)
        return dask.run(out, quick)
    if part == "pool":
        print("pool: gilfree.Pool beside multiprocessing, concurrent.futures and peers", flush=True)
        return pool.run(out, quick)
    if part == "primitives":
        print("primitives: uncontended Lock and Queue round trips", flush=True)
        print(primitives.write(primitives.measure(quick), out))
    elif part == "containers":
        print(
            "containers: SharedList/SharedDict beside multiprocessing.Manager proxies", flush=True
        )
        print(containers.write(containers.measure(quick), out))
    else:
        size_mb = arrays.default_size_mb(quick)
        print(f"large arrays: a {size_mb} MB array through an identity task", flush=True)
        rows = arrays.measure(quick)
        if not rows:
            return 0
        print(arrays.write(rows, out, size_mb))
    print(f"written: {out / 'RESULTS.md'}")
    return 0


def main(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks and writes the report.

    Args:
        args: Parsed options from :func:`add_arguments`.
        argv: The arguments as given, for the report (default: ``sys.argv[2:]``).

    Returns:
        The process exit status: 0, or 1 if a backend computed a wrong answer.
    """
    from gilfree._bench import arrays, containers, peers, pool, primitives, report, summary
    from gilfree._bench.latency import LatencyRow, measure_latency
    from gilfree._bench.scaling import ScalingRow, measure_scaling

    cores = len(os.sched_getaffinity(0))
    size = args.size or (20_000 if args.quick else _demo.DEFAULT_SIZE)
    counts = sorted(set(args.workers or ([1, 2] if args.quick else [1, 2, 4, cores])))
    reps = args.reps or (50 if args.quick else 300)
    repeat = args.repeat or (1 if args.quick else 3)
    out = args.out or default_out(args.quick)
    if args.only == "ft":
        from gilfree._bench import ft

        print("ft: the thread and process backends beside threading, without the GIL", flush=True)
        return ft.run(out, args.quick, size, counts if args.workers else None, repeat, reps)
    if args.only in STANDALONE:
        return _run_alone(args.only, out, args.quick)
    skip = set(SECTIONS) - {args.only} if args.only else set(args.skip)
    info = report.machine_info(sys.argv[2:] if argv is None else argv)

    latency: list[LatencyRow] = []
    scaling: list[ScalingRow] = []
    errors: list[str] = []
    if "latency" not in skip:
        print(f"1. start→join latency of one trivial worker ({reps} reps)", flush=True)
        latency = measure_latency(reps, process_cap=20 if args.quick else 100)
    if "scaling" not in skip:
        print(f"2. CPU scaling: {size:,} integers, W = {counts}, best of {repeat}", flush=True)
        scaling, errors = measure_scaling(size, counts, repeat)

    out.mkdir(parents=True, exist_ok=True)
    plots = summary.plot(latency, scaling, out)
    sections: list[tuple[str, str]] = []
    if "primitives" not in skip:
        print("3. primitives: uncontended Lock and Queue round trips", flush=True)
        prims = primitives.measure(args.quick)
        sections.append((primitives.render(prims, primitives.plot(prims, out)), "primitives"))
    if "arrays" not in skip:
        size_mb = arrays.default_size_mb(args.quick)
        print(f"4. large arrays: a {size_mb} MB array through an identity task", flush=True)
        rows = arrays.measure(args.quick)
        if rows:
            sections.append((arrays.section(rows, out, size_mb), "arrays"))
    if "containers" not in skip:
        print("6. containers: SharedList/SharedDict beside Manager proxies", flush=True)
        sections.append((containers.render(containers.measure(args.quick)), "containers"))
    if peers.skipped_names:
        info["peers not installed (skipped)"] = ", ".join(peers.skipped_names)
    text = summary.render_markdown(info, latency, scaling, size, repeat, plots)
    for section, name in sections:
        text = report.merge(text, section, name)
    (out / "RESULTS.md").write_text(text, encoding="utf-8")
    raw = {
        "machine": info,
        "size": size,
        "repeat": repeat,
        "latency": [asdict(r) for r in latency],
        "scaling": [asdict(r) for r in scaling],
    }
    (out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"written: {out / 'RESULTS.md'}")
    if "pool" not in skip:
        print(
            "5. pool: gilfree.Pool beside multiprocessing, concurrent.futures and peers", flush=True
        )
        pool.run(out, args.quick)
    if "blas" not in skip:
        from gilfree._bench import blas

        print("7. blas: a numpy matmul map, workers' BLAS pools capped and uncapped", flush=True)
        blas.run(out, args.quick)
    if "cold" not in skip:
        from gilfree._bench import cold

        print("10. cold: program start, an additional worker and a burst, beside peers", flush=True)
        cold.run(out, args.quick)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def cli(argv: Sequence[str] | None = None, prog: str = "benchmarks/run.py") -> int:
    """Parses ``argv`` as the ``bench`` command's arguments and runs :func:`main`.

    The entry point of ``benchmarks/run.py`` and of ``python -m gilfree bench``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
        prog: The command's name in help and error messages.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure gilfree beside threading, multiprocessing, concurrent.futures and"
        " peers (loky, joblib, mpire); write RESULTS.md, POOL.md, results.json and PNG plots."
        " Peers that are not installed are skipped by name (pip install -r"
        " requirements/bench.txt). See benchmarks/README.md.",
    )
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(parser.parse_args(argv), argv)
