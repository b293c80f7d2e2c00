"""Everything between the socket and the framing: PROXY header, TLS, authentication.

A `Channel` is sans-I/O like the decoders: the loop hands it the bytes it
read and writes what it gives back; the channel never touches a socket and
never looks at a clock (the loops own the handshake deadline). In order:

1. a PROXY protocol header (server side, from a trusted balancer), which
   replaces the peer's address with the original client's;
2. a TLS session, which stays for the connection's lifetime;
3. the shared-secret challenge-response (`multiprocessing.connection`'s),
   run over TLS when both are on.

Only once all are done is the channel *open*: application bytes then flow
to the framing decoder, and none before (a handler never sees a byte from an
unauthenticated peer). Bytes that arrive with the last handshake message are
kept and handed on, never lost.

`ChannelSpec` holds the options, fixed when a server or client is made;
``spec.open(address)`` gives each connection its channel, or None when no
option is on, so plain connections pay nothing.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, cast, final

from ._auth import Authenticator
from ._tls import TlsSession
from .address import Address, TcpAddress, format_address
from .errors import AuthenticationError, ConnecteurError, ConnectionClosed, ProxyProtocolError, Timeout
from .framing import Buffer
from .proxy_protocol import ProxyHeader, ProxyHeaderReader

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "HANDSHAKE_ERRORS", "PROXY_PROTOCOLS", "Channel", "ChannelSpec", "ProxyMode"]

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds from accept (or connect) to an open channel: a PROXY header, a
TLS handshake and two HMAC exchanges take milliseconds on a sane link; ten
seconds forgive a slow one while a peer that stalls costs a slot only briefly."""

HANDSHAKE_ERRORS: Final = (ConnecteurError, ssl.SSLError)
"""What `Channel.receive` and `Channel.receive_eof` raise: the peer's fault."""

ProxyMode = Literal["off", "v1", "v2", "auto"]
PROXY_PROTOCOLS: Final = ("off", "v1", "v2", "auto")
"""The values `Server(proxy_protocol=...)` accepts."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@final
@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """The connection-opening options of one side, checked once.

    Attributes:
        server_side: True for a server's connections.
        tls: the TLS context, or None for plain TCP.
        server_hostname: the name the server's certificate must carry (client).
        auth_key: the shared secret, or None for no authentication.
        allow_legacy_auth: accept the HMAC-MD5 handshake of Pythons before 3.12.
        proxy_protocol: which PROXY protocol header a server expects.
        proxy_trusted: the networks PROXY headers are accepted from.
        proxy_trusts_unix: PROXY headers are accepted from Unix socket peers
            (``"unix"`` in `proxy_trusted`).
    """

    server_side: bool
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    auth_key: bytes | None = None
    allow_legacy_auth: bool = False
    proxy_protocol: ProxyMode = "off"
    proxy_trusted: tuple[Network, ...] = ()
    proxy_trusts_unix: bool = False

    @classmethod
    def build(
        cls,
        *,
        server_side: bool,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        auth_key: bytes | None = None,
        allow_legacy_auth: bool = False,
        proxy_protocol: str = "off",
        proxy_trusted: Iterable[str] | None = None,
    ) -> ChannelSpec:
        """Check the options and make a spec.

        Raises:
            TypeError: `tls` is not an `ssl.SSLContext`, or `auth_key` is not bytes.
            ValueError: an unknown `proxy_protocol`, a PROXY protocol without
                `proxy_trusted`, or a network that does not parse.
        """
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, not {type(tls).__name__}")
        if auth_key is not None and not isinstance(auth_key, bytes):
            raise TypeError(f"auth_key must be bytes, not {type(auth_key).__name__}")
        if proxy_protocol not in PROXY_PROTOCOLS:
            raise ValueError(f"unknown proxy_protocol {proxy_protocol!r}; choose one of: {', '.join(PROXY_PROTOCOLS)}")
        if proxy_protocol != "off" and not proxy_trusted:
            raise ValueError(
                "proxy_protocol needs proxy_trusted: the networks of your balancers "
                "(a PROXY header from anyone else would let them choose their address)"
            )
        names = list(proxy_trusted or ())
        try:
            trusted = tuple(ipaddress.ip_network(net, strict=False) for net in names if net != "unix")
        except ValueError as exc:
            raise ValueError(f"proxy_trusted: {exc}") from None
        mode = cast(ProxyMode, proxy_protocol)
        return cls(server_side, tls, server_hostname, auth_key, allow_legacy_auth, mode, trusted, "unix" in names)

    @classmethod
    def for_client(
        cls,
        address: Address,
        *,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
        auth_key: bytes | None,
        allow_legacy_auth: bool,
    ) -> ChannelSpec:
        """A client's spec: the certificate must name `server_hostname`, by default the host of `address`."""
        if tls is not None and server_hostname is None and isinstance(address, TcpAddress):
            server_hostname = address.host or "localhost"
        return cls.build(
            server_side=False,
            tls=tls,
            server_hostname=server_hostname,
            auth_key=auth_key,
            allow_legacy_auth=allow_legacy_auth,
        )

    @property
    def is_plain(self) -> bool:
        """True when connections need no channel at all."""
        return self.tls is None and self.auth_key is None and self.proxy_protocol == "off"

    def open(self, address: object) -> Channel | None:
        """A new connection's channel, or None when nothing is configured.

        A server checks `is_trusted` first: a PROXY header is expected from
        every connection once `proxy_protocol` is on.
        """
        if self.is_plain:
            return None
        proxy = None if self.proxy_protocol == "off" else ProxyHeaderReader(self.proxy_protocol)
        return Channel(self, address, proxy)

    def is_trusted(self, address: object) -> bool:
        """True when `address` is a balancer allowed to send PROXY headers."""
        if not isinstance(address, tuple):
            return self.proxy_trusts_unix  # a Unix socket peer
        try:
            host = ipaddress.ip_address(str(address[0]).partition("%")[0])
        except ValueError:
            return False
        if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
            host = host.ipv4_mapped
        return any(host in network for network in self.proxy_trusted)


