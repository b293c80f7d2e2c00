"""``connecteur trace LISTEN TARGET``: relay TCP to a server and print each message going either way.

Relays every client that connects to LISTEN to TARGET, byte for byte, and
prints a line per message decoded with --framing (and --codec): time,
direction (-> client to target, <- target to client), connection number,
size, and the start of the message, as text or hex. Each direction's decoder
holds at most about twice --max-size; a framing error is printed once and that
direction is then relayed undecoded. Runs until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from typing import Any

from ..address import format_address
from ..tools.trace import DEFAULT_PREVIEW, Trace, TraceEvent, format_json, format_text
from ._describe import describe_codec, describe_framing
from ._options import (
    CODEC_NAMES,
    add_framing_options,
    address_argument,
    codec_argument,
    description,
    fail,
    framing_option,
    stop_on_signals,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``trace`` to the subcommands."""
    parser = commands.add_parser(
        "trace",
        help="relay TCP to a server, printing each message",
        description=description(__doc__),
        epilog=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
    )
    parser.add_argument(
        "listen", type=address_argument, metavar="LISTEN", help="where to listen: host:port (port 0: any free port)"
    )
    parser.add_argument(
        "target", type=address_argument, metavar="TARGET", help="the server to relay to: host:port or unix:/path"
    )
    add_framing_options(parser)
    parser.add_argument("--codec", type=codec_argument, help=f"{CODEC_NAMES}: also print each decoded value")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument(
        "--preview", type=_preview_argument, default=DEFAULT_PREVIEW, metavar="N",
        help="bytes of each message shown, and characters of its value (default: %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Relay and print until SIGINT or SIGTERM; return 0 (1 once stdout is closed: nothing to print to)."""
    framing = framing_option(args, "trace")
    show = format_json if args.json else format_text
    stopped, broken = threading.Event(), threading.Event()

    def report(event: TraceEvent) -> None:
        try:
            print(show(event), flush=True)
        except OSError:  # stdout gone (`| head`): nothing left to trace for
            broken.set()
            stopped.set()

    trace = Trace(
        args.target, listen=args.listen, framing=framing, codec=args.codec, preview=args.preview, report=report
    )
    with stop_on_signals(stopped):
        try:
            trace.start()
        except socket.gaierror as exc:
            fail(f"cannot resolve {args.target}: {exc.strerror or exc}")
        except OSError as exc:
            fail(f"cannot listen on {args.listen}: {exc.strerror or exc}")
        try:
            _print_start(args, trace, describe_framing(framing))
            stopped.wait()
        finally:
            trace.stop()
    if broken.is_set():
        raise BrokenPipeError  # main() ends quietly, as for any command whose reader left
    return 0


def _print_start(args: argparse.Namespace, trace: Trace, framing: str) -> None:
    """The line that says where the trace listens, and what it decodes."""
    listen, codec = format_address(trace.address), describe_codec(args.codec)
    if args.json:
        fields = {"kind": "start", "listen": listen, "target": str(args.target), "framing": framing, "codec": codec}
        line = json.dumps(fields, ensure_ascii=True)
    else:
        line = f"tracing {listen} -> {args.target} (framing: {framing}; codec: {codec})"
    print(line, flush=True)


def _preview_argument(text: str) -> int:
    """An argparse ``type=`` for ``--preview``: a whole number of bytes, 0 or more."""
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes >= 0, not {text!r}")
    return int(text)
