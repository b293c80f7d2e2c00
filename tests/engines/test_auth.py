"""Shared-secret authentication on every engine, and against real `multiprocessing.connection` peers.

The handshake is multiprocessing's HMAC challenge in both directions. A peer
that fails it, or stalls in it, is closed, counted in `stats.errors` and
`stats.handshake_errors`, logged on one line, and never reaches the handler:
a `Journal` (a file, so forked children can write it) records every hook call.

Against multiprocessing: Python 3.11's speaks the legacy HMAC-MD5 form, refused
unless ``allow_legacy_auth=True``; a Python 3.12+ interpreter, when one is
installed, runs the ``{sha256}`` form in a subprocess.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Client, Listener
from pathlib import Path

import pytest

from connecteur import AuthenticationError, Server, aio, connect
from connecteur.address import format_address
from connecteur.framing import LengthPrefixed
from connecteur.tools.apps import echo, upper
from tests.engines.conftest import engine_per_family
from tests.engines.test_contract import Journal, raw_client
from tests.mp_peers import PeerThread, finish, modern_peer, modern_python_or_skip, read_line
from tests.support import TIMEOUT, recv_until_closed, wait_until
from tests.tls_support import Pki, Witness, logs_reach_caplog, make_pki, wait_for_one_handshake_error

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]

KEY = b"engine secret"
WRONG_KEY = b"not the engine secret"
IS_LEGACY_PYTHON = sys.version_info < (3, 12)
"""The running Python's multiprocessing speaks the HMAC-MD5 form."""
legacy_only = pytest.mark.skipif(not IS_LEGACY_PYTHON, reason="this Python's multiprocessing speaks the {sha256} form")

MARGIN = TIMEOUT / 5
"""Seconds allowed past a handshake timeout for the close to be seen."""


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "events")


def only_the_good_client_reached(journal: Journal, server: Server) -> None:
    """Connect with the key; the journal must show that client alone: the failed peer never reached the handler."""
    with connect(server.address, auth_key=KEY, timeout=TIMEOUT) as conn:
        assert conn.request(b"good") == b"good"
    wait_until(lambda: len(journal.events()) == 3, what="the good client's three hooks")
    assert journal.events() == ["connected", "received b'good'", "closed None"]


# --- connecteur on both sides ------------------------------------------------------------


def test_the_same_key_on_both_sides(serve: Serve) -> None:
    server = serve(upper, auth_key=KEY)
    with connect(server.address, auth_key=KEY, timeout=TIMEOUT) as conn:
        assert conn.request(b"hello") == b"HELLO"
        conn.send_many([b"a", b"b", b"c"])
        assert [conn.recv() for _ in range(3)] == [b"A", b"B", b"C"]

    async def main() -> None:
        conn = await aio.connect(server.address, auth_key=KEY, timeout=TIMEOUT)
        async with conn:
            assert await conn.request(b"from asyncio") == b"FROM ASYNCIO"

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    wait_until(lambda: server.stats.messages_in == 5 and server.stats.active == 0, what="every message counted")
    assert (server.stats.errors, server.stats.handshake_errors) == (0, 0)


def test_a_wrong_key_fails_on_the_client_and_the_handler_sees_nothing(serve: Serve, journal: Journal) -> None:
    server = serve(Witness(journal), auth_key=KEY)
    with pytest.raises(AuthenticationError, match="keys differ"):
        connect(server.address, auth_key=WRONG_KEY, timeout=TIMEOUT)
    wait_for_one_handshake_error(server)
    only_the_good_client_reached(journal, server)


def test_a_client_with_a_key_against_a_server_without_one_fails_within_the_handshake_timeout(serve: Serve) -> None:
    """Each side waits for the other to speak first: multiprocessing would deadlock; we give up in time."""
    server = serve(echo)
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="use an auth key"):
        connect(server.address, auth_key=KEY, timeout=TIMEOUT, handshake_timeout=0.5)
    assert 0.45 < time.monotonic() - started < 0.5 + MARGIN


def test_the_asyncio_client_with_a_key_against_a_server_without_one_fails_within_the_handshake_timeout() -> None:
    with Server(echo, "127.0.0.1:0") as server:

        async def main() -> None:
            await aio.connect(server.address, auth_key=KEY, timeout=TIMEOUT, handshake_timeout=0.5)

        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="use an auth key"):
            asyncio.run(asyncio.wait_for(main(), TIMEOUT))
        assert 0.45 < time.monotonic() - started < 0.5 + MARGIN


