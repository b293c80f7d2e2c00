"""The non-blocking connect: completion seen as writability, as the HOWTO describes."""

from __future__ import annotations

import errno
import selectors
import socket
import struct

import pytest

from connecteur import Connection, Server, connect_nowait, finish_connect
from connecteur.tools.apps import upper
from tests.support import TIMEOUT


def wait_writable(sock: socket.socket) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        assert selector.select(TIMEOUT), "the connect never completed"


@pytest.mark.parametrize("engine", ["select", "threads"])
def test_connect_nowait_returns_at_once_and_completes_in_a_select_loop(engine: str) -> None:
    with Server(upper, "127.0.0.1:0", engine=engine) as server:
        sock = connect_nowait(server.address)
        try:
            assert sock.getblocking() is False
            wait_writable(sock)
            finish_connect(sock)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except BaseException:
            sock.close()
            raise
        with Connection(sock, timeout=TIMEOUT) as conn:
            assert conn.request(b"nowait") == b"NOWAIT"


def test_a_refused_connect_nowait_raises_at_finish() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = connect_nowait(f"127.0.0.1:{port}")
    with sock:
        wait_writable(sock)
        with pytest.raises(ConnectionRefusedError):
            finish_connect(sock)


def test_a_connection_reset_as_it_was_made_raises_a_connection_error_at_finish() -> None:
    """The peer accepts and resets at once, and the reset's error is gone from SO_ERROR when finish looks.

    Through a proxy that resets every connection (reset_after=0), the reset
    can land between finish's two looks; without its error, `getpeername`
    says only ENOTCONN, a plain OSError that callers retrying on
    ConnectionError did not take for the peer's doing.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = connect_nowait(listener.getsockname())
        with sock:
            accepted, _ = listener.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()  # a reset
            wait_writable(sock)
            with selectors.DefaultSelector() as selector:  # until the reset arrived: readable, as writable
                selector.register(sock, selectors.EVENT_READ)
                assert selector.select(TIMEOUT)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET  # taken, as in the race
            with pytest.raises(ConnectionResetError):
                finish_connect(sock)


def test_unix_connect_nowait(tmp_path: object) -> None:
    with Server(upper, f"unix:{tmp_path}/s.sock") as server:
        sock = connect_nowait(server.address)
        wait_writable(sock)
        finish_connect(sock)
        with Connection(sock, timeout=TIMEOUT) as conn:
            assert conn.request(b"unix") == b"UNIX"


def test_finish_before_writable_says_not_connected() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    fillers: list[socket.socket] = []
    try:
        # Fill the backlog so the next SYN goes unanswered and the connect stays pending.
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        sock = connect_nowait(listener.getsockname())
        with sock:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                if selector.select(0.2):
                    pytest.skip("the kernel completed the connect despite the full backlog")
            with pytest.raises(OSError):
                finish_connect(sock)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
