"""A fault-injection TCP proxy to put in front of any TCP program: `Proxy` and `Faults`.

Tests of message framing need the network's bad days on demand: messages cut
into one-byte segments, latency, a thin pipe, a connection cut in the middle,
a reset, a peer that stops answering without closing. `Proxy` listens, and
relays each client to the target while applying `Faults`, separately per
direction: upstream (client → target) and downstream (target → client).

Design: one thread runs one `selectors` loop for every connection (no thread
per connection), like the select engine. Accepted clients are non-blocking;
the connection to the target is made with the non-blocking connect of
`connecteur._socket` and completes when the socket shows writable. Each
direction is a queue of chunks stamped with the time they may leave; delays
and bandwidth pacing are entries in the loop's timer heap, never sleeps.
Backpressure bounds memory: a direction holding `QUEUE_LIMIT` bytes stops
reading its source. A half-close is forwarded as a half-close, after the last
byte, and the other direction keeps flowing (Toxiproxy closes both here,
which breaks a client that sends, half-closes and reads the reply). The
per-connection machinery, and the loop that accepts and drives the relays
(the trace's too), are in `_relay.py`; this module holds the public API and
what the proxy adds to that loop: the faults each relay gets, and their
changes. The HTTP control API, on a thread of its own, is in `_control.py` and changes
faults only through `Proxy.set_faults`, which hands them to the loop's inbox.
"""

from __future__ import annotations

import math
import random
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, final

from .. import _socket
from ..address import Address, AddressLike, TcpAddress, UnixAddress, format_address, parse_address
from ._control import ControlServer, check_loopback
from ._relay import QUEUE_LIMIT, ListenerLoop, Relay, close_socket, logger, resolve_once

__all__ = ["QUEUE_LIMIT", "Faults", "Proxy"]

BACKLOG: Final = 128
"""Connections the kernel may queue before the proxy accepts them."""


@final
@dataclass(frozen=True, slots=True)
class Faults:
    """What the proxy does to the bytes of one direction; combine them freely.

    The default, ``Faults()``, forwards bytes as they come.

    Attributes:
        fragment: forward in pieces of at most this many bytes, each its own
            send (TCP_NODELAY is on both sides, so each tends to be its own
            segment). None: as read. Toxiproxy's ``slicer``.
        fragment_random: piece sizes drawn from 1 to `fragment` (needs
            `fragment`; seed with ``Proxy(seed=...)``).
        fragment_variation: piece sizes drawn from ``fragment - variation``
            to ``fragment + variation`` (`fragment` is then the average, as
            the slicer's ``average_size`` and ``size_variation``); below
            `fragment`, and not with `fragment_random`.
        fragment_delay: seconds between two pieces (needs `fragment`).
        delay: seconds each chunk is held before it leaves.
        jitter: seconds added to or taken from `delay` at random, for each
            chunk (never below zero; bytes never overtake earlier bytes).
        bandwidth: bytes per second at most. None: no limit.
        cut_after: close both sides once this many bytes were forwarded in
            this direction (0: as soon as the target connection is made).
            Bytes still held by the proxy are dropped; a socket with unread
            bytes in its kernel buffer is closed with RST by the kernel.
        reset: close with RST instead of FIN when cutting, and when the target
            refuses the connection (the downstream faults decide that one).
        blackhole_after: once this many bytes were forwarded, forward nothing
            more, EOF included, while both connections stay open: a peer gone
            silent. The source is read until `QUEUE_LIMIT` bytes wait, then
            its sender's buffers fill.
        slow_close: seconds the source's EOF (a close or a half-close) waits
            before it is forwarded, counted from when it came (plus `delay`).
        timeout: Toxiproxy's ``timeout``: forward nothing (bytes are held as
            by `blackhole_after`), and close both sides, with RST if `reset`,
            this many seconds after the fault began; 0: hold, never close.
            None: off.
        reset_after: close both sides with RST this many seconds after the
            fault began, with or without traffic (Toxiproxy's ``reset_peer``).
        toxicity: the fraction of connections these faults apply to, from 0
            to 1: each connection draws one number when it opens (seeded by
            ``Proxy(seed=...)``) and is faulted, in this direction, when it
            is below `toxicity`. The same draw serves both directions and
            every later change, so a connection faulted at 0.3 stays so at 0.5.

    `cut_after` and `blackhole_after` count bytes since the connection opened.
    `timeout` and `reset_after` count time since the connection opened, or
    since the fault was set on it, whichever is later (a new value restarts it).

    Raises:
        ValueError: a negative or non-finite duration, a size below its
            minimum, a `toxicity` outside 0..1, or a fragment option without
            `fragment`.
    """

    fragment: int | None = None
    fragment_random: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    bandwidth: int | None = None
    cut_after: int | None = None
    reset: bool = False
    blackhole_after: int | None = None
    slow_close: float = 0.0
    timeout: float | None = None
    reset_after: float | None = None
    fragment_delay: float = 0.0
    fragment_variation: int = 0
    toxicity: float = 1.0

    def __post_init__(self) -> None:
        _check_bytes("fragment", self.fragment, minimum=1)
        _check_bytes("bandwidth", self.bandwidth, minimum=1)
        _check_bytes("cut_after", self.cut_after, minimum=0)
        _check_bytes("blackhole_after", self.blackhole_after, minimum=0)
        _check_bytes("fragment_variation", self.fragment_variation, minimum=0)
        for name in ("delay", "jitter", "slow_close", "fragment_delay"):
            _check_seconds(name, getattr(self, name))
        for name in ("timeout", "reset_after"):
            if getattr(self, name) is not None:
                _check_seconds(name, getattr(self, name))
        if isinstance(self.toxicity, bool) or not isinstance(self.toxicity, int | float) or not 0 <= self.toxicity <= 1:
            raise ValueError(f"toxicity must be a number from 0 to 1, not {self.toxicity!r}")
        self._check_fragment_options()

    def _check_fragment_options(self) -> None:
        if self.fragment is None:
            for name in ("fragment_random", "fragment_delay", "fragment_variation"):
                if getattr(self, name):
                    raise ValueError(f"{name} needs fragment: the piece size, in bytes")
        elif self.fragment_variation and (self.fragment_random or self.fragment_variation >= self.fragment):
            raise ValueError(
                f"fragment_variation must be below fragment ({self.fragment}) and without fragment_random,"
                f" not {self.fragment_variation!r}"
            )


