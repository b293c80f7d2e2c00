"""``connecteur demo``: the whole story on 127.0.0.1, in a few seconds."""

from __future__ import annotations

import argparse
from typing import Any

from ..tools import demo

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``demo`` to the subcommands."""
    parser = commands.add_parser(
        "demo",
        help="show connecteur at work on 127.0.0.1",
        description="Show the Socket Programming HOWTO's lessons live: framings on the wire, every engine, "
        "fragmented and hostile input, a dead peer, a half-close, a chat. Every result is checked; "
        "the exit status is 1 if one is not as expected. Nothing leaves 127.0.0.1.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; return 0 when every step gave the expected result."""
    return 0 if demo.run(print) else 1
