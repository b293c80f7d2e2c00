"""The blocking multiplexed client: many threads, one connection, each request its own reply.

``connect(..., multiplexed=True)`` returns a `MultiplexedConnection`. It
speaks the envelope of `connecteur._envelope` over an ordinary `Connection`.

Design: a reader thread. It alone receives: it decodes each envelope and
wakes the thread whose request id it carries (a lock per request, released
once), queues one-way messages for `recv`, answers pings. Callers only
send, under a lock, and wait on their own lock, with their own timeout. The
alternative, whichever caller waits reads for everybody ("lock-holder
reads"), saves a thread but cannot answer the server's pings while nobody
waits, and a caller's timeout would interrupt reads done for others. With a
heartbeat, a second thread closes the connection when the server falls
silent, and sends each ping from a short-lived thread (a blocked send must
not delay the watch).
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections import deque
from enum import Enum
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, final

from ._envelope import MAX_ONE_WAY, Envelope, Heartbeat, Kind, RequestTable, decode, encode
from .address import format_address
from .codecs import Codec
from .errors import ConnectionClosed, FramingError, RemoteError, Timeout

__all__ = ["Default", "MultiplexedConnection", "NotSent", "Stream"]

T = typing.TypeVar("T")


class Default(Enum):
    """The default of a call's `timeout`: the connection's."""

    TIMEOUT = "the connection's timeout"


class NotSent(ConnectionClosed):
    """The connection had ended before the message left: nothing was sent, so sending it on another link is safe.

    A `ConnectionClosed`, so callers need not know it; a reconnecting client
    re-sends such a message on its next link without ``retry=True``.
    """


class Stream(Protocol):
    """What the multiplexed client needs of the `Connection` it runs over."""

    address: object

    @property
    def timeout(self) -> float | None: ...
    @timeout.setter
    def timeout(self, seconds: float | None) -> None: ...
    @property
    def is_closed(self) -> bool: ...
    def send(self, message: Any) -> None: ...
    def recv(self) -> Any: ...
    def close(self) -> None: ...
    def _interrupt(self) -> None: ...


JOIN_TIMEOUT: Final = 5.0
"""Seconds `close` waits for the reader thread, which the socket's shutdown has already woken."""


@final
class _Waiter:
    """One request's wait: the reader thread fills it and releases `done`, taken from the start.

    A bare lock, not a `threading.Event`: an event's wait makes a lock of its
    own and takes a condition's, and its set takes that condition too; a lock
    released once is the cheapest wake-up there is, and there is one per
    request.
    """

    __slots__ = ("done", "envelope", "error")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.envelope: Envelope | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        """The reply or the error is in: let the request go (once: `RequestTable` gives each waiter out once)."""
        self.done.release()


