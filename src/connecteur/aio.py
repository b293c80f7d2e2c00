"""The asyncio twin of the blocking client, and a server for code already in a loop.

``await connect(...)`` returns a `Connection` with the blocking client's
names, awaitable: ``send``, ``send_many``, ``recv``, ``request``, ``close``,
``async for`` and ``async with``; ``shutdown_write()`` is a plain method. The
errors are the same classes (`ConnectionClosed`, `TruncatedMessage`,
`Timeout`, ...).

Like the asyncio engine, the client is an ``asyncio.BufferedProtocol`` that
feeds the same sans-I/O decoder (one parser everywhere, no ``StreamReader``).
It creates no task: waiting is done on futures the caller awaits, so a
cancelled call leaves nothing behind.

``await serve(handler, address, ...)`` runs the asyncio engine on the running
loop and returns an `AioServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, NamedTuple, Self, TypeVar, cast, final, overload

from . import _socket
from ._aio_multiplexed import MultiplexedConnection
from ._aio_reconnect import ReconnectingConnection
from ._aio_reconnect_mux import ReconnectingMultiplexedConnection
from ._channel import DEFAULT_HANDSHAKE_TIMEOUT, HANDSHAKE_ERRORS, Channel, ChannelSpec
from ._envelope import Heartbeat, heartbeat_of
from ._keepalive import Keepalive, KeepaliveLike, as_keepalive
from ._redial import Backoff
from ._skipping import report_skips
from .address import Address, AddressLike, TcpAddress, UnixAddress, format_address, parse_address
from .codecs import Codec
from .errors import ConnectionClosed, FramingError, Timeout
from .framing import BodyPool, Buffer, Framing, LengthPrefixed
from .server import DEFAULT_MESSAGE_TIMEOUT, EngineConfig, Stats, engine_config
from .server.asyncio import AsyncioEngine

__all__ = [
    "AioServer",
    "Connection",
    "MultiplexedConnection",
    "ReconnectingConnection",
    "ReconnectingMultiplexedConnection",
    "connect",
    "serve",
]

RECV_SIZE: Final = 256 * 2**10
"""256 KiB: the buffer the loop reads into, once per connection."""

READY_HIGH: Final = 1024
"""Messages decoded but not yet taken by `recv()` before reading pauses: a
peer cannot fill this process's memory faster than the caller consumes."""

_T = TypeVar("_T")

if TYPE_CHECKING:  # typing_extensions' TypeVar takes a default (PEP 696); type checkers know it from typeshed
    import typing_extensions

    T = typing_extensions.TypeVar("T", default=Any)
else:  # nothing reads the default at run time, where typing's TypeVar takes none before Python 3.13
    T = TypeVar("T")


