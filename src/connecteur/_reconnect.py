"""The blocking `ReconnectingConnection`, and `Redialling`, the re-dialling loop of both blocking clients.

Made by ``connect(..., reconnect=Backoff(...))``; the asyncio twin is in
`connecteur.aio`, the multiplexed one in `_reconnect_mux`. What all four
reconnecting clients share, `Backoff` and the `Redialer` policy first, is in
`_redial`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, final

from ._redial import Backoff, Reconnecting, is_link_failure
from .errors import ConnectionClosed

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
B = TypeVar("B", bound="_Closable")


class Connection(Protocol[T_co]):
    """What `ReconnectingConnection` uses of the blocking client's `connecteur.connection.Connection`.

    A protocol, not an import: ``connection.py`` builds reconnecting
    clients, so this module, below it, must not import it back.
    """

    _sock: socket.socket

    @property
    def timeout(self) -> float | None: ...
    @timeout.setter
    def timeout(self, seconds: float | None) -> None: ...
    @property
    def is_closed(self) -> bool: ...
    def send(self, message: Any) -> None: ...
    def send_many(self, messages: Iterable[Any]) -> None: ...
    def recv(self) -> T_co: ...
    def request(self, message: Any) -> T_co: ...
    def close(self) -> None: ...
    def _link_is_down(self) -> bool: ...


__all__ = ["ReconnectingConnection", "Redialling"]


class _Closable(Protocol):
    def close(self) -> None: ...


class Redialling(Reconnecting[B]):
    """What both blocking reconnecting clients share: re-dialling, its back-off waits, ``with``."""

    _dial: Callable[[float | None], B]
    _closing: threading.Event

    def _redial(self, deadline: float | None, seconds: float | None) -> B:
        """Dial until a link is open and greeted, by `deadline` (of a call of `seconds`); the caller holds the lock."""
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, seconds)
            if policy.due > now and self._closing.wait(policy.due - now):
                continue  # closed meanwhile: _check_open raises
            try:
                conn = self._dial(self._remaining(deadline))
            except Exception as exc:
                self._failed(exc)
                continue
            try:
                self._greet_start(conn)
                if self._on_connect is not None:
                    self._on_connect(conn)
                self._adopt(conn)
            except Exception as exc:
                conn.close()
                self._greeted = None  # once closed: a close() that finds it meanwhile closes it too
                self._check_open()  # close() ran: say so, not what on_connect met on the closed link
                self._failed(exc, greeting=True)
                continue
            return conn

    @abstractmethod
    def close(self) -> None:
        """Close the link and stop re-dialling."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@final
