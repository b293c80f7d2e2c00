"""What every workload of the `connecteur bench` client shares: the job, the messages, the meter.

The workloads live in the modules `client` (rr, pipeline, bulk, many, idle),
`scale` (scale), `connection` (client) and `mux` (mux); this module is
what they all build on, so that none of them imports another.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from . import proc

__all__ = [
    "CLIENT_BOUND_SHARE",
    "HEADER",
    "IO_TIMEOUT",
    "PIPELINE_BATCH",
    "RECV_SIZE",
    "SMALL",
    "Figures",
    "Job",
    "Meter",
    "WrongEcho",
    "connect",
    "framed",
    "recv_exactly",
    "wrong_echo",
]

Figures = dict[str, float | int | bool]
"""One measurement's figures by name."""

HEADER: Final = struct.Struct("!I")
SMALL: Final = bytes(range(64))
"""The 64-byte message of rr, pipeline, many, idle, scale and client (68 bytes on the wire)."""
IO_TIMEOUT: Final = 30.0
"""Seconds any single wait may take before the client gives up."""
RECV_SIZE: Final = 256 * 1024
"""Bytes asked of each recv while streaming: several pipelined batches at once."""
PIPELINE_BATCH: Final = 1024
"""Pipelined messages per send (68 KiB)."""
CLIENT_BOUND_SHARE: Final = 0.9
"""A client that used this share of its CPU core or more may have limited the figure."""


@dataclass(frozen=True)
class Job:
    """One workload against one server."""

    workload: str
    host: str
    port: int
    server_pid: int
    seconds: float
    """How long the throughput workloads send."""
    connections: int
    """For many and idle."""
    rss_samples: int
    """For idle: consecutive RSS readings that must agree."""
    target: str = ""
    """The server's target name (for mux, which starts a multiplexed twin of it)."""


def framed(message: bytes) -> bytes:
    """`message` as it goes on the wire: its 4-byte big-endian length, then itself."""
    return HEADER.pack(len(message)) + message


def connect(job: Job) -> socket.socket:
    """A blocking connection to the job's server, TCP_NODELAY set (as every server sets it)."""
    sock = socket.create_connection((job.host, job.port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, view: memoryview, got: int = 0) -> None:
    """Fill `view`, `got` bytes of which are there already.

    Raises:
        ConnectionError: the server closed the connection first.
        OSError: the connection broke, or a read timed out.
    """
    while got < len(view):
        more = sock.recv_into(view[got:])
        if not more:
            raise ConnectionError("the server closed the connection")
        got += more


class WrongEcho(Exception):
    """The server's reply is not the message sent."""


def wrong_echo(reply: bytes | bytearray) -> WrongEcho:
    """The error for a reply that is not the message sent; it quotes the reply's start."""
    return WrongEcho(f"the server replied {bytes(reply[:80])!r}, not the message sent")


class Meter:
    """Wall time, server CPU and client CPU over a measured interval.

    Both ends must be read while the workload's connections are open: the
    server threads or processes serving them take their CPU time with them.
    """

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._server_cpu = proc.cpu_seconds(server_pid)
        self._client_cpu = time.process_time()
        self.start = time.perf_counter()

    def figures(self, end: float, messages: int) -> Figures:
        """The figures of an interval that ended at `end` (a `perf_counter` time) after `messages`."""
        client_cpu = time.process_time() - self._client_cpu
        server_cpu = proc.cpu_seconds(self._pid) - self._server_cpu
        seconds = end - self.start
        return {
            "messages": messages,
            "seconds": seconds,
            "per_second": messages / seconds,
            "server_cpu_seconds": server_cpu,
            "server_cpu_us_per_message": 1e6 * server_cpu / messages,
            "server_cpu_share": server_cpu / seconds,
            "client_cpu_seconds": client_cpu,
            "client_cpu_share": client_cpu / seconds,
            "client_bound": client_cpu / seconds >= CLIENT_BOUND_SHARE,
        }
