"""`Server`: one handler API over several engines.

The HOWTO's three ways to run a server (a thread per client, a process per
client, non-blocking sockets multiplexed with select) are engines behind the
internal `Engine` interface; `Server` binds the socket, picks the engine,
runs it in a background thread (`serve_forever` waits for a signal meanwhile),
and stops it gracefully, by a deadline that holds even if a handler blocks.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, Final, Self, final

from .. import _socket
from .._channel import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from .._channel import PROXY_PROTOCOLS as PROXY_PROTOCOLS
from .._channel import ChannelSpec
from .._envelope import Heartbeat, heartbeat_of
from .._keepalive import KeepaliveLike, as_keepalive
from ..address import Address, AddressLike, TcpAddress, UnixAddress, parse_address
from ..codecs import Codec
from ..errors import WorkersFailed
from ..framing import Framing, LengthPrefixed
from . import _multiplex
from ._engine import (
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MESSAGE_TIMEOUT,
    Counters,
    Engine,
    Stats,
    StopSignal,
    logger,
)
from ._engine import EngineConfig as EngineConfig
from ._fanout import POLICIES as POLICIES
from ._fanout import BroadcastResult, check_policy
from ._handler import Handler, MessageHandler, PeerHandler
from ._limits import HIGH_WATER, LOW_WATER
from ._peer import Peer

# Also importable from here, outside __all__, for modules that may not import private ones:
# DEFAULT_HANDSHAKE_TIMEOUT and PROXY_PROTOCOLS (the command line), EngineConfig (aio).
__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MESSAGE_TIMEOUT",
    "ENGINES",
    "POLICIES",
    "BroadcastResult",
    "MessageHandler",
    "Peer",
    "PeerHandler",
    "Server",
    "Stats",
]

ENGINES: Final = ("select", "threads", "processes", "asyncio")
"""The engine names `Server` accepts."""

ABANDON_GRACE: Final = 0.25
"""Seconds past the stop deadline after which `stop()` gives up on an engine
whose thread has not ended, stuck in a handler: more than the engines take to
close what is left at the deadline, little enough that the stop keeps it."""

DEFAULT_BACKLOG: Final = 128
"""Pending connections the kernel queues before ``accept()``; the usual
``somaxconn`` default, enough for bursts of new clients."""


def _make_engine(name: str, config: EngineConfig, loop: str = "asyncio") -> Engine:
    if name == "asyncio":
        from .asyncio import AsyncioEngine

        return AsyncioEngine(config, loop=loop)
    if name == "select":
        from .select import SelectEngine

        return SelectEngine(config)
    if name == "threads":
        from .threads import ThreadsEngine

        return ThreadsEngine(config)
    if name == "processes":
        from .processes import ProcessesEngine

        return ProcessesEngine(config)
    raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")


def engine_config(
    handler: object,
    *,
    framing: Framing | None,
    codec: Codec | None = None,
    max_connections: int,
    idle_timeout: float | None,
    message_timeout: float | None,
    channel: ChannelSpec | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    max_buffered: int = DEFAULT_MAX_BUFFERED,
    keepalive: KeepaliveLike = None,
    multiplexed: bool = False,
    heartbeat: Heartbeat | tuple[float, float] | None = None,
    high_water: int = HIGH_WATER,
    low_water: int = LOW_WATER,
    slow_consumer: str = "close",
) -> EngineConfig:
    """Check a server's options and return the configuration its engine runs with.

    Raises:
        TypeError: the handler is neither form, `keepalive` of the wrong type, or `heartbeat` neither form.
        ValueError: an impossible limit, or a heartbeat without `multiplexed`.
    """
    beat = heartbeat_of(heartbeat)
    if beat is not None and not multiplexed:
        raise ValueError("heartbeat needs multiplexed=True: pings travel in the envelope")
    plain_envelopes = None
    if multiplexed:  # the envelope is a handler and a codec around the user's: the engines see no difference
        envelopes, codec = _multiplex.multiplexed(handler, codec, beat)
        handler = envelopes
        plain_envelopes = envelopes if envelopes.is_plain else None  # but the session's fast path for it
    _check_positive("handshake_timeout", handshake_timeout)
    tcp_keepalive = as_keepalive(keepalive)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
    _check_positive("idle_timeout", idle_timeout)
    _check_positive("message_timeout", message_timeout)
    if isinstance(max_buffered, bool) or not isinstance(max_buffered, int) or max_buffered < 1:
        raise ValueError(f"max_buffered must be a positive int (bytes), not {max_buffered!r}")
    _check_water_marks(high_water, low_water)
    check_policy(slow_consumer)
    return EngineConfig(
        handler=Handler(handler, codec),
        framing=framing if framing is not None else LengthPrefixed(),
        counters=Counters(),
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        message_timeout=message_timeout,
        channel=channel if channel is not None else ChannelSpec(server_side=True),
        handshake_timeout=handshake_timeout,
        max_buffered=max_buffered,
        keepalive=tcp_keepalive,
        high_water=high_water,
        low_water=low_water,
        slow_consumer=slow_consumer,
        plain_envelopes=plain_envelopes,
    )


def _check_water_marks(high_water: int, low_water: int) -> None:
    for name, value in (("high_water", high_water), ("low_water", low_water)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int of bytes, 0 or more, not {value!r}")
    if low_water > high_water:
        raise ValueError(f"low_water ({low_water}) must not exceed high_water ({high_water})")


@final
class Server:
    """A message server: a handler, an address, a framing and an engine.

    Args:
        handler: a callable ``message -> reply | None``, or an object with
            any of ``connected(peer)``, ``received(peer, message)`` (may
            return a reply) and ``closed(peer, error)``.
        address: where to listen: ``"host:port"``, ``"[::1]:port"``,
            ``":port"`` (every interface), ``"unix:/path"`` or a tuple. Port 0
            picks a free port; `address` tells which once started.
        sock: instead of `address`, a socket already bound and listening
            (from systemd socket activation, or a parent process); the server
            adopts it and closes it when it stops.
        reuse_port: bind with ``SO_REUSEPORT``, so that a new server can bind
            the same port while this one still serves: the zero-downtime
            restart (start the new one, then stop this one gracefully; on
            Linux the stop first steers new connections to the newer server,
            see the deployment guide). For a hand-over, not for balancing
            servers (use `workers`).
        framing: how messages are laid out; defaults to `LengthPrefixed()`.
        codec: turns each message into a value for the handler, and its
            replies (and `peer.send` values) back into bytes; see
            `connecteur.codecs`. None: the handler sees bytes.
        engine: ``"select"`` (one thread multiplexing every connection with
            non-blocking sockets, the default), ``"threads"`` (a thread per
            connection), ``"processes"`` (a forked process per connection;
            handler state is then per connection, see the engine's notes) or
            ``"asyncio"`` (asyncio protocols; handlers may be ``async def``).
        loop: the asyncio engine's event loop: ``"asyncio"`` or ``"uvloop"``
            (``pip install 'connecteur[uvloop]'``).
        workers: processes serving the port, each with its own engine, to use
            every core (the select and asyncio engines). Handler state is then per
            worker; `stats` adds up every worker's counters. A worker that dies
            is replaced; 5 deaths within 10 s stop the server (`WorkersFailed`).
        max_connections: connections served at once (per worker); beyond it, a new
            connection is closed as soon as it is accepted.
        idle_timeout: close a connection when no whole message has moved in
            either direction for this many seconds (None: never).
        message_timeout: close a connection whose message takes longer than
            this from its first byte to its last (None: no limit). The default,
            `DEFAULT_MESSAGE_TIMEOUT` (60 s), stops a peer that trickles a
            message, or sends a header and nothing more, from holding its
            buffers for ever.
        max_buffered: bytes the server (each process of it) may hold for all
            its connections together, in unfinished messages and queued
            replies. Past it, a connection whose read adds to the total is no
            longer read; if the total stays over for `BUDGET_GRACE` (1 s), the
            connections holding the most are closed, largest first, and counted
            in `Stats.evicted`. The default, `DEFAULT_MAX_BUFFERED`, is 256 MiB.
            Replies and messages queued for slow readers count against it.
        high_water: bytes queued for one peer past which it is no longer
            read and the handler's ``paused(peer)`` is called; ``"drop"``
            sends are then dropped. Default 1 MiB.
        low_water: bytes queued under which such a peer is read again and
            the handler's ``resumed(peer)`` is called. Default 256 KiB.
        slow_consumer: the policy of `peer.send` and `broadcast` for a peer
            over `high_water`, when they name none: ``"close"`` (queue it;
            close the peer past the 16 MiB hard cap), ``"drop"`` or
            ``"drop_oldest"`` (see docs/fan-out.md).
        backlog: connections the kernel may queue before they are accepted.
        stop_timeout: seconds a graceful stop may take when none is given.
        keepalive: TCP keepalive and ``TCP_USER_TIMEOUT`` for every accepted
            connection: a `Keepalive`, or seconds within which a dead peer
            is noticed (`Keepalive.within`). None: the kernel's defaults
            (on Linux, 2 h 11 min for an idle peer).
        tls: an `ssl.SSLContext` made for the server side (its certificate
            loaded): every connection is TLS. None: plain TCP.
        auth_key: a shared secret: each client must prove it holds the same
            key (an HMAC challenge in both directions, compatible with
            ``multiprocessing.connection``) before the handler sees it.
        allow_legacy_auth: also accept the HMAC-MD5 answers of
            ``multiprocessing.connection`` before Python 3.12.
        handshake_timeout: seconds from accept to the end of the PROXY
            header, TLS and authentication handshakes (None: no limit).
        proxy_protocol: ``"v1"``, ``"v2"`` or ``"auto"``: every connection
            starts with HAProxy's PROXY header, and `peer.address` is the
            client it names; ``"off"`` (the default): no header.
        proxy_trusted: the networks (``"10.0.0.0/8"``, ``"::1"``, and
            ``"unix"`` for Unix socket peers) PROXY headers are accepted from;
            any other connection is closed. Required with `proxy_protocol`.
        multiplexed: speak the multiplexing envelope (``docs/multiplexing.md``)
            with clients that connect with ``multiplexed=True``: the handler
            sees each request's payload and its reply carries the request's
            id; a handler that raises answers that request with an error
            reply (the client raises `RemoteError`) and the connection stays
            open; one-way messages get no reply; ``peer.send`` sends one-way
            messages. On the asyncio engine an ``async def`` handler's
            replies leave as each finishes; on the others, in order.
        heartbeat: with `multiplexed`, a `Heartbeat` or an ``(interval,
            deadline)`` pair: ping a client silent for `interval` seconds,
            close it once silent for ``interval + deadline``. None: no pings
            (the server still answers the clients' pings).

    Raises:
        AddressError: the address cannot be parsed.
        TypeError: the handler is neither form; `tls`, `auth_key` or `keepalive` of the wrong type.
        ValueError: an unknown engine or an impossible limit.
    """

    def __init__(
        self,
        handler: MessageHandler | object,
        address: AddressLike | None = None,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        framing: Framing | None = None,
        codec: Codec | None = None,
        engine: str = "select",
        loop: str = "asyncio",
        workers: int = 1,
        max_connections: int = 10_000,
        idle_timeout: float | None = None,
        message_timeout: float | None = DEFAULT_MESSAGE_TIMEOUT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        backlog: int = DEFAULT_BACKLOG,
        stop_timeout: float = 5.0,
        keepalive: KeepaliveLike = None,
        tls: ssl.SSLContext | None = None,
        auth_key: bytes | None = None,
        allow_legacy_auth: bool = False,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        proxy_protocol: str = "off",
        proxy_trusted: list[str] | tuple[str, ...] | None = None,
        multiplexed: bool = False,
        heartbeat: Heartbeat | tuple[float, float] | None = None,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        slow_consumer: str = "close",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        if workers > 1 and engine not in ("select", "asyncio"):
            raise ValueError(f"workers > 1 needs engine='select' or 'asyncio', not {engine!r}")
        if loop != "asyncio" and engine != "asyncio":
            raise ValueError(f"loop={loop!r} needs engine='asyncio'")
        if engine == "asyncio":
            from .asyncio import loop_factory

            loop_factory(loop)  # fails now, with one line, if uvloop is missing
        _check_positive("stop_timeout", stop_timeout)
        if (address is None) == (sock is None):
            raise ValueError("give an address to listen on, or a listening sock, not both")
        if sock is not None:
            _socket.check_listening(sock)
            self._address = _socket.socket_address(sock)
        else:
            if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
                raise ValueError("reuse_port needs SO_REUSEPORT, which this platform lacks")
            self._address = parse_address(address)
        self._sock = sock
        self._adopted_socket = sock is not None
        self._reuse_port = reuse_port
        self._listener: socket.socket | None = None
        self._config = engine_config(
            handler,
            framing=framing,
            codec=codec,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            message_timeout=message_timeout,
            max_buffered=max_buffered,
            high_water=high_water,
            low_water=low_water,
            slow_consumer=slow_consumer,
            channel=ChannelSpec.build(
                server_side=True,
                tls=tls,
                auth_key=auth_key,
                allow_legacy_auth=allow_legacy_auth,
                proxy_protocol=proxy_protocol,
                proxy_trusted=proxy_trusted,
            ),
            handshake_timeout=handshake_timeout,
            keepalive=keepalive,
            multiplexed=multiplexed,
            heartbeat=heartbeat,
        )
        self._counters = self._config.counters
        self.engine: str = engine
        """The engine's name."""
        self.loop: str = loop
        """The event loop of the asyncio engine: ``"asyncio"`` or ``"uvloop"``."""
        self.workers: int = workers
        """How many processes serve (1: this one)."""
        self._backlog = backlog
        self._stop_timeout = stop_timeout
        self._bound: object = None
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None  # what stopped the engine by itself, raised once
        self._deadline: float | None = None  # the stop's, once one is asked
        self._lock = threading.Lock()
        self._abandoned = False  # the engine's thread was given up at the deadline
        # Set when the engine's thread ends or is given up: what stop() waits for. Not a
        # join(), so that a stop waiting for a later deadline returns with one that abandons.
        self._ended = threading.Event()
        self._address_released = False
        self._wake: Callable[[], None] = _nothing  # wakes serve_forever's wait

    def __repr__(self) -> str:
        where = self._bound if self._bound is not None else self._address
        return f"<Server {self.engine} {where!s} framing={self.framing!r}>"

    @property
    def framing(self) -> Framing:
        """The framing every connection uses."""
        return self._config.framing

    @property
    def address(self) -> Any:  # the socket module types addresses as Any too
        """The bound address: a socket-module tuple, or ``"unix:/path"``.

        Pass it to `connect()` as it is; for TCP, ``host, port = address[:2]``.

        Raises:
            RuntimeError: the server has not been started.
        """
        if self._bound is None:
            raise RuntimeError("the server is not started: use `with server:`, start() or serve_forever()")
        return self._bound

    @property
    def stats(self) -> Stats:
        """An immutable snapshot of the server's counters."""
        return self._counters.snapshot()

    # --- fan-out ---------------------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        """A snapshot of the live peers: connections whose handler's ``connected`` has run, not yet closed.

        Safe from any thread. A peer may close right after: sending to it
        then raises `ConnectionClosed` (`broadcast` counts it instead).

        Raises:
            RuntimeError: the server is not started, or its connections are
                not in this process (``workers > 1``, the processes engine).
        """
        return list(self._fan_out_engine().peers())

    def broadcast(
        self, message: Any, *, exclude: Peer | Iterable[Peer] | None = None, policy: str | None = None
    ) -> BroadcastResult:
        """Send `message` to every live peer but `exclude`; safe from handlers and from any thread.

        The message is framed (and encoded by the codec) once, and queued to
        each peer without waiting, under the slow-consumer `policy` (None:
        the server's `slow_consumer`), so a slow reader never slows the
        others. On the event-loop engines, called from another thread, it
        returns once the loop has queued it; on the threads engine the
        calling thread queues each copy and writes what its socket takes at
        once, the rest being left to that connection's writer thread.

        Returns:
            How many peers it was delivered (queued) to, dropped for, and closed.

        Raises:
            RuntimeError: as `peers`.
            ValueError: an unknown policy.
            CodecError: the codec cannot encode `message`.
            FramingError: the framing cannot carry it.
        """
        engine = self._fan_out_engine()
        data = self._config.framing.encode(self._config.handler.encode_value(message))
        skipped = () if exclude is None else (exclude,) if isinstance(exclude, Peer) else exclude
        return engine.broadcast(data, skipped, policy)  # type: ignore[no-any-return]

    def _fan_out_engine(self) -> Any:
        """The engine, if it holds every connection in this process."""
        if self.workers > 1 or self.engine == "processes":
            raise RuntimeError(
                "peers and broadcast need every connection in one process: engine select, asyncio or threads, workers=1"
            )
        if self._engine is None:
            raise RuntimeError("the server is not started: use `with server:`, start() or serve_forever()")
        return self._engine

    # --- running ---------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a background thread; return once listening.

        Should the server stop by itself (its workers kept dying, see
        `WorkersFailed`), the error is logged then, and `stop()` raises it.

        Raises:
            RuntimeError: the server was already started.
            OSError: the address cannot be bound.
        """
        engine, listener = self._prepare()
        self._start_thread(engine, listener)

    def serve_forever(self, *, ready: Callable[[], object] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (or `stop()` from another thread), then stop gracefully.

        Args:
            ready: called once the server listens, when `address` is known
                (to print it, or to tell a supervisor).

        The engine runs in a background thread while this one waits, so that
        the stop keeps its deadline even when a handler blocks. A second
        signal forces the stop: every connection is closed at once, and
        once everything is closed the signal takes its usual course, as if it had not been
        caught: SIGINT raises `KeyboardInterrupt` (Python's default handler),
        SIGTERM ends the process (its default action), unless the application
        had installed handlers of its own, which are then called. Signals are
        only caught when called from the main thread; elsewhere, call
        `stop()` from another thread.

        Raises:
            RuntimeError: the server was already started.
            OSError: the address cannot be bound.
            WorkersFailed: with `workers`, workers kept dying (each is
                replaced, up to a limit): the server stopped, the other
                workers gracefully.
        """
        engine, listener = self._prepare()
        waiter = StopSignal()
        forced: list[int] = []  # the signal that forced the stop, if one did
        try:
            with self._signals_stop(waiter, forced):
                self._wake = waiter.wake
                self._start_thread(engine, listener)
                try:
                    if ready is not None:
                        ready()
                    self._await_engine(waiter.wait)
                except BaseException:
                    self.stop(0)
                    raise
        finally:
            self._wake = _nothing
            waiter.close()
        self._raise_failure()
        if forced:
            signal.raise_signal(forced[0])  # the handlers in place before serve_forever are back

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully, within `timeout` seconds (default: `stop_timeout`).

        Stops accepting; each open connection is served until its peer
        closes or the time is up, so every message already received is
        answered; then every connection is closed. Idempotent; a server that
        never started does nothing.

        Returns by the deadline (plus `ABANDON_GRACE`) even while a handler
        blocks: the connections are then closed, the handler still running
        is logged (a warning naming it and its peer), and the thread running
        it is left behind until the handler returns; what it sends then goes
        nowhere. The forked engines kill their processes instead.

        Raises:
            WorkersFailed: the server, started with `start()`, had stopped by
                itself because its workers kept dying (raised once).
        """
        if self._engine is None:
            return
        self._hand_over()
        seconds = self._stop_timeout if timeout is None else timeout
        self._request_stop(time.monotonic() + seconds)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._await_engine(self._ended.wait)
        self._raise_failure()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        except Exception:
            if exc is None:  # else the block's own error says more; the server's was logged
                raise

    # --- internals -------------------------------------------------------------

    def _prepare(self) -> tuple[Engine, socket.socket]:
        if self._engine is not None:
            raise RuntimeError("this server was already started; create a new Server to serve again")
        if self._sock is not None:
            listener, self._sock = self._sock, None
        else:
            reuse_port = self._reuse_port or self._workers_reuse_port
            listener = _socket.listen(self._address, backlog=self._backlog, reuse_port=reuse_port)
        self._bound = _socket.bound_address(listener)
        self._listener = listener
        if self.workers > 1:
            from .workers import WorkersEngine

            port = 0 if isinstance(self._address, UnixAddress) else listener.getsockname()[1]
            bound: Address | None = (
                self._address if isinstance(self._address, UnixAddress) else TcpAddress(self._address.host, port)
            )
            if self._adopted_socket:
                bound = None  # the workers share the adopted socket
            self._engine = WorkersEngine(
                self._config,
                lambda config: _make_engine(self.engine, config, self.loop),
                workers=self.workers,
                address=bound,
                backlog=self._backlog,
                stop_timeout=self._stop_timeout,
            )
        else:
            self._engine = _make_engine(self.engine, self._config, self.loop)
        return self._engine, listener

    def _hand_over(self) -> None:
        """With reuse_port, let a newer server on the port take the new connections now."""
        listener = self._listener
        if self._reuse_port and self.workers == 1 and listener is not None:
            _socket.hand_over(listener)  # a listener the engine closed already is skipped

    @property
    def _workers_reuse_port(self) -> bool:
        """Workers each bind the port themselves where the kernel balances them."""
        return self.workers > 1 and isinstance(self._address, TcpAddress) and hasattr(socket, "SO_REUSEPORT")

    def _start_thread(self, engine: Engine, listener: socket.socket) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(engine, listener), name="connecteur server", daemon=True
        )
        self._thread.start()
        forked = getattr(engine, "forked", None)
        if isinstance(forked, threading.Event):
            forked.wait()  # workers: see WorkersEngine.forked

    def _run(self, engine: Engine, listener: socket.socket) -> None:
        """The engine's thread: serve; an error is logged now and raised by `serve_forever` or `stop()`."""
        try:
            engine.serve(listener)
        except WorkersFailed as exc:  # each death was logged, and the last said the server stops
            self._failure = exc
        except Exception as exc:
            logger.exception("the %s engine failed", self.engine)
            self._failure = exc
        finally:
            self._release_address()
            self._ended.set()
            self._wake()

    def _raise_failure(self) -> None:
        """Raise, once, what stopped the engine by itself."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _request_stop(self, deadline: float) -> None:
        """Ask the engine to stop by `deadline`; an earlier deadline than one already set wins."""
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
        assert self._engine is not None
        self._engine.request_stop(deadline)
        self._wake()

    def _await_engine(self, wait: Callable[[float | None], object]) -> None:
        """Wait for the engine's thread to end, with `wait(seconds)`; past the deadline, abandon it.

        `wait` returns when the thread ends or is abandoned, or earlier (a wake-up: look again).
        """
        while not self._ended.is_set():  # not thread.is_alive(): the thread may linger a moment after setting it
            if self._deadline is None:
                wait(None)
                continue
            remaining = self._deadline + ABANDON_GRACE - time.monotonic()
            if remaining <= 0:
                self._abandon()
                return
            wait(remaining)

    def _abandon(self) -> None:
        """The engine's thread is stuck past the deadline (in a handler): give up on it, once."""
        with self._lock:
            if self._abandoned or self._ended.is_set():
                return
            self._abandoned = True
        assert self._engine is not None
        self._engine.abandon()
        self._release_address()
        self._ended.set()
        self._wake()

    def _release_address(self) -> None:
        """Remove the Unix socket's file, once: when the engine ends or is abandoned, whichever comes first.

        Not later: a new server may have bound the path by then.
        """
        with self._lock:
            if self._address_released:
                return
            self._address_released = True
        if isinstance(self._address, UnixAddress) and not self._adopted_socket:
            # An adopted socket's file belongs to whoever made it (systemd).
            _socket.unlink_unix_socket(self._address.path)

    @contextlib.contextmanager
    def _signals_stop(self, waiter: StopSignal, forced: list[int]) -> Iterator[None]:
        """Let SIGINT and SIGTERM stop the server (from the main thread only); a second one, at once.

        The signal that forced the stop is put in `forced`.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = 0

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                self._hand_over()
                self._request_stop(time.monotonic() + self._stop_timeout)
            else:
                if not forced:
                    forced.append(signum)
                self._request_stop(time.monotonic())

        handler: Callable[[int, FrameType | None], None] = on_signal
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        # So that a signal taken by another thread still wakes the wait at once.
        previous_fd = signal.set_wakeup_fd(waiter.wakeup_fd, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, old in previous.items():
                signal.signal(sig, old)


def _nothing() -> None:
    """No one is waiting to be woken."""
