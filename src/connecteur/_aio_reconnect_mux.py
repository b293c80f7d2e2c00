"""The asyncio multiplexed client that re-dials: the blocking one's rules (`connecteur._reconnect_mux`), awaitable.

Made by ``await aio.connect(..., multiplexed=True, reconnect=Backoff(...))``.
Each link is a whole `aio.MultiplexedConnection` (its reader task, its
heartbeat, its table of requests and tombstones); a reply can only come back
on its request's link, so ids starting again on a new link are safe.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, final

from ._aio_multiplexed import MultiplexedConnection
from ._multiplexed import Default, NotSent
from ._reconnect import Backoff, Counted, Redialer, in_flight_error, is_link_failure, logger
from .address import format_address
from .errors import ConnectionClosed, Timeout

__all__ = ["ReconnectingMultiplexedConnection"]

T = TypeVar("T")


@final
class ReconnectingMultiplexedConnection(Counted, Generic[T]):
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
        self._dial = dial
        self._on_connect = on_connect
        self._timeout = timeout
        self._policy = Redialer(backoff, address)
        self._conn: MultiplexedConnection[T] | None = None
        self._dialling = asyncio.Lock()  # one re-dial at a time; held through its back-off waits
        self._closing = asyncio.Event()
        self._gone: set[asyncio.Task[None]] = set()  # closing links dropped, awaited by close()
        self._late_replies = 0  # of links gone
        self._one_way_dropped = 0
        self.address: object = address
        """The server's address, as given to `connect`."""

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "connected" if self._conn is not None else "disconnected"
        return f"<aio.ReconnectingMultiplexedConnection {state} to {format_address(self.address)}>"

    @property
    def timeout(self) -> float | None:
        """The default seconds allowed for each whole call, re-dials included (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    @property
    def connection(self) -> MultiplexedConnection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    @property
    def is_closed(self) -> bool:
        """True once `close()` was called, or the client gave up re-dialling."""
        return self._closing.is_set()

    @property
    def in_flight(self) -> int:
        """Requests sent on the current link and not answered yet."""
        conn = self._conn
        return 0 if conn is None else conn.in_flight

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had timed out or was cancelled, on every link."""
        conn = self._conn
        return self._late_replies + (0 if conn is None else conn.late_replies)

    @property
    def one_way_dropped(self) -> int:
        """One-way messages from the server dropped because `recv` left too many waiting, on every link."""
        conn = self._conn
        return self._one_way_dropped + (0 if conn is None else conn.one_way_dropped)

    # --- links -----------------------------------------------------------------

    async def _link(self, deadline: float | None, seconds: float | None) -> MultiplexedConnection[T]:
        """The open link, re-dialled if needed (or waited for, while another task re-dials), by `deadline`."""
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return conn
        try:
            async with asyncio.timeout(_remaining(deadline)):
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

    async def _redial(self, deadline: float | None, seconds: float | None) -> MultiplexedConnection[T]:
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, seconds)
            if policy.due > now:
                await self._sleep(policy.due - now)
                continue
            try:
                conn = await self._dial(_remaining(deadline))
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
            if self._closing.is_set():  # close() ran during on_connect and could not see this link
                await conn.close()
            return conn

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if `close()` is called."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    async def _greet(self, conn: MultiplexedConnection[T]) -> None:
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

    def _drop(self, conn: MultiplexedConnection[T], exc: BaseException | None) -> None:
        """Forget a dead link (once, whichever task sees it first); its closing is awaited by `close()`."""
        if self._conn is not conn:
            return
        self._conn = None
        self._late_replies += conn.late_replies
        self._one_way_dropped += conn.one_way_dropped
        self._policy.lost(exc)
        closing = asyncio.get_running_loop().create_task(conn.close())
        self._gone.add(closing)
        closing.add_done_callback(self._gone.discard)

    def _check_open(self) -> None:
        if self._closing.is_set():
            gave_up = self._policy.gave_up
            why = "with close()" if gave_up is None else f"after giving up re-dialling ({gave_up})"
            raise ConnectionClosed(f"this connection was closed {why}", by_peer=False)

    def _after_failure(self, conn: MultiplexedConnection[T], exc: Exception, retry: bool) -> None:
        """Drop the dead link and return if the message may go on the next one; else raise."""
        if not is_link_failure(exc):
            raise exc
        self._drop(conn, exc)
        if isinstance(exc, NotSent):
            return  # the link was dead before the message left: nothing to fear from sending it
        self._check_open()
        if not retry:
            self._policy.counts["interrupted"] += 1
            raise in_flight_error(self.address, exc) from exc
        self._policy.counts["resent"] += 1
        logger.info("sending a message to %s again (retry=True) on a new link", format_address(self.address))

    def _seconds(self, timeout: float | Default | None) -> tuple[float | None, float | None]:
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        return seconds, None if seconds is None else time.monotonic() + seconds

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
                reply = await conn.request(message, timeout=_remaining(deadline))
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
                async with asyncio.timeout(_remaining(deadline)):
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
            self._policy.counts["interrupted"] += 1
            raise ConnectionClosed(
                f"the connection to {format_address(self.address)} was lost while waiting for a message ({exc});"
                " what the server sent meanwhile is lost, and the next call reconnects"
            ) from exc
        self._policy.healthy()
        return message

    async def close(self) -> None:
        """Close the link and stop re-dialling (a back-off wait ends). Idempotent."""
        self._closing.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        for closing in list(self._gone):
            await closing

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 1e-3)
