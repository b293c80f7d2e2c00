"""``connecteur send ADDRESS [MESSAGE ...]``: send messages, print the replies.

Messages come from the arguments, or one per line of standard input. They are
sent as they come while a reader thread prints each reply on its own line;
after the last message the connection is half-closed, and the replies are
read until the server closes. Fewer replies than messages is a failure
(status 1), the usual sign of a server with another framing or codec, unless
`--allow-unanswered` says the server is a sink; more replies are fine.
`--timeout` bounds connecting and the wait for the server to finish after
the last message.

With `--multiplexed` (a server run with ``serve --multiplexed``), each
message is a request of its own: its reply, or the error the server's
handler raised on it, is printed before the next is sent; `--timeout` bounds
each request. A request that failed on the server is said on standard error
and makes the status 1; the others still go.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from .. import MultiplexedConnection
from ..address import Address
from ..codecs import Codec, Text
from ..connection import Connection
from ..errors import ConnecteurError, RemoteError
from ..framing import Framing
from ._describe import describe_codec, describe_framing
from ._options import (
    CODEC_NAMES,
    Printer,
    add_framing_options,
    add_keepalive_option,
    add_multiplexing_options,
    address_argument,
    codec_argument,
    description,
    fail,
    framing_option,
    multiplexing_options,
    seconds_argument,
    show_bytes,
)
from ._security import add_security_options, connect_or_fail

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``send`` to the subcommands."""
    parser = commands.add_parser("send", help="send messages and print the replies", description=description(__doc__))
    parser.add_argument("address", type=address_argument, metavar="ADDRESS", help="host:port, [v6]:port or unix:/path")
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="messages to send (default: stdin lines)")
    add_framing_options(parser)
    parser.add_argument(
        "--codec", type=codec_argument, help=f"{CODEC_NAMES}: messages are JSON texts (text: strings), replies shown so"
    )
    parser.add_argument(
        "--timeout", type=seconds_argument, default=10.0, metavar="S",
        help="seconds to connect, then for the last replies (with --multiplexed: for each request) (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-unanswered",
        action="store_true",
        help="exit 0 when the server closes cleanly with messages unanswered (a sink, like --app discard)",
    )
    add_keepalive_option(parser)
    add_multiplexing_options(parser, "server")
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
    multiplexing = multiplexing_options(args)
    if multiplexing:
        if args.allow_unanswered:
            fail("--allow-unanswered is for plain connections: with --multiplexed each request is answered", status=2)
        return _run_multiplexed(args, messages, framing, multiplexing)
    with connect_or_fail(address, args, framing=framing, codec=codec) as conn:
        conn.timeout = None  # --timeout bounds the wait for the last replies instead
        printer = Printer(conn, lambda reply: _show(codec, reply), name="connecteur send: replies")
        printer.start()
        if not args.messages:
            messages = (_value(codec, line, status=1) for line in _stdin_lines())
        try:
            sent = _send_all(conn, messages)
        except (ConnecteurError, OSError) as exc:
            fail(f"sending to {address}: {exc}")
        printer.join(args.timeout)
        _check_ending(args, framing, printer, sent - conn.skipped)  # a reply skipped (--on-oversize) was answered
    return 0


def _run_multiplexed(
    args: argparse.Namespace, messages: Iterable[Any], framing: Framing, options: dict[str, Any]
) -> int:
    """Send each message as a request and print its reply; 1 if the server's handler failed on any."""
    codec: Codec | None = args.codec
    connected = connect_or_fail(args.address, args, framing=framing, codec=codec, **options)
    conn = typing.cast("MultiplexedConnection[Any]", connected)  # multiplexed=True: connect's overloads say so
    failed = 0
    with conn:
        if not args.messages:
            messages = (_value(codec, line, status=1) for line in _stdin_lines())
        for number, message in enumerate(messages, 1):
            try:
                reply = conn.request(message)
            except RemoteError as exc:
                print(f"connecteur: request {number} failed on the server: {exc}", file=sys.stderr, flush=True)
                failed += 1
                continue
            except (ConnecteurError, OSError) as exc:
                fail(f"request {number} to {args.address}: {exc}")
            print(_show(codec, reply), flush=True)
    return 1 if failed else 0


def _check_ending(args: argparse.Namespace, framing: Framing, printer: Printer, sent: int) -> None:
    """Fail, saying how the server ended, when it did not finish or left messages unanswered."""
    missing = sent - printer.count
    unanswered = f"; {missing} of {sent} messages unanswered" if missing > 0 else ""
    ours = f"framing: {describe_framing(framing)}; codec: {describe_codec(args.codec)}; not --multiplexed"
    mismatch = f"{unanswered} (sent with {ours}: does the server expect the same?)"
    if printer.is_alive():
        fail(f"{args.address} did not finish replying within {args.timeout} s{unanswered}")
    if isinstance(printer.error, ConnectionResetError):
        fail(f"server {args.address} reset the connection{mismatch if unanswered else ''}")
    if printer.error is not None:
        fail(f"receiving from {args.address}: {printer.error}{unanswered}")
    if unanswered and not args.allow_unanswered:
        fail(f"server {args.address} closed the connection cleanly{mismatch}")


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


def _send_all(conn: Connection, messages: Iterable[Any]) -> int:
    """Send every message, then half-close; return how many were sent."""
    count = 0
    for message in messages:
        conn.send(message)
        count += 1
    conn.shutdown_write()
    return count


def _stdin_lines() -> Iterator[bytes]:
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\r\n")