@final
class MultiplexedConnection(Generic[T]):
    """A connection whose requests carry ids: many threads share it, replies may come in any order.

    Thread-safe: any thread may call `request`, `send`, `recv` and `close`
    at any time. Created by ``connect(address, multiplexed=True)``; the
    server must run with ``multiplexed=True`` too. The envelope's bytes are
    in ``docs/multiplexing.md``.

    Attributes:
        address: the server's address as the socket module gives it.
        heartbeat: the pings this side sends, or None.
    """

    def __init__(
        self,
        connection: Stream,
        *,
        codec: Codec[T] | None = None,
        timeout: float | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._connection = connection
        self._codec = codec
        self._timeout = timeout
        self.heartbeat = heartbeat
        self.address: object = connection.address
        # The reader waits for ever, and the socket's timeout never changes: while another
        # thread waits in recv(), settimeout() would turn the descriptor non-blocking under it.
        connection.timeout = None
        self._lock = threading.Lock()  # the table, the one-way queue, the state
        self._send_lock = threading.Lock()  # one envelope at a time on the wire
        self._table: RequestTable[_Waiter] = RequestTable()
        self._one_way: deque[bytes] = deque(maxlen=MAX_ONE_WAY)  # full: appending drops the oldest
        self.one_way_dropped = 0
        """One-way messages from the server dropped, oldest first, because `recv` left `MAX_ONE_WAY` waiting."""
        self._one_way_ready = threading.Condition(self._lock)
        self._ended: ConnectionClosed | None = None  # why it ended, once it did
        self._closed_by_user = False
        self._last_heard = time.monotonic()
        self._stopped = threading.Event()
        self._reader = threading.Thread(target=self._read, name="connecteur-mux-reader", daemon=True)
        self._reader.start()
        self._beater: threading.Thread | None = None
        if heartbeat is not None:
            self._beater = threading.Thread(target=self._beat, name="connecteur-mux-heartbeat", daemon=True)
            self._beater.start()

    def __repr__(self) -> str:
        state = "closed" if self._ended is not None else "open"
        return f"<MultiplexedConnection {state} to {format_address(self.address)} in_flight={len(self._table)}>"

    # --- requests --------------------------------------------------------------

    def request(self, message: Any, *, timeout: float | Default | None = Default.TIMEOUT) -> T:
        """Send a request and wait for its own reply, whatever other threads do meanwhile.

        Args:
            message: bytes, or with a codec a value it encodes.
            timeout: seconds for this request (sending and its reply);
                defaults to the connection's; None waits for ever.

        A timeout leaves the connection open: the request's id is buried,
        so its reply, should it come later, is dropped (never handed to
        another request).

        Raises:
            RemoteError: the server's handler failed on this request.
            Timeout: no reply within the timeout, or other threads' sends
                kept the wire busy that long (the connection stays open).
            ConnectionClosed: the connection ended before the reply came
                (closed by either side, a broken link, a silent server
                under heartbeats); whether the server ran the request is
                unknown.
            CodecError: the codec cannot encode the request (nothing sent)
                or decode the reply.
            FramingError: the framing cannot carry the request (nothing sent).
        """
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        deadline = None if seconds is None else time.monotonic() + seconds
        payload = self._encode(message)
        waiter = _Waiter()
        with self._lock:
            self._check_open()
            request_id = self._table.open(waiter)
        try:
            self._send(encode(Kind.REQUEST, request_id, payload), deadline, seconds)
        except BaseException:
            with self._lock:
                self._table.cancel(request_id)  # nothing sent, or the connection ended: no reply to wait for
            raise
        try:
            answered = waiter.done.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic()))
        except BaseException:  # interrupted (KeyboardInterrupt): the reply is owed, to nobody now
            with self._lock:
                self._table.abandon(request_id)
            raise
        if not answered:
            with self._lock:
                if self._table.abandon(request_id):
                    raise Timeout(
                        f"no reply to request {request_id} from {format_address(self.address)} within {seconds} s",
                        seconds=seconds or 0.0,
                    )
            waiter.done.acquire()  # settled just now: the reader is about to wake it, with nothing in between
        return self._outcome(waiter, request_id)

    def _outcome(self, waiter: _Waiter, request_id: int) -> T:
        if waiter.error is not None:
            ended = waiter.error
            by_peer = ended.by_peer if isinstance(ended, ConnectionClosed) else True
            raise ConnectionClosed(str(ended), by_peer=by_peer) from ended
        envelope = waiter.envelope
        assert envelope is not None
        if envelope.kind is Kind.ERROR:
            raise RemoteError(envelope.payload.decode(errors="replace"), request_id=request_id)
        return self._decode(envelope.payload)

    def send(self, message: Any, *, timeout: float | Default | None = Default.TIMEOUT) -> None:
        """Send a one-way message: the server's handler gets it and no reply comes back.

        Raises:
            Timeout: other threads' sends kept the wire busy past the
                timeout (nothing sent; the connection stays open).
            ConnectionClosed: the connection has ended.
            CodecError: the codec cannot encode it (nothing sent).
            FramingError: the framing cannot carry it (nothing sent).
        """
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        payload = self._encode(message)
        with self._lock:
            self._check_open()
        self._send(encode(Kind.ONE_WAY, 0, payload), None if seconds is None else time.monotonic() + seconds, seconds)

    def recv(self, *, timeout: float | Default | None = Default.TIMEOUT) -> T:
        """The next one-way message from the server (``peer.send``), waiting for it if needed.

        Raises:
            Timeout: none came within the timeout.
            ConnectionClosed: the connection has ended and none is left.
            CodecError: the message does not decode (it is consumed).
        """
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        with self._one_way_ready:
            if not self._one_way_ready.wait_for(lambda: self._one_way or self._ended is not None, seconds):
                raise Timeout(
                    f"no message from {format_address(self.address)} within {seconds} s", seconds=seconds or 0
                )
            if not self._one_way:
                raise self._closed_error()
            payload = self._one_way.popleft()
        return self._decode(payload)

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet (timed-out ones excluded)."""
        return len(self._table)

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had timed out."""
        return self._table.late_replies

    def _encode(self, message: Any) -> bytes:
        return message if self._codec is None else self._codec.encode(message)

    def _decode(self, payload: bytes) -> T:
        return typing.cast("T", payload) if self._codec is None else self._codec.decode(payload)

    def _send(self, envelope: bytes, deadline: float | None, seconds: float | None) -> None:
        """Send one envelope, waiting for the wire (another thread's send) no later than `deadline`.

        The send itself is not bounded: it blocks while the server does not
        read (its kernel buffers full), until it reads, the connection ends,
        or heartbeats end it.
        """
        if not self._send_lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise Timeout(f"could not send to {format_address(self.address)} within {seconds} s", seconds=seconds or 0)
        connection = self._connection
        try:
            self._check_open()
            connection.send(envelope)
        except (OSError, FramingError) as exc:
            if connection.is_closed:  # a send interrupted half-way closed it: the stream is broken
                self._end(exc)
            if self._ended is not None and not isinstance(exc, ConnectionClosed):
                raise self._closed_error() from exc  # closed under this send: say so, not "broken pipe"
            raise
        finally:
            self._send_lock.release()

    def _check_open(self) -> None:
        """Raise `NotSent` if the connection has ended: called before a message leaves."""
        if self._ended is not None:
            raise self._closed_error(NotSent)

    def _closed_error(self, kind: type[ConnectionClosed] = ConnectionClosed) -> ConnectionClosed:
        ended = self._ended
        assert ended is not None
        return kind(str(ended), by_peer=ended.by_peer)

    # --- the reader thread -----------------------------------------------------

    def _read(self) -> None:
        """Receive until the connection ends: each envelope to its waiter, the queue, or a pong."""
        connection = self._connection
        while True:
            try:
                message = connection.recv()
            except Exception as exc:
                self._end(exc)
                return
            self._last_heard = time.monotonic()
            try:
                self._take(decode(message))
            except FramingError as exc:
                self._end(exc)
                return

    def _take(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind is Kind.REPLY or kind is Kind.ERROR:
            with self._lock:
                waiter = self._table.settle(envelope.request_id)
            if waiter is not None:
                waiter.envelope = envelope
                waiter.wake()
        elif kind is Kind.ONE_WAY:
            with self._one_way_ready:
                if len(self._one_way) == MAX_ONE_WAY:
                    self.one_way_dropped += 1
                self._one_way.append(envelope.payload)
                self._one_way_ready.notify()
        elif kind is Kind.PING:
            with contextlib.suppress(OSError, FramingError):  # the connection is ending; the error shows elsewhere
                self._send(encode(Kind.PONG, envelope.request_id), None, None)
        elif kind is Kind.REQUEST:
            raise FramingError(f"a server never sends requests (got request {envelope.request_id})")

    def _end(self, error: BaseException) -> None:
        """The connection is over: fail every waiter, wake `recv`, close the socket (once)."""
        with self._lock:
            if self._ended is not None:
                return
            if isinstance(error, ConnectionClosed):
                self._ended = error
            else:
                what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self._ended = ConnectionClosed(f"the connection to {format_address(self.address)} ended: {what}")
            self._ended.__cause__ = error if error is not self._ended else None
            waiters = self._table.fail_all()
            self._one_way_ready.notify_all()
        for waiter in waiters:
            waiter.error = self._ended
            waiter.wake()
        self._stopped.set()
        self._connection._interrupt()

    # --- heartbeats ------------------------------------------------------------

    def _beat(self) -> None:
        """Ping after `interval` of silence; end the connection after ``interval + deadline``."""
        heartbeat = self.heartbeat
        assert heartbeat is not None
        pinged = 0.0
        ping_id = 0
        pinger: threading.Thread | None = None
        while not self._stopped.wait(heartbeat.tick):
            now = time.monotonic()
            silent = now - self._last_heard
            if silent > heartbeat.interval + heartbeat.deadline:
                self._end(
                    ConnectionClosed(
                        f"{format_address(self.address)} sent nothing for {silent:.3g} s "
                        f"(heartbeat: ping after {heartbeat.interval:g} s, answer within {heartbeat.deadline:g} s)",
                        by_peer=False,
                    )
                )
                return
            if silent >= heartbeat.interval and now - max(pinged, self._last_heard) >= heartbeat.interval:
                pinged = now
                ping_id = ping_id % 0xFFFFFFFF + 1
                if pinger is None or not pinger.is_alive():
                    # Sent from a thread of its own: a send to a server that stopped reading
                    # blocks, and this watch must go on to end the connection in time.
                    pinger = threading.Thread(target=self._ping, args=(ping_id, heartbeat), daemon=True)
                    pinger.start()

    def _ping(self, ping_id: int, heartbeat: Heartbeat) -> None:
        with contextlib.suppress(OSError, FramingError):  # the watch ends the connection in time
            self._send(encode(Kind.PING, ping_id), time.monotonic() + heartbeat.deadline, heartbeat.deadline)

    # --- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; requests still waiting raise `ConnectionClosed`. Idempotent."""
        self._end(ConnectionClosed("this connection was closed with close()", by_peer=False))
        if threading.current_thread() is not self._reader:
            self._reader.join(JOIN_TIMEOUT)
        if self._beater is not None and threading.current_thread() is not self._beater:
            self._beater.join(JOIN_TIMEOUT)
        with self._send_lock:  # a send under way was woken by _end's shutdown
            self._connection.close()

    @property
    def is_closed(self) -> bool:
        """True once the connection has ended (closed by either side, or broken)."""
        return self._ended is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
