"""The authkey handshake against real `multiprocessing.connection` peers, over loopback TCP.

Our `Authenticator` is driven by a tiny blocking pump written here (recv,
`receive()`, `sendall(data_to_send())`), then the two sides exchange one
``send_bytes`` message each way, framed by connecteur's `LengthPrefixed()`.

Two kinds of peer:

- the running Python's `Listener` and `Client`, in a thread. On Python 3.11
  and older they speak the legacy HMAC-MD5 form, so our side passes
  ``allow_legacy=True``; without it, it must refuse them with a hint.
- a Python 3.12+ `Listener` or `Client` in a subprocess, speaking the
  ``{sha256}`` form: our side must succeed with ``allow_legacy=False``. These
  tests are skipped when no such interpreter is installed.

The peer sends first after the handshake, so its message may arrive in the
same read as its last handshake message: it must come out of `leftover()`.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Client, Listener
from multiprocessing.connection import Connection as MPConnection

import pytest

from connecteur import AuthenticationError
from connecteur._auth import Authenticator
from connecteur.framing import LengthPrefixed
from tests.mp_peers import PeerThread, finish, modern_peer, modern_python_or_skip, read_line
from tests.support import TIMEOUT

KEY = b"interop secret"
WRONG_KEY = b"not the interop secret"
MP_MESSAGE = b"hello from multiprocessing"
FRAMING = LengthPrefixed()
IS_LEGACY_PYTHON = sys.version_info < (3, 12)
"""The running Python's multiprocessing speaks the HMAC-MD5 form."""


# --- our side: a blocking pump ---------------------------------------------------------


def run_handshake(sock: socket.socket, auth: Authenticator) -> bytes:
    """Write what the handshake has to send, read, feed, until done; return the leftover bytes."""
    sock.sendall(auth.data_to_send())
    while not auth.is_done:
        data = sock.recv(65536)
        try:
            if data:
                auth.receive(data)
            else:
                auth.receive_eof()
        finally:
            if outgoing := auth.data_to_send():  # a response, a welcome, or #FAILURE# before raising
                sock.sendall(outgoing)
    return auth.leftover()


def authenticate_and_answer(sock: socket.socket, auth: Authenticator) -> bytes:
    """Our side: the handshake, then the peer's first message answered with its reverse. Returns that message."""
    decoder = FRAMING.decoder()
    messages = decoder.feed(run_handshake(sock, auth))
    while not messages:
        data = sock.recv(65536)
        assert data, "the peer closed before its first message"
        messages = decoder.feed(data)
    sock.sendall(FRAMING.encode(messages[0][::-1]))
    return messages[0]


# --- in-process multiprocessing peers, in a thread ------------------------------------


def send_and_receive(conn: MPConnection) -> bytes:
    """The multiprocessing side after the handshake: send first, return the reply."""
    conn.send_bytes(MP_MESSAGE)
    assert conn.poll(TIMEOUT), "no reply from connecteur within TIMEOUT"
    return conn.recv_bytes()


@contextmanager
def mp_listener(key: bytes) -> Iterator[tuple[tuple[str, int], PeerThread]]:
    """A `Listener(authkey=key)` whose first connection runs `send_and_receive` in a thread."""
    listener = Listener(("127.0.0.1", 0), authkey=key)

    def serve() -> bytes:
        with listener.accept() as conn:  # the handshake runs inside accept()
            return send_and_receive(conn)

    peer = PeerThread(serve)
    try:
        yield listener.address, peer
    finally:
        try:
            if peer.is_alive():
                # accept() ignores a close from another thread: a connection that closes ends it.
                with suppress(OSError), socket.create_connection(listener.address, timeout=TIMEOUT):
                    pass
            peer.join()
        finally:
            listener.close()


@contextmanager
def mp_client(key: bytes) -> Iterator[tuple[socket.socket, PeerThread]]:
    """A `Client(authkey=key)` in a thread, connected to a plain socket we accept: yields our end."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()

    def connect() -> bytes:
        with Client(address, authkey=key) as conn:  # the handshake runs inside Client()
            return send_and_receive(conn)

    peer = PeerThread(connect)
    try:
        listener.settimeout(TIMEOUT)
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(TIMEOUT)
            yield sock, peer
    finally:
        listener.close()  # a closed socket ends the client's wait: EOF or a reset
        peer.join()


def test_our_server_side_authenticates_a_multiprocessing_client() -> None:
    with mp_client(KEY) as (sock, peer):
        received = authenticate_and_answer(sock, Authenticator(KEY, server_side=True, allow_legacy=True))
    assert received == MP_MESSAGE
    assert peer.result() == MP_MESSAGE[::-1]


def test_our_client_side_authenticates_to_a_multiprocessing_listener() -> None:
    with mp_listener(KEY) as (address, peer), socket.create_connection(address, timeout=TIMEOUT) as sock:
        received = authenticate_and_answer(sock, Authenticator(KEY, server_side=False, allow_legacy=True))
    assert received == MP_MESSAGE
    assert peer.result() == MP_MESSAGE[::-1]


def test_a_multiprocessing_client_with_another_key_fails_on_both_sides() -> None:
    """We reject its response and send #FAILURE#; its Client() raises its own AuthenticationError."""
    with mp_client(WRONG_KEY) as (sock, peer), pytest.raises(AuthenticationError, match="keys differ"):
        run_handshake(sock, Authenticator(KEY, server_side=True, allow_legacy=True))
    assert isinstance(peer.error(), multiprocessing.AuthenticationError)


