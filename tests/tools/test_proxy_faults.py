"""The proxy's Toxiproxy-parity faults against plain sockets: slow_close, timeout, reset_after, slicer, toxicity."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

import connecteur
from connecteur.tools.apps import echo
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT, recv_until_closed, wait_until
from tests.tools.test_proxy import RawServer, raw_client, read_until_eof


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def ending(conn: socket.socket) -> tuple[str, bytes]:
    """Read to the end: ("eof" or "reset", the bytes read)."""
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except ConnectionResetError:
        return "reset", data
    return "eof", data


def echo_until_closed(conn: socket.socket) -> tuple[str, bytes]:
    """Echo each read back; at the end, say how it ended and what came."""
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
            conn.sendall(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return "reset", data
    return "eof", data


# --- slow_close ----------------------------------------------------------------------


def test_slow_close_holds_the_half_close_and_the_reply_still_flows() -> None:
    """upstream slow_close=0.5: the target gets the bytes at once, the EOF later; its reply then reaches the client."""

    def answer_after_eof(conn: socket.socket) -> str:
        assert recv_exactly(conn, 5) == b"hello"
        conn.settimeout(0.1)  # the EOF is due 0.5 s after it came: still held now
        try:
            early = conn.recv(1)
        except TimeoutError:
            early = None
        conn.settimeout(TIMEOUT)
        assert early is None, f"the EOF was not held: recv gave {early!r}"
        assert conn.recv(1) == b""  # then it comes
        conn.sendall(b"reply")
        return "ok"

    with (
        RawServer(answer_after_eof) as raw,
        Proxy(raw.address, upstream=Faults(slow_close=0.5), downstream=Faults()) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)
        assert recv_until_closed(client) == b"reply"  # the half-close stayed a half-close
        assert raw.result() == "ok"


def test_slow_close_holds_a_close_then_forwards_it() -> None:
    """downstream slow_close: the target's reply arrives at once, its close only later."""

    def reply_and_close(conn: socket.socket) -> None:
        conn.sendall(b"bye")

    with (
        RawServer(reply_and_close) as raw,
        Proxy(raw.address, downstream=Faults(slow_close=0.5)) as proxy,
        raw_client(proxy) as client,
    ):
        assert recv_exactly(client, 3) == b"bye"
        raw.result()
        client.settimeout(0.1)
        with pytest.raises(TimeoutError):  # closed by the target, not yet by the proxy
            client.recv(1)
        client.settimeout(TIMEOUT)
        assert client.recv(1) == b""


# --- timeout -------------------------------------------------------------------------


@pytest.mark.parametrize(("reset", "expected"), [(False, "eof"), (True, "reset")])
def test_timeout_holds_every_byte_then_closes_both_sides(reset: bool, expected: str) -> None:
    """timeout=0.3: nothing the client sends reaches the target, then both sides are closed (RST with reset)."""
    with (
        RawServer(ending) as raw,
        Proxy(raw.address, timeout=0.3, reset=reset) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"never delivered")
        assert ending(client) == (expected, b"")
        assert raw.result() == (expected, b"")
        wait_until(lambda: proxy.active == 0, what="the relay to close")


def test_timeout_zero_holds_until_lifted_and_never_closes() -> None:
    """timeout=0: bytes are held on an open connection; lifting the fault delivers them, in order."""
    with (
        RawServer(echo_until_closed) as raw,
        Proxy(raw.address, upstream=Faults(timeout=0), downstream=Faults()) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"held")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no echo: the bytes never left the proxy
            client.recv(4)
        assert proxy.active == 1
        proxy.set_faults(Faults())
        client.settimeout(TIMEOUT)
        assert recv_exactly(client, 4) == b"held"
        client.shutdown(socket.SHUT_WR)
        assert recv_until_closed(client) == b""
        assert raw.result() == ("eof", b"held")


def test_timeout_set_on_an_open_connection_counts_from_then() -> None:
    """A timeout added while a connection is open holds its next bytes, then closes it."""
    with RawServer(echo_until_closed) as raw, Proxy(raw.address) as proxy, raw_client(proxy) as client:
        client.sendall(b"one")
        assert recv_exactly(client, 3) == b"one"
        proxy.set_faults(Faults(timeout=0.2))
        client.sendall(b"two")
        assert ending(client) == ("eof", b"")
        assert raw.result() == ("eof", b"one")


# --- reset_after ---------------------------------------------------------------------


def test_reset_after_resets_an_idle_connection() -> None:
    """reset_after=0.2, no byte sent: both sides get a reset."""
    with RawServer(ending) as raw, Proxy(raw.address, reset_after=0.2) as proxy, raw_client(proxy) as client:
        assert ending(client) == ("reset", b"")
        assert raw.result() == ("reset", b"")


