"""The command line's TLS, authentication and PROXY protocol options.

TLS is on for a server when ``--tls-cert`` is given, and for a client when any
``--tls*`` option is. Certificates and host names are checked unless the
client says ``--tls-insecure``. The shared secret is read from a file or from
the ``CONNECTEUR_AUTH_KEY`` variable, never from the command line, where
``ps`` would show it to every user of the machine.
"""

from __future__ import annotations

import argparse
import os
import ssl
from typing import Any, Literal

from ..address import Address
from ..connection import Connection, connect
from ..errors import ConnecteurError
from ..framing import Framing
from ..server import PROXY_PROTOCOLS
from ._options import fail

__all__ = ["AUTH_KEY_VARIABLE", "add_security_options", "connect_or_fail", "security_options"]

AUTH_KEY_VARIABLE = "CONNECTEUR_AUTH_KEY"
"""The environment variable holding the shared secret, when no file is named."""

Side = Literal["server", "client"]


def add_security_options(parser: argparse.ArgumentParser, side: Side) -> None:
    """Add the ``--tls-*`` and ``--auth-key-file`` options for one side."""
    group = parser.add_argument_group("security")
    if side == "client":
        group.add_argument("--tls", action="store_true", help="use TLS, trusting the system's certificate authorities")
    cert_help = "PEM certificate chain: serve TLS" if side == "server" else "PEM client certificate (mutual TLS)"
    group.add_argument("--tls-cert", metavar="PEM", help=cert_help)
    group.add_argument("--tls-key", metavar="PEM", help="PEM private key (default: in --tls-cert's file)")
    ca_help = (
        "require client certificates signed by this CA (mutual TLS)"
        if side == "server"
        else "trust this CA's certificates instead of the system's"
    )
    group.add_argument("--tls-ca", metavar="PEM", help=ca_help)
    if side == "client":
        group.add_argument(
            "--tls-insecure", action="store_true", help="do not check the server's certificate or name (testing only)"
        )
    group.add_argument(
        "--auth-key-file",
        metavar="PATH",
        help=f"the shared secret (default: ${AUTH_KEY_VARIABLE}); both sides must hold it",
    )
    group.add_argument(
        "--allow-legacy-auth", action="store_true", help="accept the HMAC-MD5 of multiprocessing before Python 3.12"
    )
    if side == "server":
        group.add_argument(
            "--proxy-protocol",
            choices=PROXY_PROTOCOLS,
            default="off",
            help="connections start with HAProxy's PROXY header (send-proxy / send-proxy-v2)",
        )
        group.add_argument(
            "--proxy-trusted",
            metavar="NETWORK",
            action="append",
            help="a balancer's network (10.0.0.0/8, ::1, unix); repeat for several; required with --proxy-protocol",
        )


def security_options(args: argparse.Namespace, side: Side) -> dict[str, Any]:
    """The ``tls``, ``auth_key`` and ``allow_legacy_auth`` keywords the options ask for.

    Exits with status 2 and one line when a file cannot be read.
    """
    options: dict[str, Any] = {
        "tls": _tls_context(args, side),
        "auth_key": _auth_key(args),
        "allow_legacy_auth": args.allow_legacy_auth,
    }
    if side == "server":
        options["proxy_protocol"] = args.proxy_protocol
        options["proxy_trusted"] = args.proxy_trusted
    return options


def _tls_context(args: argparse.Namespace, side: Side) -> ssl.SSLContext | None:
    if side == "server":
        if args.tls_cert is None:
            if args.tls_key is not None or args.tls_ca is not None:
                fail("--tls-key and --tls-ca need --tls-cert on a server", status=2)
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    else:
        if not (args.tls or args.tls_cert or args.tls_ca or args.tls_insecure):
            return None
        context = ssl.create_default_context()
        if args.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        if args.tls_cert is not None:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_ca is not None:
            context.load_verify_locations(args.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        fail(f"cannot load the TLS files: {exc.strerror or exc}", status=2)
    return context


def _auth_key(args: argparse.Namespace) -> bytes | None:
    if args.auth_key_file is not None:
        try:
            with open(args.auth_key_file, "rb") as file:
                key = file.read().strip()
        except OSError as exc:
            fail(f"cannot read --auth-key-file {args.auth_key_file}: {exc.strerror or exc}", status=2)
    else:
        value = os.environ.get(AUTH_KEY_VARIABLE)
        if value is None:
            return None
        key = value.encode()
    if not key:
        fail("the auth key is empty", status=2)
    return key


def connect_or_fail(address: Address, args: argparse.Namespace, *, framing: Framing, **options: Any) -> Connection:
    """Connect with the security options, or exit with one line saying why not."""
    try:
        conn: Connection = connect(  # Annotated: with **options, several of connect's overloads match
            str(address),
            framing=framing,
            timeout=args.timeout,
            keepalive=args.keepalive,
            **security_options(args, "client"),
            **options,
        )
        return conn
    except ssl.SSLError as exc:
        fail(f"TLS handshake with {address} failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}")
    except ConnecteurError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot connect to {address}: {exc.strerror or exc}")