def test_a_multiprocessing_listener_with_another_key_fails_on_both_sides() -> None:
    """Its accept() rejects our response and raises; we raise on its #FAILURE#."""
    with (
        mp_listener(WRONG_KEY) as (address, peer),
        socket.create_connection(address, timeout=TIMEOUT) as sock,
        pytest.raises(AuthenticationError, match="rejected our response"),
    ):
        run_handshake(sock, Authenticator(KEY, server_side=False, allow_legacy=True))
    assert isinstance(peer.error(), multiprocessing.AuthenticationError)


@pytest.mark.skipif(not IS_LEGACY_PYTHON, reason="this Python's multiprocessing speaks the {sha256} form")
def test_a_legacy_multiprocessing_client_is_refused_without_allow_legacy() -> None:
    """Its raw HMAC-MD5 response is refused with a hint; it sees #FAILURE#."""
    with mp_client(KEY) as (sock, peer), pytest.raises(AuthenticationError, match="allow_legacy_auth=True"):
        run_handshake(sock, Authenticator(KEY, server_side=True))
    assert isinstance(peer.error(), multiprocessing.AuthenticationError)


@pytest.mark.skipif(not IS_LEGACY_PYTHON, reason="this Python's multiprocessing speaks the {sha256} form")
def test_a_legacy_multiprocessing_listener_is_refused_without_allow_legacy() -> None:
    """Its 20-byte challenge is refused with a hint; we close, and its accept() sees the end of the stream."""
    with (
        mp_listener(KEY) as (address, peer),
        socket.create_connection(address, timeout=TIMEOUT) as sock,
        pytest.raises(AuthenticationError, match="legacy 20-byte HMAC-MD5 challenge"),
    ):
        run_handshake(sock, Authenticator(KEY, server_side=False))
    assert isinstance(peer.error(), EOFError | ConnectionError)


# --- a Python 3.12+ peer in a subprocess ----------------------------------------------


@pytest.fixture(scope="module")
def modern_python() -> str:
    return modern_python_or_skip()


@pytest.mark.parametrize("peer_key", [KEY, WRONG_KEY], ids=["same key", "other key"])
def test_our_client_side_and_a_modern_listener(modern_python: str, peer_key: bytes) -> None:
    """{sha256} both ways with allow_legacy=False; with another key both sides raise."""
    with modern_peer(modern_python, "listener", peer_key, MP_MESSAGE) as proc:
        port = int(read_line(proc).removeprefix("port:"))
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            auth = Authenticator(KEY, server_side=False)
            if peer_key == KEY:
                assert authenticate_and_answer(sock, auth) == MP_MESSAGE
            else:
                with pytest.raises(AuthenticationError, match="rejected our response"):
                    run_handshake(sock, auth)
        returncode, output = finish(proc)
    if peer_key == KEY:
        assert (returncode, output) == (0, f"reply: {MP_MESSAGE[::-1].hex()}\n")
    else:
        assert returncode == 3 and output.startswith("AuthenticationError:"), output


@pytest.mark.parametrize("peer_key", [KEY, WRONG_KEY], ids=["same key", "other key"])
def test_our_server_side_and_a_modern_client(modern_python: str, peer_key: bytes) -> None:
    """{sha256} both ways with allow_legacy=False; with another key we send #FAILURE# and both sides raise."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        with modern_peer(modern_python, "client", peer_key, MP_MESSAGE, listener.getsockname()[1]) as proc:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                auth = Authenticator(KEY, server_side=True)
                if peer_key == KEY:
                    assert authenticate_and_answer(sock, auth) == MP_MESSAGE
                else:
                    with pytest.raises(AuthenticationError, match="keys differ"):
                        run_handshake(sock, auth)
            returncode, output = finish(proc)
    if peer_key == KEY:
        assert (returncode, output) == (0, f"reply: {MP_MESSAGE[::-1].hex()}\n")
    else:
        assert returncode == 3 and output.startswith("AuthenticationError: digest sent was rejected"), output
