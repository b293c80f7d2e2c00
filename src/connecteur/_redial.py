"""How the reconnecting clients re-dial, and what all four of them share.

`Backoff` is the public policy; `Redialer` applies it for one client and
does no I/O: it says when the next attempt may start, counts, logs, and gives
up after `Backoff.attempts`. `Reconnecting` is the base of the four clients
(blocking and asyncio, plain and multiplexed): their state, their properties
and counters, and the errors they raise; `Multiplexed` adds what the two
multiplexed ones share. The clients themselves do the I/O, each in
`_reconnect`, `_aio_reconnect`, `_reconnect_mux` or `_aio_reconnect_mux`.

What is never done: sending a message again that may have reached the
server. A call whose message was handed to a link that then died raises
`ConnectionClosed` (the message may or may not have been acted on), unless
the caller passed ``retry=True``.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, Protocol, TypeVar, final

from ._multiplexed import Default, NotSent
from .address import format_address
from .errors import ConnectionClosed, Timeout, TruncatedMessage

__all__ = [
    "Backoff",
    "Multiplexed",
    "Reconnecting",
    "Redialer",
    "in_flight_error",
    "is_link_failure",
    "logger",
]

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


L = TypeVar("L")
M = TypeVar("M", bound="_MultiplexedLink")


class _Flag(Protocol):
    """The clients' closing flag, as this module uses it: a `threading.Event` or an `asyncio.Event`."""

    def is_set(self) -> bool: ...
    def set(self) -> None: ...


class _MultiplexedLink(Protocol):
    """What `Multiplexed` reads of a link: the blocking or the asyncio `MultiplexedConnection`."""

    @property
    def in_flight(self) -> int: ...
    @property
    def late_replies(self) -> int: ...
    @property
    def one_way_dropped(self) -> int: ...


class Reconnecting(Generic[L]):
    """The base of the four reconnecting clients: their state, properties and counters, and the errors they raise.

    `L` is the link a client re-dials: a plain or multiplexed connection,
    blocking or asyncio. This class does no I/O: a subclass dials, waits and
    locks its own way, and says how it closes a dead link (`_drop`). Each
    client has its own `connection` property, so that the reference names
    its link's type rather than `L`.
    """

    _REPR_PREFIX: ClassVar[str] = ""

    def __init__(
        self,
        *,
        address: object,
        backoff: Backoff,
        on_connect: Callable[[L], object] | None,
        timeout: float | None,
        closing: _Flag,
    ) -> None:
        self._on_connect = on_connect
        self._timeout = timeout
        self._policy = Redialer(backoff, address)
        self._conn: L | None = None
        self._greeted: L | None = None  # a new link given to on_connect, not in use yet: close() closes it too
        self._closing = closing  # set by close() or on giving up; wakes a back-off wait
        self.address: object = address
        """The server's address, as given to `connect`."""

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "connected" if self._conn is not None else "disconnected"
        return f"<{self._REPR_PREFIX}{type(self).__name__} {state} to {format_address(self.address)}>"

    @property
    def timeout(self) -> float | None:
        """Seconds allowed for each whole call, re-dials included (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    @property
    def is_closed(self) -> bool:
        """True once `close()` was called, or the client gave up re-dialling."""
        return self._closing.is_set()

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

    # --- links -----------------------------------------------------------------

    # Deadlines on time.monotonic(), the policy's clock; links get what remains as their timeout.
    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 1e-3)

    def _failed(self, exc: Exception, *, greeting: bool = False) -> None:
        try:
            self._policy.failed(exc, greeting=greeting)
        except BaseException:
            if self._policy.gave_up is not None:
                self._closing.set()
            raise

    def _greet_start(self, conn: L) -> None:
        """A new link goes to `on_connect`: `close()` closes it from now on; raise if `close()` ran during the dial."""
        self._greeted = conn
        self._check_open()

    def _adopt(self, conn: L) -> None:
        """Make a new link, `on_connect` done, the one in use; raise if `close()` ran during `on_connect`.

        `close()` then closed the link already (`_take_links`); the re-dial
        closes it again and raises the closed error: nothing is sent on it.
        """
        self._check_open()
        self._policy.connected()
        self._conn = conn
        self._greeted = None  # after _conn is set: a link moving from one to the other is in one of them

    def _take_links(self) -> list[L]:
        """Stop using every link, for `close()`, once `_closing` is set; return them, to be closed.

        The one in use, and the one `on_connect` is given now by a re-dial
        in another thread or task. `_greeted` is read before `_conn`, the
        other order from `_adopt`'s, so that a link moving from one to the
        other is seen; a link dialled before `_closing` was set and not
        greeted yet is closed by its re-dial (`_greet_start` raises).
        """
        greeted = self._greeted
        conn, self._conn = self._conn, None
        links: list[L] = [] if conn is None else [conn]
        if greeted is not None and greeted is not conn:
            links.append(greeted)
        return links

    def _forget(self, conn: L, exc: BaseException | None) -> bool:
        """Stop using `conn`, found dead (`exc`), if it is the link in use; False if it was not."""
        if self._conn is not conn:
            return False
        self._conn = None
        self._policy.lost(exc)
        return True

    @abstractmethod
    def _drop(self, conn: L, exc: BaseException | None) -> None:
        """Forget a dead link found by a call (`_forget`) and close it: each client its own way."""

    def _check_open(self) -> None:
        if self._closing.is_set():
            gave_up = self._policy.gave_up
            why = "with close()" if gave_up is None else f"after giving up re-dialling ({gave_up})"
            raise ConnectionClosed(f"this connection was closed {why}", by_peer=False)

    def _count(self, name: str) -> None:
        self._policy.counts[name] += 1

    # --- what a call raises when its link dies -----------------------------------

    def _after_failure(self, conn: L, exc: Exception, retry: bool) -> None:
        """Drop a dead link and return if the message may go again; else raise."""
        if not is_link_failure(exc):
            raise exc
        self._drop(conn, exc)
        self._resend_or_raise(exc, retry)

    def _resend_or_raise(self, exc: Exception, retry: bool) -> None:
        """A message may have reached the server before its link died: return if it may go again, else raise."""
        if not retry:
            self._count("interrupted")
            raise in_flight_error(self.address, exc) from exc
        self._count("resent")
        logger.info("sending a message to %s again (retry=True) on a new link", format_address(self.address))

    def _lost_while_waiting(self, exc: Exception) -> ConnectionClosed:
        """Count a `recv` that the link's death interrupted, and return its error."""
        self._count("interrupted")
        return ConnectionClosed(
            f"the connection to {format_address(self.address)} was lost while waiting for a message ({exc});"
            " what the server sent meanwhile is lost, and the next call reconnects"
        )


