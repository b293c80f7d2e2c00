"""Out of descriptors: an engine backs off instead of spinning, and recovers."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.engines.test_select import _cpu_seconds
from tests.support import TIMEOUT

LIMIT = 64
"""The server process's RLIMIT_NOFILE: small, so that a few dozen clients exhaust it."""

SERVER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from connecteur import Server
from connecteur.tools.apps import echo
with Server(echo, "127.0.0.1:0", engine={engine!r}, backlog=256) as server:
    print(json.dumps(server.address[:2]), flush=True)
    sys.stdin.read()
"""


def exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(struct.pack("!I", len(message)) + message)
    reply = b""
    while len(reply) < 4 + len(message):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        reply += chunk
    return reply[4:]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to read a process's CPU time")
@pytest.mark.parametrize("engine", ["select", "threads", "processes"])
def test_emfile_on_accept_is_not_a_busy_loop(engine: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(limit=LIMIT, engine=engine)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        address = tuple(json.loads(process.stdout.readline()))
        for _ in range(2 * LIMIT):  # more than the server has descriptors: the rest wait in its backlog
            clients.append(socket.create_connection(address, timeout=TIMEOUT))
        assert exchange(clients[0], b"first") == b"first"
        time.sleep(0.3)  # let the server reach EMFILE on the waiting connections
        before = _cpu_seconds(process.pid)
        time.sleep(1.0)
        used = _cpu_seconds(process.pid) - before
        assert used < 0.3, f"the server spun on EMFILE: {used:.2f} s of CPU in 1 s"
        for sock in clients[1:-1]:
            sock.close()
        # Descriptors are free again: the connection that waited last in the backlog is served.
        assert exchange(clients[-1], b"late") == b"late"
    finally:
        for sock in clients:
            sock.close()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        try:
            process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
            process.stdout.close()
