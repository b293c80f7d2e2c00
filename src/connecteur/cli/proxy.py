"""``connecteur proxy LISTEN TARGET``: a TCP relay that injects faults, in front of any server.

Relays every client that connects to LISTEN to TARGET, fragmenting, delaying,
throttling, cutting, resetting, holding or blackholing the bytes as asked, in
both directions unless ``--upstream`` (client to target) or ``--downstream``
(target to client) is given; ``--control`` serves an HTTP API that changes the
faults at run time. Runs until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..address import format_address
from ..tools.proxy import Faults, Proxy
from ._options import address_argument, fail, stop_on_signals

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``proxy`` to the subcommands."""
    description = __doc__.split("\n\n")[1].replace("``", "") if __doc__ else None
    parser = commands.add_parser("proxy", help="relay TCP to a server, injecting faults", description=description)
    parser.add_argument(
        "listen", type=address_argument, metavar="LISTEN", help="where to listen: host:port (port 0: any free port)"
    )
    parser.add_argument(
        "target", type=address_argument, metavar="TARGET", help="the server to relay to: host:port or unix:/path"
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--fragment", type=_bytes_argument(1), metavar="N", help="forward in pieces of at most N bytes")
    faults.add_argument("--fragment-random", action="store_true", help="random piece sizes, 1 to N (needs --fragment)")
    # STYLE.md wants the unit in the name: --delay-ms and --jitter-ms are the same options.
    faults.add_argument("--delay", "--delay-ms", type=_milliseconds_argument, default=0.0, metavar="MS",
                        help="hold each chunk MS milliseconds")  # fmt: skip
    faults.add_argument("--jitter", "--jitter-ms", type=_milliseconds_argument, default=0.0, metavar="MS",
                        help="vary the delay by up to +/- MS milliseconds")  # fmt: skip
    faults.add_argument("--bandwidth", type=_bytes_argument(1), metavar="BYTES_PER_S", help="bytes per second at most")
    faults.add_argument("--cut-after", type=_bytes_argument(0), metavar="BYTES", help="close both sides after BYTES")
    faults.add_argument("--reset", action="store_true", help="close with RST instead of FIN (cuts, refused target)")
    faults.add_argument("--blackhole-after", type=_bytes_argument(0), metavar="BYTES",
                        help="after BYTES, forward nothing more but keep both connections open")  # fmt: skip
    faults.add_argument("--fragment-variation", type=_bytes_argument(1), default=0, metavar="N",
                        help="piece sizes drawn from --fragment minus N to plus N (needs --fragment)")  # fmt: skip
    faults.add_argument("--fragment-delay", "--fragment-delay-ms", type=_milliseconds_argument, default=0.0,
                        metavar="MS", help="wait MS milliseconds between pieces (needs --fragment)")  # fmt: skip
    faults.add_argument("--slow-close", "--slow-close-ms", type=_milliseconds_argument, default=0.0, metavar="MS",
                        help="forward a close or half-close MS milliseconds late")  # fmt: skip
    faults.add_argument("--timeout", "--timeout-ms", type=_milliseconds_argument, metavar="MS",
                        help="forward nothing; close both sides after MS milliseconds (0: never)")  # fmt: skip
    faults.add_argument("--reset-after", "--reset-after-ms", type=_milliseconds_argument, metavar="MS",
                        help="reset both sides MS milliseconds after the connection opens")  # fmt: skip
    faults.add_argument("--toxicity", type=_fraction_argument, default=1.0, metavar="P",
                        help="fault only this fraction of connections, 0 to 1, drawn once per connection")  # fmt: skip
    faults.add_argument("--seed", type=int, metavar="N", help="seed of random piece sizes, jitter and toxicity")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection relayed, cut or broken")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--upstream", action="store_true", help="faults on client-to-target bytes only")
    direction.add_argument("--downstream", action="store_true", help="faults on target-to-client bytes only")
    control = parser.add_argument_group("control API")
    control.add_argument("--control", type=address_argument, metavar="HOST:PORT",
                         help="serve the HTTP API that changes faults (loopback only; port 0: any)")  # fmt: skip
    control.add_argument("--control-allow-remote", action="store_true",
                         help="let --control listen beyond loopback (the API has no authentication)")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Relay until SIGINT or SIGTERM; return 0."""
    proxy = _proxy(args)  # first: a bad combination exits before anything is configured
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="connecteur: %(message)s")
    stopped = threading.Event()
    with stop_on_signals(stopped):
        try:
            proxy.start()
        except socket.gaierror as exc:
            fail(f"cannot resolve {args.target}: {exc.strerror or exc}")
        except OSError as exc:
            fail(f"cannot listen on {args.listen} or {args.control}: {exc.strerror or exc}")
        try:
            print(f"proxying {format_address(proxy.address)} -> {args.target}", flush=True)
            if proxy.control_address is not None:
                host, port = proxy.control_address
                print(f"control API on http://{format_address((host, port))}/faults", flush=True)
            stopped.wait()
        finally:
            proxy.stop()
    return 0


def _proxy(args: argparse.Namespace) -> Proxy:
    """The proxy the options ask for; a one-line error and status 2 for an impossible combination."""
    for option in ("fragment_random", "fragment_variation", "fragment_delay"):
        if getattr(args, option) and args.fragment is None:
            fail(f"proxy: --{option.replace('_', '-')} needs --fragment N (the piece size)", status=2)
    try:
        faults = Faults(
            fragment=args.fragment,
            fragment_random=args.fragment_random,
            fragment_variation=args.fragment_variation,
            fragment_delay=args.fragment_delay,
            delay=args.delay,
            jitter=args.jitter,
            bandwidth=args.bandwidth,
            cut_after=args.cut_after,
            reset=args.reset,
            blackhole_after=args.blackhole_after,
            slow_close=args.slow_close,
            timeout=args.timeout,
            reset_after=args.reset_after,
            toxicity=args.toxicity,
        )
        return Proxy(
            args.target,
            listen=args.listen,
            upstream=Faults() if args.downstream else faults,
            downstream=Faults() if args.upstream else faults,
            seed=args.seed,
            control=args.control,
            control_allow_remote=args.control_allow_remote,
        )
    except ValueError as exc:
        fail(f"proxy: {exc}", status=2)


def _bytes_argument(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number of bytes, at least `minimum`."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of bytes >= {minimum}, not {text!r}")
        return int(text)

    return parse


def _fraction_argument(text: str) -> float:
    """An argparse ``type=`` for a fraction from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, not {text!r}")
    return value


def _milliseconds_argument(text: str) -> float:
    """An argparse ``type=`` for milliseconds >= 0; returns seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, not {text!r}")
    return value / 1000