@overload
async def connect(
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
async def connect(
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
async def connect(
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
async def connect(
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
async def connect(
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
async def connect(
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
async def connect(
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
async def connect(
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


async def connect(
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
    """Connect to a server and return an asyncio `Connection`.

    Args:
        address: ``"host:port"``, ``"[::1]:port"``, ``"unix:/path"`` or a tuple.
        framing: how messages are laid out; defaults to `LengthPrefixed()`.
        codec: turns values into messages and back (`connecteur.codecs`).
        timeout: seconds allowed for connecting (resolving the name and
            trying every address, together) and then for each whole `send`,
            `send_many`, `recv` or `request`, however slowly the bytes move;
            ``None`` waits for ever.
        tls: an `ssl.SSLContext` for the client side: the connection is TLS.
        server_hostname: the name the server's certificate must carry;
            defaults to the host of `address`.
        auth_key: a shared secret the server must hold too.
        allow_legacy_auth: also accept the HMAC-MD5 of Pythons before 3.12.
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
        on_connect: with `reconnect`, called (and awaited, if it returns an
            awaitable) with each new `Connection` (`MultiplexedConnection`
            with `multiplexed`) before it is used; an error of the link
            there counts as a failed attempt, any other is raised.
        multiplexed: speak the multiplexing envelope with a server that runs
            with ``multiplexed=True`` and return an `aio.MultiplexedConnection`:
            many tasks share it, each `request` gets its own reply (or a
            `RemoteError`), a timed-out request leaves the connection open.
            With `reconnect` too: an `aio.ReconnectingMultiplexedConnection`,
            whose links are each an `aio.MultiplexedConnection`.
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
            challenge within `handshake_timeout`.
        ssl.SSLError: the TLS handshake failed.
        ConnectionClosed: the server closed the connection during the handshake.
        OSError: every address failed (refused, unreachable, ...): the last
            failure's kind, such as ``ConnectionRefusedError``, naming each
            address; ``socket.gaierror`` when the name does not resolve.
    """
    beat = heartbeat_of(heartbeat)
    if beat is not None and not multiplexed:
        raise ValueError("heartbeat needs multiplexed=True: pings travel in the envelope")
    parsed = parse_address(address)
    spec = ChannelSpec.for_client(
        parsed, tls=tls, server_hostname=server_hostname, auth_key=auth_key, allow_legacy_auth=allow_legacy_auth
    )
    options = _DialOptions(framing if framing is not None else LengthPrefixed(), spec, as_keepalive(keepalive),
                           handshake_timeout, happy_eyeballs_delay)  # fmt: skip

    async def dial(seconds: float | None) -> Connection[Any]:
        """One connection, connected within `seconds`, whose calls then get `timeout`."""
        return Connection(await _open(parsed, options, seconds), codec=codec, timeout=timeout)

    if reconnect is None and on_connect is not None:
        raise ValueError("on_connect needs reconnect=Backoff(...): it is called on each new link")
    if multiplexed:

        async def dial_multiplexed(seconds: float | None) -> MultiplexedConnection[Any]:
            stream = Connection(await _open(parsed, options, seconds), timeout=timeout)
            return MultiplexedConnection(stream, codec=codec, timeout=timeout, heartbeat=beat)

        if reconnect is None:
            return await dial_multiplexed(timeout)
        shared: ReconnectingMultiplexedConnection[Any] = ReconnectingMultiplexedConnection(
            dial_multiplexed, address=address, backoff=reconnect, on_connect=on_connect, timeout=timeout
        )
        await shared._link(None if timeout is None else time.monotonic() + timeout, timeout)
        return shared
    if reconnect is None:
        return await dial(timeout)
    client: ReconnectingConnection[Any] = ReconnectingConnection(
        dial, address=address, backoff=reconnect, on_connect=on_connect, timeout=timeout
    )
    await client._link(client._deadline())
    return client


class _DialOptions(NamedTuple):
    """What every connection of one `connect` call is opened with."""

    framing: Framing
    spec: ChannelSpec
    keepalive: Keepalive | None
    handshake_timeout: float | None
    happy_eyeballs_delay: float | None


async def _open(parsed: Address, options: _DialOptions, timeout: float | None) -> _ClientProtocol:
    """Connect within `timeout` and finish the handshakes; return the open protocol."""
    loop = asyncio.get_running_loop()
    protocol = _ClientProtocol(options.framing, options.spec, options.keepalive)
    happy_eyeballs_delay, handshake_timeout = options.happy_eyeballs_delay, options.handshake_timeout
    race: _socket.ConnectRace | None = None
    try:
        async with asyncio.timeout(timeout):
            if isinstance(parsed, UnixAddress):
                await loop.create_unix_connection(lambda: protocol, parsed.path)
            else:
                race = _socket.ConnectRace(parsed, await _resolve(parsed), happy_eyeballs_delay)
                sock = await _run_race(race)
                try:
                    await loop.create_connection(lambda: protocol, sock=sock)
                except BaseException:
                    sock.close()
                    raise
    except TimeoutError as exc:
        if exc.errno is not None:  # ETIMEDOUT from the kernel: the last attempt gave up by itself
            raise
        if race is not None:
            raise race.timed_out(timeout or 0.0) from exc
        raise Timeout(f"connecting to {parsed} timed out after {timeout} s", seconds=timeout or 0.0) from exc
    finally:
        if race is not None:
            race.close()
    try:
        await protocol.wait_open(handshake_timeout)
    except BaseException:
        if protocol.transport is not None:
            protocol.transport.abort()
        raise
    return protocol


async def _resolve(address: TcpAddress) -> list[_socket.Target]:
    """The addresses to try, in order: an IP literal at once, a name through the loop's resolver."""
    targets = _socket.numeric_targets(address)
    if targets is not None:
        return targets
    infos = await asyncio.get_running_loop().getaddrinfo(
        address.host or "localhost", address.port, type=socket.SOCK_STREAM
    )
    return _socket.interleave([(family, target) for family, _, _, _, target in infos])


async def _run_race(race: _socket.ConnectRace) -> socket.socket:
    """Drive `race` on the running loop (any loop with ``add_writer``) until a socket connects.

    Raises:
        OSError: every address failed (`ConnectRace.error`).
    """
    loop = asyncio.get_running_loop()
    writable: dict[socket.socket, asyncio.Future[None]] = {}
    try:
        while True:
            for sock in race.start_due(time.monotonic()):
                writable[sock] = loop.create_future()
                loop.add_writer(sock.fileno(), _set_once, writable[sock])
            if race.failed:
                raise race.error()
            await asyncio.wait(
                writable.values(), timeout=race.wait_time(time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            for sock in [sock for sock, future in writable.items() if future.done()]:
                loop.remove_writer(sock.fileno())
                del writable[sock]
                if (winner := race.finished(sock)) is not None:
                    return winner
    finally:
        for sock in writable:
            loop.remove_writer(sock.fileno())


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _ClientProtocol(asyncio.BufferedProtocol):
    """Receives into one buffer, decodes, and wakes whoever waits for a message."""

    def __init__(self, framing: Framing, spec: ChannelSpec | None = None, keepalive: Keepalive | None = None) -> None:
        self.framing = framing
        self._spec = spec
        self._keepalive = keepalive
        self.channel: Channel | None = None  # TLS and authentication; None once open unless it encrypts
        self.opened: asyncio.Future[None] | None = None  # done when the channel is open
        self.decoder = framing.decoder()
        if (use_pool := getattr(self.decoder, "use_pool", None)) is not None:
            use_pool(BodyPool())  # large replies back to back reuse one body: no page faults for each
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.ready: deque[bytes] = deque()
        self.failure: BaseException | None = None
        self.peer_ended = False
        self.lost = False
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self.waiter: asyncio.Future[None] | None = None  # set while recv() waits
        self.closed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting it.
        self.transport = cast(asyncio.Transport, transport)
        self.closed = asyncio.get_running_loop().create_future()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _socket.configure_stream(sock, self._keepalive)
        self.opened = self.closed.get_loop().create_future()
        report_skips(self.framing, self.decoder, transport.get_extra_info("peername"))
        if self._spec is not None:
            self.channel = self._spec.open(transport.get_extra_info("peername"))
        if self.channel is None:
            self.opened.set_result(None)
        else:
            self.transport.write(self.channel.data_to_send())

    async def wait_open(self, timeout: float | None) -> None:
        """Wait for the handshakes to finish.

        Raises:
            the handshake's error, or `Channel.timed_out`'s after `timeout`.
        """
        assert self.opened is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.opened)
        except TimeoutError:
            if self.channel is not None and not self.opened.done():
                raise self.channel.timed_out(timeout or 0.0) from None
            raise

    def _through_channel(self, data: Buffer) -> Buffer:
        channel, opened = self.channel, self.opened
        assert channel is not None and opened is not None and self.transport is not None
        try:
            data = channel.receive(data)
        except HANDSHAKE_ERRORS as exc:
            self.transport.write(channel.data_to_send())  # an alert or #FAILURE# for the server
            self._fail_handshake(exc)
            raise
        if out := channel.data_to_send():
            self.transport.write(out)
        if channel.is_open and not opened.done():
            opened.set_result(None)
            if not channel.encrypts:
                self.channel = None
        return data

    def _fail_handshake(self, error: BaseException) -> None:
        self.failure = error
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(error)
            self.opened.exception()  # retrieved here too: connect() may already have given up
        if self.transport is not None:
            self.transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data: Buffer = self.view[:nbytes]
        if self.channel is not None:
            try:
                data = self._through_channel(data)
            except HANDSHAKE_ERRORS:
                return
        try:
            self.ready.extend(self.decoder.feed(data))
        except FramingError as exc:
            self.ready.extend(exc.messages)
            self.failure = exc
        if len(self.ready) > READY_HIGH and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.peer_ended = True
        if self.channel is not None and not self.channel.is_open:
            try:
                self.channel.receive_eof()
            except HANDSHAKE_ERRORS as exc:
                self._fail_handshake(exc)
                return False
        try:
            self.ready.extend(self.decoder.eof())
        except FramingError as exc:
            self.failure = exc
        self._wake()
        return True  # keep writing possible: the peer only half-closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.failure is None:
            self.failure = exc
        if self.opened is not None and not self.opened.done():
            self._fail_handshake(self.failure or ConnectionClosed("the connection closed during the handshake"))
        self._wake()
        for future in (self.writable, self.closed):
            if future is not None and not future.done():
                future.set_result(None)

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def took_one(self) -> None:
        """A message left `ready`: read again once the caller has caught up."""
        if self.reading_paused and len(self.ready) < READY_HIGH // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()


@final
class Connection(Generic[T]):
    """An asyncio message connection; create it with `connect()`.

    Generic in what `recv` returns, as the blocking `connecteur.Connection`:
    ``Connection[bytes]`` without a codec, the codec's decoded type with one.

    One task may `send` while another `recv`s; two tasks sending at once
    must take turns themselves (an ``asyncio.Lock``), as must two receivers.

    The timeout bounds each whole call. A `Timeout` (or a cancellation) in
    `recv` or `send` leaves the connection usable: bytes received are kept,
    and a message handed to `send` goes out whole. One inside `request`,
    once the request is handed over, closes it: the late reply would
    answer the next request.
    """

    def __init__(self, protocol: _ClientProtocol, *, codec: Codec[T] | None = None, timeout: float | None) -> None:
        self._protocol = protocol
        self._codec = codec
        self._timeout = timeout
        self._write_closed = False
        self._closed = False
        self._closed_why = "with close()"
        transport = protocol.transport
        assert transport is not None
        self._transport = transport
        self.framing: Framing = protocol.framing
        """The framing of this connection."""
        self.address: object = transport.get_extra_info("peername")
        """The peer's address as the socket module gives it."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<aio.Connection {state} to {format_address(self.address)} framing={self.framing!r}>"

    @property
    def timeout(self) -> float | None:
        """Seconds allowed for each whole `send`, `send_many`, `recv` or `request` (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def _link_is_down(self) -> bool:
        """True when this link is known dead: closed here, lost, failed, or ended by the peer (as the loop saw)."""
        protocol = self._protocol
        return self._closed or protocol.lost or protocol.peer_ended or protocol.failure is not None

    def _deadline(self) -> float | None:
        """When a call starting now must end, on the loop's clock."""
        return None if self._timeout is None else asyncio.get_running_loop().time() + self._timeout

    async def _by(self, deadline: float | None, awaitable: Awaitable[_T], what: str) -> _T:
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError as exc:
            seconds = self._timeout or 0.0
            raise Timeout(f"{what} {format_address(self.address)} took more than {seconds} s", seconds=seconds) from exc

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(f"this connection was closed {self._closed_why}", by_peer=False)

    # --- sending ---------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Send one whole message; return once the transport can take more.

        Raises:
            CodecError: the codec cannot encode the value (nothing sent).
            FramingError: the framing cannot carry the message (nothing sent).
            Timeout: the peer did not read enough within the timeout (the
                message stays queued whole: the connection is usable).
            ConnectionClosed: this side already closed or half-closed it.
            OSError: the connection broke.
        """
        await self._send(message, self._deadline())

    async def _send(self, message: Any, deadline: float | None) -> None:
        await self._write(
            self.framing.encode(message if self._codec is None else self._codec.encode(message)), deadline
        )

    async def send_many(self, messages: Iterable[Any]) -> None:
        """Send several messages in one write; none is sent if one cannot be framed.

        Raises:
            CodecError: the codec cannot encode a value (nothing sent).
            FramingError: the framing cannot carry a message (nothing sent).
            Timeout: the peer did not read enough within the timeout.
            ConnectionClosed: this side already closed or half-closed it.
            OSError: the connection broke.
        """
        frame, codec = self.framing.encode, self._codec
        if codec is None:
            data = b"".join([frame(message) for message in messages])
        else:
            data = b"".join([frame(codec.encode(message)) for message in messages])
        await self._write(data, self._deadline())

    async def _write(self, data: bytes, deadline: float | None) -> None:
        if self._closed:
            raise self._closed_error()
        if self._write_closed:
            raise ConnectionClosed("cannot send after shutdown_write()", by_peer=False)
        protocol = self._protocol
        if protocol.lost:
            raise (
                protocol.failure
                if isinstance(protocol.failure, OSError)
                else ConnectionResetError(f"the connection to {format_address(self.address)} is lost")
            )
        self._transport.write(data if protocol.channel is None else protocol.channel.send(data))
        if protocol.writable is not None:
            await self._by(deadline, asyncio.shield(protocol.writable), "sending to")

    # --- receiving -------------------------------------------------------------

    async def recv(self) -> T:
        """Return the next message, waiting for it if needed.

        Raises:
            ConnectionClosed: the peer closed cleanly between messages (or this
                side closed the connection).
            TruncatedMessage: the peer closed inside a message.
            FramingError: the peer's bytes do not follow the framing; messages
                that came before the bad bytes are returned first.
            Timeout: no whole message within the timeout, however slowly its
                bytes came (those received so far are kept; `recv()` may be
                called again).
            CodecError: the message does not decode (it is consumed).
            OSError: the connection broke.
        """
        return self._decode(await self._recv_bytes(self._deadline()))

    async def _recv_bytes(self, deadline: float | None) -> bytes:
        protocol = self._protocol
        while not protocol.ready:
            if protocol.failure is not None:
                raise protocol.failure
            if self._closed:
                raise self._closed_error()
            if protocol.peer_ended or protocol.lost:
                raise ConnectionClosed(f"{format_address(self.address)} closed the connection")
            protocol.waiter = asyncio.get_running_loop().create_future()
            try:  # each chunk of bytes wakes us; the deadline stays that of the call
                await self._by(deadline, protocol.waiter, "waiting for a message from")
            finally:
                protocol.waiter = None
        message = protocol.ready.popleft()
        protocol.took_one()
        return message

    async def request(self, message: Any) -> T:
        """Send a message and return the next message received: its reply.

        The timeout bounds the whole exchange. When it runs out, or the call
        is cancelled, after the request was handed over, the reply is still
        owed and could be taken for the answer to the next request: so the
        connection is closed, and later calls raise `ConnectionClosed` saying
        why. To keep waiting for a slow reply, use `send` then `recv`.

        Raises:
            CodecError: the codec cannot encode the request (nothing sent) or
                decode the reply (consumed; the connection stays usable).
            FramingError: the framing cannot carry the request, or the peer's
                bytes do not follow it.
            Timeout: the exchange took longer than the timeout; the
                connection is closed.
            ConnectionClosed: the peer closed before replying.
            OSError: the connection broke.
        """
        deadline = self._deadline()
        data = self.framing.encode(message if self._codec is None else self._codec.encode(message))
        try:
            await self._write(data, deadline)
            reply = await self._recv_bytes(deadline)
        except Timeout as exc:
            why, error = _socket.request_timed_out(self.address, exc)
            self._abandon(why)
            raise error from exc
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the reply is owed all the same
                self._abandon("when request() was cancelled: its late reply would answer the next one")
            raise
        return self._decode(reply)

    def _decode(self, message: bytes) -> T:
        # Without a codec, T is bytes (connect's overloads say so).
        return cast("T", message) if self._codec is None else self._codec.decode(message)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[T]:
        """Yield messages until the peer closes cleanly."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed:
                return
            yield message

    # --- closing ---------------------------------------------------------------

    def shutdown_write(self) -> None:
        """Half-close: tell the peer "I have finished sending"; keep receiving. Idempotent."""
        if self._write_closed or self._closed or self._protocol.lost:
            return
        self._write_closed = True
        self._say_goodbye()
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def _say_goodbye(self) -> None:
        """Queue TLS's close_notify: a clean end of this side's stream, not a truncation."""
        channel = self._protocol.channel
        if channel is not None:
            self._transport.write(channel.close_write())

    def _abandon(self, why: str) -> None:
        """Close the transport now (no waiting), saying why in the errors of later calls."""
        if not self._closed:
            self._closed = True
            self._closed_why = why
            if not self._write_closed and not self._protocol.lost:
                self._say_goodbye()
            self._transport.close()

    async def close(self) -> None:
        """Close the connection and wait until the transport is gone. Idempotent."""
        self._abandon("with close()")
        closed = self._protocol.closed
        if closed is not None:
            await asyncio.shield(closed)

    @property
    def is_closed(self) -> bool:
        """True once `close()` has been called."""
        return self._closed

    @property
    def skipped(self) -> int:
        """Messages from the peer over the framing's `max_size`, dropped (``on_oversize="skip"``); 0 otherwise.

        Each is also logged, a WARNING on the ``connecteur.client`` logger;
        `recv` simply returns the next message that fits.
        """
        return int(getattr(self._protocol.decoder, "skipped", 0))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# --- a server inside the running loop --------------------------------------------


async def serve(
    handler: object,
    address: AddressLike,
    *,
    framing: Framing | None = None,
    codec: Codec | None = None,
    max_connections: int = 10_000,
    idle_timeout: float | None = None,
    message_timeout: float | None = DEFAULT_MESSAGE_TIMEOUT,
    backlog: int = 128,
    tls: ssl.SSLContext | None = None,
    auth_key: bytes | None = None,
    allow_legacy_auth: bool = False,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    proxy_protocol: str = "off",
    proxy_trusted: list[str] | tuple[str, ...] | None = None,
    keepalive: KeepaliveLike = None,
    multiplexed: bool = False,
    heartbeat: Heartbeat | tuple[float, float] | None = None,
) -> AioServer:
    """Start serving on the running loop; return the `AioServer`.

    The arguments are `Server`'s; the handler may be ``async def`` (with
    `multiplexed`, its replies leave as each finishes).

    Raises:
        AddressError, TypeError, ValueError: as `Server` does.
        OSError: the address cannot be bound.
    """
    config = engine_config(
        handler, framing=framing, codec=codec, max_connections=max_connections,
        idle_timeout=idle_timeout, message_timeout=message_timeout, handshake_timeout=handshake_timeout,
        keepalive=keepalive, channel=ChannelSpec.build(
            server_side=True, tls=tls, auth_key=auth_key, allow_legacy_auth=allow_legacy_auth,
            proxy_protocol=proxy_protocol, proxy_trusted=proxy_trusted,
        ),
        multiplexed=multiplexed, heartbeat=heartbeat,
    )  # fmt: skip
    listener = _socket.listen(parse_address(address), backlog=backlog)
    return AioServer(config, listener)


@final
class AioServer:
    """A server running on the current event loop; made by `serve()`."""

    def __init__(self, config: EngineConfig, listener: socket.socket) -> None:
        self._config = config
        self.address: Any = _socket.bound_address(listener)
        """The bound address, as `Server.address` gives it."""
        self._engine = AsyncioEngine(config)
        self._task = asyncio.ensure_future(self._engine.run(listener))

    @property
    def stats(self) -> Stats:
        """An immutable snapshot of the server's counters."""
        return self._config.counters.snapshot()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully within `timeout` seconds (as `Server.stop`). Idempotent."""
        self._engine.request_stop(time.monotonic() + timeout)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if isinstance(self.address, str):
            _socket.unlink_unix_socket(self.address[len("unix:") :])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
