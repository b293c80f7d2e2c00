"""The PROXY protocol on every engine: who the client really is, behind a balancer.

A raw socket plays the balancer: it writes a header made by `encode_v1` or
`encode_v2`, then framed messages, in one write or one byte per send. The
handler writes what it sees (`peer.address`, `peer.proxy_address`, each
message) to a `Journal`, a file, so forked children can write it too. A bad,
missing, stalled or untrusted header closes the connection, counts it in
`stats.handshake_errors`, and never reaches the handler, while other clients
are still served.
"""

from __future__ import annotations

import ast
import logging
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connecteur import Peer, Server
from connecteur.framing import LengthPrefixed
from connecteur.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2
from connecteur.tools.apps import echo
from tests.engines.conftest import engine_options, engine_per_family, spread_over_families
from tests.engines.test_contract import Journal, reset
from tests.support import TIMEOUT, one_byte_at_a_time, recv_until_closed, wait_until

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]

FRAMING = LengthPrefixed()
CLIENT = ("192.0.2.1", 56324)
"""The original client a header names (TEST-NET-1)."""
FRONTEND = ("198.51.100.7", 443)
"""The address that client connected to on the balancer (TEST-NET-2)."""
TRUSTED = ["127.0.0.1/32"]
LONG = 2 * TIMEOUT
"""A handshake timeout no test waits for: a close before it is the server's decision, not its timer."""


