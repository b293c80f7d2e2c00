"""connecteur against `multiprocessing.connection`, a peer we did not write.

Without an authkey, `multiprocessing.connection` frames each ``send_bytes``
with a 4-byte big-endian signed length (messages under 2 GiB), so
``LengthPrefixed("!I")``, the default, reads and writes its wire format. It
sends a header and a body over 16 KiB as two writes: the 1 MiB message also
checks that a split message is put back together.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Listener
from multiprocessing.connection import Connection as MPConnection
from pathlib import Path
from typing import Any

import pytest

import connecteur
from connecteur import ConnectionClosed, Peer, Server
from connecteur.framing import LengthPrefixed
from tests.support import TIMEOUT

MESSAGES = [b"hello", b"", b"\x00\xff" * 10, os.urandom(2**20), b"last"]
"""Several messages, the empty one and a 1 MiB one among them."""


def reverse(message: bytes) -> bytes:
    return message[::-1]


def recv_bytes(conn: MPConnection) -> bytes:
    """`recv_bytes()`, failing the test instead of blocking past TIMEOUT."""
    assert conn.poll(TIMEOUT), "no message from connecteur within TIMEOUT"
    return conn.recv_bytes()


class MultiprocessingPeer:
    """A `multiprocessing.connection.Listener` on 127.0.0.1:0 whose first connection runs `script` in a thread."""

    def __init__(self, script: Callable[[MPConnection], None]) -> None:
        self._listener = Listener(("127.0.0.1", 0), authkey=None)
        self.address: tuple[str, int] = self._listener.address
        self._script = script
        self._failures: queue.Queue[BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="multiprocessing peer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._listener.accept() as conn:
                self._script(conn)
        except BaseException as exc:
            self._failures.put(exc)

    def close(self) -> None:
        """Wake an accept() still waiting, join the thread, close the listener; re-raise the script's failure."""
        try:
            if self._thread.is_alive() and not self._failures.qsize():
                # accept() does not return when its socket is closed from another
                # thread: a connection that closes at once ends it (the script
                # then sees EOFError).
                with socket.create_connection(self.address, timeout=TIMEOUT):
                    pass
            self._thread.join(TIMEOUT)
            assert not self._thread.is_alive(), "the multiprocessing peer did not finish"
        finally:
            self._listener.close()
        if not self._failures.empty():
            raise self._failures.get_nowait()


@pytest.fixture
def mp_peer() -> Iterator[Callable[[Callable[[MPConnection], None]], MultiprocessingPeer]]:
    peers: list[MultiprocessingPeer] = []

    def start(script: Callable[[MPConnection], None]) -> MultiprocessingPeer:
        peers.append(MultiprocessingPeer(script))
        return peers[-1]

    try:
        yield start
    finally:
        for peer in peers:
            peer.close()


def answer_reversed(conn: MPConnection) -> None:
    """Reply to every message with its bytes reversed, until EOF."""
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(reverse(message))


# --- a multiprocessing client, a connecteur server -------------------------------------


@pytest.fixture(params=["tcp", "unix"])
def server_address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "127.0.0.1:0" if request.param == "tcp" else f"unix:{tmp_path / 'sock'}"


def mp_client(address: Any) -> MPConnection:
    """A `multiprocessing.connection.Client` to a `Server.address`."""
    if isinstance(address, str) and address.startswith("unix:"):
        return Client(address.removeprefix("unix:"), family="AF_UNIX", authkey=None)
    return Client(tuple(address[:2]), family="AF_INET", authkey=None)


def test_a_multiprocessing_client_gets_replies_from_a_server(server_address: str) -> None:
    """send_bytes()/recv_bytes() against a Server: each message answered, b"" and 1 MiB included."""
    with Server(reverse, server_address, engine="threads") as server, mp_client(server.address) as client:
        for message in MESSAGES:
            client.send_bytes(message)
            assert recv_bytes(client) == reverse(message)


def test_a_multiprocessing_client_pipelines_to_a_server() -> None:
    """Many small messages sent before any reply is read: every reply, in order."""
    messages = [b"%d" % i for i in range(1000)] + [b""]
    with Server(reverse, "127.0.0.1:0", engine="threads") as server, mp_client(server.address) as client:
        for message in messages:
            client.send_bytes(message)
        assert [recv_bytes(client) for _ in messages] == [reverse(m) for m in messages]


def test_a_server_pushes_messages_then_closes_to_a_multiprocessing_client() -> None:
    """Server-initiated messages reach recv_bytes() whole; the close is EOFError there."""

    class Pusher:
        def connected(self, peer: Peer) -> None:
            for message in MESSAGES:
                peer.send(message)
            peer.close()

    with Server(Pusher(), "127.0.0.1:0", engine="threads") as server, mp_client(server.address) as client:
        assert [recv_bytes(client) for _ in MESSAGES] == MESSAGES
        assert client.poll(TIMEOUT)
        with pytest.raises(EOFError):
            client.recv_bytes()


# --- a connecteur client, a multiprocessing listener ------------------------------------


def test_connect_gets_replies_from_a_multiprocessing_listener(mp_peer: Callable[..., MultiprocessingPeer]) -> None:
    """request() against a Listener answering with send_bytes(): b"" and 1 MiB included."""
    peer = mp_peer(answer_reversed)
    with connecteur.connect(peer.address, framing=LengthPrefixed("!I"), timeout=TIMEOUT) as conn:
        for message in MESSAGES:
            assert conn.request(message) == reverse(message)


def test_connect_pipelines_to_a_multiprocessing_listener(mp_peer: Callable[..., MultiprocessingPeer]) -> None:
    """send_many() (coalesced writes) is read by recv_bytes() message by message."""
    messages = [b"%d" % i for i in range(1000)] + [b""]
    peer = mp_peer(answer_reversed)
    with connecteur.connect(peer.address, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        assert [conn.recv() for _ in messages] == [reverse(m) for m in messages]


def test_a_multiprocessing_listener_pushes_messages_then_closes(mp_peer: Callable[..., MultiprocessingPeer]) -> None:
    """Messages from send_bytes() come out of recv() whole; the listener's close ends iteration."""
    received: queue.Queue[bytes] = queue.Queue()

    def push_then_close(conn: MPConnection) -> None:
        received.put(conn.recv_bytes())  # wait for the client's hello, so it is connected
        for message in MESSAGES:
            conn.send_bytes(message)

    peer = mp_peer(push_then_close)
    with connecteur.connect(peer.address, timeout=TIMEOUT) as conn:
        conn.send(b"hello")
        assert list(conn) == MESSAGES
        with pytest.raises(ConnectionClosed):
            conn.recv()
    assert received.get(timeout=TIMEOUT) == b"hello"


def test_a_half_close_is_eof_error_for_a_multiprocessing_listener(mp_peer: Callable[..., MultiprocessingPeer]) -> None:
    """After shutdown_write() the listener's recv_bytes() raises EOFError, and its last words still arrive."""

    def count_until_eof(conn: MPConnection) -> None:
        count = 0
        while True:
            try:
                conn.recv_bytes()
            except EOFError:
                break
            count += 1
        conn.send_bytes(b"%d messages" % count)

    peer = mp_peer(count_until_eof)
    with connecteur.connect(peer.address, timeout=TIMEOUT) as conn:
        conn.send_many(MESSAGES)
        conn.shutdown_write()
        assert list(conn) == [b"%d messages" % len(MESSAGES)]