class Multiplexed(Reconnecting[M]):
    """What the two multiplexed reconnecting clients add: calls with their own timeout, counters over all links.

    A message that never left (`NotSent`: the link was found dead first)
    goes on the next link without ``retry=True``.
    """

    def __init__(
        self,
        *,
        address: object,
        backoff: Backoff,
        on_connect: Callable[[M], object] | None,
        timeout: float | None,
        closing: _Flag,
    ) -> None:
        super().__init__(address=address, backoff=backoff, on_connect=on_connect, timeout=timeout, closing=closing)
        self._late_replies = 0  # of links gone
        self._one_way_dropped = 0

    @property
    def timeout(self) -> float | None:
        """The default seconds allowed for each whole call, re-dials included (None: for ever); settable."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    @property
    def in_flight(self) -> int:
        """Requests sent on the current link and not answered yet."""
        conn = self._conn
        return 0 if conn is None else conn.in_flight

    def _all_late_replies(self) -> int:
        conn = self._conn
        return self._late_replies + (0 if conn is None else conn.late_replies)

    @property
    def one_way_dropped(self) -> int:
        """One-way messages from the server dropped because `recv` left too many waiting, on every link."""
        conn = self._conn
        return self._one_way_dropped + (0 if conn is None else conn.one_way_dropped)

    def _seconds(self, timeout: float | Default | None) -> tuple[float | None, float | None]:
        seconds = self._timeout if isinstance(timeout, Default) else timeout
        return seconds, None if seconds is None else time.monotonic() + seconds

    def _forget(self, conn: M, exc: BaseException | None) -> bool:
        if not super()._forget(conn, exc):
            return False
        self._late_replies += conn.late_replies
        self._one_way_dropped += conn.one_way_dropped
        return True

    def _resend_or_raise(self, exc: Exception, retry: bool) -> None:
        """As `Reconnecting`'s, but a message that never left (`NotSent`) goes again, and a close() says so."""
        if isinstance(exc, NotSent):
            return  # the link was dead before the message left: nothing to fear from sending it
        self._check_open()  # closed by close(): say so, not "lost in flight"
        super()._resend_or_raise(exc, retry)
