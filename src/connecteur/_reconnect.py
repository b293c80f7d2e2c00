"""Clients that re-dial: `Backoff`, the policy both clients share, and the blocking `ReconnectingConnection`.

Made by ``connect(..., reconnect=Backoff(...))``; the asyncio twin is in
`connecteur.aio`. The policy (`Redialer`) does no I/O: it says when the next
attempt may start, counts, logs, and gives up after `Backoff.attempts`.

What is never done: sending a message again that may have reached the
server. A call whose message was handed to a link that then died raises
`ConnectionClosed` (the message may or may not have been acted on), unless
the caller passed ``retry=True``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeVar, final

from .address import format_address
from .errors import ConnectionClosed, Timeout, TruncatedMessage

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


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


__all__ = ["Backoff", "Counted", "ReconnectingConnection", "Redialer", "in_flight_error", "is_link_failure", "logger"]

logger: Final = logging.getLogger("connecteur.client")
"""Where both clients log links lost, attempts failed, reconnections and give-ups."""


@final
@dataclass(frozen=True, slots=True)
class Backoff:
    """How a client re-dials: exponential back-off with jitter.

    After a link is lost or an attempt fails, the next attempt waits
    `initial` seconds, then `factor` times longer after each failure, never
    over `maximum`; each wait is multiplied by a random factor from
    ``1 - jitter`` to ``1 + jitter``, so that many clients cut at once do not
    come back at once. The waits start again from `initial` once a link
    carries a message (a reply, a `recv`): a server that accepts and then
    closes at once is not hammered.

    Attributes:
        initial: seconds before the first attempt after a loss.
        factor: how much each wait grows (1: constant waits).
        maximum: the longest wait, in seconds.
        attempts: consecutive failed attempts after which the client gives up
            and closes (the last attempt's error is raised); None: for ever.
        jitter: the random spread of each wait, from 0 to 1.

    Raises:
        ValueError: a wait not positive and finite, a factor below 1, a
            maximum below `initial`, attempts below 1, or jitter outside 0..1.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    attempts: int | None = None
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum!r}) must be at least initial ({self.initial!r})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float) or not 1 <= self.factor < math.inf:
            raise ValueError(f"factor must be a number >= 1, not {self.factor!r}")
        if self.attempts is not None and (
            isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1
        ):
            raise ValueError(f"attempts must be a positive int or None (for ever), not {self.attempts!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be a fraction from 0 to 1, not {self.jitter!r}")

    def delays(self, rng: Callable[[], float] = random.random) -> Iterator[float]:
        """The waits before each attempt of one outage, jittered: an endless series.

        Args:
            rng: returns a float from 0 to 1 (``random.random``; a seeded one for tests).
        """
        delay = self.initial
        while True:
            yield delay * (1 + self.jitter * (2 * rng() - 1))
            delay = min(delay * self.factor, self.maximum)


def is_link_failure(exc: BaseException) -> bool:
    """True for errors that say the link is gone (closed, reset, timed out by the kernel), not the caller's."""
    if isinstance(exc, ConnectionClosed | TruncatedMessage):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, Timeout)


def _may_heal(exc: BaseException, *, greeting: bool) -> bool:
    """True for errors worth another attempt.

    Dialling: any `OSError` (refused, unreachable, no such name yet, timed
    out), not a certificate or an authentication that failed. In
    `on_connect`: only the link's failures (closed, reset, timed out), not
    what the application raised, even an `OSError` such as ``PermissionError``.
    """
    if greeting:
        return isinstance(exc, ConnectionError | TimeoutError | TruncatedMessage)
    return (isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)) or isinstance(exc, ConnectionClosed)


def in_flight_error(address: object, exc: BaseException) -> ConnectionClosed:
    """The error of a call whose message went into a link that then died."""
    return ConnectionClosed(
        f"the connection to {format_address(address)} was lost with a message in flight ({exc}); it may or may not"
        " have been acted on, so it is not sent again (pass retry=True if sending it twice is safe)"
    )


@final
class Redialer:
    """The re-dialling policy of one client: when to try next, counts, logs, giving up. No I/O.

    Args:
        backoff: the waits and the attempts.
        address: the server's, for messages.
    """

    __slots__ = ("_backoff", "_delays", "_failures", "_last", "address", "counts", "due", "gave_up")

    def __init__(self, backoff: Backoff, address: object) -> None:
        self._backoff = backoff
        self.address = address
        self._delays: Iterator[float] | None = None  # the current outage's waits; None while links carry messages
        self._failures = 0  # consecutive failed attempts
        self._last = ""  # the last attempt's error, for messages
        self.due = -math.inf
        """The `time.monotonic()` before which no attempt starts."""
        self.gave_up: BaseException | None = None
        """The last error, once `Backoff.attempts` attempts in a row failed."""
        self.counts = {"connects": 0, "reconnects": 0, "failed_attempts": 0, "interrupted": 0, "resent": 0}
        """What the client reports as attributes."""

    def _wait_more(self, now: float) -> float:
        if self._delays is None:
            self._delays = self._backoff.delays()
        delay = next(self._delays)
        self.due = now + delay
        return delay

    def check_deadline(self, deadline: float | None, now: float, seconds: float | None) -> None:
        """Raise `Timeout` when the next attempt is due only after `deadline`, the end of a call of `seconds`."""
        if deadline is not None and max(self.due, now) >= deadline:
            raise Timeout(
                f"could not connect to {format_address(self.address)} within {seconds} s"
                f" ({self._failures} attempts failed in a row{self._last})",
                seconds=seconds or 0.0,
            )

    def failed(self, exc: BaseException, *, greeting: bool = False) -> None:
        """An attempt failed with `exc` (in `on_connect` if `greeting`): schedule the next one, or raise.

        Raises:
            exc: itself, when it is not worth another attempt or the attempts are used up.
        """
        self.counts["failed_attempts"] += 1
        self._failures += 1
        self._last = f"; the last: {exc}"
        attempts = self._backoff.attempts
        if not _may_heal(exc, greeting=greeting):
            raise exc
        if attempts is not None and self._failures >= attempts:
            self.gave_up = exc
            logger.error("giving up on %s after %d failed attempts: %s", format_address(self.address), attempts, exc)
            raise exc
        delay = self._wait_more(time.monotonic())
        logger.info(
            "could not connect to %s (attempt %d): %s; next attempt in %.2f s",
            format_address(self.address), self._failures, exc, delay,
        )  # fmt: skip

    def connected(self) -> None:
        """An attempt succeeded (the `on_connect` hook included)."""
        counts = self.counts
        if counts["connects"]:
            counts["reconnects"] += 1
            logger.info("reconnected to %s", format_address(self.address))
        counts["connects"] += 1
        self._failures = 0

    def lost(self, exc: BaseException | None) -> None:
        """The link died (`exc`, or None: found closed): the next attempt waits for the back-off."""
        delay = self._wait_more(time.monotonic())
        logger.warning(
            "connection to %s lost (%s); reconnecting in %.2f s", format_address(self.address), exc or "closed", delay
        )

    def healthy(self) -> None:
        """A link carried a message: the next outage's waits start from `Backoff.initial` again."""
        self._delays = None