@final
class Channel:
    """One connection's opening handshakes, then its TLS layer.

    Attributes:
        address: the peer's address; after a PROXY header, the original client's.
        proxy_address: the balancer's address when a PROXY header was received.
        is_open: True once every handshake is done.
    """

    __slots__ = ("_auth", "_outbox", "_proxy", "_spec", "_tls", "address", "is_open", "proxy_address")

    def __init__(self, spec: ChannelSpec, address: object, proxy: ProxyHeaderReader | None) -> None:
        self._spec = spec
        self._proxy = proxy
        self._tls: TlsSession | None = None
        self._auth: Authenticator | None = None
        self._outbox = bytearray()
        self.address = address
        self.proxy_address: object = None
        self.is_open = False
        if proxy is None:
            self._start()

    @property
    def encrypts(self) -> bool:
        """True when application bytes still pass through here once open (TLS)."""
        return self._tls is not None

    def _start(self) -> None:
        """Begin TLS and authentication (after the PROXY header, if any)."""
        spec = self._spec
        if spec.tls is not None:
            self._tls = TlsSession(spec.tls, server_side=spec.server_side, server_hostname=spec.server_hostname)
            self._outbox += self._tls.data_to_send()
        if spec.auth_key is not None:
            self._auth = Authenticator(spec.auth_key, server_side=spec.server_side, allow_legacy=spec.allow_legacy_auth)
        self._advance(b"")

    # --- receiving ---------------------------------------------------------------

    def receive(self, data: Buffer) -> Buffer:
        """Add bytes read from the socket; return the application bytes they carry.

        Handshake replies are queued: write `data_to_send()` after each call,
        and also when this raises (an alert or ``#FAILURE#`` for the peer).

        Raises:
            ProxyProtocolError: a malformed, oversize or unexpected PROXY header.
            ssl.SSLError: the TLS handshake failed, or a record is corrupt.
            AuthenticationError: the peer does not hold the key.
        """
        if self._proxy is not None:
            header = self._proxy.feed(data)
            if header is None:
                return b""
            data = self._proxy.leftover
            self._proxy = None
            self._take_header(header)
            self._start()
        if self._tls is not None:
            try:
                data = self._tls.receive(data)
            finally:
                self._outbox += self._tls.data_to_send()
        return self._advance(data) if not self.is_open else data

    def _take_header(self, header: ProxyHeader) -> None:
        if not header.is_local and header.source is not None:
            self.proxy_address = self.address
            self.address = header.source

    def _advance(self, data: Buffer) -> Buffer:
        """Run authentication once TLS is up; open the channel when all is done."""
        if self._tls is not None and not self._tls.is_handshaken:
            return b""
        auth = self._auth
        if auth is not None:
            try:
                if data:
                    auth.receive(data)
            finally:
                self._queue(auth.data_to_send())
            if not auth.is_done:
                return b""
            data = auth.leftover()
            self._auth = None
        self.is_open = True
        return data

    def _queue(self, data: bytes) -> None:
        if data:
            self._outbox += self._tls.encrypt(data) if self._tls is not None else data

    def receive_eof(self) -> None:
        """The peer closed its side; an error if that happened mid-handshake.

        Raises:
            ProxyProtocolError: before the PROXY header was complete.
            ConnectionClosed: during the TLS handshake.
            AuthenticationError: during the shared-secret handshake.
        """
        if self.is_open:
            return
        if self._proxy is not None:
            raise ProxyProtocolError(f"{format_address(self.address)} closed before its PROXY header was complete")
        if self._tls is not None and not self._tls.is_handshaken:
            raise ConnectionClosed(
                f"{format_address(self.address)} closed the connection during the TLS handshake "
                "(does it expect TLS, and does it accept this side's certificate?)"
            )
        if self._auth is not None:
            self._auth.receive_eof()

    def timed_out(self, seconds: float) -> ConnecteurError:
        """The error for a handshake not done within `seconds`, naming the step it stalled at."""
        where = format_address(self.address)
        if self._proxy is not None:
            return ProxyProtocolError(f"no complete PROXY header from {where} within {seconds} s")
        if self._tls is not None and not self._tls.is_handshaken:
            return Timeout(f"TLS handshake with {where} not complete within {seconds} s", seconds=seconds)
        if self._auth is not None:
            waiting = "its answer" if self._spec.server_side else "a challenge"
            return AuthenticationError(
                f"authentication with {where} not complete within {seconds} s: still waiting for {waiting} "
                "(does the peer use an auth key too?)"
            )
        return Timeout(f"handshake with {where} not complete within {seconds} s", seconds=seconds)

    # --- sending -------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Take the bytes queued for the peer (handshake messages, TLS records)."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def send(self, data: Buffer) -> bytes:
        """Return the bytes to write for application `data` (encrypted with TLS).

        Only once open: before, application data must wait.
        """
        if self._outbox:
            queued = self.data_to_send()
            return queued + (self._tls.encrypt(data) if self._tls is not None else bytes(data))
        return self._tls.encrypt(data) if self._tls is not None else bytes(data)

    def close_write(self) -> bytes:
        """The bytes that end this side's stream (TLS ``close_notify``), if any."""
        return self.data_to_send() + (self._tls.close_write() if self._tls is not None else b"")
