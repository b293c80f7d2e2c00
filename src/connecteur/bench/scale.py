"""The scale workload of `connecteur bench`: pipelined streams on many connections at once.

Made for servers that use several cores, such as ``select*2`` (the select
engine with two workers): `SCALE_CONNECTIONS` connections, each streaming as
pipeline does (64 B messages, `PIPELINE_BATCH` per send, at most
`SCALE_WINDOW` in flight on each), all driven by one non-blocking epoll loop
and checked as pipeline's stream is (64 bytes at each read's offset in the
repeated wire bytes, and the total length).

On two cores, a two-worker server shares a core with this client, so the
client must cost little next to the server: it never decodes, sends 68 KiB
per system call and reads up to 256 KiB per call, which puts its CPU per
message at a small fraction of the server's. The figures show it:
`client_cpu_us_per_message` next to `server_cpu_us_per_message`, and the
client's share of its core.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Final, final

from .job import (
    IO_TIMEOUT,
    PIPELINE_BATCH,
    RECV_SIZE,
    SMALL,
    Figures,
    Job,
    Meter,
    WrongEcho,
    connect,
    framed,
    recv_exactly,
)

__all__ = ["SCALE_CONNECTIONS", "SCALE_WINDOW", "scale"]

SCALE_CONNECTIONS: Final = 16
"""Connections of the scale workload: enough for the kernel's SO_REUSEPORT
hash to give each of two workers a share (all 16 on one: 1 chance in 32,768),
few enough for the client to keep every one of them busy."""
SCALE_WINDOW: Final = 4096
"""Messages in flight at most per connection (278 KB; 4.5 MB over all of
them): four batches, so that a connection has bytes waiting in the server
while its echoes travel back, without a worker buffering without bound."""

_WIRE_SIZE: Final = len(framed(SMALL))
_READABLE: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


@final
class _Stream:
    """One connection's stream: bytes sent and echoed, and what is left of the batch being sent."""

    __slots__ = ("fd", "pending", "received", "sent", "sock", "waits_writable")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.sent = 0
        self.received = 0
        self.pending = memoryview(b"")
        self.waits_writable = False

    @property
    def is_done(self) -> bool:
        return not self.pending and self.received == self.sent


@contextmanager
def _open(job: Job, count: int) -> Iterator[list[_Stream]]:
    """`count` non-blocking connections, each after one round trip: accepted and served."""
    wire = framed(SMALL)
    reply = memoryview(bytearray(len(wire)))
    with ExitStack() as stack:
        streams: list[_Stream] = []
        for _ in range(count):
            sock = stack.enter_context(connect(job))
            sock.sendall(wire)
            recv_exactly(sock, reply)
            sock.setblocking(False)
            streams.append(_Stream(sock))
        yield streams


def _send_some(stream: _Stream, poller: select.epoll) -> None:
    """Send what the socket takes of the pending batch; watch for writability only while some is left."""
    try:
        n = stream.sock.send(stream.pending)
    except BlockingIOError:
        n = 0
    stream.pending, stream.sent = stream.pending[n:], stream.sent + n
    if bool(stream.pending) != stream.waits_writable:
        stream.waits_writable = not stream.waits_writable
        poller.modify(stream.fd, select.EPOLLIN | (select.EPOLLOUT if stream.waits_writable else 0))


def _read_echo(stream: _Stream, buffer: memoryview, expected: bytes) -> None:
    """Read what the server echoed; check its start against the stream sent (`expected` at its offset)."""
    n = stream.sock.recv_into(buffer)
    if not n:
        raise ConnectionError("the server closed a connection")
    offset = stream.received % _WIRE_SIZE
    if buffer[: min(n, 64)] != expected[offset : offset + min(n, 64)] or stream.received + n > stream.sent:
        raise WrongEcho(f"an echoed stream differs from the stream sent after {stream.received:,} bytes")
    stream.received += n


def scale(job: Job) -> Figures:
    """`SCALE_CONNECTIONS` pipelined connections at once, from one epoll loop: messages/s.

    After `job.seconds`, starts no new batch and waits for every echo.
    """
    wire = framed(SMALL)
    chunk = memoryview(wire * PIPELINE_BATCH)
    limit = len(wire) * SCALE_WINDOW - len(chunk)  # bytes in flight before a connection's next batch may go
    expected = wire * (RECV_SIZE // len(wire) + 2)  # any read fits at any offset within one wire
    buffer = memoryview(bytearray(RECV_SIZE))
    with _open(job, SCALE_CONNECTIONS) as streams, select.epoll() as poller:
        by_fd = {stream.fd: stream for stream in streams}
        for stream in streams:
            poller.register(stream.fd, select.EPOLLIN)
        meter = Meter(job.server_pid)
        end = meter.start + job.seconds
        sending = True
        for stream in streams:
            stream.pending = chunk
            _send_some(stream, poller)
        # Invariant: while sending, each stream has a batch pending (watched for writability)
        # or more than `limit` bytes in flight (an echo will wake it): none is left behind.
        while sending or not all(stream.is_done for stream in streams):
            events = poller.poll(IO_TIMEOUT)
            if not events:
                raise TimeoutError(f"no echo for {IO_TIMEOUT} s on any of {len(streams)} connections")
            for fd, mask in events:
                stream = by_fd[fd]
                if mask & _READABLE:
                    _read_echo(stream, buffer, expected)
                if not stream.pending and sending and stream.sent - stream.received <= limit:
                    stream.pending = chunk
                if stream.pending:
                    _send_some(stream, poller)
            sending = sending and time.perf_counter() < end
        received = sum(stream.received for stream in streams)
        figures = meter.figures(time.perf_counter(), received // len(wire))
    figures["connections"] = len(streams)
    figures["client_cpu_us_per_message"] = 1e6 * float(figures["client_cpu_seconds"]) / float(figures["messages"])
    return figures
