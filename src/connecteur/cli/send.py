"""``connecteur send ADDRESS [MESSAGE ...]``: send messages, print the replies.

Messages come from the arguments, or one per line of standard input. They are
sent as they come while a reader thread prints each reply on its own line;
after the last message the connection is half-closed, and the replies are
read until the server closes (so a server that answers some messages with
nothing, or with several, works too). `--timeout` bounds connecting and the
wait for the server to finish after the last message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ..address import Address
from ..codecs import Codec, Text
from ..connection import Connection
from ..errors import ConnecteurError
from ._options import (
    CODEC_NAMES,
    Printer,
    add_framing_options,
    address_argument,
    codec_argument,
    fail,
    framing_option,
    seconds_argument,
    show_bytes,
)
from ._security import add_security_options, connect_or_fail

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``send`` to the subcommands."""
    parser = commands.add_parser(
        "send", help="send messages and print the replies", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("address", type=address_argument, help="host:port, [v6]:port or unix:/path")
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="messages to send (default: stdin lines)")
    add_framing_options(parser)
    parser.add_argument(
        "--codec", type=codec_argument, help=f"{CODEC_NAMES}: messages are JSON texts (text: strings), replies shown so"
    )
    parser.add_argument("--timeout", type=seconds_argument, default=10.0, metavar="S", help="seconds (default 10)")
    add_security_options(parser, "client")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Send, print the replies, return 0 when the server closed cleanly."""
    address: Address = args.address
    codec: Codec | None = args.codec
    messages: Iterable[Any] = []
    if args.messages:
        messages = [_value(codec, m.encode()) for m in args.messages]  # bad JSON: usage error, before connecting
    framing = framing_option(args, "send")
    with connect_or_fail(address, args, framing=framing, codec=codec) as conn:
        conn.timeout = None  # --timeout bounds the wait for the last replies instead
        printer = Printer(conn, lambda reply: _show(codec, reply), name="connecteur send: replies")
        printer.start()
        if not args.messages:
            messages = (_value(codec, line, status=1) for line in _stdin_lines())
        try:
            _send_all(conn, messages)
        except (ConnecteurError, OSError) as exc:
            fail(f"sending to {address}: {exc}")
        printer.join(args.timeout)
        if printer.is_alive():
            fail(f"{address} did not finish replying within {args.timeout} s")
        if printer.error is not None:
            fail(f"receiving from {address}: {printer.error}")
    return 0


def _value(codec: Codec | None, text: bytes, *, status: int = 2) -> Any:
    """What one message given as text stands for: bytes, a string, or a JSON value."""
    if codec is None:
        return text
    if isinstance(codec, Text):
        return text.decode(errors="surrogateescape")
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"message {text[:40]!r} is not JSON: {exc}", status=status)


def _show(codec: Codec | None, reply: Any) -> str:
    if codec is None:
        return show_bytes(reply)
    if isinstance(reply, str) and isinstance(codec, Text):
        return reply
    return json.dumps(reply, ensure_ascii=False, default=repr)


def _send_all(conn: Connection, messages: Iterable[Any]) -> None:
    for message in messages:
        conn.send(message)
    conn.shutdown_write()


def _stdin_lines() -> Iterator[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\r\n")
