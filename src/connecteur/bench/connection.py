"""The client workload of `connecteur bench`: connecteur's blocking Connection against a hand-written client.

It measures the client, not the server. Two clients do rr against the job's
server (one 64 B message in flight, the default framing: a 4-byte big-endian
length): connecteur's, ``connecteur.connect("host:port")`` then ``send``
and ``recv`` per round trip; and the one the Python Socket HOWTO teaches,
written carefully by hand on a plain socket: ``sendall(header + message)``,
then exactly 4 header bytes, then exactly as many body bytes as the header
says. Each has a connection of its own; they take turns in `CLIENT_SLICES`
short slices each (connecteur, socket, connecteur, socket, ...), so that a
slow spell of a shared machine hits both alike. Every reply is checked whole.

Both sockets are blocking without a timeout, as ``connect`` leaves it by
default: with a timeout, CPython polls before every send and recv, an extra
system call each. The orchestrator's own timeout on each job bounds a hang.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .. import Connection, connect
from .job import HEADER, SMALL, Figures, Job, wrong_echo

__all__ = ["CLIENT_SLICES", "client"]

CLIENT_SLICES: Final = 4
"""Slices of each client, taking turns: `job.seconds` of each client in all."""
ROUND_TRIPS_PER_LOOK: Final = 64
"""Round trips between two looks at the clock."""

RoundTrips = Callable[[int], None]
"""Runs that many round trips, checking every reply."""


def _connection_round_trips(conn: Connection) -> RoundTrips:
    send, recv = conn.send, conn.recv

    def round_trips(count: int) -> None:
        for _ in range(count):
            send(SMALL)
            reply = recv()
            if reply != SMALL:
                raise wrong_echo(reply)

    return round_trips


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """The HOWTO's loop: recv until `size` bytes came; the peer closing first is an error."""
    data = sock.recv(size)
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ConnectionError("the server closed the connection")
        data += more
    return data


def _socket_round_trips(sock: socket.socket) -> RoundTrips:
    # recv(n), not recv_into a preallocated buffer: the faster of the two
    # honest versions. Measured side by side (2 cores, CPython 3.11, against
    # the select engine, three runs), recv gave 2-5% more round trips/s for
    # 3-10% less client CPU: for 4 and 64 bytes, recv_into's memoryview
    # slicing and its copy out to bytes cost more than recv's small allocations.
    sendall, pack, unpack = sock.sendall, HEADER.pack, HEADER.unpack

    def round_trips(count: int) -> None:
        for _ in range(count):
            sendall(pack(len(SMALL)) + SMALL)
            (size,) = unpack(_recv_exactly(sock, HEADER.size))
            reply = _recv_exactly(sock, size)
            if reply != SMALL:
                raise wrong_echo(reply)

    return round_trips


def _plain_connect(job: Job) -> socket.socket:
    sock = socket.create_connection((job.host, job.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as connecteur sets it
    return sock


@dataclass
class _Tally:
    """One client's round trips, wall time and CPU time (of this process), over its slices."""

    round_trips: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def add_slice(self, round_trips: RoundTrips, seconds: float) -> None:
        """Run round trips for `seconds`, then count them."""
        cpu, start = time.process_time(), time.perf_counter()
        end = start + seconds
        while True:
            round_trips(ROUND_TRIPS_PER_LOOK)
            self.round_trips += ROUND_TRIPS_PER_LOOK
            if (now := time.perf_counter()) >= end:
                break
        self.seconds += now - start
        self.cpu_seconds += time.process_time() - cpu

    def figures(self, prefix: str) -> Figures:
        return {
            f"{prefix}messages": self.round_trips,
            f"{prefix}seconds": self.seconds,
            f"{prefix}per_second": self.round_trips / self.seconds,
            f"{prefix}client_cpu_us_per_message": 1e6 * self.cpu_seconds / self.round_trips,
            f"{prefix}client_cpu_share": self.cpu_seconds / self.seconds,
        }


def client(job: Job) -> Figures:
    """connecteur's Connection, then a hand-written socket client, taking turns: round trips/s of each.

    `per_second` is connecteur's, `socket_per_second` the hand-written
    client's, `ratio` the first over the second; each with its CPU per round
    trip (`client_cpu_us_per_message`, `socket_client_cpu_us_per_message`).
    """
    with connect(f"{job.host}:{job.port}") as conn, _plain_connect(job) as sock:
        clients = ((_connection_round_trips(conn), _Tally()), (_socket_round_trips(sock), _Tally()))
        for round_trips, _ in clients:  # warm-up
            round_trips(ROUND_TRIPS_PER_LOOK)
        for _ in range(CLIENT_SLICES):
            for round_trips, tally in clients:
                tally.add_slice(round_trips, job.seconds / CLIENT_SLICES)
    (_, connecteur), (_, hand_written) = clients
    figures = {**connecteur.figures(""), **hand_written.figures("socket_")}
    figures["ratio"] = float(figures["per_second"]) / float(figures["socket_per_second"])
    return figures
