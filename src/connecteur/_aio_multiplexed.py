"""The asyncio multiplexed client: many tasks, one connection, each request its own reply.

``await aio.connect(..., multiplexed=True)`` returns a `MultiplexedConnection`,
the twin of the blocking one in `connecteur._multiplexed`, over an ordinary
`aio.Connection`. A reader task receives every envelope and settles the
future of the request whose id it carries; with a heartbeat, a second task
pings and ends the connection when the server falls silent. Unlike the plain
`aio.Connection`, it creates these two tasks; `close` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections import deque
from types import TracebackType
from typing import Any, Generic, Protocol, Self, final

from ._envelope import MAX_ONE_WAY, Envelope, Heartbeat, Kind, RequestTable, decode, encode
from ._multiplexed import Default, NotSent
from .address import format_address
from .codecs import Codec
from .errors import ConnectionClosed, FramingError, RemoteError, Timeout

__all__ = ["AioStream", "MultiplexedConnection"]

T = typing.TypeVar("T")


class AioStream(Protocol):
    """What the multiplexed client needs of the `aio.Connection` it runs over."""

    address: object

    async def send(self, message: Any) -> None: ...
    async def recv(self) -> Any: ...
    async def close(self) -> None: ...


@final
class MultiplexedConnection(Generic[T]):
    """An asyncio connection whose requests carry ids: many tasks share it, replies come in any order.

    Created by ``await aio.connect(address, multiplexed=True)``, on the loop
    that will use it; the server must run with ``multiplexed=True`` too.

    Attributes:
        address: the server's address as the socket module gives it.
        heartbeat: the pings this side sends, or None.
    """

    def __init__(
        self,
        connection: AioStream,
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
        self._loop = asyncio.get_running_loop()
        self._table: RequestTable[asyncio.Future[Envelope]] = RequestTable()
        self._one_way: deque[bytes] = deque(maxlen=MAX_ONE_WAY)  # full: appending drops the oldest
        self.one_way_dropped = 0
        """One-way messages from the server dropped, oldest first, because `recv` left `MAX_ONE_WAY` waiting."""
        self._one_way_waiter: asyncio.Future[None] | None = None
        self._ended: ConnectionClosed | None = None
        self._last_heard = self._loop.time()
        self._closing: asyncio.Task[None] | None = None
        self._reader = self._loop.create_task(self._read())
        self._beater = None if heartbeat is None else self._loop.create_task(self._beat(heartbeat))

    def __repr__(self) -> str:
        state = "closed" if self._ended is not None else "open"
        return f"<aio.MultiplexedConnection {state} to {format_address(self.address)} in_flight={len(self._table)}>"

    # --- requests --------------------------------------------------------------

    async def request(self, message: Any, *, timeout: float | Default | None = Default.TIMEOUT) -> T:
        """Send a request and return its own reply, whatever other tasks do meanwhile.

        Args:
            message: bytes, or with a codec a value it encodes.
            timeout: seconds for this request; defaults to the connection's;
                None waits for ever.

        A timeout or a cancellation leaves the connection open: the
        request's id is buried, so its late reply is dropped (never handed to
        another request).

        Raises:
            RemoteError: the server's handler failed on this request.
            Timeout: no reply within the timeout (the connection stays open).
            ConnectionClosed: the connection ended before the reply came;
                whether the server ran the request is unknown.
            CodecError: the codec cannot encode the request (nothing sent)
                or decode the reply.
            FramingError: the framing cannot carry the request (nothing sent).
        """
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        payload = self._encode(message)
        self._check_open()
        reply: asyncio.Future[Envelope] = self._loop.create_future()
        request_id = self._table.open(reply)
        try:
            async with asyncio.timeout(seconds):
                await self._connection.send(encode(Kind.REQUEST, request_id, payload))
                envelope = await reply
        except (FramingError, ConnectionClosed):
            self._table.cancel(request_id)  # nothing sent, or nothing more to wait for
            raise
        except TimeoutError as exc:
            self._table.abandon(request_id)
            where = format_address(self.address)
            raise Timeout(
                f"no reply to request {request_id} from {where} within {seconds} s", seconds=seconds or 0.0
            ) from exc
        except BaseException:  # cancelled, or the send's own Timeout: the request may have left
            self._table.abandon(request_id)
            raise
        if envelope.kind is Kind.ERROR:
            raise RemoteError(envelope.payload.decode(errors="replace"), request_id=request_id)
        return self._decode(envelope.payload)

    async def send(self, message: Any) -> None:
        """Send a one-way message: the server's handler gets it and no reply comes back.

        Raises:
            Timeout: the server did not read enough within the timeout (the
                message stays queued whole).
            ConnectionClosed: the connection has ended.
            CodecError: the codec cannot encode it (nothing sent).
            FramingError: the framing cannot carry it (nothing sent).
        """
        payload = self._encode(message)
        self._check_open()
        await self._connection.send(encode(Kind.ONE_WAY, 0, payload))

    async def recv(self) -> T:
        """The next one-way message from the server (``peer.send``), waiting for it if needed.

        Raises:
            Timeout: none came within the connection's timeout.
            ConnectionClosed: the connection has ended and none is left.
            CodecError: the message does not decode (it is consumed).
        """
        try:
            async with asyncio.timeout(self._timeout):
                while not self._one_way:
                    self._check_open()
                    self._one_way_waiter = waiter = self._loop.create_future()
                    await waiter
        except TimeoutError as exc:
            where, seconds = format_address(self.address), self._timeout or 0.0
            raise Timeout(f"no message from {where} within {seconds} s", seconds=seconds) from exc
        return self._decode(self._one_way.popleft())

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet (timed-out ones excluded)."""
        return len(self._table)

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had timed out or was cancelled."""
        return self._table.late_replies

    def _encode(self, message: Any) -> bytes:
        return message if self._codec is None else self._codec.encode(message)

    def _decode(self, payload: bytes) -> T:
        return typing.cast("T", payload) if self._codec is None else self._codec.decode(payload)

    def _check_open(self) -> None:
        """Raise `NotSent` if the connection has ended: called before a message leaves."""
        ended = self._ended
        if ended is not None:
            raise NotSent(str(ended), by_peer=ended.by_peer)

    # --- the reader task -------------------------------------------------------

    async def _read(self) -> None:
        """Receive until the connection ends: each envelope to its future, the queue, or a pong."""
        while True:
            try:
                message = await self._connection.recv()
                self._last_heard = self._loop.time()
                await self._take(decode(message))
            except Timeout:
                continue  # the connection's timeout bounds one recv(); the reader waits for ever
            except Exception as exc:
                self._end(exc)
                return

    async def _take(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind is Kind.REPLY or kind is Kind.ERROR:
            reply = self._table.settle(envelope.request_id)
            if reply is not None and not reply.done():
                reply.set_result(envelope)
        elif kind is Kind.ONE_WAY:
            if len(self._one_way) == MAX_ONE_WAY:
                self.one_way_dropped += 1
            self._one_way.append(envelope.payload)
            self._wake_recv()
        elif kind is Kind.PING:
            with contextlib.suppress(Timeout):  # a server that does not read: its pings are not urgent
                await self._connection.send(encode(Kind.PONG, envelope.request_id))
        elif kind is Kind.REQUEST:
            raise FramingError(f"a server never sends requests (got request {envelope.request_id})")

    def _wake_recv(self) -> None:
        waiter = self._one_way_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, error: BaseException) -> None:
        """The connection is over: fail every waiter, wake `recv`, close the transport (once)."""
        if self._ended is not None:
            return
        if isinstance(error, ConnectionClosed):
            ended = error
        else:
            what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            ended = ConnectionClosed(f"the connection to {format_address(self.address)} ended: {what}")
            ended.__cause__ = error
        self._ended = ended
        for reply in self._table.fail_all():
            if not reply.done():
                failure = ConnectionClosed(str(ended), by_peer=ended.by_peer)
                failure.__cause__ = ended.__cause__
                reply.set_exception(failure)
        self._wake_recv()
        current = asyncio.current_task()
        for task in (self._reader, self._beater):
            if task is not None and task is not current:
                task.cancel()
        self._closing = self._loop.create_task(self._connection.close())

    # --- heartbeats ------------------------------------------------------------

    async def _beat(self, heartbeat: Heartbeat) -> None:
        """Ping after `interval` of silence; end the connection after ``interval + deadline``."""
        pinged, ping_id = 0.0, 0
        while self._ended is None:
            await asyncio.sleep(heartbeat.tick)
            now = self._loop.time()
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
                pinged, ping_id = now, ping_id % 0xFFFFFFFF + 1
                with contextlib.suppress(TimeoutError, OSError):  # the watch above ends it in time
                    async with asyncio.timeout(heartbeat.deadline):
                        await self._connection.send(encode(Kind.PING, ping_id))

    # --- closing ---------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; requests still waiting raise `ConnectionClosed`. Idempotent."""
        self._end(ConnectionClosed("this connection was closed with close()", by_peer=False))
        for task in (self._reader, self._beater):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._closing is not None:
            await asyncio.shield(self._closing)

    @property
    def is_closed(self) -> bool:
        """True once the connection has ended (closed by either side, or broken)."""
        return self._ended is not None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
