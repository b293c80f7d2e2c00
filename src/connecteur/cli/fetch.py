"""``connecteur fetch URL``: an HTTP/1.0 GET, the HOWTO's first client socket.

The request leaves in one `send` over `CloseDelimited` framing, then
`shutdown_write()` tells the server "that is all"; the reply is the one
message that ends when the server closes. The body goes to standard output
byte for byte; ``-v`` adds the status line and headers on standard error.
Plain ``http://`` only (no TLS), and redirects are not followed.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

from .. import __version__
from ..address import TcpAddress
from ..connection import Connection, connect
from ..errors import ConnecteurError, MessageTooLarge, Timeout
from ..framing import DEFAULT_MAX_SIZE, CloseDelimited
from ._options import fail, seconds_argument

__all__ = ["add_parser", "run"]

USER_AGENT: Final = f"connecteur/{__version__}"

_DESCRIPTION = """\
Send an HTTP/1.0 GET for URL and print the reply's body on standard output,
byte for byte. Plain http:// only: HTTPS is not supported. Redirects are not
followed: a 3xx reply's body is printed as it is, its Location on stderr.
Exit status: 0 for a 2xx or 3xx reply, 1 for an HTTP error status or a network
failure, 2 for a bad URL."""

# A host after IDNA encoding: a name, an IPv4 address, or an IPv6 one with its zone.
_HOST = re.compile(r"[A-Za-z0-9._~%:-]+")
# Percent-encode what may not appear in a request target; keep what is already encoded.
_TARGET_SAFE = "!$%&'()*+,/:;=?@[]~"
_STATUS_LINE = re.compile(r"HTTP/\d\.\d (\d{3})(?: (.*))?")
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


def add_parser(commands: Any) -> None:
    """Add ``fetch`` to the subcommands."""
    parser = commands.add_parser(
        "fetch", help="HTTP/1.0 GET a URL and print the body (no redirects)", description=_DESCRIPTION
    )
    parser.add_argument("url", metavar="URL", help="an http:// URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the status line and headers on stderr")
    parser.add_argument(
        "--timeout", type=seconds_argument, default=10.0, metavar="S",
        help="seconds to connect, then for the whole reply (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--max-size", type=_size_argument, default=DEFAULT_MAX_SIZE, metavar="BYTES",
        help=f"the largest reply, headers included (default {DEFAULT_MAX_SIZE}: 16 MiB)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fetch the URL, print the body; return 0 for a 2xx or 3xx reply."""
    try:
        request = _Request.from_url(args.url)
    except ValueError as exc:
        fail(str(exc), status=2)
    data = _exchange(request, timeout=args.timeout, max_size=args.max_size)
    try:
        reply = _Reply.parse(data)
    except ValueError as exc:
        fail(f"bad reply from {request.address}: {exc}")
    if args.verbose:
        print("\n".join(reply.head), file=sys.stderr, flush=True)
    sys.stdout.buffer.write(reply.body)
    sys.stdout.buffer.flush()
    if 300 <= reply.status < 400:
        where = reply.headers.get("location", "nowhere")
        print(f"connecteur: HTTP {reply.summary}: redirect to {where} not followed", file=sys.stderr, flush=True)
    elif not 200 <= reply.status < 300:
        fail(f"HTTP {reply.summary}")
    return 0


def _size_argument(text: str) -> int:
    """An argparse ``type=`` for a positive number of bytes."""
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, not {text!r}")
    return int(text)


def _exchange(request: _Request, *, timeout: float, max_size: int) -> bytes:
    """Send the request, half-close, return everything the server sent until it closed."""
    address = request.address
    try:
        conn = connect((address.host, address.port), framing=CloseDelimited(max_size), timeout=timeout)
    except Timeout as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot connect to {address}: {exc.strerror or exc}")
    with conn:
        return _send_and_receive(conn, request, timeout=timeout, max_size=max_size)


def _send_and_receive(conn: Connection, request: _Request, *, timeout: float, max_size: int) -> bytes:
    try:
        conn.send(request.wire)
        conn.shutdown_write()
        reply: bytes = conn.recv()  # no codec: bytes
        return reply
    except MessageTooLarge:
        fail(f"the reply from {request.address} is over --max-size {max_size} bytes")
    except Timeout:
        fail(f"{request.address} did not finish replying within {timeout} s")
    except (ConnecteurError, OSError) as exc:
        fail(f"fetching from {request.address}: {getattr(exc, 'strerror', None) or exc}")


@dataclass(frozen=True, slots=True)
class _Request:
    """Where to connect, and the request's bytes."""

    address: TcpAddress
    wire: bytes

    @classmethod
    def from_url(cls, url: str) -> _Request:
        """Build the GET request for an ``http://`` URL.

        Raises:
            ValueError: another scheme (HTTPS included) or a malformed URL, in one line.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = 80 if parts.port is None else parts.port
            host = (parts.hostname or "").encode("idna").decode("ascii")
        except (ValueError, UnicodeError) as exc:  # a bad port, a host IDNA cannot encode
            raise ValueError(f"malformed URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ValueError(f"HTTPS is not supported, only plain http:// URLs: {url!r}")
        if scheme != "http":
            raise ValueError(f"unsupported URL {url!r}: only http:// URLs are supported")
        if not _HOST.fullmatch(host) or port == 0 or parts.username is not None:
            raise ValueError(f"malformed URL {url!r}: expected http://host[:port]/path, without user or password")
        target = urllib.parse.quote(parts.path or "/", safe=_TARGET_SAFE)
        if parts.query:
            target += "?" + urllib.parse.quote(parts.query, safe=_TARGET_SAFE)
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            host_header += f":{port}"
        head = f"GET {target} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n"
        return cls(TcpAddress(host, port), (head + "\r\n").encode("ascii"))


@dataclass(frozen=True, slots=True)
class _Reply:
    """A parsed HTTP/1.x reply."""

    status: int
    reason: str
    head: tuple[str, ...]
    """The status line and header lines as received (ISO-8859-1)."""
    headers: dict[str, str]
    """Header names in lower case; the last of repeated ones."""
    body: bytes

    @property
    def summary(self) -> str:
        """``404 Not Found``."""
        return f"{self.status} {self.reason}".rstrip()

    @classmethod
    def parse(cls, data: bytes) -> _Reply:
        """Parse everything the server sent.

        Raises:
            ValueError: not an HTTP reply, headers cut short, a body shorter
                than its Content-Length, or a transfer coding HTTP/1.0 lacks.
        """
        if not data:
            raise ValueError("the server closed the connection without replying")
        end = _END_OF_HEAD.search(data)
        if end is None:
            raise ValueError(f"the reply ended inside its headers, after {len(data)} bytes")
        head = tuple(line.rstrip("\r") for line in data[: end.start()].decode("latin-1").split("\n"))
        status = _STATUS_LINE.fullmatch(head[0])
        if status is None:
            raise ValueError(f"not an HTTP status line: {head[0][:80]!r}")
        headers = _parse_headers(head[1:])
        body = data[end.end() :]
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("a chunked body, which an HTTP/1.0 client cannot read")
        length = headers.get("content-length", "").strip()
        if length.isascii() and length.isdigit():
            if len(body) < int(length):
                raise ValueError(f"the body ended after {len(body)} of the {length} bytes of its Content-Length")
            body = body[: int(length)]
        return cls(int(status.group(1)), (status.group(2) or "").strip(), head, headers, body)


def _parse_headers(lines: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (" ", "\t"):
            continue  # an obsolete folded continuation: nothing this client needs
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return headers
