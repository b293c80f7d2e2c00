"""The blocking multiplexed client that re-dials: many threads, one link at a time, a new one when it dies.

Made by ``connect(..., multiplexed=True, reconnect=Backoff(...))``. Each link
is a whole `MultiplexedConnection` of its own: its own reader thread, its
own heartbeat, its own table of requests and tombstones. Ids start again on
each link, and that is safe: a reply can only come back on the link its
request left by, and a dead link's socket is closed, so a late reply from
an old link never reaches a request of a new one.

Threads share the link without a lock; only re-dialling is serialised. When
the link dies, every request in flight on it fails at once (the link's
reader fails its waiters); each caller then raises `ConnectionClosed`, or,
with ``retry=True``, sends its request once on the next link. The first
caller to find the link dead re-dials (waiting as the `Backoff` says and
running `on_connect`); the others wait for it, each within its own timeout,
and one of them takes over if that caller's timeout runs out first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, final

from ._multiplexed import Default, MultiplexedConnection, NotSent
from ._reconnect import Backoff, Counted, Redialer, in_flight_error, is_link_failure, logger
from .address import format_address
from .errors import ConnectionClosed, Timeout

__all__ = ["ReconnectingMultiplexedConnection"]

T = TypeVar("T")


@final
class ReconnectingMultiplexedConnection(Counted, Generic[T]):
    """A multiplexed client shared by many threads that re-dials when its link dies.

    Made by ``connect(address, multiplexed=True, reconnect=Backoff(...))``.
    It has the calls of `MultiplexedConnection` (`request`, `send`, `recv`,
    `close`, ``with``), each with its own ``timeout``, which bounds the whole
    call: waiting for a re-dial (made by this call or another thread's),
    sending, and the reply. Thread-safe.

    When the link dies, every request in flight on it raises
    `ConnectionClosed` (it may or may not have been executed), unless it was
    given ``retry=True``: then it is sent again on the next link, each time
    its link dies, within its timeout. A request that never left (the link
    was found dead first) simply goes on the next link. `on_connect` is
    called with each new `MultiplexedConnection` before any request is sent
    on it. Heartbeats, if set, run on each link.

    Counters (`connects`, `reconnects`, `failed_attempts`, `interrupted`,
    `resent`, `late_replies`, `one_way_dropped`) are attributes.
    """

    def __init__(
        self,
        dial: Callable[[float | None], MultiplexedConnection[T]],
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
        self._dialling = threading.Lock()  # one re-dial at a time; held through its back-off waits
        self._state = threading.Lock()  # the current link and the counters
        self._closing = threading.Event()  # wakes a back-off wait at close()
        self._late_replies = 0  # of links gone
        self._one_way_dropped = 0
        self.address: object = address
        """The server's address, as given to `connect`."""

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "connected" if self._conn is not None else "disconnected"
        return f"<ReconnectingMultiplexedConnection {state} to {format_address(self.address)}>"

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
        """Replies dropped because their request had timed out, on every link."""
        conn = self._conn
        return self._late_replies + (0 if conn is None else conn.late_replies)

    @property
    def one_way_dropped(self) -> int:
        """One-way messages from the server dropped because `recv` left too many waiting, on every link."""
        conn = self._conn
        return self._one_way_dropped + (0 if conn is None else conn.one_way_dropped)

    # --- links -----------------------------------------------------------------

    def _link(self, deadline: float | None, seconds: float | None) -> MultiplexedConnection[T]:
        """The open link, re-dialled if needed (or waited for, while another thread re-dials), by `deadline`."""
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return conn
        wait = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._dialling.acquire(timeout=wait):
            self._check_open()
            raise Timeout(
                f"could not connect to {format_address(self.address)} within {seconds} s"
                " (another call was re-dialling)",
                seconds=seconds or 0.0,
            )
        try:
            conn = self._conn
            if conn is not None and conn.is_closed:
                self._drop(conn, None)
                conn = None
            if conn is None:
                conn = self._redial(deadline, seconds)
        finally:
            self._dialling.release()
        return conn

    def _redial(self, deadline: float | None, seconds: float | None) -> MultiplexedConnection[T]:
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, seconds)
            if policy.due > now and self._closing.wait(policy.due - now):
                continue  # closed meanwhile: _check_open raises
            try:
                conn = self._dial(_remaining(deadline))
            except Exception as exc:
                self._failed(exc)
                continue
            try:
                if self._on_connect is not None:
                    self._on_connect(conn)
            except Exception as exc:
                conn.close()
                self._failed(exc, greeting=True)
                continue
            with self._state:
                policy.connected()
                self._conn = conn
            if self._closing.is_set():  # close() ran meanwhile and could not see this link
                conn.close()
            return conn

    def _failed(self, exc: Exception, *, greeting: bool = False) -> None:
        try:
            self._policy.failed(exc, greeting=greeting)
        except BaseException:
            if self._policy.gave_up is not None:
                self._closing.set()
            raise

    def _drop(self, conn: MultiplexedConnection[T], exc: BaseException | None) -> None:
        """Forget a dead link (once, whichever thread sees it first) and close it."""
        with self._state:
            current = self._conn is conn
            if current:
                self._conn = None
                self._late_replies += conn.late_replies
                self._one_way_dropped += conn.one_way_dropped
                self._policy.lost(exc)
        if current:
            conn.close()

    def _check_open(self) -> None:
        if self._closing.is_set():
            gave_up = self._policy.gave_up
            why = "with close()" if gave_up is None else f"after giving up re-dialling ({gave_up})"
            raise ConnectionClosed(f"this connection was closed {why}", by_peer=False)

    def _count(self, name: str) -> None:
        with self._state:
            self._policy.counts[name] += 1

    def _after_failure(self, conn: MultiplexedConnection[T], exc: Exception, retry: bool) -> None:
        """Drop the dead link and return if the message may go on the next one; else raise."""
        if not is_link_failure(exc):
            raise exc
        self._drop(conn, exc)
        if isinstance(exc, NotSent):
            return  # the link was dead before the message left: nothing to fear from sending it
        self._check_open()  # closed by close(): say so, not "lost in flight"
        if not retry:
            self._count("interrupted")
            raise in_flight_error(self.address, exc) from exc
        self._count("resent")
        logger.info("sending a message to %s again (retry=True) on a new link", format_address(self.address))

    def _seconds(self, timeout: float | Default | None) -> tuple[float | None, float | None]:
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        return seconds, None if seconds is None else time.monotonic() + seconds

    # --- calls -----------------------------------------------------------------

    def request(self, message: Any, *, retry: bool = False, timeout: float | Default | None = Default.TIMEOUT) -> T:
        """Send a request and wait for its own reply, re-dialling first if the link is down.

        Args:
            message: bytes, or with a codec a value it encodes.
            retry: the request may be executed twice (it is idempotent): if
                its link dies before its reply, send it again on the next link.
            timeout: seconds for the whole call (re-dials included);
                defaults to the client's; None waits for ever.

        Raises:
            ConnectionClosed: the link died with the request in flight (and
                `retry` is False), or this client is closed.
            Timeout: the timeout ran out, re-dials included (a request that
                timed out on a live link leaves it open: its late reply is dropped).
            RemoteError: the server's handler failed on this request.
            OSError: the client gave up re-dialling (`Backoff.attempts`):
                the last attempt's error.
        """
        seconds, deadline = self._seconds(timeout)
        while True:
            conn = self._link(deadline, seconds)
            try:
                reply = conn.request(message, timeout=_remaining(deadline))
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            self._policy.healthy()
            return reply

    def send(self, message: Any, *, retry: bool = False, timeout: float | Default | None = Default.TIMEOUT) -> None:
        """Send a one-way message, re-dialling first if the link is down.

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        seconds, deadline = self._seconds(timeout)
        while True:
            conn = self._link(deadline, seconds)
            try:
                conn.send(message, timeout=_remaining(deadline))
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    def recv(self, *, timeout: float | Default | None = Default.TIMEOUT) -> T:
        """The next one-way message from the server, re-dialling first if there is no link.

        Raises:
            ConnectionClosed: the link died while waiting (what the server
                sent meanwhile is lost; the next call re-dials), or this
                client is closed.
            Timeout: none came within the timeout, re-dials included.
        """
        seconds, deadline = self._seconds(timeout)
        conn = self._conn
        if conn is None:
            conn = self._link(deadline, seconds)
        try:
            message = conn.recv(timeout=_remaining(deadline))
        except ConnectionClosed as exc:
            self._drop(conn, exc)
            self._check_open()
            self._count("interrupted")
            raise ConnectionClosed(
                f"the connection to {format_address(self.address)} was lost while waiting for a message ({exc});"
                " what the server sent meanwhile is lost, and the next call reconnects"
            ) from exc
        self._policy.healthy()
        return message

    def close(self) -> None:
        """Close the link and stop re-dialling; calls waiting in other threads raise `ConnectionClosed`. Idempotent."""
        self._closing.set()
        with self._state:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 1e-3)
