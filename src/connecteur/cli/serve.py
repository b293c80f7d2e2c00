"""``connecteur serve ADDRESS``: run a server with a ready-made app."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .. import Heartbeat
from ..address import Address, TcpAddress, format_address
from ..errors import WorkersFailed
from ..server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MESSAGE_TIMEOUT,
    ENGINES,
    POLICIES,
    Server,
)
from ..server.asyncio import LOOPS
from ..server.systemd import sockets_from_systemd
from ..tools.apps import APPS, ONE_PROCESS_APPS
from ._describe import describe_codec, describe_framing
from ._logging import LOG_FORMATS, configure_logging
from ._options import (
    CODEC_NAMES,
    add_framing_options,
    add_keepalive_option,
    add_multiplexing_options,
    address_argument,
    codec_argument,
    fail,
    framing_option,
    multiplexing_options,
    seconds_argument,
    size_argument,
)
from ._security import add_security_options, security_options

if TYPE_CHECKING:
    from ..tools.metrics import MetricsExporter

__all__ = ["add_parser", "run"]

IDLE_TIMEOUT = 300.0
"""Seconds a connection may stay idle on the command line's servers: long
enough for an interactive client, short enough that dead peers are dropped."""

MESSAGE_TIMEOUT = DEFAULT_MESSAGE_TIMEOUT
"""Seconds a message may take to arrive once it has started: the library's default."""


def add_parser(commands: Any) -> None:
    """Add ``serve`` to the subcommands."""
    parser = commands.add_parser(
        "serve",
        help="run a server",
        description="Run a server until SIGINT or SIGTERM, then stop gracefully; a second signal stops it at once.",
        epilog="Exit status: 0 after a graceful stop; after a second signal, 130 for SIGINT, and for SIGTERM "
        "the process ends by that signal (143 in a shell).",
    )
    parser.add_argument(
        "address", nargs="?", type=address_argument, metavar="ADDRESS", help="host:port, [v6]:port, :port or unix:/path"
    )
    parser.add_argument(
        "--systemd", action="store_true", help="serve the socket passed by systemd socket activation, not ADDRESS"
    )
    parser.add_argument(
        "--reuse-port", action="store_true", help="bind with SO_REUSEPORT: a new server may take over the port"
    )
    parser.add_argument("--engine", choices=ENGINES, default="select", help="how connections are served")
    add_framing_options(parser)
    parser.add_argument("--codec", type=codec_argument, help=f"{CODEC_NAMES}: the app sees values, not bytes")
    parser.add_argument(
        "--app",
        choices=sorted(APPS),
        default="echo",
        help="what the server does with a message; chat (the room of `connecteur chat`) and pubsub (the topics "
        "of `connecteur pub` and `sub`) need their connections in one process: --engine select, threads or "
        "asyncio, one worker",
    )
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop of the asyncio engine")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes serving the port (select or asyncio engine)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="connections served at once; more are closed as soon as accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--max-buffered", type=size_argument, default=DEFAULT_MAX_BUFFERED, metavar="BYTES",
        help="bytes a server process may hold for all its connections, in unfinished messages and queued replies; "
        "past it, growing connections are paused, then the largest closed (default: 256MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--slow-consumer", choices=POLICIES, default="close",
        help="what a peer that reads too slowly gets when more is sent to it (select and asyncio engines): "
        "close (at 16MiB queued), drop (new messages, past 1MiB) or drop_oldest (default: close)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout",
        type=seconds_argument,
        default=IDLE_TIMEOUT,
        metavar="S",
        help="close a connection after S seconds without a whole message (default: %(default)s)",
    )
    parser.add_argument(
        "--message-timeout",
        type=seconds_argument,
        default=MESSAGE_TIMEOUT,
        metavar="S",
        help="close a connection whose message takes over S seconds to arrive once begun (default: %(default)s)",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds_argument,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="S",
        help="seconds for the PROXY, TLS and authentication handshakes (default: %(default)s)",
    )
    add_keepalive_option(parser)
    add_multiplexing_options(parser, "client")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log each connection closed by a timeout, a reset, a limit or a refusal "
        "(a peer's framing, codec or handshake fault is logged without -v)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: 'connecteur: message' lines (the default); json: one JSON object per line",
    )
    parser.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port); "
        "needs pip install 'connecteur[metrics]'",
    )
    add_security_options(parser, "server")
    parser.set_defaults(run=run)