class Witness:
    """A handler that journals every hook call and echoes each message."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def connected(self, peer: Peer) -> None:
        self.journal.write(repr(("connected", peer.address, peer.proxy_address)))

    def received(self, peer: Peer, message: bytes) -> bytes:
        self.journal.write(repr(("received", message)))
        return message

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        self.journal.write(repr(("closed",)))


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "events")


def events(journal: Journal) -> list[tuple[object, ...]]:
    return [ast.literal_eval(line) for line in journal.events()]


def frames(*messages: bytes) -> bytes:
    return b"".join(FRAMING.encode(m) for m in messages)


def balancer(address: tuple[str, int] | str, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A raw client, with Nagle off so that each send is its own segment."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(sock: socket.socket, wire: bytes, cut: str) -> None:
    if cut == "one write":
        sock.sendall(wire)
    else:
        for piece in one_byte_at_a_time(wire):
            sock.sendall(piece)


def exchange(sock: socket.socket, wire: bytes, cut: str = "one write") -> bytes:
    """Send `wire`, half-close, and return everything the server sent back before closing."""
    send(sock, wire, cut)
    sock.shutdown(socket.SHUT_WR)
    return recv_until_closed(sock)


def served_once(journal: Journal, address: object, proxy_address: object, *messages: bytes) -> None:
    """Wait for one whole connection in the journal, and check what the handler saw."""
    wait_until(lambda: len(journal.events()) == len(messages) + 2, what="the connection's hooks")
    assert events(journal) == [
        ("connected", address, proxy_address),
        *[("received", m) for m in messages],
        ("closed",),
    ]


def header_for(mode: str) -> bytes:
    """A proper header for a server expecting `mode`."""
    return encode_v1(CLIENT, FRONTEND) if mode == "v1" else encode_v2(CLIENT, FRONTEND)


def good_client_is_served(server: Server, journal: Journal, mode: str = "auto") -> None:
    """A balancer that sends a proper header is served, and is the only peer the handler ever saw."""
    with balancer(server.address) as sock:
        assert exchange(sock, header_for(mode) + frames(b"good")) == frames(b"good")
        served_once(journal, CLIENT, sock.getsockname(), b"good")


def refused_before_the_handler(server: Server, count: int = 1, *, still_open: int = 0) -> None:
    wait_until(
        lambda: server.stats.handshake_errors == count and server.stats.active == still_open,
        what=f"{count} handshake error(s) counted",
    )


# --- the header is read, and the bytes after it are the framing's -------------------------

HEADERS = {
    "v1": ("v1", encode_v1(CLIENT, FRONTEND)),
    "v2": ("v2", encode_v2(CLIENT, FRONTEND)),
    "v2 with TLVs": ("v2", encode_v2(CLIENT, FRONTEND, tlvs=[(0x02, b"example.com"), (0x04, bytes(5))])),
}


@pytest.mark.parametrize(
    ("form", "engine"),
    # Cut-major, so that the byte-at-a-time cases meet select, threads (whose
    # blocking loop processes shares) and asyncio.
    spread_over_families([(kind, cut) for cut in ("one write", "one byte per send") for kind in HEADERS]),
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
)
def test_the_handler_sees_the_client_the_header_names(serve: Serve, journal: Journal, form: tuple[str, str]) -> None:
    kind, cut = form
    mode, header = HEADERS[kind]
    server = serve(Witness(journal), proxy_protocol=mode, proxy_trusted=TRUSTED)
    messages = (b"first, in the header's segment", b"", b"third")
    with balancer(server.address) as sock:
        assert exchange(sock, header + frames(*messages), cut) == frames(*messages)
        served_once(journal, CLIENT, sock.getsockname(), *messages)
    wait_until(lambda: server.stats.messages_out == 3, what="the replies counted")
    stats = server.stats
    assert (stats.accepted, stats.messages_in, stats.errors, stats.handshake_errors) == (1, 3, 0, 0)
    assert stats.bytes_in == len(frames(*messages))  # the header is not application data


def test_auto_takes_both_versions(serve: Serve, journal: Journal) -> None:
    server = serve(Witness(journal), proxy_protocol="auto", proxy_trusted=TRUSTED)
    v1_client, v2_client = ("192.0.2.1", 1111), ("192.0.2.2", 2222)
    for source, header in ((v1_client, encode_v1(v1_client, FRONTEND)), (v2_client, encode_v2(v2_client, FRONTEND))):
        journal.path.write_text("")
        with balancer(server.address) as sock:
            assert exchange(sock, header + frames(b"hello")) == frames(b"hello")
            served_once(journal, source, sock.getsockname(), b"hello")
    assert server.stats.handshake_errors == 0


@pytest.mark.parametrize(
    "header",
    [encode_v1(("2001:db8::1", 40000), ("2001:db8::2", 443)), encode_v2(("2001:db8::1", 40000), ("2001:db8::2", 443))],
    ids=["v1 TCP6", "v2 INET6"],
)
def test_an_ipv6_client_behind_an_ipv4_balancer(serve: Serve, journal: Journal, header: bytes) -> None:
    server = serve(Witness(journal), proxy_protocol="auto", proxy_trusted=TRUSTED)
    with balancer(server.address) as sock:
        assert exchange(sock, header + frames(b"six")) == frames(b"six")
        served_once(journal, ("2001:db8::1", 40000), sock.getsockname(), b"six")


LOCAL_HEADERS = {
    "v2 LOCAL": ("v2", encode_v2(None, None, local=True)),
    "v2 PROXY UNSPEC": ("v2", encode_v2(None, None)),
    "v1 UNKNOWN": ("v1", encode_v1(None, None)),
}


@pytest.mark.parametrize(("kind", "engine"), spread_over_families(LOCAL_HEADERS))
def test_a_health_check_keeps_the_sockets_own_address(serve: Serve, journal: Journal, kind: str) -> None:
    """HAProxy's checks send LOCAL: the connection is the balancer's own, and is served as such."""
    mode, header = LOCAL_HEADERS[kind]
    server = serve(Witness(journal), proxy_protocol=mode, proxy_trusted=TRUSTED)
    with balancer(server.address) as sock:
        assert exchange(sock, header + frames(b"ping")) == frames(b"ping")
        served_once(journal, sock.getsockname(), None, b"ping")
    assert server.stats.handshake_errors == 0


def test_a_health_check_that_sends_only_local_and_leaves(serve: Serve, journal: Journal) -> None:
    """What HAProxy's plain TCP check does: a LOCAL header, then the close, and no message."""
    server = serve(Witness(journal), proxy_protocol="v2", proxy_trusted=TRUSTED)
    with balancer(server.address) as sock:
        assert exchange(sock, encode_v2(None, None, local=True)) == b""
        served_once(journal, sock.getsockname(), None)
    wait_until(lambda: server.stats.active == 0, what="the check's connection closed")
    assert (server.stats.errors, server.stats.handshake_errors) == (0, 0)


