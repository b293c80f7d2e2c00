"""The asyncio multiplexed client that re-dials: the blocking one's rules (`connecteur._reconnect_mux`), awaitable.

Made by ``await aio.connect(..., multiplexed=True, reconnect=Backoff(...))``.
Each link is a whole `aio.MultiplexedConnection` (its reader task, its
heartbeat, its table of requests and tombstones); a reply can only come back
on its request's link, so ids starting again on a new link are safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, final

from ._aio_multiplexed import MultiplexedConnection
from ._aio_reconnect import AioRedialling
from ._multiplexed import Default
from ._redial import Backoff, Multiplexed
from .address import format_address
from .errors import ConnectionClosed, Timeout

__all__ = ["ReconnectingMultiplexedConnection"]

T = TypeVar("T")


@final
class ReconnectingMultiplexedConnection(AioRedialling[MultiplexedConnection[T]], Multiplexed[MultiplexedConnection[T]]):
    """An asyncio multiplexed client shared by many tasks that re-dials when its link dies.

    Made by ``await aio.connect(address, multiplexed=True, reconnect=Backoff(...))``,
    on the loop that uses it. The rules of the blocking
    `connecteur.ReconnectingMultiplexedConnection`: each call's ``timeout``
    bounds the whole call, waiting for a re-dial included; when the link
    dies, every request in flight on it raises `ConnectionClosed` unless it
    was given ``retry=True`` (then it goes again on the next link); a request
    that never left goes on the next link; `on_connect` (a function or a
    coroutine function) gets each new `aio.MultiplexedConnection` before any
    request is sent on it; heartbeats, if set, run on each link.

    Counters (`connects`, `reconnects`, `failed_attempts`, `interrupted`,
    `resent`, `late_replies`, `one_way_dropped`) are attributes.
    """

    def __init__(
        self,
        dial: Callable[[float | None], Awaitable[MultiplexedConnection[T]]],
        *,
        address: object,
        backoff: Backoff,
        on_connect: Callable[[MultiplexedConnection[T]], object] | None,
        timeout: float | None,
    ) -> None:
        super().__init__(
            address=address, backoff=backoff, on_connect=on_connect, timeout=timeout, closing=asyncio.Event()
        )
        self._dial = dial
        self._dialling = asyncio.Lock()  # one re-dial at a time; held through its back-off waits
        self._gone: set[asyncio.Task[None]] = set()  # closing links dropped, awaited by close()

    @property
    def connection(self) -> MultiplexedConnection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had timed out or was cancelled, on every link."""
        return self._all_late_replies()

    # --- links -----------------------------------------------------------------

    async def _link(self, deadline: float | None, seconds: float | None) -> MultiplexedConnection[T]:
        """The open link, re-dialled if needed (or waited for, while another task re-dials), by `deadline`."""
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return conn
        try:
            async with asyncio.timeout(self._remaining(deadline)):
                await self._dialling.acquire()
        except TimeoutError as exc:
            self._check_open()
            raise Timeout(
                f"could not connect to {format_address(self.address)} within {seconds} s"
                " (another call was re-dialling)",
                seconds=seconds or 0.0,
            ) from exc
        try:
            conn = self._conn
            if conn is not None and conn.is_closed:
                self._drop(conn, None)
                conn = None
            if conn is None:
                conn = await self._redial(deadline, seconds)
        finally:
            self._dialling.release()
        return conn

    def _drop(self, conn: MultiplexedConnection[T], exc: BaseException | None) -> None:
        """Forget a dead link (once, whichever task sees it first); its closing is awaited by `close()`."""
        if not self._forget(conn, exc):
            return
        closing = asyncio.get_running_loop().create_task(conn.close())
        self._gone.add(closing)
        closing.add_done_callback(self._gone.discard)

    # --- calls -----------------------------------------------------------------

    async def request(
        self, message: Any, *, retry: bool = False, timeout: float | Default | None = Default.TIMEOUT
    ) -> T:
        """Send a request and return its own reply, re-dialling first if the link is down.

        Args:
            message: bytes, or with a codec a value it encodes.
            retry: the request may be executed twice (it is idempotent): if
                its link dies before its reply, send it again on the next link.
            timeout: seconds for the whole call (re-dials included);
                defaults to the client's; None waits for ever.

        Raises:
            ConnectionClosed: the link died with the request in flight (and
                `retry` is False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
            RemoteError: the server's handler failed on this request.
            OSError: the client gave up re-dialling: the last attempt's error.
        """
        seconds, deadline = self._seconds(timeout)
        while True:
            conn = await self._link(deadline, seconds)
            try:
                reply = await conn.request(message, timeout=self._remaining(deadline))
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            self._policy.healthy()
            return reply

    async def send(
        self, message: Any, *, retry: bool = False, timeout: float | Default | None = Default.TIMEOUT
    ) -> None:
        """Send a one-way message, re-dialling first if the link is down (``retry`` as in `request`).

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        seconds, deadline = self._seconds(timeout)
        while True:
            conn = await self._link(deadline, seconds)
            try:
                async with asyncio.timeout(self._remaining(deadline)):
                    await conn.send(message)
            except TimeoutError as exc:
                if isinstance(exc, Timeout):
                    raise
                raise Timeout(f"could not send to {format_address(self.address)} within {seconds} s",
                              seconds=seconds or 0.0) from exc  # fmt: skip
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    async def recv(self) -> T:
        """The next one-way message from the server, re-dialling first if there is no link.

        Raises:
            ConnectionClosed: the link died while waiting (what the server
                sent meanwhile is lost; the next call re-dials), or this
                client is closed.
            Timeout: none came within the client's timeout.
        """
        conn = self._conn
        if conn is None:
            seconds, deadline = self._seconds(Default.TIMEOUT)
            conn = await self._link(deadline, seconds)
        try:
            message = await conn.recv()
        except ConnectionClosed as exc:
            self._drop(conn, exc)
            self._check_open()
            raise self._lost_while_waiting(exc) from exc
        self._policy.healthy()
        return message

    async def close(self) -> None:
        """Close the link and stop re-dialling (a back-off wait ends). Idempotent."""
        self._closing.set()
        for conn in self._take_links():
            await conn.close()
        for closing in list(self._gone):
            await closing
