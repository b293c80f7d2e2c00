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
from typing import Any, TypeVar, final

from ._multiplexed import Default, MultiplexedConnection
from ._reconnect import Redialling
from ._redial import Backoff, Multiplexed
from .address import format_address
from .errors import ConnectionClosed, Timeout

__all__ = ["ReconnectingMultiplexedConnection"]

T = TypeVar("T")


@final
class ReconnectingMultiplexedConnection(Redialling[MultiplexedConnection[T]], Multiplexed[MultiplexedConnection[T]]):
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
        super().__init__(
            address=address, backoff=backoff, on_connect=on_connect, timeout=timeout, closing=threading.Event()
        )
        self._dial = dial
        self._dialling = threading.Lock()  # one re-dial at a time; held through its back-off waits
        self._state = threading.Lock()  # the current link and the counters

    @property
    def connection(self) -> MultiplexedConnection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    @property
    def late_replies(self) -> int:
        """Replies dropped because their request had timed out, on every link."""
        return self._all_late_replies()

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

    def _adopt(self, conn: MultiplexedConnection[T]) -> None:
        with self._state:
            super()._adopt(conn)

    def _drop(self, conn: MultiplexedConnection[T], exc: BaseException | None) -> None:
        """Forget a dead link (once, whichever thread sees it first) and close it."""
        with self._state:
            current = self._forget(conn, exc)
        if current:
            conn.close()

    def _count(self, name: str) -> None:
        with self._state:
            super()._count(name)

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
                reply = conn.request(message, timeout=self._remaining(deadline))
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
                conn.send(message, timeout=self._remaining(deadline))
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
            message = conn.recv(timeout=self._remaining(deadline))
        except ConnectionClosed as exc:
            self._drop(conn, exc)
            self._check_open()
            raise self._lost_while_waiting(exc) from exc
        self._policy.healthy()
        return message

    def close(self) -> None:
        """Close the link and stop re-dialling; calls waiting in other threads raise `ConnectionClosed`. Idempotent."""
        self._closing.set()
        with self._state:
            links = self._take_links()
        for conn in links:
            conn.close()