def _listening_place(args: argparse.Namespace) -> dict[str, Any]:
    """``address=`` and ``reuse_port=``, or ``sock=`` from systemd: Server's keywords."""
    if args.systemd:
        if args.address is not None:
            fail("give ADDRESS or --systemd, not both", status=2)
        try:
            sockets = sockets_from_systemd()
        except ValueError as exc:
            fail(f"--systemd: {exc}", status=2)
        if len(sockets) != 1:
            fail(f"--systemd: expected one socket, got {len(sockets)} ({', '.join(sockets)})", status=2)
        return {"sock": next(iter(sockets.values()))}
    if args.address is None:
        fail("the address to listen on is required (or --systemd)", status=2)
    return {"address": args.address, "reuse_port": args.reuse_port}


def _describe_heartbeat(heartbeat: Heartbeat) -> str:
    silent = heartbeat.interval + heartbeat.deadline
    return f"heartbeat: ping after {heartbeat.interval:g} s of silence, close after {silent:g} s"


def _metrics_address(text: str) -> TcpAddress:
    """An argparse ``type=`` for ``--metrics``: a TCP address (HTTP over a Unix socket is no scrape target)."""
    address: Address = address_argument(text)
    if not isinstance(address, TcpAddress):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return address


def _start_metrics(args: argparse.Namespace, server: Server, where: dict[str, Any]) -> MetricsExporter | None:
    """Serve `server`'s metrics if ``--metrics`` asks for them, before the server listens."""
    if args.metrics is None:
        return None
    from ..tools.metrics import MetricsExporter  # imports prometheus_client: only when asked for

    try:
        return MetricsExporter(server, args.metrics)
    except (ImportError, OSError) as exc:
        if "sock" in where:
            where["sock"].close()
        if isinstance(exc, ImportError):
            fail(f"--metrics: {exc}", status=2)
        fail(f"--metrics: cannot listen on {format_address(args.metrics)}: {exc.strerror or exc}")


def run(args: argparse.Namespace) -> int:
    """Serve until a signal; return 0 after a graceful stop, exit 1 if the workers kept dying.

    A graceful stop returns 0 even if it gave up on a handler at the
    deadline (logged): it ended when it said it would. A second signal
    forces the stop and is then re-raised (`Server.serve_forever`): SIGINT
    becomes `KeyboardInterrupt`, which `main` turns into status 130, and
    SIGTERM ends the process by its default action, which supervisors
    (systemd counts it a clean stop) and shells (status 143) understand,
    so a cut-short stop is told from a clean one.
    """
    configure_logging(args.log_format, verbose=args.verbose)
    if args.app in ONE_PROCESS_APPS and (args.engine == "processes" or args.workers > 1):
        message = "needs every connection in one process: use --engine select, threads or asyncio, one worker"
        fail(f"--app {args.app} {message}", status=2)
    framing = framing_option(args, "serve")
    multiplexing = multiplexing_options(args)
    where = _listening_place(args)
    try:
        server = Server(
            APPS[args.app](),
            **where,
            framing=framing,
            codec=args.codec,
            engine=args.engine,
            loop=args.loop,
            workers=args.workers,
            max_connections=args.max_connections,
            max_buffered=args.max_buffered,
            slow_consumer=args.slow_consumer,
            idle_timeout=args.idle_timeout,
            message_timeout=args.message_timeout,
            handshake_timeout=args.handshake_timeout,
            keepalive=args.keepalive,
            **multiplexing,
            **security_options(args, "server"),
        )
    except ValueError as exc:
        if "sock" in where:
            where["sock"].close()
        fail(str(exc), status=2)
    exporter = _start_metrics(args, server, where)

    def ready() -> None:
        protocol = f"framing: {describe_framing(server.framing)}; codec: {describe_codec(args.codec)}"
        if args.multiplexed:
            protocol += "; multiplexed" + ("" if args.heartbeat is None else f", {_describe_heartbeat(args.heartbeat)}")
        print(f"serving {args.app} on {format_address(server.address)} ({protocol})", flush=True)
        if exporter is not None:
            print(f"metrics on {exporter.url}", flush=True)

    try:
        server.serve_forever(ready=ready)
    except OSError as exc:
        fail(f"cannot listen on {args.address}: {exc.strerror or exc}")
    except WorkersFailed as exc:  # status 1, so that a supervisor restarts the service
        fail(f"server stopped: {exc}")
    finally:
        if exporter is not None:
            exporter.close()
    return 0
