"""`Server(keepalive=...)` reaches every accepted connection, on every engine."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable

import pytest

import connecteur
from connecteur import Keepalive, Server
from tests.support import TIMEOUT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd; Linux option names")


def options_of_peer(message: bytes) -> bytes:
    """The keepalive options of this process's socket whose peer is the port in `message`.

    Runs in the handler, so in the process serving the connection: the
    forked child on the processes engine, a worker with ``workers=2``.
    """
    port = int(message)
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            sock = socket.socket(fileno=os.dup(int(name)))
            with sock:
                if sock.family == socket.AF_INET and sock.getpeername()[1] == port:
                    values = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] + [
                        sock.getsockopt(socket.IPPROTO_TCP, option)
                        for option in (
                            socket.TCP_KEEPIDLE,
                            socket.TCP_KEEPINTVL,
                            socket.TCP_KEEPCNT,
                            socket.TCP_USER_TIMEOUT,
                        )
                    ]
                    return " ".join(map(str, values)).encode()
    return b"not found"


def test_accepted_connections_get_the_setting(serve: Callable[..., Server]) -> None:
    server = serve(options_of_peer, keepalive=Keepalive(idle=9, interval=4, count=5, user_timeout=1.5))
    with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
        port = conn._sock.getsockname()[1]
        assert conn.request(str(port).encode()) == b"1 9 4 5 1500"


def test_seconds_on_the_server(serve: Callable[..., Server]) -> None:
    server = serve(options_of_peer, keepalive=30)
    with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
        port = conn._sock.getsockname()[1]
        assert conn.request(str(port).encode()) == b"1 15 5 3 30000"
