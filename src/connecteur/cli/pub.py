"""``connecteur pub ADDRESS TOPIC [MESSAGE...]``: a publisher for ``serve --app pubsub``.

It publishes each MESSAGE to TOPIC, or, with none, each line of standard
input, then half-closes and exits 0 once the server has closed, having taken
every publication (the protocol of `connecteur.tools.apps.PubSub`: the server
answers a publication only with an error, which ends the command with 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ..address import Address
from ..errors import ConnecteurError
from ._options import (
    add_framing_options,
    add_keepalive_option,
    address_argument,
    fail,
    framing_option,
    seconds_argument,
    show_bytes,
)
from ._security import add_security_options, connect_or_fail
from .sub import topic_argument

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Publish each MESSAGE to TOPIC on `connecteur serve --app pubsub` (with no
MESSAGE, each line of standard input), then exit 0 once the server has taken
them all."""


def add_parser(commands: Any) -> None:
    """Add ``pub`` to the subcommands."""
    parser = commands.add_parser("pub", help="publish to a topic (serve --app pubsub)", description=_DESCRIPTION)
    parser.add_argument("address", type=address_argument, metavar="ADDRESS", help="host:port, [v6]:port or unix:/path")
    parser.add_argument("topic", type=topic_argument, metavar="TOPIC", help="the topic to publish to")
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="what to publish (default: stdin's lines)")
    add_framing_options(parser)
    parser.add_argument(
        "--timeout", type=seconds_argument, default=10.0, metavar="S",
        help="seconds to connect, and to wait for the server to close after the last message (default 10)",
    )  # fmt: skip
    add_keepalive_option(parser)
    add_security_options(parser, "client")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Publish, half-close, and wait for the server's close."""
    address: Address = args.address
    conn = connect_or_fail(address, args, framing=framing_option(args, "pub"))
    prefix = f"pub {args.topic} ".encode()
    payloads = (message.encode() for message in args.messages) if args.messages else _lines()
    with conn:
        try:
            for payload in payloads:  # one by one: typed lines leave as they are typed
                conn.send(prefix + payload)
            conn.shutdown_write()
            errors = [show_bytes(answer) for answer in conn]  # the server answers only errors
        except (ConnecteurError, OSError) as exc:
            fail(f"{address}: {exc}")
    if errors:
        fail(f"{address} refused a publication: {errors[0]}")
    return 0


def _lines() -> Iterator[bytes]:
    """Standard input's lines, without their line ends."""
    lines: Iterable[bytes] = sys.stdin.buffer
    for line in lines:
        yield line.rstrip(b"\n").rstrip(b"\r")