def _check_bytes(name: str, value: object, *, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum} or None, not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


@final
class Proxy:
    """A TCP relay to `target` that injects faults; see the module's description.

    Faults given as keywords apply to both directions; `upstream` and
    `downstream` replace them for one direction::

        with Proxy(server.address, fragment=1) as proxy:
            conn = connecteur.connect(proxy.address)
        Proxy(target, delay=0.05, downstream=Faults(cut_after=100))

    With `control`, an HTTP API lists and changes the faults at run time, as
    JSON (see the fault proxy's page in the docs)::

        Proxy(target, control="127.0.0.1:0")  # then proxy.control_address

    Args:
        target: the server to relay to (any `AddressLike`). A host name is
            resolved once, by `start`.
        listen: where to listen; port 0 picks a free port (see `address`).
        upstream: the faults of client → target bytes.
        downstream: the faults of target → client bytes.
        fragment: see `Faults`; the same for the other fault keywords.
        seed: seeds the random fragment sizes, the jitter and the
            `toxicity` draws, for repeatable runs.
        control: where to serve the control API (a loopback TCP address;
            port 0 picks a free port). None: no control API.
        control_allow_remote: allow a `control` address that is not
            loopback: anyone who reaches it can change the faults.

    Raises:
        AddressError: `target`, `listen` or `control` cannot be parsed.
        ValueError: an impossible fault (see `Faults`), or a `control`
            address that is not loopback without `control_allow_remote`.
    """

    def __init__(
        self,
        target: AddressLike,
        *,
        listen: AddressLike = "127.0.0.1:0",
        upstream: Faults | None = None,
        downstream: Faults | None = None,
        fragment: int | None = None,
        fragment_random: bool = False,
        delay: float = 0.0,
        jitter: float = 0.0,
        bandwidth: int | None = None,
        cut_after: int | None = None,
        reset: bool = False,
        blackhole_after: int | None = None,
        slow_close: float = 0.0,
        timeout: float | None = None,
        reset_after: float | None = None,
        fragment_delay: float = 0.0,
        fragment_variation: int = 0,
        toxicity: float = 1.0,
        seed: int | None = None,
        control: AddressLike | None = None,
        control_allow_remote: bool = False,
    ) -> None:
        self._target = parse_address(target)
        self._listen = parse_address(listen)
        self._control_at = None if control is None else parse_address(control)
        if self._control_at is not None and not control_allow_remote:
            check_loopback(self._control_at)
        if isinstance(self._control_at, UnixAddress):
            raise ValueError(f"the control API listens on TCP, not {self._control_at}")
        both = Faults(
            fragment=fragment,
            fragment_random=fragment_random,
            delay=delay,
            jitter=jitter,
            bandwidth=bandwidth,
            cut_after=cut_after,
            reset=reset,
            blackhole_after=blackhole_after,
            slow_close=slow_close,
            timeout=timeout,
            reset_after=reset_after,
            fragment_delay=fragment_delay,
            fragment_variation=fragment_variation,
            toxicity=toxicity,
        )
        self._faults = (upstream if upstream is not None else both, downstream if downstream is not None else both)
        self._seed = seed
        self._lock = threading.Lock()  # orders set_faults calls and their hand-over to the loop
        self._bound: Any = None
        self._loop: _Loop | None = None
        self._thread: threading.Thread | None = None
        self._control: ControlServer | None = None

    def __repr__(self) -> str:
        where = format_address(self._bound) if self._bound is not None else str(self._listen)
        return f"<Proxy {where} -> {self._target}>"

    @property
    def address(self) -> Any:  # the socket module types addresses as Any too
        """The bound address: a socket-module tuple, or ``"unix:/path"``; pass it to `connect()`.

        Raises:
            RuntimeError: the proxy has not been started.
        """
        if self._bound is None:
            raise RuntimeError("the proxy is not started: use `with proxy:` or start()")
        return self._bound

    @property
    def control_address(self) -> tuple[str, int] | None:
        """Where the control API listens (host, port), None without one or before `start`."""
        return None if self._control is None else self._control.address

    @property
    def target(self) -> Address:
        """The address relayed to, as given."""
        return self._target

    @property
    def upstream(self) -> Faults:
        """The faults in force on client → target bytes."""
        return self._faults[0]

    @property
    def downstream(self) -> Faults:
        """The faults in force on target → client bytes."""
        return self._faults[1]

    @property
    def active(self) -> int:
        """Connections relayed now (a target connection still being made included)."""
        loop = self._loop
        return 0 if loop is None else loop.active

    def start(self) -> None:
        """Listen, and relay in a background thread until `stop`.

        Raises:
            RuntimeError: the proxy was already started.
            OSError: the target's host name does not resolve, or the listen
                (or control) address cannot be bound.
        """
        if self._loop is not None:
            raise RuntimeError("this proxy was already started; create a new Proxy to start again")
        target = resolve_once(self._target)
        listener = _socket.listen(self._listen, backlog=BACKLOG)
        try:
            self._bound = _socket.bound_address(listener)
            if isinstance(self._control_at, TcpAddress):
                self._control = ControlServer(self, self._control_at)
            with self._lock:  # a concurrent set_faults lands before or after, never lost
                self._loop = _Loop(listener, target, self._faults, self._seed)
        except BaseException:
            listener.close()
            if self._control is not None:
                self._control.stop()
            raise
        self._thread = threading.Thread(target=self._loop.run, name=f"connecteur proxy {self!r}", daemon=True)
        self._thread.start()
        if self._control is not None:
            self._control.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every relayed connection; wait up to `timeout` s for the thread.

        Idempotent; a proxy never started does nothing. Bytes still held
        (delayed, paced) are dropped; the sides see a plain close (FIN).
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._control is not None:
            self._control.stop(timeout)
        loop.request_stop()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def set_faults(
        self, faults: Faults | None = None, *, upstream: Faults | None = None, downstream: Faults | None = None
    ) -> None:
        """Change the faults while the proxy runs; safe from any thread.

        Args:
            faults: the new faults of both directions (None: unchanged).
            upstream: the new faults of client → target bytes, over `faults`.
            downstream: the new faults of target → client bytes, over `faults`.

        The change applies to every connection, open or to come, for bytes
        not yet forwarded; `delay` and `jitter`, to bytes read after it;
        a changed `timeout` or `reset_after` counts from the change. Each
        connection keeps its `toxicity` draw.
        """
        with self._lock:
            both = (faults, faults) if faults is not None else self._faults
            new = (upstream if upstream is not None else both[0], downstream if downstream is not None else both[1])
            self._faults = new
            loop = self._loop
            if loop is not None:
                loop.call_soon(lambda: loop.set_faults(*new))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_NO_FAULTS: Final = Faults()


