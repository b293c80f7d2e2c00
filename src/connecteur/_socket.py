"""Socket creation and options, in one place for the client and every engine.

Internal: the public API takes addresses, never these helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import selectors
import socket
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, cast, final

from . import _keepalive
from ._channel import HANDSHAKE_ERRORS, Channel
from ._keepalive import Keepalive
from .address import Address, TcpAddress, UnixAddress, format_address
from .errors import ConnectionClosed, Timeout
from .framing import Buffer

__all__ = [
    "HAPPY_EYEBALLS_DELAY",
    "ConnectRace",
    "as_timeout",
    "bound_address",
    "check_connected",
    "check_listening",
    "configure_stream",
    "hand_over",
    "handshake",
    "interleave",
    "listen",
    "numeric_targets",
    "open_connection",
    "request_timed_out",
    "resolve",
    "socket_address",
    "start_connection",
    "timeouts_as",
    "unlink_unix_socket",
]


def configure_stream(sock: socket.socket, keepalive: Keepalive | None = None) -> None:
    """Set the options every message stream wants.

    TCP_NODELAY: messages are written whole, so Nagle's delay only adds
    latency to request/response exchanges. SO_KEEPALIVE: let the kernel notice
    a peer that vanished without a FIN (the HOWTO's "when sockets die"), as
    soon as `keepalive` says (None: the kernel's defaults, hours).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if keepalive is not None:
            _keepalive.apply(sock, keepalive)


@contextlib.contextmanager
def timeouts_as(what: str, seconds: float | None) -> Iterator[None]:
    """Turn the socket module's `TimeoutError` into `Timeout` naming `what`."""
    try:
        yield
    except TimeoutError as exc:
        converted = as_timeout(exc, what, seconds)
        if converted is exc:
            raise
        raise converted from exc


def as_timeout(exc: TimeoutError, what: str, seconds: float | None) -> TimeoutError:
    """The socket module's `TimeoutError` as a `Timeout` naming `what`; `exc` itself if it is one already,
    or if it is ETIMEDOUT (a dead link, not a wait)."""
    if isinstance(exc, Timeout) or exc.errno is not None:
        return exc
    return Timeout(f"{what} timed out after {seconds} s", seconds=seconds or 0.0)


def request_timed_out(address: object, exc: Timeout) -> tuple[str, Timeout]:
    """Why a connection is abandoned when `request()` timed out, and the `Timeout` to raise.

    Both clients close the connection then: its late reply would answer the
    next request.
    """
    why = f"when request() timed out after {exc.seconds} s: its late reply would answer the next one"
    error = Timeout(
        f"no reply from {format_address(address)} within {exc.seconds} s; the connection is closed,"
        " as the late reply would answer the next request",
        seconds=exc.seconds,
    )
    return why, error


HAPPY_EYEBALLS_DELAY: Final = 0.25
"""Seconds between starting a connection attempt to one address of a name and
the next while the first is still pending: RFC 8305's recommended "Connection
Attempt Delay". A dead first address then costs a quarter of a second, not
the whole timeout."""


def open_connection(
    address: Address,
    timeout: float | None,
    happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY,
    keepalive: Keepalive | None = None,
) -> socket.socket:
    """Connect a blocking stream socket to `address` within `timeout` seconds in all.

    A host name's addresses are raced as RFC 8305 says (`ConnectRace`); one
    deadline covers every attempt. Resolving the name is not bounded by it:
    ``getaddrinfo`` cannot be interrupted.

    Raises:
        Timeout: no address connected in time.
        OSError: every address failed (refused, unreachable, no such file),
            or the name does not resolve (``socket.gaierror``).
    """
    if isinstance(address, UnixAddress):
        sock = _connect_unix(address, timeout)
    else:
        deadline = None if timeout is None else time.monotonic() + timeout
        race = ConnectRace(address, resolve(address), happy_eyeballs_delay)
        try:
            sock = _run_race(race, deadline, timeout)
        finally:
            race.close()
        sock.settimeout(timeout)
    configure_stream(sock, keepalive)
    return sock


def _connect_unix(address: UnixAddress, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with timeouts_as(f"connecting to {address}", timeout):
            sock.settimeout(timeout)
            sock.connect(address.path)
    except BaseException:
        sock.close()
        raise
    return sock


def _run_race(race: ConnectRace, deadline: float | None, timeout: float | None) -> socket.socket:
    """Wait on the race's sockets with one selector until one connects, all fail, or `deadline`."""
    with selectors.DefaultSelector() as selector:
        while True:
            now = time.monotonic()
            for sock in race.start_due(now):
                selector.register(sock, selectors.EVENT_WRITE)
            if race.failed:
                raise race.error()
            if deadline is not None and now >= deadline:
                raise race.timed_out(timeout or 0.0)
            for key, _ in selector.select(_earliest(race.wait_time(now), deadline, now)):
                selector.unregister(key.fileobj)
                if (winner := race.finished(cast(socket.socket, key.fileobj))) is not None:
                    return winner


def _earliest(wait: float | None, deadline: float | None, now: float) -> float | None:
    """The shorter of `wait` and the time left before `deadline` (None: no limit)."""
    if deadline is None:
        return wait
    return deadline - now if wait is None else min(wait, deadline - now)


Target = tuple[socket.AddressFamily, Any]
"""One address of a name: its family and the socket-module address to connect to."""


def resolve(address: TcpAddress) -> list[Target]:
    """The addresses of `address`'s host in the order to try them (blocks on DNS)."""
    infos = socket.getaddrinfo(address.host or "localhost", address.port, type=socket.SOCK_STREAM)
    return interleave([(family, target) for family, _, _, _, target in infos])


def numeric_targets(address: TcpAddress) -> list[Target] | None:
    """The addresses of an IP literal, without a DNS query; None for a host name."""
    try:
        infos = socket.getaddrinfo(
            address.host or "localhost", address.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except socket.gaierror:
        return None
    return interleave([(family, target) for family, _, _, _, target in infos])


def interleave(targets: list[Target]) -> list[Target]:
    """Alternate the address families, starting with the first address's (RFC 8305 section 4).

    ``getaddrinfo`` sorts by preference (RFC 6724), which often lists every
    IPv6 address first: if IPv6 is broken, interleaving reaches an IPv4 address
    after one attempt delay instead of after all of them.
    """
    families: dict[int, deque[Target]] = {}
    for target in targets:
        families.setdefault(target[0], deque()).append(target)
    queues = list(families.values())
    ordered: list[Target] = []
    while queues:
        ordered.extend(queue.popleft() for queue in queues)
        queues = [queue for queue in queues if queue]
    return ordered


_IN_PROGRESS = frozenset({0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY})


def _start(family: socket.AddressFamily, target: Any) -> socket.socket:
    """A non-blocking socket connecting to `target`.

    Raises:
        OSError: the socket cannot be made, or the connect failed at once.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in _IN_PROGRESS:
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return sock


@final
class ConnectRace:
    """Staggered connection attempts to the addresses of one name (RFC 8305 section 5).

    The first attempt starts at once; each next one when the previous failed,
    or `delay` seconds after the last start while attempts are still pending.
    The first socket to connect wins. Nothing here waits: the caller watches
    the sockets `start_due` returns for writability (a selector, or an event
    loop), no longer than `wait_time`, and hands each writable one to
    `finished`. `close` closes every attempt still pending, the losers.

    Args:
        address: the name, for messages.
        targets: its addresses in the order to try them (`resolve`).
        delay: seconds between starts; None tries one address after another.
    """

    __slots__ = ("_address", "_delay", "_errors", "_next_start", "_targets", "pending")

    def __init__(self, address: TcpAddress, targets: list[Target], delay: float | None) -> None:
        self._address = address
        self._targets = deque(targets)
        self._delay = math.inf if delay is None else max(delay, 0.0)
        self._next_start = -math.inf
        self._errors: list[tuple[Any, OSError]] = []
        self.pending: dict[socket.socket, Any] = {}
        """The sockets still connecting, with the address each one tries."""

    @property
    def failed(self) -> bool:
        """True when every address has failed: nothing pending, nothing left to try."""
        return not self._targets and not self.pending

    def start_due(self, now: float) -> list[socket.socket]:
        """Start the attempts due at `now`; return their sockets, to watch for writability."""
        started = []
        while self._targets and (not self.pending or now >= self._next_start):
            family, target = self._targets.popleft()
            try:
                sock = _start(family, target)
            except OSError as exc:  # no IPv6 here, refused or unreachable at once: the next one starts now
                self._errors.append((target, exc))
                continue
            self.pending[sock] = target
            started.append(sock)
            self._next_start = now + self._delay
        return started

    def wait_time(self, now: float) -> float | None:
        """Seconds until the next attempt is due (None: none will be, only the pending ones count)."""
        if not self._targets or math.isinf(self._next_start):
            return None
        return max(self._next_start - now, 0.0)

    def finished(self, sock: socket.socket) -> socket.socket | None:
        """Take a pending socket that showed writable: return it if it connected.

        A failed one is closed and remembered, and the next address becomes
        due at once.
        """
        target = self.pending.pop(sock)
        try:
            check_connected(sock)
        except OSError as exc:
            sock.close()
            self._errors.append((target, exc))
            self._next_start = -math.inf
            return None
        return sock

    def close(self) -> None:
        """Close every attempt still pending."""
        for sock in self.pending:
            sock.close()
        self.pending.clear()

    def error(self) -> OSError:
        """The error once every address failed: the last failure's kind, each address named.

        An `OSError` built from the last errno is its usual subclass
        (``ConnectionRefusedError``...), as ``socket.create_connection`` raises.
        """
        if not self._errors:  # getaddrinfo raises rather than return no address; an empty list from elsewhere
            return OSError(errno.EHOSTUNREACH, f"{self._address} has no address to connect to")
        tried = "; ".join(f"{format_address(target)} {exc.strerror or exc}" for target, exc in self._errors)
        return OSError(self._errors[-1][1].errno, f"could not connect to {self._address}: {tried}")

    def timed_out(self, seconds: float) -> Timeout:
        """The `Timeout` for a deadline reached with attempts still pending, each address named."""
        tried = [format_address(target) for target, _ in self._errors] + [
            format_address(target) for target in self.pending.values()
        ]
        return Timeout(
            f"connecting to {self._address} timed out after {seconds} s (tried {', '.join(tried)})", seconds=seconds
        )


HANDSHAKE_READ_SIZE: Final = 16 * 2**10
"""Handshake messages are small: a TLS flight or an HMAC exchange fits."""


def handshake(sock: socket.socket, channel: Channel, timeout: float | None) -> Buffer:
    """Open `channel` on a blocking socket within `timeout` seconds.

    Returns:
        The application bytes that arrived with the last handshake message,
        for the framing decoder.

    Raises:
        AuthenticationError: the peer does not hold the key, or never
            answered (see `Channel.timed_out`).
        ProxyProtocolError: a bad PROXY header, or none in time.
        ssl.SSLError: the TLS handshake failed.
        Timeout: the TLS handshake stalled.
        ConnectionClosed: the peer closed during the handshake.
        OSError: the connection broke.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    buffer = bytearray(HANDSHAKE_READ_SIZE)
    previous = sock.gettimeout()
    received: Buffer = b""
    try:
        while True:
            if deadline is not None:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            if outgoing := channel.data_to_send():  # sending b"" on a reset socket would raise
                sock.sendall(outgoing)
            if channel.is_open:
                return received
            count = sock.recv_into(buffer)
            if not count:
                channel.receive_eof()
                raise ConnectionClosed("the peer closed the connection during the handshake")
            received = channel.receive(memoryview(buffer)[:count])
    except TimeoutError as exc:
        if exc.errno is not None:
            raise
        raise channel.timed_out(timeout or 0.0) from None
    except HANDSHAKE_ERRORS:
        with contextlib.suppress(OSError):  # an alert or #FAILURE# for the peer, if it still reads
            sock.sendall(channel.data_to_send())
        raise
    finally:
        sock.settimeout(previous)


def start_connection(address: Address) -> socket.socket:
    """Start connecting a non-blocking socket to `address`; return it at once.

    The connection is complete (or has failed) when the socket shows
    writable; then call `check_connected`. A host name is resolved first,
    which may block; only its first address is tried.

    Raises:
        OSError: the name does not resolve, or the connect failed at once.
    """
    target: object
    if isinstance(address, UnixAddress):
        family, target = socket.AF_UNIX, address.path
    else:
        infos = socket.getaddrinfo(address.host or "localhost", address.port, type=socket.SOCK_STREAM)
        family, _, _, _, target = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in _IN_PROGRESS:
            raise OSError(code, f"{os.strerror(code)}: {address}")
    except BaseException:
        sock.close()
        raise
    return sock


def check_connected(sock: socket.socket) -> None:
    """Finish a connection begun by `start_connection`, once it shows writable.

    Raises:
        OSError: the connection failed (ConnectionRefusedError, ...); the
            socket is left open for the caller to close.
    """
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))
    try:
        sock.getpeername()  # raises ENOTCONN if the socket was not writable yet
    except OSError as exc:
        if exc.errno != errno.ENOTCONN or not _shows_writable(sock):
            raise
        # Connected, then reset before this look, its error already taken (or
        # arriving just after SO_ERROR was read): the peer ended it.
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNRESET
        raise OSError(code, f"{os.strerror(code)}: the connection ended as it was made") from None
    configure_stream(sock)


def _shows_writable(sock: socket.socket) -> bool:
    """Whether `sock` shows writable now (a connection made, or ended), without waiting."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        return bool(selector.select(0))


def bound_address(listener: socket.socket) -> Any:
    """What a listener tells users it is bound to: the socket-module tuple for
    TCP, ``"unix:/path"`` for a Unix socket; either can be passed to `connect()`."""
    name = listener.getsockname()
    return f"unix:{name}" if listener.family == getattr(socket, "AF_UNIX", None) else name


def listen(address: Address, *, backlog: int, reuse_port: bool = False) -> socket.socket:
    """Return a listening socket bound to `address`.

    An empty host listens on every interface, IPv6 and IPv4 together where
    the platform allows it. A stale Unix socket file (left by a server that
    crashed) is replaced; a live one, or any other file, is not.
    """
    if isinstance(address, UnixAddress):
        return _listen_unix(address.path, backlog)
    if address.host == "" and socket.has_dualstack_ipv6():
        return socket.create_server(
            ("", address.port), family=socket.AF_INET6, backlog=backlog, reuse_port=reuse_port, dualstack_ipv6=True
        )
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    if address.host and family == socket.AF_INET:
        family = _resolve_family(address)
    return socket.create_server((address.host, address.port), family=family, backlog=backlog, reuse_port=reuse_port)


def check_listening(sock: object) -> None:
    """Check that `sock` is a stream socket already listening (one to adopt).

    Raises:
        TypeError: `sock` is not a socket.
        ValueError: it is not a stream socket, or not listening.
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise ValueError(f"descriptor {sock.fileno()} is not a usable socket: {exc.strerror or exc}") from None
    if kind != socket.SOCK_STREAM:
        raise ValueError(f"descriptor {sock.fileno()} is not a stream socket")
    if not listening:
        raise ValueError(f"socket {sock.fileno()} is not listening: call listen() before handing it over")


def socket_address(sock: socket.socket) -> Address:
    """The address a listening socket is bound to, parsed."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return UnixAddress(name if isinstance(name, str) else name.decode(errors="surrogateescape"))
    return TcpAddress(name[0], name[1])


_SO_ATTACH_REUSEPORT_CBPF: Final = 51  # Linux 4.5+, <asm-generic/socket.h>; absent from the socket module
_BPF_RET_K: Final = 0x06  # BPF_RET | BPF_K: return a constant


def hand_over(listener: socket.socket) -> None:
    """Send the port's new connections to the newer server sharing it, before a stop.

    A zero-downtime restart binds a new server to the same port with
    ``SO_REUSEPORT``, then stops the old one. Linux spreads new connections
    over both sockets by a hash, and closing a listener resets the connections
    still queued on it (unless ``net.ipv4.tcp_migrate_req`` is 1): a
    connection arriving between the old server's last ``accept()`` and its
    ``close()`` would be lost. So the old server first attaches a one-line
    classic BPF program to the port's group, "choose socket 1": the newer
    server's (the group lists sockets in the order they joined, and a closed
    one's slot goes to the last). Then only what is already queued comes to
    the old server, which serves it. With a single socket left, index 1 does
    not exist and the kernel hashes again; when yet another server joins, it
    gets the new connections: the next restart. Does nothing elsewhere, or
    without ``SO_REUSEPORT``.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return
    with contextlib.suppress(OSError):
        if not listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            return
        instruction = struct.pack("HBBI", _BPF_RET_K, 0, 0, 1)
        program = ctypes.create_string_buffer(instruction, len(instruction))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native alignment.
        listener.setsockopt(
            socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, struct.pack("HP", 1, ctypes.addressof(program))
        )


def _resolve_family(address: TcpAddress) -> socket.AddressFamily:
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def _listen_unix(path: str, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not _is_stale_unix_socket(path):
                raise
            os.unlink(path)
            sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_stale_unix_socket(path: str) -> bool:
    """True when `path` is a socket file nobody listens on any more."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def unlink_unix_socket(sock_name: object) -> None:
    """Remove the file of a Unix listening socket this process created."""
    if isinstance(sock_name, str) and sock_name and not sock_name.startswith("\0"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_name)
