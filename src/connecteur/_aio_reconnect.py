"""The asyncio `ReconnectingConnection`: the blocking one's policy (`Redialer`) on the running loop.

And `AioRedialling`, the re-dialling loop of both asyncio reconnecting clients.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, final

from ._redial import Backoff, Reconnecting, is_link_failure
from .errors import ConnectionClosed

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
A = TypeVar("A", bound="_Closable")


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


__all__ = ["AioRedialling", "ReconnectingConnection"]


class _Closable(Protocol):
    async def close(self) -> None: ...


class AioRedialling(Reconnecting[A]):
    """What both asyncio reconnecting clients share: re-dialling, its back-off waits, ``async with``."""

    _REPR_PREFIX = "aio."
    _dial: Callable[[float | None], Awaitable[A]]
    _closing: asyncio.Event

    async def _redial(self, deadline: float | None, seconds: float | None) -> A:
        """Dial until a link is open and greeted, by `deadline` (of a call of `seconds`); the caller holds the lock."""
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, seconds)
            if policy.due > now:
                await self._sleep(policy.due - now)
                continue
            try:
                conn = await self._dial(self._remaining(deadline))
            except Exception as exc:
                self._failed(exc)
                continue
            try:
                self._greet_start(conn)
                await self._greet(conn)
                self._adopt(conn)
            except Exception as exc:
                await conn.close()
                self._greeted = None  # once closed: a close() that finds it meanwhile closes it too
                self._check_open()  # close() ran: say so, not what on_connect met on the closed link
                self._failed(exc, greeting=True)
                continue
            return conn

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if `close()` is called."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    async def _greet(self, conn: A) -> None:
        if self._on_connect is not None:
            result = self._on_connect(conn)
            if inspect.isawaitable(result):
                await result

    @abstractmethod
    async def close(self) -> None:
        """Close the link and stop re-dialling."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@final
class ReconnectingConnection(AioRedialling[Connection[T]]):
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
        super().__init__(
            address=address, backoff=backoff, on_connect=on_connect, timeout=timeout, closing=asyncio.Event()
        )
        self._dial = dial
        self._lock = asyncio.Lock()

    @property
    def connection(self) -> Connection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    # --- links -----------------------------------------------------------------

    async def _link(self, deadline: float | None) -> Connection[T]:
        """The open link, re-dialled if needed; its timeout set to what remains of `deadline`."""
        async with self._lock:
            conn = self._conn
            if conn is not None and conn._link_is_down():
                self._drop(conn, None)
                conn = None
            if conn is None:
                conn = await self._redial(deadline, self._timeout)
        conn.timeout = self._remaining(deadline)
        return conn

    def _drop(self, conn: Connection[T], exc: BaseException | None) -> None:
        conn._abandon("when its link was lost")
        self._forget(conn, exc)

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
            raise self._lost_while_waiting(exc) from exc
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
        """Close the link and stop re-dialling (a back-off wait ends). Idempotent.

        A link another task's re-dial is greeting (in `on_connect`) is
        closed too, and that call raises `ConnectionClosed`.
        """
        self._closing.set()
        for conn in self._take_links():
            await conn.close()
