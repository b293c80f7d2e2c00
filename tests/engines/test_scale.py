"""Scale: the select engine holds 10,000 concurrent connections in one process.

The server runs in a process of its own (as in production), so each process
needs one descriptor per connection, plus a few; the test raises
``RLIMIT_NOFILE`` to what that takes and skips when the hard limit is lower.
The server process answers ``stats`` on its standard input with its counters.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support import TIMEOUT, wait_until

CONNECTIONS = 10_000
SAMPLE = 200
"""Connections, spread over all of them, that exchange a message."""
BATCH = 500
"""Connections opened before waiting for the server to accept them: far below
the backlog, so the kernel never drops a handshake."""
BACKLOG = 4096
FDS_NEEDED = CONNECTIONS + 500
"""One side of every connection per process, plus the interpreter's own."""

SERVER = f"""
import dataclasses, json, sys
from connecteur import Server
from connecteur.tools.apps import echo
server = Server(echo, "127.0.0.1:0", engine="select", backlog={BACKLOG}, max_connections={CONNECTIONS})
with server:
    print(json.dumps(server.address[:2]), flush=True)
    for line in sys.stdin:
        print(json.dumps(dataclasses.asdict(server.stats)), flush=True)
"""

HEADER = struct.Struct("!I")


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly `size` bytes; fail on an early EOF."""
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise AssertionError("the server closed the connection before replying")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit (children inherit it); return the old limits, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        pytest.skip(f"{CONNECTIONS} connections need {FDS_NEEDED} file descriptors; the hard RLIMIT_NOFILE is {hard}")
    if soft != resource.RLIM_INFINITY and soft < FDS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_NEEDED, hard))
    return soft, hard


class ServerProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        host, port = json.loads(self.process.stdout.readline())
        self.address = (host, port)

    def stats(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # EOF: the server stops gracefully
        try:
            assert self.process.wait(TIMEOUT) == 0
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(TIMEOUT)
            self.process.stdout.close()


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    limits = raise_fd_limit()
    started = ServerProcess()
    try:
        yield started
    finally:
        started.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_select_engine_serves_10000_concurrent_connections(server: ServerProcess) -> None:
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 6 * TIMEOUT  # the whole opening, however many batches
        while len(clients) < CONNECTIONS:
            for _ in range(min(BATCH, CONNECTIONS - len(clients))):
                clients.append(socket.create_connection(server.address, timeout=TIMEOUT))
            opened = len(clients)
            wait_until(lambda n=opened: server.stats()["active"] >= n, what=f"the server to accept {opened}")
            assert time.monotonic() < deadline, f"opening {CONNECTIONS} connections took over {6 * TIMEOUT} s"

        stats = server.stats()
        assert (stats["active"], stats["accepted"], stats["rejected"]) == (CONNECTIONS, CONNECTIONS, 0)

        # Every sampled connection sends first, then all read: the server holds
        # 200 requests at once among 10,000 open connections.
        sample = clients[:: CONNECTIONS // SAMPLE][:SAMPLE]
        messages = [f"message {i} of {SAMPLE}".encode() for i in range(SAMPLE)]
        for sock, message in zip(sample, messages, strict=True):
            sock.sendall(HEADER.pack(len(message)) + message)
        for sock, message in zip(sample, messages, strict=True):
            (size,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
            assert recv_exactly(sock, size) == message

        stats = server.stats()
        assert (stats["messages_in"], stats["messages_out"], stats["active"]) == (SAMPLE, SAMPLE, CONNECTIONS)

        while clients:
            clients.pop().close()
        wait_until(lambda: server.stats()["active"] == 0, timeout=3 * TIMEOUT, what="every connection to close")
        stats = server.stats()
        assert (stats["accepted"], stats["errors"], stats["rejected"]) == (CONNECTIONS, 0, 0)
    finally:
        for sock in clients:
            sock.close()
