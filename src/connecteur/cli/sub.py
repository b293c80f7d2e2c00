"""``connecteur sub ADDRESS TOPIC...``: a subscriber of ``serve --app pubsub``.

It subscribes to each topic, says so on standard error once the server has
confirmed them all, then prints every publication on its own line (``TOPIC
PAYLOAD``, the protocol of `connecteur.tools.apps.PubSub`) until ``--count``
publications arrived (exit 0), the server closes (exit 1), or it is
interrupted (exit 130).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..address import Address
from ..connection import Connection
from ..errors import ConnecteurError
from ..tools.apps import PubSub
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

__all__ = ["add_parser", "run", "topic_argument"]

_DESCRIPTION = """\
Subscribe to TOPICs on `connecteur serve --app pubsub` and print each
publication on its own line ("TOPIC PAYLOAD"), until --count of them arrived
or the server closes. Standard error says when the subscriptions are in place."""


def add_parser(commands: Any) -> None:
    """Add ``sub`` to the subcommands."""
    parser = commands.add_parser("sub", help="subscribe to topics (serve --app pubsub)", description=_DESCRIPTION)
    parser.add_argument("address", type=address_argument, metavar="ADDRESS", help="host:port, [v6]:port or unix:/path")
    parser.add_argument("topics", nargs="+", type=topic_argument, metavar="TOPIC", help="a topic to subscribe to")
    parser.add_argument(
        "--count", type=_count_argument, metavar="N", help="exit 0 after N publications (default: never)"
    )
    add_framing_options(parser)
    parser.add_argument(
        "--timeout", type=seconds_argument, default=10.0, metavar="S",
        help="seconds to connect and to have the subscriptions confirmed (default 10)",
    )  # fmt: skip
    add_keepalive_option(parser)
    add_security_options(parser, "client")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Subscribe, then print publications; return 0 once ``--count`` of them arrived."""
    address: Address = args.address
    conn = connect_or_fail(address, args, framing=framing_option(args, "sub"))
    with conn:
        try:
            _subscribe(conn, args.topics)
            print(f"subscribed to {', '.join(args.topics)}", file=sys.stderr, flush=True)
            conn.timeout = None  # a topic may stay silent for long
            if _print_publications(conn, args.count):
                return 0
        except (ConnecteurError, OSError) as exc:
            fail(f"{address}: {exc}")
    fail(f"{address} closed the subscription")


def _subscribe(conn: Connection, topics: list[str]) -> None:
    """Send every ``sub`` at once, then wait for each confirmation."""
    conn.send_many(f"sub {topic}".encode() for topic in topics)
    for _ in topics:
        answer = show_bytes(conn.recv())
        if not answer.startswith("* subscribed "):
            raise ConnecteurError(f"the server answered {answer!r}, not a subscription: is it serving --app pubsub?")


def _print_publications(conn: Connection, count: int | None) -> bool:
    """Print each publication; True once `count` were printed, False when the server closed first."""
    for printed, message in enumerate(conn, 1):
        print(show_bytes(message), flush=True)
        if printed == count:
            return True
    return False


def topic_argument(topic: str) -> str:
    """An argparse ``type=`` for topics: the protocol's rule, checked before connecting."""
    try:
        PubSub.check_topic(topic)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return topic


def _count_argument(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"a count is a positive number, not {text!r}")
    return count
