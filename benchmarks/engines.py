#!/usr/bin/env python3
"""Compare connecteur's server engines: a shortcut to ``connecteur bench``.

``python benchmarks/engines.py [--engines LIST] [--quick] [--json FILE]``
runs ``connecteur bench --targets LIST --reference FIRST --workload
rr,pipeline,many,idle``: the engines listed (default ``select,threads``;
``asyncio@uvloop`` is the asyncio engine on uvloop), compared with the first
one. This script used to measure them itself; ``connecteur bench`` grew out
of it (its ``rr50`` workload is now ``many``) and adds the standard-library
peers, the bulk workload, the plot and a progress bar: see README.md.
"""

from __future__ import annotations

import argparse
import sys

from connecteur.cli import main as connecteur


def main(argv: list[str] | None = None) -> int:
    """Run ``connecteur bench`` on the engines listed; return its exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engines", metavar="LIST", default="select,threads", help="default: select,threads")
    parser.add_argument("--quick", action="store_true", help="as connecteur bench --quick")
    parser.add_argument("--json", metavar="FILE", help="write every raw figure to FILE")
    args = parser.parse_args(argv)
    first = args.engines.split(",")[0].strip()
    command = ["bench", "--targets", args.engines, "--reference", first, "--workload", "rr,pipeline,many,idle"]
    command += ["--quick"] * args.quick + (["--json", args.json] if args.json else [])
    return connecteur(command)


if __name__ == "__main__":
    sys.exit(main())