def test_a_health_check_that_resets_after_local_is_no_handshake_error(serve: Serve, journal: Journal) -> None:
    """HAProxy's check exactly: a LOCAL header, then a reset (SO_LINGER 0), often before the server reads.

    The header was whole and valid: the reset is a connection error, not a handshake error.
    """
    server = serve(Witness(journal), proxy_protocol="v2", proxy_trusted=TRUSTED)
    sock = balancer(server.address)
    own_address = sock.getsockname()
    sock.sendall(encode_v2(None, None, local=True))
    reset(sock)
    wait_until(lambda: server.stats.accepted == 1 and server.stats.active == 0, what="the check's connection closed")
    stats = server.stats
    assert (stats.errors, stats.handshake_errors) == (1, 0)
    # Whether the header was read before the reset is the kernel's race: if it
    # was, the handler saw the check come and go; if not, it saw nothing.
    seen = events(journal)
    assert seen in ([("connected", own_address, None), ("closed",)], []), seen


# --- what is refused: closed, counted, never seen by the handler ----------------------------

REFUSED = {
    "v2 header, v1 expected": ("v1", encode_v2(CLIENT, FRONTEND) + frames(b"hi")),
    "v1 header, v2 expected": ("v2", encode_v1(CLIENT, FRONTEND) + frames(b"hi")),
    "v1 address not an IP": ("auto", b"PROXY TCP4 192.0.2.one 198.51.100.7 56324 443\r\n" + frames(b"hi")),
    "v1 bare LF": ("v1", b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n" + frames(b"hi")),
    "v1 line over 107 bytes": ("v1", b"PROXY UNKNOWN " + b"x" * 100),
    "v2 command 2": ("v2", V2_SIGNATURE + struct.pack("!BBH", 0x22, 0x11, 12) + bytes(12) + frames(b"hi")),
    "v2 short address block": ("v2", V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x21, 12) + bytes(12)),
    "v2 length over max_size": ("v2", V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 0xFFFF)),
    "missing header": ("auto", frames(b"a framed message, no header")),
}


@pytest.mark.parametrize(("case", "engine"), spread_over_families(REFUSED))
def test_a_bad_or_missing_header_closes_only_that_connection(serve: Serve, journal: Journal, case: str) -> None:
    mode, wire = REFUSED[case]
    server = serve(Witness(journal), proxy_protocol=mode, proxy_trusted=TRUSTED, handshake_timeout=LONG)
    with balancer(server.address) as bystander_sock:
        bystander_sock.sendall(header_for(mode))  # a connection already open stays served
        with balancer(server.address) as sock:
            sock.sendall(wire)  # no half-close: the server decides from these bytes alone, at once
            assert recv_until_closed(sock) == b""
        refused_before_the_handler(server, still_open=1)
        assert exchange(bystander_sock, frames(b"still here")) == frames(b"still here")
        served_once(journal, CLIENT, bystander_sock.getsockname(), b"still here")
    journal.path.write_text("")
    good_client_is_served(server, journal, mode)
    assert (server.stats.errors, server.stats.handshake_errors) == (1, 1)


def test_a_header_not_complete_in_time_is_closed(serve: Serve, journal: Journal) -> None:
    """Three stalled balancers at once: silent, half a v1 line, half a v2 address block."""
    server = serve(Witness(journal), proxy_protocol="auto", proxy_trusted=TRUSTED, handshake_timeout=0.3)
    stalls = [b"", b"PROXY TCP4 192.0.2.1 ", V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 12) + bytes(4)]
    started = time.monotonic()
    stalled = [balancer(server.address) for _ in stalls]
    try:
        for sock, wire in zip(stalled, stalls, strict=True):
            for piece in one_byte_at_a_time(wire):
                sock.sendall(piece)
        good_client_is_served(server, journal)  # while the three wait for their timeout
        for sock in stalled:
            assert recv_until_closed(sock) == b""
        assert time.monotonic() - started > 0.2
    finally:
        for sock in stalled:
            sock.close()
    refused_before_the_handler(server, 3)
    assert server.stats.errors == 3
    assert len(events(journal)) == 3  # the good client's connected, received, closed


