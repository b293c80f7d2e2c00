#!/usr/bin/env python3
"""What an attacker's bytes cost a server's memory, per engine, measured from outside.

``python benchmarks/memory.py [--engines LIST] [--json FILE]``

Each engine serves echo in a process of its own (a fresh one per
measurement), on 127.0.0.1; its memory is read from /proc: VmRSS, or for
the processes engine and ``select*2`` the PSS summed over the process tree
(forked children share pages). Three measurements:

- ``flood``: N connections (default 24), each after one round trip, send
  one 4-byte header announcing a max-size message (16 MiB, the default
  framing's cap) and nothing more, and stay open. The growth per connection
  above what the same connections cost idle (the processes engine's child
  process is in the idle figure).
- ``churn``: 1,000 times, one at a time: connect, send such a header, close
  (each cycle waits for the server's close). The growth once the server has
  no connection left and its memory holds still, with the garbage collector
  left as it is; then after a ``gc.collect()`` in the server (not for
  ``select*2``: the parent cannot reach its workers). Stops early past
  ``--cap-mib`` of growth, so that a leak cannot exhaust the machine.
- ``budget``: a server with ``Server(max_buffered=32 MiB)``; 64 connections
  each send a max-size header, then 1 MiB of its body, 32 KiB per
  connection every 10 ms. The peak growth (the server should stay under
  the budget), the connections the server closed, and whether another
  client still got its reply. ``n/a`` when this connecteur's `Server` has
  no ``max_buffered``.

The server and the clients are in tests/memory_support.py, shared with
tests/engines/test_memory.py. Bounded: every wait is bounded by
``--timeout``, every server process group is killed at the end of its
measurement. About 1-2 minutes for every engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.memory_support

from tests.memory_support import (
    KIB,
    MAX_SIZE,
    ServerProcess,
    budget_flood,
    churn,
    has_max_buffered,
    header_flood,
)

from connecteur.bench.proc import machine

MIB = 1024 * KIB
VARIANTS = ["select", "threads", "processes", "asyncio", "asyncio@uvloop", "select*2"]


def measure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """The three measurements on `variant`, each on a fresh server."""
    result: dict[str, Any] = {}
    with ServerProcess(variant, timeout=args.timeout) as server:
        result["flood"] = header_flood(server, args.connections)
    with ServerProcess(variant, timeout=args.timeout) as server:
        result["churn"] = churn(server, args.cycles, cap_kib=args.cap_mib * KIB, collect=True)
    if has_max_buffered():
        with ServerProcess(variant, timeout=args.timeout, max_buffered=args.budget_mib * MIB) as server:
            result["budget"] = budget_flood(server, args.budget_connections, body=args.budget_body_kib * KIB)
    else:
        result["budget"] = None
    return result


def _mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / KIB:+,.1f}"


def row(variant: str, result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The table's cells for one variant's results."""
    flood, spin, budget = result["flood"], result["churn"], result["budget"]
    cycles = f"{spin['cycles']:,}" + (" (cap)" if spin["stopped_early"] else "")
    cells = [variant, f"{flood['idle']:,.1f}", f"{flood['header']:,.1f}", cycles]
    cells += [_mib(spin["peak"]), _mib(spin["growth"]), _mib(spin["after_gc"])]
    if budget is None:
        return [*cells, "n/a", "n/a", "n/a"]
    served = "yes" if budget["served"] else "NO"
    return [*cells, _mib(budget["peak"]), f"{budget['closed']}/{args.budget_connections}", served]


HEADINGS = [
    "engine", "idle KiB/conn", "header KiB/conn", "churn cycles", "peak MiB", "after MiB", "after gc MiB",
    "budget peak MiB", "closed", "served",
]  # fmt: skip


def print_table(rows: list[list[str]]) -> None:
    """Print `rows` under `HEADINGS`, the first column left-aligned."""
    widths = [max(len(r[i]) for r in [HEADINGS, *rows]) for i in range(len(HEADINGS))]
    for cells in [HEADINGS, *rows]:
        print(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON; return the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(VARIANTS), metavar="LIST", help="engine variants to measure")
    parser.add_argument("--connections", type=int, default=24, help="flood: connections (default 24)")
    parser.add_argument("--cycles", type=int, default=1000, help="churn: connect-header-close cycles (default 1000)")
    parser.add_argument("--cap-mib", type=int, default=2048, help="churn: stop past this growth (default 2048)")
    parser.add_argument("--budget-mib", type=int, default=32, help="budget: max_buffered in MiB (default 32)")
    parser.add_argument("--budget-connections", type=int, default=64, help="budget: connections (default 64)")
    parser.add_argument("--budget-body-kib", type=int, default=1024, help="budget: body bytes each (default 1024)")
    parser.add_argument("--timeout", type=float, default=10.0, help="bound of every wait, in seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    variants = args.engines.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown engine {unknown[0]!r}; choose among {', '.join(VARIANTS)}")
    if "asyncio@uvloop" in variants and importlib.util.find_spec("uvloop") is None:
        print("memory.py: uvloop is not installed: asyncio@uvloop skipped", file=sys.stderr)
        variants.remove("asyncio@uvloop")
    start = time.monotonic()
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for variant in variants:
        print(f"measuring {variant}...", end="", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            results[variant] = measure(variant, args)
        except (OSError, RuntimeError) as exc:  # TimeoutError included
            failures[variant] = f"{type(exc).__name__}: {exc}"
        else:
            results[variant]["seconds"] = round(time.monotonic() - began, 1)
        print(f" {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    print_table([row(v, r, args) for v, r in results.items()])
    for variant, why in failures.items():
        print(f"{variant}: failed: {why}")
    print(
        f"\nflood: {args.connections} connections, each one header announcing {MAX_SIZE:,} bytes (max_size), "
        "per connection: idle = open after one round trip, header = what the header adds."
        f"\nchurn: connect, header, close, one at a time; growth at the peak, once settled with no connection, "
        f"then after gc.collect() in the server (n/a: workers); (cap): stopped past {args.cap_mib:,} MiB."
        f"\nbudget: max_buffered={args.budget_mib} MiB, {args.budget_connections} connections each send a header "
        f"then {args.budget_body_kib:,} KiB, slowly; peak growth, connections the server closed, "
        "another client served; n/a: no max_buffered in this connecteur."
        "\nMemory: VmRSS, or PSS summed over the process tree for processes and select*2."
    )
    if args.json:
        document: dict[str, Any] = {"machine": machine(), "settings": vars(args), "results": results}
        document.update(failures=failures, seconds=round(time.monotonic() - start, 1))
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