def test_a_client_without_a_key_that_sends_a_message_is_closed_at_once(
    engine: str, serve: Serve, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Witness(journal), auth_key=KEY, handshake_timeout=TIMEOUT)
    framing = LengthPrefixed()
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with raw_client(server) as sock:
            peer = format_address(sock.getsockname())
            sock.sendall(framing.encode(b"hello"))  # an application message, not an answer to the challenge
            started = time.monotonic()
            data = recv_until_closed(sock)
            assert time.monotonic() - started < TIMEOUT / 2  # refused at once, not at the handshake timeout
        wait_for_one_handshake_error(server)
    received = framing.decoder().feed(data)
    assert received[:1] and received[0].startswith(b"#CHALLENGE#{sha256}")
    assert received[1:] in ([], [b"#FAILURE#"])  # the refusal, unless the close overtook it
    only_the_good_client_reached(journal, server)
    if logs_reach_caplog(engine):
        lines = [r.getMessage() for r in caplog.records if peer in r.getMessage()]
        assert len(lines) == 1, lines
        assert "auth key" in lines[0]


def test_a_silent_client_is_closed_at_the_handshake_timeout(
    engine: str, serve: Serve, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Witness(journal), auth_key=KEY, handshake_timeout=0.3)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with raw_client(server) as sock:
            peer = format_address(sock.getsockname())
            started = time.monotonic()
            data = recv_until_closed(sock)
            elapsed = time.monotonic() - started
        wait_for_one_handshake_error(server)
    assert 0.25 < elapsed < 0.3 + MARGIN
    (size,) = struct.unpack("!I", data[:4])  # the server's challenge, and nothing after it
    assert len(data) == 4 + size and data[4:].startswith(b"#CHALLENGE#{sha256}")
    only_the_good_client_reached(journal, server)
    if logs_reach_caplog(engine):
        lines = [r.getMessage() for r in caplog.records if peer in r.getMessage()]
        assert len(lines) == 1, lines
        assert "authentication" in lines[0].lower()


def test_tls_and_authentication_together(serve: Serve, pki: Pki, journal: Journal) -> None:
    server = serve(Witness(journal), tls=pki.server, auth_key=KEY)
    with connect(server.address, tls=pki.client, auth_key=KEY, timeout=TIMEOUT) as conn:
        assert conn.request(b"both") == b"both"

    async def main() -> None:
        conn = await aio.connect(server.address, tls=pki.client, auth_key=KEY, timeout=TIMEOUT)
        async with conn:
            assert await conn.request(b"both, asyncio") == b"both, asyncio"

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    with pytest.raises(AuthenticationError, match="keys differ"):
        connect(server.address, tls=pki.client, auth_key=WRONG_KEY, timeout=TIMEOUT)
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as keyless:  # TLS is fine, but no key
        keyless.send(b"no key")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            while keyless.recv() != b"#FAILURE#":  # the challenge comes as a message, then the refusal
                pass
            keyless.recv()
    wait_until(lambda: server.stats.handshake_errors == 2 and server.stats.active == 0, what="both failures counted")
    assert server.stats.errors == 2
    wait_until(lambda: len(journal.events()) == 6, what="the two good clients' hooks")
    assert sorted(journal.events()) == sorted(
        ["connected", "received b'both'", "closed None", "connected", "received b'both, asyncio'", "closed None"]
    )


# --- multiprocessing peers in a thread ------------------------------------------------------


def mp_client_exchange(address: tuple[str, int], key: bytes) -> bytes:
    """A `multiprocessing.connection.Client`: the handshake, one message, its reply."""
    with Client(address, authkey=key) as conn:
        conn.send_bytes(b"from multiprocessing")
        if not conn.poll(TIMEOUT):
            raise AssertionError("no reply within TIMEOUT")
        return conn.recv_bytes()


@contextmanager
def mp_echo_listener(key: bytes | None) -> Iterator[tuple[tuple[str, int], PeerThread]]:
    """A `multiprocessing.connection.Listener` whose first connection gets one message echoed."""
    listener = Listener(("127.0.0.1", 0), authkey=key)

    def serve() -> bytes:
        with listener.accept() as conn:  # with a key, the handshake runs inside accept()
            message = conn.recv_bytes()
            conn.send_bytes(message)
            return message

    peer = PeerThread(serve)
    try:
        yield listener.address, peer
    finally:
        try:
            if peer.is_alive():  # accept() ignores a close from another thread: a connection that closes ends it
                with suppress(OSError), socket.create_connection(listener.address, timeout=TIMEOUT):
                    pass
            peer.join()
        finally:
            listener.close()