class ReconnectingConnection(Redialling[Connection[T]]):
    """A blocking client that re-dials its server when the link dies; made by ``connect(..., reconnect=...)``.

    It has the `Connection` calls (`send`, `send_many`, `recv`, `request`,
    `close`, iteration, ``with``); each one first re-dials if the link is
    down, waiting as the `Backoff` says, and calls `on_connect` on each new
    link. The `timeout` bounds each whole call, re-dials and waits
    included. A message is never sent twice by itself: when the link dies
    after `send` or `request` handed it over, the call raises
    `ConnectionClosed`, unless it was given ``retry=True``: then it is sent
    again on the next link. `recv` raises `ConnectionClosed` once for each
    lost link (messages sent meanwhile are lost), and the next call
    re-dials; iterating goes on across links.

    Threads: as `Connection` (one sender and one receiver at a time);
    re-dialling is done by one of them under a lock. Counters (`connects`,
    `reconnects`, `failed_attempts`, `interrupted`, `resent`) are attributes.
    """

    def __init__(
        self,
        dial: Callable[[float | None], Connection[T]],
        *,
        address: object,
        backoff: Backoff,
        on_connect: Callable[[Connection[T]], object] | None,
        timeout: float | None,
    ) -> None:
        super().__init__(
            address=address, backoff=backoff, on_connect=on_connect, timeout=timeout, closing=threading.Event()
        )
        self._dial = dial
        self._lock = threading.Lock()  # the link in use, and re-dialling

    @property
    def connection(self) -> Connection[T] | None:
        """The link in use now, None between links."""
        return self._conn

    # --- links -----------------------------------------------------------------

    def _link(self, deadline: float | None) -> Connection[T]:
        """The open link, re-dialled if needed; its timeout set to what remains of `deadline`."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn._link_is_down():
                _end(conn)  # not _drop(): it takes the lock, held here
                self._forget(conn, None)
                conn = None
            if conn is None:
                conn = self._redial(deadline, self._timeout)
        conn.timeout = self._remaining(deadline)
        return conn

    def _drop(self, conn: Connection[T], exc: BaseException | None) -> None:
        with self._lock:
            _end(conn)
            self._forget(conn, exc)

    # --- calls -----------------------------------------------------------------

    def request(self, message: Any, *, retry: bool = False) -> T:
        """Send a message and return its reply, re-dialling first if the link is down.

        Args:
            message: bytes, or with a codec a value it encodes.
            retry: the request may be executed twice (it is idempotent): if
                the link dies before its reply, send it again on a new link.

        Raises:
            ConnectionClosed: the link died with the request in flight (and
                `retry` is False), or this client is closed.
            Timeout: the timeout ran out, re-dials included; the link is
                closed, and the next call re-dials.
            OSError: the client gave up re-dialling (`Backoff.attempts`):
                the last attempt's error. And the errors of
                `Connection.request`.
        """
        deadline = self._deadline()
        while True:
            conn = self._link(deadline)
            try:
                reply = conn.request(message)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            self._policy.healthy()
            return reply

    def send(self, message: Any, *, retry: bool = False) -> None:
        """Send one whole message, re-dialling first if the link is down.

        Args:
            message: bytes, or with a codec a value it encodes.
            retry: if sending fails as the link dies, send it again on a new
                link (the server may then see it twice).

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        deadline = self._deadline()
        while True:
            conn = self._link(deadline)
            try:
                conn.send(message)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    def send_many(self, messages: Iterable[Any], *, retry: bool = False) -> None:
        """Send several messages as `Connection.send_many`, re-dialling first if the link is down.

        Raises:
            ConnectionClosed: the link died while sending (and `retry` is
                False: some messages may have arrived), or this client is closed.
            Timeout: the timeout ran out, re-dials included.
        """
        batch = list(messages)
        deadline = self._deadline()
        while True:
            conn = self._link(deadline)
            try:
                conn.send_many(batch)
            except Exception as exc:
                self._after_failure(conn, exc, retry)
                continue
            return

    def recv(self) -> T:
        """Return the next message, re-dialling first if the link is down.

        Raises:
            ConnectionClosed: the link died while waiting (what the server
                sent meanwhile is lost; the next call re-dials), or this
                client is closed.
            Timeout: no message within the timeout, re-dials included.
        """
        deadline = self._deadline()
        with self._lock:
            conn = self._conn
        if conn is None or conn.is_closed:
            conn = self._link(deadline)  # the loss of a closed one was told already, by the call that closed it
        else:
            conn.timeout = self._timeout
        try:
            message = conn.recv()
        except Exception as exc:
            if not is_link_failure(exc):
                raise
            self._drop(conn, exc)
            raise self._lost_while_waiting(exc) from exc
        self._policy.healthy()
        return message

    def __iter__(self) -> Iterator[T]:
        """Yield messages for ever, across lost links (each loss is logged and counted), until `close()`.

        Raises:
            ConnectionClosed: this client is closed, or gave up re-dialling.
            Timeout: no message within the timeout.
        """
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                self._check_open()

    def close(self) -> None:
        """Close the link and stop re-dialling (a back-off wait in another thread ends). Idempotent.

        A link another thread's re-dial is greeting (in `on_connect`) is
        closed too, and that call raises `ConnectionClosed`.
        """
        self._closing.set()
        for conn in self._take_links():  # not under the lock: a re-dial may hold it, in on_connect
            _end(conn)


def _end(conn: Connection[Any]) -> None:
    """Close a link, waking a thread blocked in its `recv()` (closing the socket alone would not)."""
    with contextlib.suppress(OSError):
        conn._sock.shutdown(socket.SHUT_RDWR)
    conn.close()
