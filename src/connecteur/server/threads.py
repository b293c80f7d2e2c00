"""The threads engine: the HOWTO's "create a new thread to handle the client".

One thread accepts (waiting in a selector beside a wake-up socket, so a stop
request is seen at once); each connection then gets a thread running a
blocking loop: ``recv_into`` a reusable buffer, feed the decoder, call the
handler, send its reply. Replies are in request order because one thread
handles one connection's messages one after another.

Invariants: only a connection's own thread reads its socket and closes it;
other threads may send (under the connection's lock) or shut it down to wake
the reader. Simple and fast per connection; each idle connection costs a thread.

No write waits for a peer: what a socket does not take at once is queued on
its connection, with the event loops' water marks and slow-consumer
policies, and written by a writer thread of that connection's while it
lasts (``server/_blocking.py``). A broadcast therefore costs its caller one
non-blocking send per peer, however slowly some of them read.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

from .. import _socket
from ..address import format_address
from ..framing import BodyPool
from ._blocking import RECV_SIZE as RECV_SIZE
from ._blocking import BlockingLink, thread_budget
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    EngineConfig,
    PendingAdmissions,
    StopSignal,
    accept_ready,
    log_abandoned,
    refuse_if_full,
    refuse_untrusted,
)
from ._fanout import BroadcastResult, check_policy
from ._peer import Peer

__all__ = ["BlockingLink", "ThreadsEngine"]

JOIN_GRACE: Final = 0.2
"""Seconds to wait, after the stop deadline, for threads to notice their
sockets were shut down (milliseconds, unless inside a handler); a thread
still inside a handler then is abandoned, so that the stop keeps its deadline."""


class ThreadsEngine:
    """A thread per connection; see the module's description."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._stop = StopSignal()
        self._links: set[BlockingLink] = set()
        self._pending = PendingAdmissions()
        self._links_lock = threading.Lock()
        self.budget = thread_budget(config)
        self._body_pool = BodyPool()  # one spare buffer for large messages, lent to one connection at a time
        config.counters.watch_queued(self.queued)

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline`; safe from threads and signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def abandon(self) -> None:
        """Nothing to do: this thread runs no handler, and abandons late connection threads itself (see `Engine`)."""

    def serve(self, listener: socket.socket) -> None:
        """Accept until a stop is requested, then stop gracefully (see `Engine`)."""
        try:
            with listener:
                self._accept_until_stopped(listener)
            self._finish_links()
        finally:
            self._stop.close()

    # --- fan-out (docs/fan-out.md) ------------------------------------------------

    def peers(self) -> list[Peer]:
        """The live peers (handshakes done, not closed); safe from any thread."""
        return [link.session.peer for link in self._live_links() if link.is_live]

    def queued(self) -> int:
        """Bytes queued for all the connections now (the `Stats.queued` gauge; any thread, approximate)."""
        return sum(link.queued for link in self._live_links())

    def broadcast(self, data: bytes, exclude: Iterable[Peer], policy: str | None) -> BroadcastResult:
        """Queue the framed `data` to every live peer but `exclude`, in the calling thread, under `policy`.

        No copy waits for its peer: each is written as far as the socket
        takes it at once, and the rest is left to that connection's writer
        thread (see `BlockingLink`).
        """
        policy = check_policy(policy if policy is not None else self._config.slow_consumer)
        skip = set(exclude)
        delivered = dropped = closed = 0  # not BroadcastResult sums: a new object per peer costs
        for link in self._live_links():
            if link.is_live and link.session.peer not in skip:
                result = link.offer(data, policy)
                delivered += result.delivered
                dropped += result.dropped
                closed += result.closed
        return BroadcastResult(delivered, dropped, closed)

    # --- accepting -------------------------------------------------------------

    def _accept_until_stopped(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        paused_until: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._stop.reader, selectors.EVENT_READ)
            while self._stop.deadline is None:
                timeout = None if paused_until is None else max(0.0, paused_until - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fileobj is listener and accept_ready(listener, self._admit, ACCEPT_BATCH):
                        # Out of descriptors: stop watching the listener, or it
                        # would show readable at once and spin.
                        selector.unregister(listener)
                        paused_until = time.monotonic() + ACCEPT_BACKOFF
                    elif key.fileobj is self._stop.reader:
                        self._stop.drain()
                if paused_until is not None and time.monotonic() >= paused_until:
                    if self._pending.retry(self._admit):
                        paused_until = time.monotonic() + ACCEPT_BACKOFF
                        continue
                    selector.register(listener, selectors.EVENT_READ)
                    paused_until = None
        if not self._pending.retry(self._admit):
            accept_ready(listener, self._admit, LAST_ACCEPTS)
        self._pending.close_all(self._config.counters)

    def _admit(self, sock: socket.socket, address: object) -> bool:
        """Serve a new connection in a thread of its own; True if no thread could start."""
        if refuse_if_full(self._config, sock, address) or refuse_untrusted(self._config, sock, address):
            return False
        counters = self._config.counters
        sock.setblocking(True)
        _socket.configure_stream(sock, self._config.keepalive)
        link = BlockingLink(self._config, sock, address, self._forget, budget=self.budget, body_pool=self._body_pool)
        counters.opened()
        with self._links_lock:
            self._links.add(link)
        thread = threading.Thread(target=link.run, name=f"connecteur {format_address(address)}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a process or memory limit
            with self._links_lock:
                self._links.discard(link)
            counters.retire(link._traffic)
            counters.withdrawn()
            return self._pending.put(sock, address, exc)
        return False

    # --- stopping --------------------------------------------------------------

    def _finish_links(self) -> None:
        """Let each connection run until its peer's EOF or the stop deadline (which a new request may advance)."""
        self._wait_for_links(lambda: self._stop.deadline or time.monotonic())
        for link in self._live_links():
            link.abort()
        until = time.monotonic() + JOIN_GRACE
        self._wait_for_links(lambda: until)
        for link in self._live_links():  # daemon threads: they do not keep the process alive
            log_abandoned(link.thread_id, "its thread")

    def _wait_for_links(self, due: Callable[[], float]) -> None:
        """Wait until every connection has ended, or until `due()`; woken by stop requests and link ends."""
        while self._links and (remaining := due() - time.monotonic()) > 0:
            self._stop.wait(remaining)

    def _live_links(self) -> list[BlockingLink]:
        with self._links_lock:
            return list(self._links)

    def _forget(self, link: BlockingLink) -> None:
        """Called by a connection's thread as it ends."""
        with self._links_lock:
            self._links.discard(link)
            if not self._links:
                self._stop.wake()  # _finish_links may be waiting for the last one
