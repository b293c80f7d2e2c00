"""``connecteur bench``: connecteur's engines against standard-library peers, in one run.

Each server runs in its own process, the client in another, over 127.0.0.1.
Workloads: rr (64 B request/response), pipeline (64 B messages in flight),
bulk (1 MiB messages), many (1,000 connections), idle (server memory per
connection); on request, scale (16 pipelined connections, for ``select*2``,
the select engine with two workers), client (connecteur's blocking
Connection against a hand-written socket client) and fanout (a message to 100
subscribers, against a hand-written selectors broadcaster). The table gives each figure
as a ratio to a reference target, with the server's CPU per message;
``--json`` keeps every raw figure, ``--plot`` draws them (matplotlib).
``--quick`` runs every target once, for shorter and with fewer connections,
in under 30 s. ``--check`` runs the fixed plan of connecteur's performance
targets (benchmarks/README.md), judged by the limits of the build installed (each build has its own), and
says of each whether it holds (exit status 1 if one does not; with ``--quick``, indicative only). Linux only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from .. import BUILD, __version__
from ..bench import check, orchestrator, report
from ..bench.orchestrator import (
    DEFAULT_WORKLOADS,
    FULL,
    QUICK,
    TARGETS,
    WORKLOADS,
    BenchError,
    Progress,
    available_targets,
)
from ._options import description, fail

__all__ = ["add_parser", "run"]

DEFAULT_REFERENCE = "select"


def _names(kind: str, known: list[str]) -> Callable[[str], list[str]]:
    """An argparse ``type=`` for a comma-separated list of names among `known`, each once."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",")]
        for name in names:
            if name not in known:
                raise argparse.ArgumentTypeError(f"unknown {kind} {name!r}; choose from {','.join(known)}")
            if names.count(name) > 1:
                raise argparse.ArgumentTypeError(f"{kind} {name!r} is listed twice")
        return names

    return parse


def add_parser(commands: Any) -> None:
    """Add ``bench`` to the subcommands."""
    targets = available_targets()
    parser = commands.add_parser(
        "bench",
        help="measure the engines against standard-library peers",
        description=description(__doc__),
    )
    parser.add_argument(
        "--targets",
        type=_names("target", list(TARGETS)),
        metavar="LIST",
        help=f"comma-separated servers to measure (default: {', '.join(targets)})",
    )
    parser.add_argument(
        "--workload",
        type=_names("workload", list(WORKLOADS)),
        metavar="LIST",
        help=f"comma-separated workloads, among {', '.join(WORKLOADS)} (default: {', '.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"every target, 1 round of {QUICK.seconds} s per figure (instead of {FULL.rounds} of {FULL.seconds} s), "
        f"{QUICK.many_connections} connections for many and idle (instead of {FULL.many_connections:,} and "
        f"{FULL.idle_connections:,}): about 35 s on 2 cores, more on a busy machine; indicative figures",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="the performance targets (benchmarks/README.md) of the build installed, pure Python or compiled "
        "(each has its limits): one fixed run "
        f"({', '.join(check.TARGETS)}; only the workloads each check needs; "
        f"idle with {check.SETTINGS.idle_connections:,} connections), then HOLDS or MISSED per check; exit status 1 "
        f"unless all hold. Not with --targets, --workload or --reference; --json adds the verdicts under "
        f'"checks". With --quick (idle with {check.QUICK_SETTINGS.idle_connections:,}): indicative only, '
        "status 1 only if a measurement failed",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every raw figure and the machine to FILE")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw a panel per workload (needs matplotlib)")
    parser.add_argument(
        "--reference",
        metavar="TARGET",
        help=f"the target the others are compared with (default: {DEFAULT_REFERENCE}, else the first target)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Measure, print the table (and the checks), write the files.

    Returns 0 when every measurement succeeded (and, with --check, every
    check holds; with --check --quick, the checks are indicative only).
    """
    _resolve_options(args)
    try:
        if args.check:
            results = check.plan(quick=args.quick)
        else:
            results = orchestrator.prepare(
                args.targets, args.workload, QUICK if args.quick else FULL, reference=args.reference
            )
    except BenchError as exc:
        fail(f"bench: {exc}")
    _print_plan(results)
    fancy = report.has_rich() and sys.stderr.isatty()
    progress: Progress = report.RichProgress(sys.stderr) if fancy else report.PlainProgress(sys.stderr)
    try:
        with progress:
            orchestrator.run(results, progress=progress)
    except BenchError as exc:
        fail(f"bench: {exc}")
    print()
    report.print_table(results, sys.stdout, fancy=report.has_rich() and sys.stdout.isatty())
    verdicts = check.evaluate(results) if args.check else []
    if verdicts:
        print()
        print(*check.lines(verdicts, quick=args.quick), sep="\n")
        results.checks = [verdict.to_json() for verdict in verdicts]
    try:
        if args.json is not None:
            report.write_json(results, args.json)
            print(f"figures written to {args.json}")
        if args.plot is not None:
            report.plot(results, args.plot)
            print(f"plot written to {args.plot}")
    except OSError as exc:
        fail(f"bench: cannot write {exc.filename}: {exc.strerror or exc}")
    print(f"total time {results.seconds:.1f} s")
    failed = bool(results.failures) or any(verdict.value is None for verdict in verdicts)
    missed = not args.quick and not all(verdict.holds for verdict in verdicts)
    return 1 if failed or missed else 0


def _resolve_options(args: argparse.Namespace) -> None:
    """Fill in the defaults of the options; a one-line error and status 2 for impossible ones."""
    if args.check:
        for option, value in (
            ("--targets", args.targets),
            ("--workload", args.workload),
            ("--reference", args.reference),
        ):
            if value is not None:
                fail(f"bench: --check runs a fixed plan: it cannot be combined with {option}", status=2)
    else:
        args.targets = args.targets or available_targets()
        args.workload = args.workload or DEFAULT_WORKLOADS
        targets: list[str] = args.targets
        args.reference = args.reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in targets else targets[0])
        if args.reference not in targets:
            fail(f"bench: --reference {args.reference!r} is not among the targets: {','.join(targets)}", status=2)
    if args.plot is not None and find_spec("matplotlib") is None:
        fail("bench: --plot needs matplotlib: pip install 'connecteur[plot]'", status=2)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not path.parent.is_dir():
            fail(f"bench: {option} {path}: no directory {path.parent}", status=2)


def _print_plan(results: orchestrator.Results) -> None:
    settings, machine = results.settings, results.machine
    print(f"connecteur bench, {settings.name} run: {', '.join(results.targets)}")
    print(f"workloads: {', '.join(results.workloads)}; reference: {results.reference}")
    print(f"machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['python']}, {machine['os']}")
    print(f"connecteur {__version__}, {BUILD}")
    print(f"load average (1 min) before the run: {machine['load_average']:.2f}: other work skews every figure")
    print(f"{results.pinning}; each server and the client in a process of its own, over 127.0.0.1")
    for line in report.skip_lines(results):
        print(line)
    sys.stdout.flush()  # before the progress on stderr