@legacy_only
def test_a_legacy_multiprocessing_client_is_refused_by_default(
    engine: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Its HMAC-MD5 answer is refused: it raises on #FAILURE#, the server counts and logs why."""
    server = serve(upper, auth_key=KEY)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        peer = PeerThread(lambda: mp_client_exchange(server.address, KEY))
        error = peer.error()
        wait_for_one_handshake_error(server)
    assert isinstance(error, multiprocessing.AuthenticationError)
    if logs_reach_caplog(engine):
        assert any("allow_legacy" in r.getMessage() for r in caplog.records)


@legacy_only
def test_a_legacy_multiprocessing_client_is_served_with_allow_legacy_auth(serve: Serve) -> None:
    server = serve(upper, auth_key=KEY, allow_legacy_auth=True)
    assert PeerThread(lambda: mp_client_exchange(server.address, KEY)).result() == b"FROM MULTIPROCESSING"
    wait_until(lambda: server.stats.messages_in == 1 and server.stats.active == 0, what="the message counted")
    assert server.stats.handshake_errors == 0


@legacy_only
def test_our_client_and_a_legacy_multiprocessing_listener() -> None:
    with mp_echo_listener(KEY) as (address, peer):
        with connect(address, auth_key=KEY, allow_legacy_auth=True, timeout=TIMEOUT) as conn:
            assert conn.request(b"to multiprocessing") == b"to multiprocessing"
        assert peer.result() == b"to multiprocessing"


@legacy_only
def test_our_client_refuses_a_legacy_multiprocessing_listener_by_default() -> None:
    with mp_echo_listener(KEY) as (address, peer):
        with pytest.raises(AuthenticationError, match="allow_legacy"):
            connect(address, auth_key=KEY, timeout=TIMEOUT)
        assert isinstance(peer.error(), EOFError | ConnectionError)


def test_our_client_with_a_key_against_a_listener_without_one_fails_within_the_handshake_timeout() -> None:
    """Where multiprocessing's Client would wait for ever for a challenge."""
    with mp_echo_listener(None) as (address, peer):
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="use an auth key"):
            connect(address, auth_key=KEY, allow_legacy_auth=True, timeout=TIMEOUT, handshake_timeout=0.5)
        assert 0.45 < time.monotonic() - started < 0.5 + MARGIN
        assert isinstance(peer.error(), EOFError | ConnectionError)  # we closed: its recv_bytes() ended


# --- a Python 3.12+ multiprocessing in a subprocess ----------------------------------------


@pytest.fixture(scope="module")
def modern_python() -> str:
    return modern_python_or_skip()


@pytest.mark.parametrize("client_key", [KEY, WRONG_KEY], ids=["same key", "other key"])
def test_a_modern_multiprocessing_client_against_our_server(modern_python: str, client_key: bytes) -> None:
    """{sha256} without allow_legacy_auth; with another key the client raises and the server counts it."""
    with Server(upper, "127.0.0.1:0", engine="select", auth_key=KEY) as server:
        with modern_peer(modern_python, "client", client_key, b"modern multiprocessing", server.address[1]) as proc:
            returncode, output = finish(proc)
        if client_key == KEY:
            assert (returncode, output) == (0, f"reply: {b'MODERN MULTIPROCESSING'.hex()}\n")
            wait_until(lambda: server.stats.messages_in == 1 and server.stats.active == 0, what="the message")
            assert server.stats.handshake_errors == 0
        else:
            assert returncode == 3 and output.startswith("AuthenticationError: digest sent was rejected"), output
            wait_for_one_handshake_error(server)


@pytest.mark.parametrize("listener_key", [KEY, WRONG_KEY], ids=["same key", "other key"])
def test_our_client_against_a_modern_multiprocessing_listener(modern_python: str, listener_key: bytes) -> None:
    with modern_peer(modern_python, "listener", listener_key, b"from multiprocessing") as proc:
        port = int(read_line(proc).removeprefix("port:"))
        if listener_key == KEY:
            with connect(("127.0.0.1", port), auth_key=KEY, timeout=TIMEOUT) as conn:
                assert conn.recv() == b"from multiprocessing"
                conn.send(b"connecteur")
            assert finish(proc) == (0, f"reply: {b'connecteur'.hex()}\n")
        else:
            with pytest.raises(AuthenticationError, match="keys differ"):
                connect(("127.0.0.1", port), auth_key=KEY, timeout=TIMEOUT)
            returncode, output = finish(proc)
            assert returncode == 3 and output.startswith("AuthenticationError:"), output
