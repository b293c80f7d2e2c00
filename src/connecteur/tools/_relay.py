"""One relayed connection of the proxy: two sockets, two flows, their faults.

A `Relay` pairs a client accepted by the proxy with the proxy's own connection
to the target. Each direction is a `Flow`: bytes read from its source wait in a
queue, each chunk stamped with the time it may leave (its delay), and leave
toward the destination as the faults allow: in fragments, paced to a
bandwidth, up to a cut or a blackhole. `ListenerLoop` is the thread that
accepts clients and drives their relays, for the fault proxy and the trace
alike (each says, by overriding it, what a client's relay is); everything here
runs on that loop's one thread and never blocks.

Invariants, checked each time a relay's interest is updated:

* a socket is watched for reading iff the flow it feeds is not over its queue
  bound and has not seen its source's EOF (backpressure: the sender's kernel
  buffers fill, not our memory);
* a socket is watched for writing iff the flow toward it has a chunk due now
  (or the target connection is still being made); a chunk due later is a
  timer in the loop's heap, never a sleep;
* a flow forwards its source's EOF, as ``shutdown(SHUT_WR)``, only after its
  last byte, and the opposite flow goes on: a half-close stays a half-close.
  The relay closes both sockets once both flows have ended;
* a flow whose faults close the relay at a time (`reset_after`, `timeout`)
  keeps a timer armed for it whatever else it waits for, ended or not.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import random
import selectors
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, Protocol, TypeVar, final

from .. import _socket
from .._loop import ACCEPT_BACKOFF, ACCEPT_BATCH, RESOURCE_ERRNOS, Inbox, StopSignal, Timers, accept_ready
from ..address import Address, TcpAddress, UnixAddress, format_address

__all__ = [
    "QUEUE_LIMIT",
    "RECV_SIZE",
    "FaultSettings",
    "Flow",
    "ListenerLoop",
    "Relay",
    "RelayLoop",
    "close_socket",
    "logger",
    "resolve_once",
]

logger: Final = logging.getLogger("connecteur.proxy")

RECV_SIZE: Final = 64 * 2**10
"""64 KiB: the most one ``recv`` takes from a source; each read is queued as is."""

QUEUE_LIMIT: Final = 256 * 2**10
"""256 KiB: a flow holding this many bytes stops reading its source, so a
slow destination (or a long delay) costs at most this plus one read."""

BANDWIDTH_SLICE: Final = 0.02
"""Seconds of bandwidth one send may carry when a bandwidth is set: 20 ms
keeps the pacing smooth without a system call per byte."""

FRAGMENT_WAIT: Final = 0.002
"""Seconds a fragment may wait for the previous one to leave the socket (see
`Flow._is_fragment_held`): long enough for a reading peer's ACK, short enough
that a peer that does not read costs little."""

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LINGER_NOW: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

if sys.platform == "linux":
    import fcntl

    _SIOCOUTQNSD: Final = 0x894B  # "bytes written but not sent yet", include/uapi/linux/sockios.h

    def _unsent_bytes(sock: socket.socket) -> int:
        """Bytes written to `sock` that the kernel holds unsent (0 when it cannot tell)."""
        try:
            unsent: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0" * 4))[0]
        except OSError:
            return 0
        return unsent

else:

    def _unsent_bytes(sock: socket.socket) -> int:
        """Elsewhere there is no such count (nor autocorking to wait out)."""
        return 0


def close_socket(sock: socket.socket, *, reset: bool) -> None:
    """Close `sock`; with `reset`, abortively (RST, unsent bytes dropped) instead of FIN."""
    if reset:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NOW)
    sock.close()


class FaultSettings(Protocol):
    """The faults of one direction, as a relay reads them: `connecteur.tools.proxy.Faults` (see it).

    A protocol rather than an import, so that this module does not import the
    one that imports it.
    """

    @property
    def fragment(self) -> int | None: ...
    @property
    def fragment_random(self) -> bool: ...
    @property
    def delay(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def bandwidth(self) -> int | None: ...
    @property
    def cut_after(self) -> int | None: ...
    @property
    def reset(self) -> bool: ...
    @property
    def blackhole_after(self) -> int | None: ...
    @property
    def slow_close(self) -> float: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def reset_after(self) -> float | None: ...
    @property
    def fragment_delay(self) -> float: ...
    @property
    def fragment_variation(self) -> int: ...


class RelayLoop(Protocol):
    """What a relay needs from the loop that drives it (all on the loop's thread)."""

    @property
    def selector(self) -> selectors.BaseSelector:
        """Where relays register their sockets, with themselves as data."""
        ...

    @property
    def rng(self) -> random.Random:
        """The random source of fragment sizes and jitter (seedable)."""
        ...

    def add_timer(self, due: float, flow: Flow) -> None:
        """Call ``flow.on_timer(due)`` at `due` (a `time.monotonic()` value)."""
        ...

    def forget(self, relay: Relay) -> None:
        """Drop a relay that closed both its sockets."""
        ...


@final
class Relay:
    """A client and the proxy's connection to the target, relayed both ways.

    Args:
        loop: the loop that drives it.
        client: the accepted client, non-blocking.
        target: a connection to the target begun by `_socket.start_connection`.
        upstream: the faults of client → target bytes.
        downstream: the faults of target → client bytes.
        name: ``client -> target`` addresses, for the log.
    """

    __slots__ = ("_client_events", "_name", "_target_events", "client", "downstream", "is_connected", "is_open",
                 "loop", "target", "upstream")  # fmt: skip

    def __init__(
        self,
        loop: RelayLoop,
        client: socket.socket,
        target: socket.socket,
        *,
        upstream: FaultSettings,
        downstream: FaultSettings,
        name: str,
    ) -> None:
        self.loop = loop
        self._name = name
        self.client = client
        self.target = target
        self.upstream = Flow(self, client, target, upstream)
        self.downstream = Flow(self, target, client, downstream)
        self.is_connected = False
        self.is_open = True
        self._client_events = self._target_events = 0

    def start(self) -> None:
        """Watch the target connection's completion, and the client; arm the faults' deadlines."""
        self.upstream.pump()
        self.downstream.pump()
        self.update_interest()

    def on_event(self, sock: object, mask: int) -> None:
        """Handle readiness of one of the two sockets."""
        if sock is self.target and not self.is_connected:
            self._finish_connecting()
        else:
            into, out_of = (self.upstream, self.downstream) if sock is self.target else (self.downstream, self.upstream)
            if mask & _WRITE:
                into.pump()
            if mask & _READ and self.is_open:
                out_of.on_readable()
        self.update_interest()

    def set_faults(self, upstream: FaultSettings, downstream: FaultSettings) -> None:
        """Apply new faults to the bytes not yet forwarded."""
        self.upstream.replace_faults(upstream)
        self.downstream.replace_faults(downstream)
        self.upstream.pump()
        self.downstream.pump()
        self.update_interest()

    def _finish_connecting(self) -> None:
        try:
            _socket.check_connected(self.target)
        except OSError as exc:
            logger.info("cannot relay %s: %s", self._name, exc.strerror or exc)
            self.close(reset_client=self.downstream.faults.reset)
            return
        self.is_connected = True
        logger.debug("relaying %s", self._name)
        self.upstream.pump()
        self.downstream.pump()

    def update_interest(self) -> None:
        """Watch each socket for what its flows need now (see the module's invariants)."""
        if not self.is_open:
            return
        up, down = self.upstream, self.downstream
        client = (_READ if up.wants_read else 0) | (_WRITE if down.wants_write else 0)
        target = _WRITE
        if self.is_connected:
            target = (_READ if down.wants_read else 0) | (_WRITE if up.wants_write else 0)
        self._client_events = self._watch(self.client, self._client_events, client)
        self._target_events = self._watch(self.target, self._target_events, target)

    def _watch(self, sock: socket.socket, old: int, new: int) -> int:
        if new != old:
            selector = self.loop.selector
            if not old:
                selector.register(sock, new, self)
            elif not new:
                selector.unregister(sock)
            else:
                selector.modify(sock, new, self)
        return new

    # --- ending ------------------------------------------------------------------

    def flow_ended(self) -> None:
        """A flow forwarded its EOF: close once both have."""
        if self.upstream.is_ended and self.downstream.is_ended:
            logger.debug("relay of %s ended", self._name)
            self.close()

    def cut(self, *, reset: bool, why: str = "cut_after") -> None:
        """Close both sides now, as the faults ask (`why`: the fault, for the log)."""
        logger.debug("cutting %s (%s)%s", self._name, why, " with RST" if reset else "")
        self.close(reset_client=reset, reset_target=reset)

    def abort(self, broken: socket.socket, error: OSError) -> None:
        """One side failed (reset, broken pipe): end the other side as abruptly, with RST."""
        logger.info("relay of %s broken: %s", self._name, error.strerror or error)
        self.close(reset_client=broken is not self.client, reset_target=broken is not self.target)

    def close(self, *, reset_client: bool = False, reset_target: bool = False) -> None:
        """Close both sockets (idempotent); bytes still queued here are dropped."""
        if not self.is_open:
            return
        self.is_open = False
        self._client_events = self._watch(self.client, self._client_events, 0)
        self._target_events = self._watch(self.target, self._target_events, 0)
        close_socket(self.client, reset=reset_client)
        close_socket(self.target, reset=reset_target)
        self.loop.forget(self)


@final
class Flow:
    """One direction of a relay: read from `source`, held as the faults say, written to `dest`.

    Attributes:
        faults: the faults in force; replaced by `replace_faults`.
        forwarded: bytes written to `dest` since the connection opened (what
            `cut_after` and `blackhole_after` count).
        is_ended: the source's EOF was forwarded; nothing more will move.
        wants_write: a chunk is due now: watch `dest` for writability.
        timer_due: when this flow's live heap entry is due, None without one.
        tap: None, or an observer (`connecteur.tools.trace`) called with each
            read's bytes, and with ``b""`` for the source's EOF, once they
            are queued and pumped: it sees every byte and holds none up.
    """

    __slots__ = ("_eof_due", "_fragment_sent_at", "_gate", "_pending", "_queued", "_reset_since", "_source_ended",
                 "_timeout_since", "dest", "faults", "forwarded", "is_ended", "relay", "source", "tap", "timer_due",
                 "wants_write")  # fmt: skip

    def __init__(self, relay: Relay, source: socket.socket, dest: socket.socket, faults: FaultSettings) -> None:
        self.relay = relay
        self.source = source
        self.dest = dest
        self.faults = faults
        self.tap: Callable[[bytes], None] | None = None
        self._pending: deque[tuple[float, memoryview]] = deque()  # (may leave at, bytes)
        self._queued = 0  # bytes in _pending
        self._source_ended = False
        self._eof_due: float | None = None  # when the source's EOF may be forwarded
        self._gate = 0.0  # bandwidth: no send before this time
        self._fragment_sent_at = 0.0
        self.forwarded = 0
        self.is_ended = False
        self.wants_write = False
        self.timer_due: float | None = None
        # When `reset_after` and `timeout` started counting: the connection's
        # opening, or the moment the fault was set on it (as Toxiproxy does).
        self._reset_since = self._timeout_since = time.monotonic()

    def replace_faults(self, faults: FaultSettings) -> None:
        """Put `faults` in force; a changed `reset_after` or `timeout` counts from now."""
        now = time.monotonic()
        if faults.reset_after != self.faults.reset_after:
            self._reset_since = now
        if faults.timeout != self.faults.timeout:
            self._timeout_since = now
        self.faults = faults

    @property
    def wants_read(self) -> bool:
        """True while the source may be read: under the queue bound, before its EOF."""
        return not self._source_ended and self._queued < QUEUE_LIMIT

    def on_readable(self) -> None:
        """Read once from the source; queue the bytes (or the EOF) with their release time."""
        try:
            data = self.source.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.relay.abort(self.source, exc)
            return
        release = self._release_time()
        if data:
            self._pending.append((release, memoryview(data)))
            self._queued += len(data)
        else:
            self._source_ended = True
            self._eof_due = release
        self.pump()
        if self.tap is not None:
            self.tap(data)

    def _release_time(self) -> float:
        """Now plus the delay (± jitter), never before bytes already queued: a stream keeps its order."""
        now = time.monotonic()
        faults = self.faults
        due = now + faults.delay
        if faults.jitter:
            due += self.relay.loop.rng.uniform(-faults.jitter, faults.jitter)
        if self._pending:
            due = max(due, self._pending[-1][0])
        return max(due, now)

    def on_timer(self, due: float) -> None:
        """The loop's heap entry at `due` came: forward what is due now."""
        if due != self.timer_due or not self.relay.is_open:
            return  # a stale entry: a later pump armed an earlier one, or the relay closed
        self.timer_due = None
        self.pump()
        self.relay.update_interest()

    def pump(self) -> None:
        """Forward what is due, as far as the faults and the socket allow.

        Ends in one of these states: waiting for writability (`wants_write`),
        for a timer (`timer_due`), for more bytes, blackholed, ended, or with
        the relay closed (a cut, a broken side).
        """
        self.wants_write = False
        if not self.relay.is_open or self._closed_on_time():
            return
        if self.is_ended or not self.relay.is_connected:
            return
        sent_fragment = False
        while not self._limit_reached():
            if not self._pending:
                self._try_forward_eof()
                return
            if sent_fragment:
                # One fragment per turn of the loop, so that the receiver has
                # a chance to read each on its own.
                self.wants_write = True
                return
            due, data = self._pending[0]
            start = self._start_time(due)
            if start > time.monotonic():
                self._wait(start)
                return
            if self._is_fragment_held():
                return
            if not self._send_some(due, data):
                return
            sent_fragment = self.faults.fragment is not None

    def _closed_on_time(self) -> bool:
        """Apply `reset_after` and `timeout`'s close: True when the relay was closed, else arm their timers."""
        faults = self.faults
        if faults.reset_after is None and not faults.timeout:
            return False
        now = time.monotonic()
        deadlines = (
            (faults.reset_after, self._reset_since, True, "reset_after"),
            (faults.timeout or None, self._timeout_since, faults.reset, "timeout"),  # 0: hold, never close
        )
        for after, since, reset, why in deadlines:
            if after is not None:
                if now >= since + after:
                    self.relay.cut(reset=reset, why=why)
                    return True
                self._wait(since + after)
        return False

    def _start_time(self, due: float) -> float:
        """When the head chunk may leave: its due time, later if the bandwidth or the slicer's delay say so."""
        faults = self.faults
        start = max(due, self._gate) if faults.bandwidth is not None else due
        if faults.fragment_delay:
            start = max(start, self._fragment_sent_at + faults.fragment_delay)
        return start

    def _limit_reached(self) -> bool:
        """Apply `cut_after`, `timeout` and `blackhole_after`; True when nothing may be sent now."""
        faults = self.faults
        if faults.cut_after is not None and self.forwarded >= faults.cut_after:
            self.relay.cut(reset=faults.reset)
            return True
        if faults.timeout is not None:
            return True  # held like a blackhole's, until the fault is lifted or closes the relay
        # Blackholed: bytes (and the EOF) stay queued, the source is read up
        # to the queue bound, both connections stay open, like a peer whose
        # host vanished. Lifting the fault with set_faults resumes the flow.
        return faults.blackhole_after is not None and self.forwarded >= faults.blackhole_after

    def _is_fragment_held(self) -> bool:
        """True while the previous fragment has not left the socket yet, for at most `FRAGMENT_WAIT`.

        Linux merges small sends into one segment while an earlier one is
        still queued ("autocorking", which TCP_NODELAY does not stop):
        measured on loopback, 1000 one-byte sends left as 35 segments, and a
        reader in another thread often got them in 2 or 3 reads. Waiting
        until the kernel has sent the previous fragment keeps each its own
        segment (1000 of 1000). A peer that does not read delays its ACKs,
        and so the kernel's sending, by up to 40 ms: the fragment then goes
        anyway after `FRAGMENT_WAIT`, possibly merged.
        """
        if self.faults.fragment is None:
            return False
        now = time.monotonic()
        if now >= self._fragment_sent_at + FRAGMENT_WAIT or not _unsent_bytes(self.dest):
            return False
        self._wait(min(now + FRAGMENT_WAIT / 4, self._fragment_sent_at + FRAGMENT_WAIT))
        return True

    def _send_some(self, due: float, data: memoryview) -> bool:
        """Send one chunk of the head of the queue; False if the flow must wait or the relay closed."""
        size = self._chunk_size(len(data))
        try:
            sent = self.dest.send(data[:size])
        except (BlockingIOError, InterruptedError):
            self.wants_write = True
            return False
        except OSError as exc:
            self.relay.abort(self.dest, exc)
            return False
        self.forwarded += sent
        self._queued -= sent
        self._fragment_sent_at = time.monotonic()
        if sent == len(data):
            self._pending.popleft()
        else:
            self._pending[0] = (due, data[sent:])
        if self.faults.bandwidth is not None:
            self._gate = max(self._gate, time.monotonic()) + sent / self.faults.bandwidth
        return True

    def _chunk_size(self, available: int) -> int:
        """How many of `available` bytes the next send may carry."""
        faults = self.faults
        size = available
        if faults.fragment is not None:
            size = min(size, self._fragment_size(faults.fragment))
        if faults.bandwidth is not None:
            size = min(size, max(1, int(faults.bandwidth * BANDWIDTH_SLICE)))
        for limit in (faults.cut_after, faults.blackhole_after):
            if limit is not None:
                size = min(size, limit - self.forwarded)  # > 0: `_limit_reached` came first
        return size

    def _fragment_size(self, size: int) -> int:
        """The next fragment's size: `size`, or drawn around it as `fragment_random` or `fragment_variation` say."""
        faults, rng = self.faults, self.relay.loop.rng
        if faults.fragment_random:
            return rng.randint(1, size)
        if faults.fragment_variation:
            return rng.randint(size - faults.fragment_variation, size + faults.fragment_variation)
        return size

    def _try_forward_eof(self) -> None:
        """The queue is empty: forward the source's EOF once it is due (`slow_close` later than it came)."""
        if self._eof_due is None:
            return
        due = self._eof_due + self.faults.slow_close
        if due > time.monotonic():
            self._wait(due)
            return
        self.is_ended = True
        with contextlib.suppress(OSError):  # the destination may have gone already
            self.dest.shutdown(socket.SHUT_WR)
        self.relay.flow_ended()

    def _wait(self, until: float) -> None:
        """Pump again at `until`; a heap entry already due earlier will re-arm."""
        if self.timer_due is None or until < self.timer_due:
            self.timer_due = until
            self.relay.loop.add_timer(until, self)


T = TypeVar("T")

_ACCEPT: Final = object()  # selector data of the listening socket
_WAKE: Final = object()  # selector data of the wake-up socket


def resolve_once(address: Address) -> Address:
    """Resolve a host name once, so that the loop never waits on DNS for a connection."""
    if isinstance(address, UnixAddress):
        return address
    infos = socket.getaddrinfo(address.host or "localhost", address.port, type=socket.SOCK_STREAM)
    return TcpAddress(str(infos[0][4][0]), address.port)


class ListenerLoop(abc.ABC, Generic[T]):
    """A relaying tool's thread: accepts clients, relays each to the target, runs the timers.

    One `selectors` loop for every connection, like the select engine, whose
    parts and accept policy it shares (`connecteur._loop`). A tool subclasses
    it and says what is its own: `_relay_for` makes a client's relay (the
    proxy's faults, the trace's decoders), `_unreachable` ends a client whose
    target connection cannot even begin, `_end_turn` runs after each turn's
    events (and once more after the last relays closed). Each relay is kept in
    `relays` with the tool's value for it (the proxy's toxicity draw, the
    trace's connection number).

    Invariant: each relay's sockets are registered as `Relay.update_interest`
    says; the listener is registered except while accepting is paused (out of
    descriptors), when a ``None`` timer registers it again.

    Args:
        listener: the listening socket; the loop closes it (and unlinks a
            unix socket's path) when it stops.
        target: the resolved address to relay to (see `resolve_once`).
        rng: the random source of fragment sizes and jitter.
    """

    def __init__(self, listener: socket.socket, target: Address, rng: random.Random) -> None:
        self.selector: selectors.BaseSelector = selectors.DefaultSelector()
        self.rng = rng
        self.relays: dict[Relay, T] = {}
        self._listener = listener
        self._target = target
        self._timers: Timers[Flow | None] = Timers()  # None: resume accepting
        self._stop = StopSignal()
        self._inbox = Inbox(self._stop)
        self._unix_path = listener.getsockname() if listener.family == socket.AF_UNIX else None
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, _ACCEPT)
        self.selector.register(self._stop.reader, selectors.EVENT_READ, _WAKE)

    @property
    def active(self) -> int:
        """Relays open now (read from any thread: one `len`)."""
        return len(self.relays)

    def run(self) -> None:
        """Relay until a stop is requested, then close everything."""
        try:
            self._run_until_stopped()
        finally:
            for relay in list(self.relays):
                relay.close()
            self._end_turn()
            self.selector.close()
            self._listener.close()
            if self._unix_path is not None:
                _socket.unlink_unix_socket(self._unix_path)
            self._stop.close()

    def _run_until_stopped(self) -> None:
        select, timers = self.selector.select, self._timers
        while self._stop.deadline is None:
            for key, mask in select(timers.timeout(time.monotonic())):
                data = key.data
                if isinstance(data, Relay):
                    if data.is_open:  # an earlier event of this turn may have closed it
                        data.on_event(key.fileobj, mask)
                elif data is _ACCEPT:
                    self._accept_some()
                else:
                    self._inbox.run()
            self._end_turn()
            self._run_due_timers()

    # --- other threads -------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to close everything and return; safe from any thread."""
        self._stop.request(time.monotonic())

    def call_soon(self, action: Callable[[], None]) -> None:
        """Run `action` on the loop's thread, after a wake-up; safe from any thread."""
        self._inbox.put(action)

    # --- accepting -------------------------------------------------------------------

    def _accept_some(self) -> None:
        if accept_ready(self._listener, self._admit, ACCEPT_BATCH):
            # Out of descriptors: stop watching the listener, or it would
            # show readable at once and spin.
            self.selector.unregister(self._listener)
            self._timers.add(time.monotonic() + ACCEPT_BACKOFF, None)

    def _admit(self, client: socket.socket, address: object) -> bool:
        """Start relaying a new client; True when accepting must pause."""
        client.setblocking(False)
        _socket.configure_stream(client)
        name = f"{format_address(address)} -> {self._target}"
        try:
            target = _socket.start_connection(self._target)
        except OSError as exc:
            self._unreachable(client, address, name, exc)
            return exc.errno in RESOURCE_ERRNOS
        relay, value = self._relay_for(client, target, name)
        self.relays[relay] = value
        relay.start()
        return False

    @abc.abstractmethod
    def _relay_for(self, client: socket.socket, target: socket.socket, name: str) -> tuple[Relay, T]:
        """The relay of `client` through `target` (a connection begun), and the tool's value for it."""

    @abc.abstractmethod
    def _unreachable(self, client: socket.socket, address: object, name: str, exc: OSError) -> None:
        """The connection to the target could not begin (`exc`): end `client`, which has no relay."""

    def _end_turn(self) -> None:
        """Called after each turn's events, before the timers due; nothing by default."""

    # --- timers and the RelayLoop interface ------------------------------------------

    def add_timer(self, due: float, flow: Flow) -> None:
        """Call ``flow.on_timer(due)`` at `due`."""
        self._timers.add(due, flow)

    def _run_due_timers(self) -> None:
        for due, flow in self._timers.pop_due(time.monotonic()):
            if flow is not None:
                flow.on_timer(due)
            elif self._stop.deadline is None:
                self.selector.register(self._listener, selectors.EVENT_READ, _ACCEPT)

    def forget(self, relay: Relay) -> None:
        """Drop a relay that closed its sockets."""
        self.relays.pop(relay, None)
