"""The blocking client: `connect()` and `Connection`.

A loop around the sans-I/O framing: read bytes with ``recv_into`` into one
reusable buffer, feed the decoder, hand out messages one by one. Every send
delivers the whole message; every wait is bounded by the connection's timeout.

Threads: one thread may `send` while another `recv`s (full duplex). Two
threads sending at once must take turns themselves (a lock of theirs), as must
two threads receiving.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Self, final, overload

from . import _socket
from ._channel import DEFAULT_HANDSHAKE_TIMEOUT, Channel, ChannelSpec
from ._envelope import Heartbeat, heartbeat_of
from ._keepalive import KeepaliveLike, as_keepalive
from ._multiplexed import MultiplexedConnection
from ._reconnect import ReconnectingConnection
from ._reconnect_mux import ReconnectingMultiplexedConnection
from ._redial import Backoff
from ._skipping import report_skips
from .address import AddressLike, format_address, parse_address
from .codecs import Codec
from .errors import ConnectionClosed, FramingError, Timeout
from .framing import BodyPool, Buffer, Decoder, Framing, LengthPrefixed

__all__ = ["Connection", "connect", "connect_nowait", "finish_connect", "wait"]

if TYPE_CHECKING:  # typing_extensions' TypeVar takes a default (PEP 696); type checkers know it from typeshed
    from typing_extensions import TypeVar

    T = TypeVar("T", default=Any)
else:  # nothing reads the default at run time, where typing's TypeVar takes none before Python 3.13
    T = typing.TypeVar("T")

RECV_SIZE: Final = 256 * 2**10
"""256 KiB: how much one ``recv_into`` may read. Large enough that bulk
transfers take few system calls; allocated once per connection."""

COALESCE_SIZE: Final = 256 * 2**10
"""256 KiB: `send_many` joins small messages into writes of about this size,
so 10,000 tiny messages cost a few dozen system calls, not 10,000."""


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: None = None,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: None = None,
    on_connect: None = None,
    multiplexed: Literal[False] = False,
) -> Connection[bytes]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: None = None,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: Backoff,
    on_connect: Callable[[Connection[bytes]], object] | None = None,
    multiplexed: Literal[False] = False,
) -> ReconnectingConnection[bytes]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec[T],
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: None = None,
    on_connect: None = None,
    multiplexed: Literal[False] = False,
) -> Connection[T]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec[T],
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: Backoff,
    on_connect: Callable[[Connection[T]], object] | None = None,
    multiplexed: Literal[False] = False,
) -> ReconnectingConnection[T]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: None = None,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: None = None,
    on_connect: None = None,
    multiplexed: Literal[True],
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> MultiplexedConnection[bytes]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec[T],
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: None = None,
    on_connect: None = None,
    multiplexed: Literal[True],
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> MultiplexedConnection[T]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: None = None,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: Backoff,
    on_connect: Callable[[MultiplexedConnection[bytes]], object] | None = None,
    multiplexed: Literal[True],
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> ReconnectingMultiplexedConnection[bytes]: ...


@overload
def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec[T],
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: Backoff,
    on_connect: Callable[[MultiplexedConnection[T]], object] | None = None,
    multiplexed: Literal[True],
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> ReconnectingMultiplexedConnection[T]: ...


def connect(
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec[T] | None = None,
    timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = _socket.HAPPY_EYEBALLS_DELAY,
    keepalive: KeepaliveLike = None,
    reconnect: Backoff | None = None,
    on_connect: Callable[[Any], object] | None = None,
    multiplexed: bool = False,
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> (
    Connection[T]
    | Connection[bytes]
    | ReconnectingConnection[T]
    | ReconnectingConnection[bytes]
    | MultiplexedConnection[T]
    | MultiplexedConnection[bytes]
    | ReconnectingMultiplexedConnection[T]
    | ReconnectingMultiplexedConnection[bytes]
):
    """Connect to a server and return a `Connection`.

    Args:
        address: ``"host:port"``, ``"[::1]:port"``, ``"unix:/path"`` or a
            ``(host, port)`` tuple.
        framing: how messages are laid out; defaults to `LengthPrefixed()`.
        codec: turns values into messages and back (`connecteur.codecs`);
            None sends and receives bytes.
        timeout: seconds allowed for connecting (to every address of the
            name together) and then for each whole `send`, `send_many`,
            `recv` or `request`, however slowly the bytes move; ``None``
            waits for ever.
        tls: an `ssl.SSLContext` for the client side (such as
            ``ssl.create_default_context()``): the connection is TLS, and the
            server's certificate is checked as the context says.
        server_hostname: the name the server's certificate must carry;
            defaults to the host of `address` (required for ``unix:`` with TLS).
        auth_key: a shared secret the server must hold too (the challenge
            of ``multiprocessing.connection``, in both directions).
        allow_legacy_auth: also accept a server answering with the HMAC-MD5
            of ``multiprocessing.connection`` before Python 3.12.
        handshake_timeout: seconds allowed for the TLS and authentication
            handshakes once connected (None: no limit).
        happy_eyeballs_delay: when a name has several addresses, seconds to
            wait for one attempt before starting the next beside it (RFC 8305,
            IPv6 and IPv4 interleaved); the first to connect wins. ``0``
            starts them all at once, ``None`` tries them one after another.
        keepalive: TCP keepalive and ``TCP_USER_TIMEOUT``: a `Keepalive`,
            or seconds within which a dead peer is noticed
            (`Keepalive.within`). None: the kernel's defaults (hours).
        reconnect: re-dial as this `Backoff` says whenever the link dies, and
            return a `ReconnectingConnection` (the first connection too is
            attempted again as it says, within `timeout`). None: connect once.
        on_connect: with `reconnect`, called with each new `Connection`
            (`MultiplexedConnection` with `multiplexed`) before it is used
            (to authenticate, subscribe, announce); an error of the link
            there counts as a failed attempt, any other is raised.
        multiplexed: speak the multiplexing envelope with a server that runs
            with ``multiplexed=True`` and return a `MultiplexedConnection`:
            many threads share it, each `request` gets its own reply (or a
            `RemoteError`), a timed-out request leaves the connection open.
            With `reconnect` too: a `ReconnectingMultiplexedConnection`,
            whose links are each a `MultiplexedConnection`.
        heartbeat: with `multiplexed`, a `Heartbeat` or ``(interval,
            deadline)``: ping a server silent for `interval` seconds, end the
            connection once it is silent for ``interval + deadline``.

    Raises:
        AddressError: the address cannot be parsed.
        ValueError: `on_connect` without `reconnect`; a `heartbeat` without
            `multiplexed`, or with a period that is not positive.
        Timeout: no address connected within `timeout` (the message names
            those tried), or the TLS handshake took over `handshake_timeout`.
        AuthenticationError: the server does not hold `auth_key`, or sent no
            challenge within `handshake_timeout` (it uses no key).
        ssl.SSLError: the TLS handshake failed (``ssl.SSLCertVerificationError``
            for a certificate that does not verify).
        ConnectionClosed: the server closed the connection during the handshake.
        OSError: every address failed (refused, unreachable, ...): the last
            failure's kind, such as ``ConnectionRefusedError``, naming each
            address; ``socket.gaierror`` when the name does not resolve.
    """
    beat = heartbeat_of(heartbeat)
    if beat is not None and not multiplexed:
        raise ValueError("heartbeat needs multiplexed=True: pings travel in the envelope")
    where = parse_address(address)
    spec = ChannelSpec.for_client(
        where, tls=tls, server_hostname=server_hostname, auth_key=auth_key, allow_legacy_auth=allow_legacy_auth
    )
    tcp_keepalive = as_keepalive(keepalive)

    def dial(seconds: float | None) -> Connection[Any]:
        """One connection, connected within `seconds`, whose calls then get `timeout`."""
        sock = _socket.open_connection(where, seconds, happy_eyeballs_delay, tcp_keepalive)
        try:
            channel = spec.open(where)
            received = b"" if channel is None else _socket.handshake(sock, channel, handshake_timeout)
        except BaseException:
            sock.close()
            raise
        connection = Connection(sock, framing=framing, codec=None if multiplexed else codec, timeout=timeout)
        connection._use_channel(channel, received)
        return connection

    if reconnect is None and on_connect is not None:
        raise ValueError("on_connect needs reconnect=Backoff(...): it is called on each new link")
    if multiplexed:

        def dial_multiplexed(seconds: float | None) -> MultiplexedConnection[Any]:
            return MultiplexedConnection(dial(seconds), codec=codec, timeout=timeout, heartbeat=beat)

        if reconnect is None:
            return dial_multiplexed(timeout)
        shared: ReconnectingMultiplexedConnection[Any] = ReconnectingMultiplexedConnection(
            dial_multiplexed, address=address, backoff=reconnect, on_connect=on_connect, timeout=timeout
        )
        shared._link(None if timeout is None else time.monotonic() + timeout, timeout)
        return shared
    if reconnect is None:
        return dial(timeout)
    client: ReconnectingConnection[Any] = ReconnectingConnection(
        dial, address=address, backoff=reconnect, on_connect=on_connect, timeout=timeout
    )
    client._link(client._deadline())
    return client


def connect_nowait(address: AddressLike) -> socket.socket:
    """Start connecting without waiting: for clients inside a select loop.

    The HOWTO's non-blocking connect. Register the returned socket for
    writability with `select` or `selectors`; once it shows writable, call
    `finish_connect(sock)`, then use it as it is or wrap it with
    ``Connection(sock, framing=...)``. A host name is resolved before this
    returns, which may block; only its first address is tried.

    Raises:
        AddressError: the address cannot be parsed.
        OSError: the name does not resolve, or the connect failed at once.
    """
    return _socket.start_connection(parse_address(address))


def finish_connect(sock: socket.socket) -> None:
    """Check that a connection begun by `connect_nowait` succeeded.

    Call it when the socket shows writable. The socket stays non-blocking.

    Raises:
        OSError: the connection failed (``ConnectionRefusedError``, ...), or
            is not complete yet (the socket was not writable); close the
            socket in that case.
    """
    _socket.check_connected(sock)


@final
class Connection(Generic[T]):
    """A message connection over a connected stream socket.

    Generic in what `recv` returns: ``Connection[bytes]`` without a codec,
    ``Connection[str]`` with `Text`, the codec's decoded type in general.

    Created by `connect()`, or directly to wrap a socket you already have
    (from ``accept()``, ``socketpair()``, ...); the connection then owns it.

    Args:
        sock: a connected stream socket. It is put in blocking mode with
            `timeout`.
        framing: how messages are laid out; defaults to `LengthPrefixed()`.
        codec: turns values into messages and back (`connecteur.codecs`);
            None sends and receives bytes.
        timeout: seconds allowed for each whole `send`, `send_many`, `recv`
            or `request`; ``None`` waits for ever.

    A `Timeout` in `recv` leaves the connection usable (nothing is lost); one
    in `send`, `send_many` or `request` closes it: the stream stopped inside a
    message, or the late reply would answer the next request.
    """

    __slots__ = (
        "_buffer",
        "_channel",
        "_closed",
        "_closed_why",
        "_codec",
        "_crypto_lock",
        "_decoder",
        "_failure",
        "_peer_ended",
        "_ready",
        "_sock",
        "_timeout",
        "_view",
        "_write_closed",
        "address",
        "framing",
    )

    @overload
    def __init__(
        self: Connection[bytes],
        sock: socket.socket,
        *,
        framing: Framing | None = None,
        codec: None = None,
        timeout: float | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self, sock: socket.socket, *, framing: Framing | None = None, codec: Codec[T], timeout: float | None = None
    ) -> None: ...

    def __init__(
        self,
        sock: socket.socket,
        *,
        framing: Framing | None = None,
        codec: Codec[T] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.framing: Framing = framing if framing is not None else LengthPrefixed()
        """The framing of this connection."""
        self._codec = codec
        self._sock = sock
        self._timeout = timeout
        sock.settimeout(timeout)
        _socket.configure_stream(sock)
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        self.address: object = peer
        """The peer's address as the socket module gives it."""
        self._decoder: Decoder = self.framing.decoder()
        if (use_pool := getattr(self._decoder, "use_pool", None)) is not None:
            use_pool(BodyPool())  # large replies back to back reuse one body: no page faults for each
        report_skips(self.framing, self._decoder, peer)
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._ready: deque[bytes] = deque()
        self._failure: Exception | None = None
        self._peer_ended = False
        self._write_closed = False
        self._closed = False
        self._closed_why = "with close()"
        self._channel: Channel | None = None
        self._crypto_lock = threading.Lock()

    def _use_channel(self, channel: Channel | None, received: Buffer) -> None:
        """Take over an opened channel (TLS) and the bytes that came with its handshake."""
        if channel is not None and channel.encrypts:
            self._channel = channel
        if received:
            self._take(received)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Connection {state} to {format_address(self.address)} framing={self.framing!r}>"

    @property
    def timeout(self) -> float | None:
        """Seconds allowed for each whole `send`, `send_many`, `recv` or `request` (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        if not self._closed:  # a closed socket has no timeout to set; the next call raises ConnectionClosed
            self._sock.settimeout(seconds)
        self._timeout = seconds

    # --- sending ---------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Send one whole message; return once it has left the process.

        `message` is bytes, or with a codec a value it encodes. Loops over
        partial sends; the timeout bounds them all together. If it runs out
        part-way, the stream is left mid-message, so the connection is closed.

        Raises:
            CodecError: the codec cannot encode the value (nothing sent).
            FramingError: the framing cannot carry the message (nothing sent).
            Timeout: the message could not be sent within the timeout.
            ConnectionClosed: this side already closed or half-closed it.
            OSError: the connection broke (reset, broken pipe).
        """
        self._send_bytes(self.framing.encode(message if self._codec is None else self._codec.encode(message)))

    def send_many(self, messages: Iterable[Any]) -> None:
        """Send several messages, coalesced into as few system calls as possible.

        Every message is encoded before anything is sent, so a message the
        framing refuses sends none of them. The timeout bounds the whole call.

        Raises:
            CodecError: the codec cannot encode a value (nothing sent).
            FramingError: the framing cannot carry a message (nothing sent).
            Timeout: the messages could not be sent within the timeout (the
                connection is closed).
            ConnectionClosed: this side already closed or half-closed it.
            OSError: the connection broke.
        """
        frame, codec = self.framing.encode, self._codec
        encode = frame if codec is None else (lambda value: frame(codec.encode(value)))
        chunks: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for message in messages:
            data = encode(message)
            batch.append(data)
            size += len(data)
            if size >= COALESCE_SIZE:
                chunks.append(b"".join(batch))
                batch, size = [], 0
        if batch:
            chunks.append(b"".join(batch))
        deadline = self._deadline()
        for index, chunk in enumerate(chunks):
            # The socket's timeout bounds one sendall(); the later chunks get what remains.
            self._send_bytes(chunk, deadline if index else None)

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _send_bytes(self, data: bytes, deadline: float | None = None) -> None:
        """Send all of `data`, by `deadline` if given, else within the socket's timeout.

        CPython's ``sendall`` treats the socket's timeout as a deadline for
        the whole call, however the peer reads.
        """
        self._check_can_send()
        if self._channel is not None:
            # With TLS, a recv() in another thread may be decrypting: OpenSSL
            # must not do both at once. The lock is never held across I/O.
            with self._crypto_lock:
                data = self._channel.send(data)
        try:
            if deadline is None:
                self._sock.sendall(data)
            else:
                self._sendall_by(data, deadline)
        except TimeoutError as exc:  # not a `with timeouts_as(...)`: it cost ~1 µs a message
            error = _socket.as_timeout(exc, f"sending to {format_address(self.address)}", self._timeout)
            if error is exc:
                raise
            self._abandon("when a send timed out: the stream stopped inside a message")
            raise error from exc
        except BaseException as exc:
            if not isinstance(exc, Exception):  # KeyboardInterrupt: the stream may stop inside a message
                self._abandon("when a send was interrupted: the stream may have stopped inside a message")
            raise

    def _sendall_by(self, data: bytes, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(remaining)
        try:
            self._sock.sendall(data)
        finally:
            self._sock.settimeout(self._timeout)

    def _abandon(self, why: str) -> None:
        """Close the connection, saying why in the errors of later calls."""
        if not self._closed:
            self._closed_why = why
            self.close()

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(f"this connection was closed {self._closed_why}", by_peer=False)

    def _check_can_send(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._write_closed:
            raise ConnectionClosed("cannot send after shutdown_write()", by_peer=False)

    # --- receiving -------------------------------------------------------------

    def recv(self) -> T:
        """Return the next message (bytes, or with a codec its value), waiting if needed.

        Raises:
            ConnectionClosed: the peer closed the connection cleanly between
                messages (or this side closed it).
            TruncatedMessage: the peer closed inside a message.
            MessageTooLarge: the peer announced a message over `max_size`.
            FramingError: the peer's bytes do not follow the framing. Messages
                that arrived before the bad bytes are returned first.
            Timeout: no whole message arrived within the timeout, however
                slowly its bytes came; those received so far are kept, so
                `recv()` may be called again (the connection stays usable).
            CodecError: the message does not decode (it is consumed; the
                connection stays usable).
            OSError: the connection broke (reset).
        """
        return self._decode(self._recv_bytes())

    def _recv_bytes(self, deadline: float | None = None) -> bytes:
        """The next message, by `deadline` if given, else within the timeout from now."""
        if self._ready:
            return self._ready.popleft()
        if self._closed:
            raise self._closed_error()
        # The socket carries the full timeout, right for a recv()'s first read:
        # only a message that needs several reads, or a request()'s reply,
        # shortens it to what remains of the deadline.
        shorten = deadline is not None
        if deadline is None:
            deadline = self._deadline()
        shortened = False
        try:
            while not self._ready:
                self._check_can_recv()
                if shorten and deadline is not None:
                    self._sock.settimeout(self._remaining(deadline))
                    shortened = True
                shorten = True
                self._receive_some()
        finally:
            if shortened:
                self._sock.settimeout(self._timeout)
        return self._ready.popleft()

    def _check_can_recv(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._peer_ended:
            raise ConnectionClosed(f"{format_address(self.address)} closed the connection")

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._recv_timeout()
        return remaining

    def _recv_timeout(self) -> Timeout:
        seconds = self._timeout or 0.0
        return Timeout(f"no whole message from {format_address(self.address)} within {seconds} s", seconds=seconds)

    def _receive_some(self) -> None:
        """Read once from the socket and queue the messages that completes."""
        try:
            count = self._sock.recv_into(self._buffer)
        except TimeoutError as exc:
            if exc.errno is not None:  # ETIMEDOUT: keepalive or retransmissions gave up; the link is dead
                self._failure = exc
                raise
            raise self._recv_timeout() from exc
        except OSError as exc:
            # After a reset the kernel reports a plain EOF: remember the reset,
            # or the next recv() would call it a clean close.
            self._failure = exc
            raise
        if not count:
            self._peer_ended = True
        data: Buffer = self._view[:count]
        if self._channel is not None and count:
            try:
                with self._crypto_lock:
                    data = self._channel.receive(data)
            except ssl.SSLError as exc:
                self._failure = exc
                raise
        self._take(data)

    def _take(self, data: Buffer) -> None:
        """Decode received bytes (none: the end of the stream) into ready messages."""
        try:
            if data:
                self._ready.extend(self._decoder.feed(data))
            elif self._peer_ended:
                self._ready.extend(self._decoder.eof())
        except FramingError as exc:
            self._ready.extend(exc.messages)
            self._failure = exc

    def request(self, message: Any) -> T:
        """Send a message and return the next message received: its reply.

        The timeout bounds the whole exchange, sending and receiving
        together. When it runs out (or the call is interrupted) after the
        request went out, the reply is still owed: it could arrive later and
        be taken for the answer to the next request. So the connection is
        closed, and later calls raise `ConnectionClosed` saying why. To keep
        waiting for a slow reply instead, use `send` then `recv`: a `recv`
        timeout leaves the connection usable.

        Raises:
            CodecError: the codec cannot encode the request (nothing sent) or
                decode the reply (consumed; the connection stays usable).
            FramingError: the framing cannot carry the request, or the peer's
                bytes do not follow it (`MessageTooLarge`, `TruncatedMessage`).
            Timeout: the exchange took longer than the timeout; the
                connection is closed.
            ConnectionClosed: the peer closed before replying, or this side
                had closed the connection.
            OSError: the connection broke.
        """
        deadline = self._deadline()
        self.send(message)
        try:
            reply = self._recv_bytes(deadline)
        except Timeout as exc:
            why, error = _socket.request_timed_out(self.address, exc)
            self._abandon(why)
            raise error from exc
        except BaseException as exc:
            if not isinstance(exc, Exception):  # KeyboardInterrupt: the reply is owed all the same
                self._abandon("when request() was interrupted: its late reply would answer the next one")
            raise
        return self._decode(reply)

    def _decode(self, message: bytes) -> T:
        # Without a codec, T is bytes (the constructor's overloads say so).
        return typing.cast("T", message) if self._codec is None else self._codec.decode(message)

    def __iter__(self) -> Iterator[T]:
        """Yield messages until the peer closes cleanly.

        Raises:
            FramingError: the peer's bytes do not follow the framing (a
                `TruncatedMessage` if it closed inside a message).
            CodecError: a message does not decode.
            Timeout: no whole message within the timeout.
            OSError: the connection broke. (A clean close ends the loop.)
        """
        while True:
            try:
                message = self.recv()
            except ConnectionClosed:
                return
            yield message

    # --- readiness -------------------------------------------------------------

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True when the next `recv()` will not block.

        That is: a message already decoded and waiting here, or bytes, EOF or
        an error pending on the socket (then `recv()` returns or raises at
        once, or waits only for the rest of a message already under way). A
        plain ``select`` on the socket misses messages an earlier `recv()`
        pulled into this process; `poll` never does.

        Args:
            timeout: seconds to wait; 0 checks and returns at once, None
                waits for ever.
        """
        return self._is_ready_here() or bool(_readable([self], timeout))

    def _link_is_down(self) -> bool:
        """True when this link is known dead without waiting: closed, failed, or ended by the peer.

        Reads what the socket holds already (a FIN, a reset, a TLS
        close_notify), at most a few times: what decodes stays queued.
        """
        for _ in range(4):  # a close_notify, then the FIN behind it
            if self._closed or self._failure is not None or self._peer_ended:
                return True
            if not _readable([self._sock], 0.0):
                return False
            try:
                self._receive_some()
            except OSError:
                return True
        return False

    def _is_ready_here(self) -> bool:
        """True when `recv()` can answer without touching the socket."""
        return bool(self._ready) or self._failure is not None or self._peer_ended or self._closed

    # --- closing ---------------------------------------------------------------

    def shutdown_write(self) -> None:
        """Half-close: tell the peer "I have finished sending"; keep receiving.

        Idempotent. After it, `send` raises `ConnectionClosed`.
        """
        if self._write_closed or self._closed:
            return
        self._write_closed = True
        try:
            if self._channel is not None:
                with self._crypto_lock:
                    goodbye = self._channel.close_write()
                with _socket.timeouts_as(f"sending to {format_address(self.address)}", self._timeout):
                    self._sock.sendall(goodbye)
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # The peer may already have gone; its close will show in recv().
            if exc.errno != errno.ENOTCONN:
                raise

    def close(self) -> None:
        """Close the connection. Idempotent; messages already received stay readable."""
        if not self._closed:
            self._closed = True
            if self._channel is not None and not self._write_closed:
                # TLS close_notify, if the socket takes it at once: a clean end, not a truncation.
                with self._crypto_lock:
                    goodbye = self._channel.close_write()
                with contextlib.suppress(OSError):
                    self._sock.setblocking(False)
                    self._sock.send(goodbye)
            self._sock.close()

    @property
    def is_closed(self) -> bool:
        """True once `close()` has been called (or a send timed out)."""
        return self._closed

    def _interrupt(self) -> None:
        """Shut the socket down both ways, from any thread: a `recv` or `send` blocked in another returns.

        ``close()`` alone does not wake a thread blocked on the socket (Linux
        keeps the call waiting); the multiplexed client's reader needs this.
        """
        if not self._closed:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    @property
    def skipped(self) -> int:
        """Messages from the peer over the framing's `max_size`, dropped (``on_oversize="skip"``); 0 otherwise.

        Each is also logged, a WARNING on the ``connecteur.client`` logger;
        `recv` simply returns the next message that fits.
        """
        return int(getattr(self._decoder, "skipped", 0))

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed), for `select`."""
        return self._sock.fileno()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


Waitable = Connection | socket.socket | int | Any
"""What `wait` watches: connections, sockets, descriptors, objects with ``fileno()``."""


def wait(objects: Iterable[Waitable], timeout: float | None = None) -> list[Waitable]:
    """Return those of `objects` that are ready to read, like ``multiprocessing.connection.wait``.

    Connections with a message already decoded here (or at EOF, failed or
    closed) are ready without asking the kernel, so none is missed; the rest
    are watched with one `selectors` call, which does not wait when some are
    ready already.

    Args:
        objects: `Connection` objects, sockets, file descriptors, or any
            object with ``fileno()``.
        timeout: seconds to wait; None waits for ever, 0 only polls.

    Returns:
        The ready objects, in the order given (an empty list on timeout).
    """
    objects = list(objects)
    ready_here = [obj for obj in objects if isinstance(obj, Connection) and obj._is_ready_here()]
    others = [obj for obj in objects if not (isinstance(obj, Connection) and obj._is_ready_here())]
    ready = set(map(id, ready_here)) | set(map(id, _readable(others, 0.0 if ready_here else timeout)))
    return [obj for obj in objects if id(obj) in ready]


def _readable(objects: list[Any], timeout: float | None) -> list[Any]:
    """The objects whose descriptors are readable within `timeout` (one selector call)."""
    if not objects:
        return []
    with selectors.DefaultSelector() as selector:
        for obj in objects:
            selector.register(obj, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout)]
