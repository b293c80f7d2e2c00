"""The fanout workload of `connecteur bench`: one publisher, `SUBSCRIBERS` subscribers, a server that broadcasts.

The server side (``python -m connecteur.bench.servers fanout:TARGET``) sends
each message a connection sends to every other connection: on connecteur's
engines a handler calling `Server.broadcast(message, exclude=peer)`; for
comparison, `run_selectors_broadcaster` is the same written by hand, one thread
and the ``selectors`` module, each copy sent at once and what a socket does not
take queued for it.

The client side (`fanout`, in the client process) connects the subscribers,
then the publisher; it sends a sync message until every subscriber has one
(so all are known to the server), then publishes 64-byte messages in batches
of `BATCH`, at most `WINDOW` batches ahead of the slowest subscriber, for the
job's seconds. The window keeps every queue in the server small: the figure
is the cost of the fan-out, not of buffering. Figures: copies delivered per
second (``per_second``, ``messages`` counts copies) and the server's CPU per
delivered copy.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from typing import Final

from ..framing import LengthPrefixed
from .job import HEADER, IO_TIMEOUT, SMALL, Figures, Job, Meter, WrongEcho, connect, framed

__all__ = ["BATCH", "SUBSCRIBERS", "WINDOW", "fanout", "run_selectors_broadcaster"]

SUBSCRIBERS: Final = 100
"""Connections that receive every message."""
BATCH: Final = 64
"""Messages the publisher sends at once."""
WINDOW: Final = 4
"""Batches in flight at most, ahead of the slowest subscriber."""
_WIRE: Final = framed(SMALL)
_SYNC_EVERY: Final = 0.05
"""Seconds at most between two sync messages while waiting for the subscribers to be known."""


def fanout(job: Job) -> Figures:
    """Publish for the job's seconds; count the copies every subscriber received."""
    with contextlib.ExitStack() as stack:
        subscribers = [stack.enter_context(connect(job)) for _ in range(SUBSCRIBERS)]
        publisher = stack.enter_context(connect(job))
        selector = stack.enter_context(selectors.DefaultSelector())
        received = [0] * SUBSCRIBERS  # bytes
        for index, sock in enumerate(subscribers):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        _sync(publisher, selector, SUBSCRIBERS)
        sent, meter = 0, Meter(job.server_pid)
        while time.perf_counter() - meter.start < job.seconds:
            while sent - min(received) // len(_WIRE) >= WINDOW * BATCH:
                _read(selector, received)
            publisher.sendall(_WIRE * BATCH)
            sent += BATCH
        while min(received) < sent * len(_WIRE):
            _read(selector, received)
        figures = meter.figures(time.perf_counter(), sent * SUBSCRIBERS)
    if any(count != sent * len(_WIRE) for count in received):
        raise WrongEcho(f"a subscriber received more than the {sent} messages published")
    return {**figures, "subscribers": SUBSCRIBERS, "published": sent}


def _sync(publisher: socket.socket, selector: selectors.BaseSelector, count: int) -> None:
    """Send sync messages until every subscriber has one, then an empty barrier message, and read up to it.

    A subscriber accepted late misses the first syncs, so how many each
    receives is not known; the barrier reaches every one of them, last.
    """
    decoders = [LengthPrefixed().decoder() for _ in range(count)]
    synced, barriers = [False] * count, [False] * count
    deadline = time.monotonic() + IO_TIMEOUT
    while not all(synced):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(synced)} of {count} subscribers became known to the server")
        publisher.sendall(_WIRE)
        for index, data in _ready_data(selector, _SYNC_EVERY):
            synced[index] |= bool(decoders[index].feed(data))
    publisher.sendall(framed(b""))
    while not all(barriers):
        ready = _ready_data(selector, IO_TIMEOUT)
        if not ready:
            raise TimeoutError(f"no subscriber received anything within {IO_TIMEOUT:.1f} s")
        for index, data in ready:
            barriers[index] |= b"" in decoders[index].feed(data)


def _ready_data(selector: selectors.BaseSelector, timeout: float) -> list[tuple[int, bytes]]:
    """What the subscribers ready within `timeout` seconds have: (index, bytes) each.

    Raises:
        ConnectionError: the server closed a subscriber.
    """
    found = []
    for key, _ in selector.select(timeout):
        data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
        if not data:
            raise ConnectionError("the server closed a subscriber")
        found.append((key.data, data))
    return found


def _read(selector: selectors.BaseSelector, received: list[int]) -> None:
    """Count what the ready subscribers have, in bytes.

    Raises:
        TimeoutError: none was ready within `IO_TIMEOUT` seconds.
        ConnectionError: the server closed a subscriber.
    """
    ready = _ready_data(selector, IO_TIMEOUT)
    if not ready:
        raise TimeoutError(f"no subscriber received anything within {IO_TIMEOUT:.1f} s")
    for index, data in ready:
        received[index] += len(data)


# --- the hand-written server --------------------------------------------------------


def run_selectors_broadcaster(ready: Callable[[tuple[str, int]], None], host: str, backlog: int) -> None:
    """Serve the fan-out by hand: one thread, ``selectors``, non-blocking sockets, a queue per peer."""
    outgoing: dict[socket.socket, bytearray] = {}  # per connection: what its socket did not take
    pending: dict[socket.socket, bytearray] = {}  # per connection: bytes of a message not whole yet
    with socket.create_server((host, 0), backlog=backlog) as listener, selectors.DefaultSelector() as selector:
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ)
        ready(listener.getsockname())

        def close(sock: socket.socket) -> None:
            selector.unregister(sock)
            del outgoing[sock], pending[sock]
            sock.close()

        def send(sock: socket.socket, wire: bytes) -> None:
            out = outgoing[sock]
            if out:
                out += wire
                return
            try:
                sent = sock.send(wire)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset: its end of file comes next and closes it
                return
            if sent < len(wire):
                out += wire[sent:]
                selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)

        while True:
            for key, events in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is listener:
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            new, _ = listener.accept()
                            new.setblocking(False)
                            new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            outgoing[new], pending[new] = bytearray(), bytearray()
                            selector.register(new, selectors.EVENT_READ)
                    continue
                if events & selectors.EVENT_WRITE:
                    out = outgoing[sock]
                    with contextlib.suppress(BlockingIOError, ConnectionError):
                        del out[: sock.send(out)]
                    if not out:
                        selector.modify(sock, selectors.EVENT_READ)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    data = sock.recv(256 * 1024)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    close(sock)
                    continue
                buffer = pending[sock]
                buffer += data
                start = 0
                while len(buffer) - start >= HEADER.size:
                    end = start + HEADER.size + HEADER.unpack_from(buffer, start)[0]
                    if end > len(buffer):
                        break
                    wire = bytes(buffer[start:end])  # framed once, as broadcast() does
                    for other in list(outgoing):
                        if other is not sock:
                            send(other, wire)
                    start = end
                del buffer[:start]
