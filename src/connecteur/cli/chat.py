"""``connecteur chat ADDRESS --name NAME``: a client for ``serve --app chat``.

It sends the name, then each line of standard input as one message, while a
reader thread prints every message that arrives on its own line (the room's
protocol is in `connecteur.tools.apps.Chat`). At the end of input it
half-closes and exits 0 once the server has closed; if the server closes
first (a refused name, a server stopping), it says so and exits 1.

Standard input is watched with ``select`` beside a wake-up socket, so the
main thread sees the server's close even while no line is typed (POSIX:
``select`` on a terminal, pipe or file). Reading it in a thread instead would
leave a thread blocked in ``read`` at exit, which the interpreter cannot
always shut down cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import sys
from typing import Any, Final

from ..address import Address
from ..connection import Connection
from ..errors import ConnecteurError
from ..tools.apps import Chat
from ._options import (
    Printer,
    add_framing_options,
    add_keepalive_option,
    address_argument,
    fail,
    framing_option,
    seconds_argument,
    show_bytes,
)
from ._security import add_security_options, connect_or_fail

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Join the room of `connecteur serve --app chat` as NAME: send each line of
standard input as one message, and print every message from the room on its
own line ("NAME: text", or a "* ..." notice). At the end of input, leave and
exit 0."""

READ_SIZE: Final = 64 * 2**10
"""Bytes read from standard input at once: many typed or piped lines."""


def add_parser(commands: Any) -> None:
    """Add ``chat`` to the subcommands."""
    parser = commands.add_parser("chat", help="join a chat room (serve --app chat)", description=_DESCRIPTION)
    parser.add_argument("address", type=address_argument, metavar="ADDRESS", help="host:port, [v6]:port or unix:/path")
    parser.add_argument("--name", required=True, type=_name_argument, help="your name in the room")
    add_framing_options(parser)
    parser.add_argument(
        "--timeout", type=seconds_argument, default=10.0, metavar="S",
        help="seconds to connect, and to wait for the server to close after the input ends (default 10)",
    )  # fmt: skip
    add_keepalive_option(parser)
    add_security_options(parser, "client")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Chat until standard input ends; return 0 once the server has closed too."""
    address: Address = args.address
    conn = connect_or_fail(address, args, framing=framing_option(args, "chat"))
    conn.timeout = None  # a room may stay silent for long
    wake, wake_up = socket.socketpair()
    with wake, wake_up, conn:
        printer = Printer(conn, show_bytes, name="connecteur chat: messages", on_end=lambda: _wake(wake_up))
        printer.start()
        try:
            conn.send(args.name.encode())
            input_ended = _send_lines(conn, wake)
        except (ConnecteurError, OSError) as exc:
            _hang_up(conn, printer)
            fail(f"sending to {address}: {exc}")
        printer.join(args.timeout)
        if printer.is_alive():
            _hang_up(conn, printer)
            fail(f"{address} did not close the chat within {args.timeout} s after the end of input")
    if printer.error is not None:
        fail(f"receiving from {address}: {printer.error}")
    if not input_ended:
        fail(f"{address} closed the chat")
    return 0


def _name_argument(name: str) -> str:
    """An argparse ``type=`` for names: the room's rule, checked before connecting."""
    try:
        Chat.check_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _send_lines(conn: Connection, wake: socket.socket) -> bool:
    """Send each line of standard input as a message, then half-close.

    Returns True at the end of input, False as soon as `wake` shows that the
    reader stopped (the server closed). A last line without a newline is sent too.
    """
    stdin = sys.stdin.buffer.fileno()
    pending = b""
    # select(), unlike epoll, also accepts a regular file (always ready).
    with selectors.SelectSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while True:
            ready = {key.fileobj for key, _ in selector.select()}
            if wake in ready:
                return False
            data = os.read(stdin, READ_SIZE)
            if not data:
                if pending:
                    conn.send(pending.rstrip(b"\r"))
                conn.shutdown_write()
                return True
            *lines, pending = (pending + data).split(b"\n")
            conn.send_many(line.rstrip(b"\r") for line in lines)


def _wake(wake_up: socket.socket) -> None:
    with contextlib.suppress(OSError):
        wake_up.send(b"\0")


def _hang_up(conn: Connection, printer: Printer) -> None:
    """Wake the reader (a close alone does not wake a blocked ``recv``) and let it finish."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)  # a shutdown acts on the connection, whichever descriptor names it
    printer.join(1.0)