def test_reset_after_resets_a_busy_connection_and_not_before() -> None:
    """Bytes flow normally until the time comes; then the client sees ConnectionResetError."""
    with (
        RawServer(echo_until_closed) as raw,
        Proxy(raw.address, reset_after=0.5) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
        assert raw.result() == ("reset", b"ping")


def test_reset_after_one_direction_resets_a_half_closed_connection() -> None:
    """Only upstream has reset_after, and the client half-closed it at once: the relay is reset all the same."""

    def talk_after_eof(conn: socket.socket) -> str:
        assert conn.recv(1) == b""  # the client's half-close
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # keep talking until the reset
            try:
                conn.sendall(b"x")
            except (ConnectionResetError, BrokenPipeError):
                return "reset"
            time.sleep(0.02)
        return "never reset"

    with (
        RawServer(talk_after_eof) as raw,
        Proxy(raw.address, upstream=Faults(reset_after=0.3), downstream=Faults()) as proxy,
        raw_client(proxy) as client,
    ):
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
        assert raw.result() == "reset"


# --- slicer --------------------------------------------------------------------------


def test_fragment_delay_spaces_the_slices() -> None:
    """fragment=1 with 30 ms between slices: 10 bytes take at least the 9 gaps, and arrive intact.

    A lower bound only: a busy machine makes it longer, never shorter.
    """
    with (
        RawServer(read_until_eof) as raw,
        Proxy(raw.address, fragment=1, fragment_delay=0.03) as proxy,
        raw_client(proxy) as client,
    ):
        start = time.monotonic()
        client.sendall(b"0123456789")
        client.shutdown(socket.SHUT_WR)
        calls, data = raw.result()
        elapsed = time.monotonic() - start
    assert data == b"0123456789"
    assert calls > 1
    assert elapsed >= 9 * 0.03 * 0.9


def test_fragment_variation_keeps_the_stream_intact(server: connecteur.Server) -> None:
    """Slices of 5 ± 3 bytes (seeded), messages both ways come back whole."""
    with (
        Proxy(server.address, fragment=5, fragment_variation=3, seed=11) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        for message in (b"", b"a", b"x" * 100):
            assert conn.request(message) == message


@pytest.mark.parametrize(
    "faults",
    [{"fragment_delay": 0.1}, {"fragment_variation": 2}, {"fragment": 3, "fragment_variation": 3},
     {"fragment": 5, "fragment_variation": 1, "fragment_random": True}, {"toxicity": 1.5}, {"toxicity": -0.1},
     {"slow_close": -1}, {"timeout": -0.5}, {"reset_after": float("nan")}, {"toxicity": True}],
)  # fmt: skip
def test_impossible_new_faults_are_value_errors(faults: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Faults(**faults)  # type: ignore[arg-type]


# --- toxicity ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[connecteur.Server]:
    with connecteur.Server(echo, "127.0.0.1:0") as server:
        yield server


def faulted_pattern(server: connecteur.Server, toxicity: float, seed: int, count: int = 16) -> list[bool]:
    """Which of `count` connections, one after another, were reset at once (reset_after=0)."""
    pattern = []
    with Proxy(server.address, reset_after=0, toxicity=toxicity, seed=seed) as proxy:
        for _ in range(count):
            try:  # the reset may come before connect() returns
                with connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
                    pattern.append(conn.request(b"?") != b"?")
            except ConnectionError:
                pattern.append(True)
    return pattern


def test_toxicity_faults_a_seeded_fraction_of_connections(server: connecteur.Server) -> None:
    """toxicity=0.5 faults some connections and spares others; the same seed, the same ones."""
    pattern = faulted_pattern(server, 0.5, seed=4)
    assert 0 < sum(pattern) < len(pattern)
    assert faulted_pattern(server, 0.5, seed=4) == pattern


@pytest.mark.parametrize(("toxicity", "faulted"), [(0.0, False), (1.0, True)])
def test_toxicity_zero_and_one(server: connecteur.Server, toxicity: float, faulted: bool) -> None:
    assert faulted_pattern(server, toxicity, seed=1, count=4) == [faulted] * 4


def test_toxicity_draw_is_kept_when_the_faults_change(server: connecteur.Server) -> None:
    """A connection spared at toxicity 0 is faulted once toxicity rises to 1 (its draw is below 1)."""
    with (
        Proxy(server.address, downstream=Faults(toxicity=0.0, cut_after=0)) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        assert conn.request(b"spared") == b"spared"
        proxy.set_faults(downstream=Faults(toxicity=1.0, cut_after=0))
        wait_until(lambda: proxy.active == 0, what="the cut")