class _Loop(ListenerLoop[float]):
    """The proxy's thread: a `ListenerLoop` whose relays apply the faults; each relay keeps its toxicity draw."""

    def __init__(
        self, listener: socket.socket, target: Address, faults: tuple[Faults, Faults], seed: int | None
    ) -> None:
        super().__init__(listener, target, random.Random(seed))
        self._toxicity_rng = random.Random(seed)  # its own, so that the fragment sizes stay what a seed gave before
        self._faults = faults

    def set_faults(self, upstream: Faults, downstream: Faults) -> None:
        """Apply new faults to every relay and to the ones to come (on the loop's thread)."""
        self._faults = (upstream, downstream)
        for relay, draw in list(self.relays.items()):
            relay.set_faults(*self._faults_drawn(draw))

    def _faults_drawn(self, draw: float) -> tuple[Faults, Faults]:
        """The faults of a connection whose toxicity draw is `draw`: each direction's, or none."""
        upstream, downstream = (faults if draw < faults.toxicity else _NO_FAULTS for faults in self._faults)
        return upstream, downstream

    # Each client draws once: here, or in `_unreachable` if it gets no relay.
    def _relay_for(self, client: socket.socket, target: socket.socket, name: str) -> tuple[Relay, float]:
        draw = self._toxicity_rng.random()
        upstream, downstream = self._faults_drawn(draw)
        return Relay(self, client, target, upstream=upstream, downstream=downstream, name=name), draw

    def _unreachable(self, client: socket.socket, address: object, name: str, exc: OSError) -> None:
        _, downstream = self._faults_drawn(self._toxicity_rng.random())
        logger.info("cannot relay %s: %s: %s", format_address(address), exc.strerror or exc, self._target)
        close_socket(client, reset=downstream.reset)
