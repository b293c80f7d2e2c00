"""The ``connecteur`` command: ``main(argv) -> int``, one module per subcommand."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from .. import BUILD, __version__
from ._options import ArgumentParser

__all__ = ["main"]

SUBCOMMANDS = ("serve", "send", "chat", "pub", "sub", "proxy", "trace", "fetch", "bench", "demo")
"""Each has a module here with ``add_parser(commands)``; in this order in ``--help``."""


def build_parser() -> ArgumentParser:
    """Return the parser of the whole command line."""
    parser = ArgumentParser(prog="connecteur", description="Message-oriented TCP and Unix-socket tools.")
    parser.add_argument("-V", "--version", action="version", version=f"connecteur {__version__} ({BUILD})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    0: success; 1: the command failed (unreachable server, bad bytes from the
    peer, ...); 2: bad usage. Errors are one line on stderr, never a traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        status: int = args.run(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print("connecteur: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read our output left (`| head`): stop quietly, as cat does,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status
