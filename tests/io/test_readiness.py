"""poll() and wait(): never miss a message already pulled into this process."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from connecteur import Connection, ConnectionClosed, Server, connect, wait
from connecteur.tools.apps import echo
from tests.support import TIMEOUT


def frame(message: bytes) -> bytes:
    return struct.pack("!I", len(message)) + message


@pytest.fixture
def pair() -> tuple[Connection, socket.socket]:
    mine, theirs = socket.socketpair()
    return Connection(mine, timeout=TIMEOUT), theirs


def test_two_messages_in_one_segment_the_second_is_seen_after_the_first_recv(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, peer = pair
    with conn, peer:
        peer.sendall(frame(b"one") + frame(b"two"))
        assert conn.recv() == b"one"
        # The socket itself has nothing left: a plain select would say "not ready".
        import select

        assert select.select([conn], [], [], 0)[0] == []
        assert conn.poll(0) is True
        assert wait([conn], 0) == [conn]
        assert conn.recv() == b"two"
        assert conn.poll(0) is False
        assert wait([conn], 0) == []


def test_poll_waits_for_bytes_and_times_out(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    with conn, peer:
        started = time.monotonic()
        assert conn.poll(0.1) is False
        assert time.monotonic() - started >= 0.09
        peer.sendall(frame(b"late"))
        assert conn.poll(TIMEOUT) is True
        assert conn.recv() == b"late"


def test_eof_and_reset_count_as_ready_and_recv_raises(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    with conn:
        peer.close()
        assert conn.poll(TIMEOUT) is True
        assert wait([conn], 0) == [conn]
        with pytest.raises(ConnectionClosed):
            conn.recv()
        assert conn.poll(0) is True  # still: recv() would raise at once
    with Server(echo, "127.0.0.1:0") as server, connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"x") == b"x"
        listener = socket.create_server(("127.0.0.1", 0))
        with listener:
            client = connect(listener.getsockname(), timeout=TIMEOUT)
            accepted, _ = listener.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()
            with client:
                assert wait([client], TIMEOUT) == [client]
                with pytest.raises(OSError):
                    client.recv()


def test_wait_over_200_connections_returns_only_the_ready_ones() -> None:
    pairs = [socket.socketpair() for _ in range(200)]
    conns = [Connection(mine, timeout=TIMEOUT) for mine, _ in pairs]
    try:
        chosen = [3, 50, 51, 199]
        for i in chosen:
            pairs[i][1].sendall(frame(b"%d" % i))
        # One more already buffered in user space, none on its socket.
        pairs[7][1].sendall(frame(b"a") + frame(b"b"))
        assert conns[7].recv() == b"a"
        ready = wait(conns, TIMEOUT)
        assert ready == [conns[i] for i in sorted([*chosen, 7])]
        assert [c.recv() for c in ready] == [b"3", b"b", b"50", b"51", b"199"]
        assert wait(conns, 0) == []
    finally:
        for conn in conns:
            conn.close()
        for _, theirs in pairs:
            theirs.close()


def test_wait_accepts_plain_sockets_and_fileno_objects_and_times_out() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:

        class HasFileno:
            def fileno(self) -> int:
                return c.fileno()

        other = HasFileno()
        started = time.monotonic()
        assert wait([a, other], 0.1) == []
        assert time.monotonic() - started >= 0.09
        d.sendall(b"x")
        assert wait([a, other], TIMEOUT) == [other]
        b.sendall(b"y")
        assert wait([a, other], TIMEOUT) == [a, other]
    finally:
        for sock in (a, b, c, d):
            sock.close()
