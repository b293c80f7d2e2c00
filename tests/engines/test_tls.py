"""TLS on every engine: the contract's main promises again, encrypted, and every way a handshake fails.

A failed or stalled handshake closes the connection, counts it in
`stats.errors` and `stats.handshake_errors`, logs one line, and the handler
sees nothing of that peer: a `Journal` (a file, so forked children can write
it) records every hook call, and a good client afterwards shows the handler
was listening.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connecteur import ConnectionClosed, Server, aio, connect
from connecteur.address import format_address
from connecteur.tools.apps import echo, upper
from tests.engines.conftest import engine_options
from tests.engines.test_contract import Journal, raw_client
from tests.support import TIMEOUT, recv_until_closed, wait_until
from tests.tls_support import Pki, Witness, logs_reach_caplog, make_pki, wait_for_one_handshake_error

Serve = Callable[..., Server]

BIG = bytes(range(256)) * (3 * 2**12)
"""3 MiB: a message of many TLS records."""


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "events")


def only_the_good_client_reached(journal: Journal, server: Server, pki: Pki) -> None:
    """Connect a good TLS client, then check the journal shows it alone: the failed peer never reached the handler."""
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:
        assert conn.request(b"good") == b"good"
    wait_until(lambda: len(journal.events()) == 3, what="the good client's three hooks")
    assert journal.events() == ["connected", "received b'good'", "closed None"]


# --- it works ------------------------------------------------------------------------


def test_echo_pipelining_and_a_large_message_over_tls(serve: Serve, pki: Pki) -> None:
    server = serve(echo, tls=pki.server)
    messages = [b"m%d" % i for i in range(5_000)]
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:
        assert conn.request(b"hello") == b"hello"
        sender = threading.Thread(target=conn.send_many, args=(messages,))
        sender.start()
        try:
            replies = [conn.recv() for _ in messages]
        finally:
            sender.join(TIMEOUT)
        assert not sender.is_alive()
        assert replies == messages
        assert conn.request(BIG) == BIG
    # With workers, counters arrive in reports: wait for the final figures.
    wait_until(lambda: server.stats.messages_in == 5_002 and server.stats.active == 0, what="every message counted")
    assert (server.stats.errors, server.stats.handshake_errors) == (0, 0)


def test_the_asyncio_client_over_tls(serve: Serve, pki: Pki) -> None:
    server = serve(echo, tls=pki.server)
    messages = [b"m%d" % i for i in range(5_000)]

    async def main() -> None:
        conn = await aio.connect(server.address, tls=pki.client, timeout=TIMEOUT)
        async with conn:
            assert await conn.request(b"hello") == b"hello"
            await conn.send_many(messages)
            assert [await conn.recv() for _ in messages] == messages
            assert await conn.request(BIG) == BIG

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    wait_until(lambda: server.stats.messages_in == 5_002 and server.stats.active == 0, what="every message counted")
    assert (server.stats.errors, server.stats.handshake_errors) == (0, 0)


def test_one_thread_receives_while_another_sends_on_one_tls_connection(serve: Serve, pki: Pki) -> None:
    """Full duplex over TLS: encryption in one thread, decryption in another, nothing corrupted."""
    server = serve(upper, tls=pki.server)
    messages = [b"duplex message %d" % i for i in range(2_000)]
    replies: list[bytes] = []
    failures: list[BaseException] = []
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:

        def receive() -> None:
            try:
                replies.extend(conn.recv() for _ in messages)
            except BaseException as exc:
                failures.append(exc)

        receiver = threading.Thread(target=receive)
        receiver.start()
        try:
            for message in messages:
                conn.send(message)
        finally:
            receiver.join(TIMEOUT)
    assert not receiver.is_alive()
    assert not failures
    assert replies == [m.upper() for m in messages]


def test_tls_through_a_proxy_that_fragments_to_one_byte_both_ways(serve: Serve, pki: Pki) -> None:
    """Every handshake record arrives a byte at a time: the select engine's non-blocking handshake resumes each time."""
    from connecteur.tools.proxy import Proxy

    server = serve(upper, tls=pki.server)
    messages = [b"", b"x", b"fragmented over TLS", bytes(range(256))]
    with (
        Proxy(server.address, fragment=1) as proxy,
        connect(proxy.address, tls=pki.client, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()  # close_notify, then FIN, a byte at a time too
        assert list(conn) == [m.upper() for m in messages]
    wait_until(lambda: server.stats.messages_in == 4 and server.stats.active == 0, what="every message counted")
    assert (server.stats.errors, server.stats.handshake_errors) == (0, 0)


def test_tls_half_close_the_server_answers_everything(serve: Serve, pki: Pki) -> None:
    server = serve(upper, tls=pki.server)
    messages = [b"request %d" % i for i in range(300)]
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        conn.shutdown_write()  # TLS close_notify: "I have finished sending"
        with pytest.raises(ConnectionClosed):
            conn.send(b"too late")
        assert list(conn) == [m.upper() for m in messages]
    wait_until(lambda: server.stats.messages_in == 300 and server.stats.active == 0, what="every message counted")
    assert server.stats.errors == 0


def test_graceful_stop_answers_what_was_received_before_a_tls_half_close(engine: str, pki: Pki) -> None:
    def slow_upper(message: bytes) -> bytes:
        time.sleep(0.002)
        return message.upper()

    server = Server(slow_upper, "127.0.0.1:0", tls=pki.server, **engine_options(engine))
    server.start()
    try:
        messages = [b"request %d" % i for i in range(100)]
        with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:
            conn.send_many(messages)
            conn.shutdown_write()
            stopper = threading.Thread(target=server.stop, kwargs={"timeout": TIMEOUT})
            stopper.start()
            replies = list(conn)
            stopper.join(TIMEOUT)
        assert replies == [m.upper() for m in messages]
        assert not stopper.is_alive()
        with pytest.raises(OSError):
            connect(server.address, tls=pki.client, timeout=TIMEOUT).close()
    finally:
        server.stop(timeout=1.0)


def test_unix_socket_with_tls(serve: Serve, pki: Pki, tmp_path: Path) -> None:
    server = serve(upper, f"unix:{tmp_path}/tls.sock", tls=pki.server)
    with connect(server.address, tls=pki.client, server_hostname="localhost", timeout=TIMEOUT) as conn:
        assert conn.request(b"unix over tls") == b"UNIX OVER TLS"


def test_ipv6_loopback_with_tls(serve: Serve, pki: Pki) -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        server = serve(upper, "[::1]:0", tls=pki.server)
    except OSError as exc:
        pytest.skip(f"cannot listen on [::1]: {exc}")
    with connect(server.address, tls=pki.client, timeout=TIMEOUT) as conn:  # the certificate names ::1
        assert conn.request(b"six") == b"SIX"


# --- handshakes that fail ----------------------------------------------------------------


def test_a_client_that_does_not_trust_the_certificate_fails_and_the_handler_sees_nothing(
    serve: Serve, pki: Pki, journal: Journal
) -> None:
    server = serve(Witness(journal), tls=pki.server)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(server.address, tls=pki.stranger, timeout=TIMEOUT)
    wait_for_one_handshake_error(server)
    only_the_good_client_reached(journal, server, pki)


def test_a_certificate_for_another_host_name_fails(serve: Serve, pki: Pki, journal: Journal) -> None:
    server = serve(Witness(journal), tls=pki.server)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"example\.com"):
        connect(server.address, tls=pki.client, server_hostname="example.com", timeout=TIMEOUT)
    wait_for_one_handshake_error(server)
    only_the_good_client_reached(journal, server, pki)


def test_a_plain_client_against_a_tls_server_is_closed(serve: Serve, pki: Pki, journal: Journal) -> None:
    server = serve(Witness(journal), tls=pki.server)
    with connect(server.address, timeout=TIMEOUT) as conn:
        conn.send(b"plain text, which is no TLS record")
        started = time.monotonic()
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            conn.recv()
        assert time.monotonic() - started < TIMEOUT / 2  # closed at once, not at the handshake timeout
    wait_for_one_handshake_error(server)
    only_the_good_client_reached(journal, server, pki)


def test_a_tls_client_against_a_plain_server_gets_a_clear_error(serve: Serve, pki: Pki) -> None:
    server = serve(echo)
    started = time.monotonic()
    with pytest.raises((ConnectionClosed, ssl.SSLError)) as caught:
        connect(server.address, tls=pki.client, timeout=TIMEOUT, handshake_timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT / 2  # the server closed: no wait for a timeout
    if isinstance(caught.value, ConnectionClosed):
        assert "TLS handshake" in str(caught.value)
    with connect(server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"still serving") == b"still serving"
    wait_until(lambda: server.stats.errors == 1 and server.stats.active == 0, what="the ClientHello refused")


def test_a_silent_client_is_closed_at_the_handshake_timeout(
    engine: str, serve: Serve, pki: Pki, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Witness(journal), tls=pki.server, handshake_timeout=0.3)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with raw_client(server) as sock:
            peer = format_address(sock.getsockname())
            started = time.monotonic()
            assert recv_until_closed(sock) == b""  # a TLS server waits for the ClientHello: it sent nothing
            elapsed = time.monotonic() - started
        wait_for_one_handshake_error(server)
    assert 0.25 < elapsed < 0.3 + TIMEOUT / 5
    only_the_good_client_reached(journal, server, pki)
    if logs_reach_caplog(engine):
        lines = [r.getMessage() for r in caplog.records if peer in r.getMessage()]
        assert len(lines) == 1, lines
        assert "TLS handshake" in lines[0]


def test_a_failed_handshake_is_logged_on_one_line(
    engine: str, serve: Serve, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    if not logs_reach_caplog(engine):
        pytest.skip("connections are served in forked children: their log records do not reach caplog")
    server = serve(echo, tls=pki.server)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with raw_client(server) as sock:
            peer = format_address(sock.getsockname())
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            recv_until_closed(sock)
        wait_for_one_handshake_error(server)
    lines = [r for r in caplog.records if peer in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING and not lines[0].exc_info