def test_an_untrusted_source_is_closed_at_once(
    engine: str, serve: Serve, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(Witness(journal), proxy_protocol="v2", proxy_trusted=["10.0.0.0/8"], handshake_timeout=LONG)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with balancer(server.address) as sock:
            assert recv_until_closed(sock) == b""  # closed before it could send a header
        refused_before_the_handler(server)
    stats = server.stats
    assert (stats.accepted, stats.errors) == (0, 0)  # never admitted
    assert journal.events() == []
    if engine != "processes" and "*" not in engine:  # with workers, the refusal is logged in a child
        assert any("not in proxy_trusted" in r.getMessage() for r in caplog.records)


def test_only_the_trusted_source_may_send_a_header(serve: Serve, journal: Journal) -> None:
    """127.0.0.2 is trusted, 127.0.0.1 is not: both reach the same listening socket."""
    server = serve(Witness(journal), proxy_protocol="v2", proxy_trusted=["127.0.0.2/32"], handshake_timeout=LONG)
    trusted = socket.socket()
    try:
        try:
            trusted.bind(("127.0.0.2", 0))
        except OSError as exc:
            pytest.skip(f"cannot bind 127.0.0.2 on this machine: {exc}")
        trusted.settimeout(TIMEOUT)
        trusted.connect(server.address)
        with balancer(server.address) as untrusted:
            untrusted.sendall(encode_v2(CLIENT, FRONTEND) + frames(b"let me in"))
            assert recv_until_closed(untrusted) == b""
        refused_before_the_handler(server, still_open=1)
        assert exchange(trusted, encode_v2(CLIENT, FRONTEND) + frames(b"trusted")) == frames(b"trusted")
        served_once(journal, CLIENT, trusted.getsockname(), b"trusted")
    finally:
        trusted.close()
    assert server.stats.accepted == 1


# --- Unix sockets -----------------------------------------------------------------------------


def unix_path(server: Server) -> str:
    path = server.address
    assert isinstance(path, str) and path.startswith("unix:")
    return path.removeprefix("unix:")


def test_a_unix_socket_balancer_is_trusted_by_unix(serve: Serve, journal: Journal, tmp_path: Path) -> None:
    server = serve(Witness(journal), f"unix:{tmp_path}/server.sock", proxy_protocol="v2", proxy_trusted=["unix"])
    client_path = f"{tmp_path}/balancer.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(client_path)  # named, so that the server sees a path as the balancer's address
        sock.settimeout(TIMEOUT)
        sock.connect(unix_path(server))
        assert exchange(sock, encode_v2(CLIENT, FRONTEND) + frames(b"unix")) == frames(b"unix")
    served_once(journal, CLIENT, client_path, b"unix")


def test_a_unix_path_in_the_header(serve: Serve, journal: Journal, tmp_path: Path) -> None:
    server = serve(Witness(journal), f"unix:{tmp_path}/server.sock", proxy_protocol="v2", proxy_trusted=["unix"])
    with balancer(unix_path(server), socket.AF_UNIX) as sock:
        header = encode_v2("/run/app/client.sock", "/run/lb/frontend.sock")
        assert exchange(sock, header + frames(b"path")) == frames(b"path")
    served_once(journal, "/run/app/client.sock", "", b"path")  # "": the balancer's socket is unnamed


def test_a_unix_socket_peer_is_untrusted_without_unix(serve: Serve, journal: Journal, tmp_path: Path) -> None:
    server = serve(
        Witness(journal),
        f"unix:{tmp_path}/server.sock",
        proxy_protocol="v2",
        proxy_trusted=TRUSTED,
        handshake_timeout=LONG,
    )
    with balancer(unix_path(server), socket.AF_UNIX) as sock:
        assert recv_until_closed(sock) == b""
    refused_before_the_handler(server)
    assert journal.events() == []


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"proxy_protocol": "v2"}, "proxy_trusted"),
        ({"proxy_protocol": "auto", "proxy_trusted": []}, "proxy_trusted"),
        ({"proxy_protocol": "v3", "proxy_trusted": TRUSTED}, "proxy_protocol"),
        ({"proxy_protocol": "v1", "proxy_trusted": ["10.0.0.0/33"]}, "proxy_trusted"),
    ],
    ids=["no proxy_trusted", "empty proxy_trusted", "unknown version", "bad network"],
)
def test_a_proxy_protocol_without_a_sane_trust_list_is_refused(
    engine: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Server(echo, "127.0.0.1:0", **engine_options(engine), **options)  # type: ignore[arg-type]
