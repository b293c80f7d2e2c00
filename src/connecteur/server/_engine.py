"""What every engine shares: its configuration, counters, and policies.

The accept policy and the waker (`accept_ready`, `StopSignal`) are in
`connecteur._loop`, which the fault proxy uses too; they are imported here
so that the engines find everything they share in one place.

An engine runs the accept loop and the per-connection loops; it never parses
bytes (decoders do) and never decides policy on its own (this module does).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

from .._channel import Channel, ChannelSpec
from .._keepalive import Keepalive
from .._loop import ACCEPT_BACKOFF as ACCEPT_BACKOFF
from .._loop import ACCEPT_BATCH as ACCEPT_BATCH
from .._loop import RESOURCE_ERRNOS as RESOURCE_ERRNOS
from .._loop import StopSignal as StopSignal
from .._loop import accept_error_is_fatal_for_now as accept_error_is_fatal_for_now
from .._loop import accept_ready as accept_ready
from ..address import format_address
from ..framing import Buffer, Framing
from ._deadlines import Deadlines
from ._handler import Handler, logger, running_handler
from ._limits import HIGH_WATER, LOW_WATER
from ._peer import Peer

__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MESSAGE_TIMEOUT",
    "RESOURCE_ERRNOS",
    "Counters",
    "Engine",
    "EngineConfig",
    "PendingAdmissions",
    "Stats",
    "StopSignal",
    "Traffic",
    "accept_ready",
    "channel_opened",
    "log_abandoned",
    "logger",
    "refuse_if_full",
    "refuse_untrusted",
    "shut_down",
]


DEFAULT_MESSAGE_TIMEOUT: Final = 60.0
"""Seconds a message may take from its first byte to its last, by default: the
slowloris defence (a peer trickling a message, or a header and nothing more,
would otherwise hold its buffers and a connection slot for ever). Long enough
for 16 MiB over a 2.2 Mbit/s link."""

DEFAULT_MAX_BUFFERED: Final = 256 * 2**20
"""256 MiB: the bytes one server process may hold for all its connections
together, in unfinished messages and queued replies (`Server(max_buffered)`):
sixteen 16 MiB messages under way at once."""

LAST_ACCEPTS: Final = 4096
"""At a graceful stop, connections still waiting in the backlog are accepted
and served (up to this many) rather than reset by closing the listener: their
clients connected and may have sent requests already."""


@dataclass(frozen=True, slots=True)
class Stats:
    """An immutable snapshot of a server's counters.

    Attributes:
        accepted: connections admitted since the start.
        rejected: connections closed at once because `max_connections` was reached.
        active: connections open now.
        messages_in: whole messages received.
        messages_out: messages sent (replies and `peer.send`); on the event-loop
            engines, counted when queued, so a reply queued to a peer that then
            vanishes still counts.
        bytes_in: bytes received, framing included.
        bytes_out: bytes sent, framing included.
        errors: connections closed by an error: a handler that raised, the
            peer's bad bytes, a timeout, a reset, a failed handshake.
        handshake_errors: connections closed before the handler saw them: a
            TLS handshake or authentication that failed or stalled, a missing,
            malformed or untrusted PROXY header (also counted in `errors`,
            except untrusted sources, which were never admitted).
        evicted: connections closed because the server held more than
            `max_buffered` bytes for too long, largest first (also counted in
            `errors`).
        worker_restarts: pre-forked workers (``workers=N``) started to replace
            one that died outside a stop.
        skipped: messages over the framing's `max_size` dropped, the
            connection kept (a framing with ``on_oversize="skip"``; not in
            `messages_in`, their bytes in `bytes_in`).
        queued: bytes waiting now in the outgoing queues of the select,
            asyncio and threads engines, peers not reading yet: a gauge
            (a processes engine's children keep theirs).
        dropped: messages dropped by a slow-consumer policy (``"drop"``,
            ``"drop_oldest"``) instead of being queued to a slow peer.
    """

    accepted: int = 0
    rejected: int = 0
    active: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    handshake_errors: int = 0
    evicted: int = 0
    worker_restarts: int = 0
    skipped: int = 0
    queued: int = 0
    dropped: int = 0

    def __add__(self, other: Stats) -> Stats:
        """Add two snapshots field by field (to sum several processes)."""
        return Stats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class Traffic:
    """Messages and bytes counted by one writer, with no lock: part of `Counters`.

    A lock per read was measured at ~0.2 µs of the ~13 µs a round trip costs
    the select engine over 1,000 connections (``connecteur bench``, many), so
    the per-read counts go here instead. An event loop keeps one for all its
    connections, a connection's thread one of its own. Only its owner adds
    to the ``_in`` fields; senders add to the ``_out`` fields one at a time
    (the loop's thread, or under the connection's lock). `Counters.snapshot`
    sums the live ones: it may catch a read before its reply is counted,
    never lose or double a count.
    """

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0


class Counters:
    """The live, thread-safe counters behind `Stats`.

    Connections opened and closed are counted under a lock; messages and
    bytes in `Traffic` objects, one per writer, which `snapshot` adds up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._elsewhere: dict[int, Stats] = {}  # other processes' latest reports
        self._traffic: set[Traffic] = set()  # live; a retired one is added to the fields below
        self.accepted = self.rejected = self.active = 0
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = self.errors = 0
        self.handshake_errors = self.evicted = self.worker_restarts = self.skipped = self.dropped = 0
        self._queued: list[Callable[[], int]] = []  # each returns bytes queued now (an engine's connections)

    def opened(self) -> None:
        """Count a connection admitted."""
        with self._lock:
            self.accepted += 1
            self.active += 1

    def closed(self, *, error: bool) -> None:
        """Count a connection closed, by an error or not."""
        with self._lock:
            self.active -= 1
            self.errors += error

    def handshake_failed(self, count: int = 1) -> None:
        """Count connections whose handshake failed (closed without reaching the handler)."""
        with self._lock:
            self.handshake_errors += count

    def over_budget(self, count: int) -> None:
        """Count connections closed because the server held more than `max_buffered`."""
        with self._lock:
            self.evicted += count

    def skipped_message(self) -> None:
        """Count a message over `max_size` dropped with its connection kept (rare: a lock is cheap here)."""
        with self._lock:
            self.skipped += 1

    def dropped_messages(self, count: int = 1) -> None:
        """Count messages a slow-consumer policy dropped."""
        with self._lock:
            self.dropped += count

    def watch_queued(self, source: Callable[[], int]) -> None:
        """Add `source()`, bytes queued now, to the `queued` gauge of every snapshot."""
        with self._lock:
            self._queued.append(source)

    def withdrawn(self) -> None:
        """Take back `opened()`: the connection could not be served yet."""
        with self._lock:
            self.accepted -= 1
            self.active -= 1

    def refused(self) -> None:
        """Count a connection closed at once because the server is full."""
        with self._lock:
            self.rejected += 1

    def traffic(self) -> Traffic:
        """A new `Traffic` for one writer, counted by `snapshot` until `retire`."""
        traffic = Traffic()
        with self._lock:
            self._traffic.add(traffic)
        return traffic

    def retire(self, traffic: Traffic) -> None:
        """Keep `traffic`'s counts and stop watching it: its writers are done."""
        with self._lock:
            if traffic not in self._traffic:
                return  # retired already: its counts are in
            self._traffic.remove(traffic)
            self.messages_in += traffic.messages_in
            self.messages_out += traffic.messages_out
            self.bytes_in += traffic.bytes_in
            self.bytes_out += traffic.bytes_out

    def report_elsewhere(self, key: int, stats: Stats) -> None:
        """Record the latest counters of another process (a worker), added by `snapshot`."""
        with self._lock:
            self._elsewhere[key] = stats

    def retire_elsewhere(self, key: int) -> None:
        """Keep the latest counters another process reported, and stop waiting for more: it ended.

        Its connections ended with it: those it still reported open are no
        longer active, and count as closed by an error (a worker killed takes
        its connections with it; one that stopped gracefully reports none).
        """
        with self._lock:
            stats = self._elsewhere.pop(key, None)
            if stats is None:
                return
            self.accepted += stats.accepted
            self.rejected += stats.rejected
            self.messages_in += stats.messages_in
            self.messages_out += stats.messages_out
            self.bytes_in += stats.bytes_in
            self.bytes_out += stats.bytes_out
            self.errors += stats.errors + stats.active
            self.handshake_errors += stats.handshake_errors
            self.evicted += stats.evicted
            self.worker_restarts += stats.worker_restarts
            self.skipped += stats.skipped
            self.dropped += stats.dropped  # not `queued`: a gauge, whose bytes went with the process

    def worker_restarted(self) -> None:
        """Count a worker started in place of one that died."""
        with self._lock:
            self.worker_restarts += 1

    def add_traffic(self, stats: Stats) -> None:
        """Add the messages, bytes and skipped messages of `stats`: the report of a child process that ended."""
        with self._lock:
            self.skipped += stats.skipped
            self.messages_in += stats.messages_in
            self.messages_out += stats.messages_out
            self.bytes_in += stats.bytes_in
            self.bytes_out += stats.bytes_out

    def snapshot(self) -> Stats:
        """Return the counters now, as an immutable `Stats`, other processes' included."""
        with self._lock:
            live = list(self._traffic)
            own = Stats(
                self.accepted, self.rejected, self.active,
                self.messages_in + sum(t.messages_in for t in live),
                self.messages_out + sum(t.messages_out for t in live),
                self.bytes_in + sum(t.bytes_in for t in live),
                self.bytes_out + sum(t.bytes_out for t in live),
                self.errors, self.handshake_errors, self.evicted, self.worker_restarts, self.skipped,
                sum(source() for source in self._queued), self.dropped,
            )  # fmt: skip
            return sum(self._elsewhere.values(), own)


_PLAIN: Final = ChannelSpec(server_side=True)  # no PROXY header, no TLS, no authentication


class PlainEnvelopes(Protocol):
    """A multiplexed server's plain function, as the session's fast path calls it (`MultiplexedHandler`)."""

    def answer_plain(self, peer: Peer, messages: list[bytes], replies: list[Buffer]) -> Sequence[object]:
        """Append the replies' envelopes to `replies`; return the async replies to chain."""
        ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything an engine needs from `Server`, fixed at start."""

    handler: Handler
    framing: Framing
    counters: Counters
    max_connections: int
    idle_timeout: float | None
    message_timeout: float | None
    channel: ChannelSpec = _PLAIN
    handshake_timeout: float | None = None
    max_buffered: int = DEFAULT_MAX_BUFFERED
    keepalive: Keepalive | None = None  # for every accepted TCP connection (configure_stream)
    high_water: int = HIGH_WATER
    low_water: int = LOW_WATER
    slow_consumer: str = "close"
    plain_envelopes: PlainEnvelopes | None = None  # multiplexed, a plain function: the session's fast path

    def deadlines(self, clock: Callable[[], float] = time.monotonic) -> Deadlines:
        """The deadlines of a new connection (a handshake deadline when it needs one), read on `clock`."""
        handshake = None if self.channel.is_plain else self.handshake_timeout
        return Deadlines(self.idle_timeout, self.message_timeout, handshake, clock)


class Engine(Protocol):
    """The internal interface between `Server` and an engine."""

    def serve(self, listener: socket.socket) -> None:
        """Accept and serve connections until a stop is requested, then stop gracefully.

        Takes ownership of `listener` and closes it as soon as it stops
        accepting. Returns once every connection is closed (or abandoned at
        the stop deadline).
        """
        ...

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline` (a `time.monotonic()` value).

        Safe from any thread and from a signal handler; calling it again
        with an earlier deadline hurries the stop.
        """
        ...

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`: a byte written there wakes `serve`'s wait.

        A signal handled by a thread other than the main one does not
        interrupt the main thread's wait, and Python runs the handler only
        in the main thread, once it runs again.
        """
        ...

    def abandon(self) -> None:
        """`serve` has not returned shortly after the stop deadline: give up on it, from another thread.

        An engine whose `serve` runs handlers on its own thread (select,
        asyncio) may be stuck in one, and Python cannot interrupt it: log the
        handler, shut down the listener and every connection so that the
        peers see them end now, and let `serve` end by itself whenever the
        handler returns. Engines that never run handlers on that thread
        have nothing to do. Safe from any thread.
        """
        ...


def refuse_if_full(config: EngineConfig, sock: socket.socket, address: object) -> bool:
    """Close `sock` at once, count it and log it, if the server is at `max_connections`."""
    if config.counters.active < config.max_connections:
        return False
    logger.info("refusing %s: max_connections (%d) reached", format_address(address), config.max_connections)
    config.counters.refused()
    sock.close()
    return True


def channel_opened(channel: Channel, peer: Peer, deadlines: Deadlines) -> Channel | None:
    """The handshakes are done: start the idle clock and give the peer its (original) address.

    Returns:
        The channel while it still has work on every read (TLS), else None.
    """
    deadlines.handshake_done()
    peer.address, peer.proxy_address = channel.address, channel.proxy_address
    return channel if channel.encrypts else None


def refuse_untrusted(config: EngineConfig, sock: socket.socket, address: object) -> bool:
    """Close `sock` at once, and count it, if it must send a PROXY header and may not."""
    spec = config.channel
    if spec.proxy_protocol == "off" or spec.is_trusted(address):
        return False
    logger.info("closing %s: not in proxy_trusted, so it may not send a PROXY header", format_address(address))
    config.counters.handshake_failed()
    sock.close()
    return True


def shut_down(sockets: Iterable[socket.socket | None]) -> None:
    """Shut down `sockets` from a thread that does not own them, so that their peers see the end now.

    Not ``close()``: the owning thread (stuck in a handler) may still use
    them, and a descriptor number closed under it could be reused by an
    unrelated file meanwhile. It closes them itself when it runs again.
    """
    for sock in sockets:
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already, or never connected
                sock.shutdown(socket.SHUT_RDWR)


def log_abandoned(thread_id: int, what: str) -> None:
    """Log that `what` (a thread) did not end by the stop deadline, naming the handler it is inside."""
    running = running_handler(thread_id)
    if running is None:
        logger.warning("stop deadline passed and %s had not ended; it is left to end by itself", what)
    else:
        logger.warning(
            "stop deadline passed with %s still running: its connection is shut down, %s stays "
            "until the handler returns, and what it sends then goes nowhere",
            running,
            what,
        )


class PendingAdmissions:
    """Accepted connections an engine could not start serving yet.

    When no thread, process or pipe can be had for a connection already
    accepted, closing it would drop a client that did nothing wrong: it waits
    here instead, accepting pauses, and it is admitted first when accepting
    resumes. At a stop, those still waiting are closed and counted refused.
    """

    def __init__(self) -> None:
        self._waiting: deque[tuple[socket.socket, Any]] = deque()

    def put(self, sock: socket.socket, address: Any, error: BaseException) -> bool:
        """Keep a connection for later; returns True (accepting must pause)."""
        logger.warning("cannot serve a new connection yet (%s); pausing accepts for %.1f s", error, ACCEPT_BACKOFF)
        self._waiting.append((sock, address))
        return True

    def retry(self, admit: Callable[[socket.socket, Any], bool]) -> bool:
        """Admit the waiting connections in order; True if one still cannot be served."""
        waiting = self._waiting
        for _ in range(len(waiting)):
            sock, address = waiting.popleft()
            if admit(sock, address):
                waiting.rotate(1)  # admit() put it back last: it stays first in line
                return True
        return False

    def close_all(self, counters: Counters) -> None:
        """Close what still waits: the server is stopping."""
        while self._waiting:
            sock, _ = self._waiting.popleft()
            sock.close()
            counters.refused()
