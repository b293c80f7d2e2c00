"""The asyncio `ReconnectingConnection`: the blocking one's policy (`Redialer`) on the running loop."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, final

from ._reconnect import Backoff, Counted, Redialer, in_flight_error, is_link_failure, logger
from .address import format_address
from .errors import ConnectionClosed

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Connection(Protocol[T_co]):
    """What `ReconnectingConnection` uses of the asyncio client's `connecteur.aio.Connection`.

    A protocol, not an import: ``aio.py`` builds reconnecting clients, so
    this module, below it, must not import it back.
    """

    @property
    def timeout(self) -> float | None: ...
    @timeout.setter
    def timeout(self, seconds: float | None) -> None: ...
    @property
    def is_closed(self) -> bool: ...
    async def send(self, message: Any) -> None: ...
    async def send_many(self, messages: Iterable[Any]) -> None: ...
    async def recv(self) -> T_co: ...
    async def request(self, message: Any) -> T_co: ...
    async def close(self) -> None: ...
    def _link_is_down(self) -> bool: ...
    def _abandon(self, why: str) -> None: ...


__all__ = ["ReconnectingConnection"]


@final
class ReconnectingConnection(Counted, Generic[T]):
    """An asyncio client that re-dials its server when the link dies; made by ``await connect(..., reconnect=...)``.

    The blocking `connecteur.ReconnectingConnection`'s rules, awaitable:
    each call re-dials first if the link is down, as the `Backoff` says,
    and awaits `on_connect` (a function or a coroutine function) on each new
    link; the `timeout` bounds each whole call, re-dials included; a message
    handed to a link that then died is never sent again unless the call was
    given ``retry=True``: the call raises `ConnectionClosed`.

    Tasks: as `Connection` (one sender and one receiver at a time);
    re-dialling is done by one of them, the other waits for it. Counters
    (`connects`, `reconnects`, `failed_attempts`, `interrupted`, `resent`)
    are attributes.
    """

    def __init__(
        self,
        dial: Callable[[float | None], Awaitable[Connection[T]]],
        *,
        address: object,
        backoff: Backoff,
        on_connect: Callable[[Connection[T]], object] | None,
        timeout: float | None,
    ) -> None:
        self._dial = dial
        self._on_connect = on_connect
        self._timeout = timeout
        self._policy = Redialer(backoff, address)
        self._conn: Connection[T] | None = None
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self.address: object = address
        """The server's address, as given to `connect`."""

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "connected" if self._conn is not None else "disconnected"
        return f"<aio.ReconnectingConnection {state} to {format_address(self.address)}>"

    @property
    def timeout(self) -> float | None:
        """Seconds allowed for each whole call, re-dials included (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    @property
    def connection(self) -> Connection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    @property
    def is_closed(self) -> bool:
        """True once `close()` was called, or the client gave up re-dialling."""
        return self._closing.is_set()

    # --- links -----------------------------------------------------------------

    # Deadlines on time.monotonic(), the policy's clock; links get what remains as their timeout.
    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 1e-3)

    async def _link(self, deadline: float | None) -> Connection[T]:
        """The open link, re-dialled if needed; its timeout set to what remains of `deadline`."""
        async with self._lock:
            conn = self._conn
            if conn is not None and conn._link_is_down():
                self._drop(conn, None)
                conn = None
            if conn is None:
                conn = await self._redial(deadline)
        conn.timeout = self._remaining(deadline)
        return conn

    async def _redial(self, deadline: float | None) -> Connection[T]:
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, self._timeout)
            if policy.due > now:
                await self._sleep(policy.due - now)
                continue
            try:
                conn = await self._dial(self._remaining(deadline))
            except Exception as exc:
                self._failed(exc)
                continue
            try:
                await self._greet(conn)
            except Exception as exc:
                await conn.close()
                self._failed(exc, greeting=True)
                continue
            policy.connected()
            self._conn = conn
            return conn

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if `close()` is called."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    async def _greet(self, conn: Connection[T]) -> None:
        if self._on_connect is not None:
            result = self._on_connect(conn)
            if inspect.isawaitable(result):
                await result

    def _failed(self, exc: Exception, *, greeting: bool = False) -> None:
        try:
            self._policy.failed(exc, greeting=greeting)
        except BaseException:
            if self._policy.gave_up is not None:
                self._closing.set()
            raise

    def _drop(self, conn: Connection[T], exc: BaseException | None) -> None:
        conn._abandon("when its link was lost")
        if self._conn is conn:
            self._conn = None
            self._policy.lost(exc)

    def _check_open(self) -> None:
        if self._closing.is_set():
            gave_up = self._policy.gave_up
            why = "with close()" if gave_up is None else f"after giving up re-dialling ({gave_up})"
            raise ConnectionClosed(f"this connection was closed {why}", by_peer=False)

    def _after_failure(self, conn: Connection[T], exc: Exception, retry: bool) -> None:
        """Drop a dead link and return if the message may go again; else raise."""
        if not is_link_failure(exc):
            raise exc
        self._drop(conn, exc)
        if not retry:
            self._policy.counts["interrupted"] += 1
            raise in_flight_error(self.address, exc) from exc
        self._policy.counts["resent"] += 1
        logger.info("sending a message to %s again (retry=True) on a new link", format_address(self.address))

    # --- calls -----------------------------------------------------------------

    async def request(self, message: Any, *, retry: bool = False) -> T:
        """Send a message and return its reply, re-dialling first if the link is down.

        Args:
            message: bytes, or with a codec a value it encodes.
            retry: the request may be executed twice (it is idempotent): if
                the link dies before its reply, send it again on a new link.

        Raises:
            ConnectionClosed: the link died with the request in flight (and
                `retry` is False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
            OSError: the client gave up re-dialling: the last attempt's error.
        """
        deadline = self._deadline()
        while True:
            conn = await self._link(deadline)
            try:
                reply = await conn.request(message)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            self._policy.healthy()
            return reply

    async def send(self, message: Any, *, retry: bool = False) -> None:
        """Send one whole message, re-dialling first if the link is down (``retry`` as in `request`).

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        deadline = self._deadline()
        while True:
            conn = await self._link(deadline)
            try:
                await conn.send(message)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    async def send_many(self, messages: Iterable[Any], *, retry: bool = False) -> None:
        """Send several messages in one write, re-dialling first if the link is down.

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        batch = list(messages)
        deadline = self._deadline()
        while True:
            conn = await self._link(deadline)
            try:
                await conn.send_many(batch)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    async def recv(self) -> T:
        """Return the next message, re-dialling first if the link is down.

        Raises:
            ConnectionClosed: the link died while waiting (what the server
                sent meanwhile is lost; the next call re-dials), or this
                client is closed.
            Timeout: no message within the timeout, re-dials included.
        """
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._link(self._deadline())
        else:
            conn.timeout = self._timeout
        try:
            message = await conn.recv()
        except Exception as exc:
            if not is_link_failure(exc):
                raise
            self._drop(conn, exc)
            self._policy.counts["interrupted"] += 1
            raise ConnectionClosed(
                f"the connection to {format_address(self.address)} was lost while waiting for a message ({exc});"
                " what the server sent meanwhile is lost, and the next call reconnects"
            ) from exc
        self._policy.healthy()
        return message

    def __aiter__(self) -> AsyncIterator[T]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[T]:
        """Yield messages for ever, across lost links, until `close()`."""
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed:
                self._check_open()
                continue
            yield message

    async def close(self) -> None:
        """Close the link and stop re-dialling (a back-off wait ends). Idempotent."""
        self._closing.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