class Counted:
    """The counters of a reconnecting client, read from its `Redialer`."""

    _policy: Redialer

    @property
    def connects(self) -> int:
        """Links opened, the first included."""
        return self._policy.counts["connects"]

    @property
    def reconnects(self) -> int:
        """Links opened after the first."""
        return self._policy.counts["reconnects"]

    @property
    def failed_attempts(self) -> int:
        """Attempts to connect that failed (refused, timed out, `on_connect` failed on a link error)."""
        return self._policy.counts["failed_attempts"]

    @property
    def interrupted(self) -> int:
        """Calls that raised `ConnectionClosed` because the link died under them."""
        return self._policy.counts["interrupted"]

    @property
    def resent(self) -> int:
        """Messages sent again (``retry=True``) after their link died."""
        return self._policy.counts["resent"]


@final
class ReconnectingConnection(Counted, Generic[T]):
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
        self._dial = dial
        self._on_connect = on_connect
        self._timeout = timeout
        self._policy = Redialer(backoff, address)
        self._conn: Connection[T] | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()  # wakes a back-off wait at close()
        self.address: object = address
        """The server's address, as given to `connect`."""

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "connected" if self._conn is not None else "disconnected"
        return f"<ReconnectingConnection {state} to {format_address(self.address)}>"

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

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _link(self, deadline: float | None) -> Connection[T]:
        """The open link, re-dialled if needed; its timeout set to what remains of `deadline`."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn._link_is_down():
                self._drop(conn, None)
                conn = None
            if conn is None:
                conn = self._redial(deadline)
        conn.timeout = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
        return conn

    def _redial(self, deadline: float | None) -> Connection[T]:
        policy = self._policy
        while True:
            self._check_open()
            now = time.monotonic()
            policy.check_deadline(deadline, now, self._timeout)
            if policy.due > now and self._closing.wait(policy.due - now):
                continue  # closed meanwhile: _check_open raises
            try:
                conn = self._dial(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
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
            policy.connected()
            self._conn = conn
            return conn

    def _failed(self, exc: Exception, *, greeting: bool = False) -> None:
        try:
            self._policy.failed(exc, greeting=greeting)
        except BaseException:
            if self._policy.gave_up is not None:
                self._closing.set()
            raise

    def _drop(self, conn: Connection[T], exc: BaseException | None) -> None:
        _end(conn)
        if self._conn is conn:
            self._conn = None
            self._policy.lost(exc)

    def _check_open(self) -> None:
        if self._closing.is_set():
            gave_up = self._policy.gave_up
            why = "with close()" if gave_up is None else f"after giving up re-dialling ({gave_up})"
            raise ConnectionClosed(f"this connection was closed {why}", by_peer=False)

    def _count(self, name: str) -> None:
        self._policy.counts[name] += 1

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

    def _after_failure(self, conn: Connection[T], exc: Exception, retry: bool) -> None:
        """Drop a dead link and return if the message may go again; else raise."""
        if not is_link_failure(exc):
            raise exc
        with self._lock:
            self._drop(conn, exc)
        if not retry:
            self._count("interrupted")
            raise in_flight_error(self.address, exc) from exc
        self._count("resent")
        logger.info("sending a message to %s again (retry=True) on a new link", format_address(self.address))

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
            with self._lock:
                self._drop(conn, exc)
            self._count("interrupted")
            raise ConnectionClosed(
                f"the connection to {format_address(self.address)} was lost while waiting for a message ({exc});"
                " what the server sent meanwhile is lost, and the next call reconnects"
            ) from exc
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
        """Close the link and stop re-dialling (a back-off wait in another thread ends). Idempotent."""
        self._closing.set()
        conn, self._conn = self._conn, None  # not under the lock: a re-dial may hold it, waiting for _closing
        if conn is not None:
            _end(conn)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _end(conn: Connection[Any]) -> None:
    """Close a link, waking a thread blocked in its `recv()` (closing the socket alone would not)."""
    with contextlib.suppress(OSError):
        conn._sock.shutdown(socket.SHUT_RDWR)
    conn.close()
