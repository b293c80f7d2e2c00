"""The fault-injection proxy, over real loopback sockets, against our server and plain sockets."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Generic, Self, TypeVar

import pytest

import connecteur
from connecteur.framing import LengthPrefixed
from connecteur.tools.apps import echo
from connecteur.tools.proxy import Faults, Proxy
from tests.support import TIMEOUT, recv_until_closed, wait_until

COMMAND = [sys.executable, "-m", "connecteur"]
FRAMING = LengthPrefixed()
T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[connecteur.Server]:
    with connecteur.Server(echo, "127.0.0.1:0") as server:
        yield server


class RawServer(Generic[T]):
    """A plain listening socket; the first connection runs `behaviour` in a thread.

    `result()` joins the thread and returns what `behaviour` returned (or raises what it raised).
    """

    def __init__(self, behaviour: Callable[[socket.socket], T]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.address: tuple[str, int] = self.listener.getsockname()
        self._behaviour = behaviour
        self._accepted = False
        self._outcome: list[T | BaseException] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self._outcome.append(exc)
            return
        self._accepted = True
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                self._outcome.append(self._behaviour(conn))
            except BaseException as exc:
                self._outcome.append(exc)

    def result(self) -> T:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the raw server's connection never ended"
        (outcome,) = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._accepted:
            with contextlib.suppress(OSError):  # unblock accept() at once
                socket.create_connection(self.address, timeout=TIMEOUT).close()
        self._thread.join(TIMEOUT)
        self.listener.close()


def raw_client(proxy: Proxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=TIMEOUT)


def read_until_eof(conn: socket.socket) -> tuple[int, bytes]:
    """How many recv() calls it took to read everything until EOF, and the bytes."""
    calls, chunks = 0, []
    while chunk := conn.recv(65536):
        calls += 1
        chunks.append(chunk)
    return calls, b"".join(chunks)


def timed_request(conn: connecteur.Connection, message: bytes) -> float:
    start = time.monotonic()
    assert conn.request(message) == message
    return time.monotonic() - start


# --- plain relaying ------------------------------------------------------------------


def test_relays_messages_both_ways_to_a_connecteur_server(server: connecteur.Server) -> None:
    """Without faults, requests and replies cross unchanged, large ones included."""
    with Proxy(server.address) as proxy, connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"hello") == b"hello"
        assert proxy.active == 1
        assert conn.request(b"") == b""
        big = os.urandom(3 * 2**20)  # more than the queue bound: backpressure and partial sends
        assert conn.request(big) == big
    assert proxy.active == 0


def test_relays_raw_bytes_to_a_plain_socket_server() -> None:
    """Any TCP program: the target reads to EOF, answers, closes; the client sees it all."""

    def reverse(conn: socket.socket) -> bytes:
        _, data = read_until_eof(conn)
        conn.sendall(data[::-1])
        return data

    payload = os.urandom(100_000)
    with RawServer(reverse) as raw, Proxy(raw.address) as proxy, raw_client(proxy) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        assert recv_until_closed(client) == payload[::-1]
        assert raw.result() == payload


def test_relays_to_a_unix_socket_target(tmp_path: Path) -> None:
    """The target may be a Unix socket; the proxy listens on TCP."""
    with (
        connecteur.Server(echo, f"unix:{tmp_path}/target.sock", engine="threads") as server,
        Proxy(server.address, fragment=3) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        assert conn.request(b"over unix") == b"over unix"


# --- fragmentation -------------------------------------------------------------------


def test_fragment_one_reaches_the_target_in_many_small_reads() -> None:
    """fragment=1: the target's recv() calls outnumber the messages; every byte arrives, in order."""
    messages = [f"message {i:02}".encode() for i in range(10)]
    with (
        RawServer(read_until_eof) as raw,
        Proxy(raw.address, fragment=1) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()
        calls, data = raw.result()
    assert data == b"".join(FRAMING.encode(m) for m in messages)
    assert calls > len(messages)


def test_fragment_one_keeps_every_message_intact(server: connecteur.Server) -> None:
    """Through a one-byte-at-a-time pipe, both ways, LengthPrefixed messages come back whole."""
    with Proxy(server.address, fragment=1) as proxy, connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
        for message in (b"a", b"", b"x" * 300, bytes(range(256))):
            assert conn.request(message) == message


def test_fragment_random_keeps_every_message_intact(server: connecteur.Server) -> None:
    """Random piece sizes (seeded) split the stream anywhere; the framing copes."""
    messages = [os.urandom(size) for size in (0, 1, 7, 100, 5000)]
    with (
        Proxy(server.address, fragment=13, fragment_random=True, seed=7) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages * 3)
        assert [conn.recv() for _ in range(len(messages) * 3)] == messages * 3


def test_fragment_random_splits_the_stream_for_a_plain_target() -> None:
    """Random pieces of 1..5 bytes reach a plain target in several reads, every byte in order."""
    with (
        RawServer(read_until_eof) as raw,
        Proxy(raw.address, fragment=5, fragment_random=True) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"0123456789" * 20)
        client.shutdown(socket.SHUT_WR)
        calls, data = raw.result()
    assert data == b"0123456789" * 20
    assert calls > 1


# --- time: delay, jitter, bandwidth --------------------------------------------------


def test_delay_holds_each_direction(server: connecteur.Server) -> None:
    """delay=0.1: a round trip crosses the proxy twice, so it takes at least 0.2 s."""
    with Proxy(server.address, delay=0.1) as proxy, connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
        assert timed_request(conn, b"slow") >= 0.9 * 2 * 0.1


def test_jitter_never_reorders_bytes(server: connecteur.Server) -> None:
    """Chunks held for random times still leave in the order they came."""
    messages = [str(i).encode() for i in range(200)]
    with (
        Proxy(server.address, delay=0.01, jitter=0.01, fragment=50, seed=3) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        for message in messages:  # one by one, so that they are read as separate chunks
            conn.send(message)
        assert [conn.recv() for _ in messages] == messages


def test_bandwidth_paces_the_bytes(server: connecteur.Server) -> None:
    """1 MiB at 2 MiB/s upstream takes about half a second; the other direction is free."""
    big = os.urandom(2**20)
    with (
        Proxy(server.address, upstream=Faults(bandwidth=2 * 2**20), downstream=Faults()) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        assert timed_request(conn, big) >= 0.4


# --- cutting, resetting, blackholing -------------------------------------------------


def test_cut_after_closes_both_sides_after_exactly_that_many_bytes() -> None:
    """downstream cut_after=30: the client gets 30 bytes then EOF; the target sees EOF too."""

    def talk(conn: socket.socket) -> bytes:
        conn.sendall(bytes(range(100)))
        return conn.recv(100)  # b"" once the proxy cut

    with (
        RawServer(talk) as raw,
        Proxy(raw.address, downstream=Faults(cut_after=30)) as proxy,
        raw_client(proxy) as client,
    ):
        assert recv_until_closed(client) == bytes(range(30))
        assert raw.result() == b""
        wait_until(lambda: proxy.active == 0, what="the relay to close")


def test_cut_after_inside_a_message_is_a_truncated_message(server: connecteur.Server) -> None:
    """A cut inside a reply: the connecteur client raises TruncatedMessage."""
    with (
        Proxy(server.address, downstream=Faults(cut_after=10)) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
        pytest.raises(connecteur.TruncatedMessage),
    ):
        conn.request(b"y" * 20)


def test_cut_after_between_messages_is_connection_closed(server: connecteur.Server) -> None:
    """A cut right after a whole reply: the next request ends in ConnectionClosed (or a reset)."""
    with (
        Proxy(server.address, downstream=Faults(cut_after=len(FRAMING.encode(b"first")))) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        assert conn.request(b"first") == b"first"
        # EOF (ConnectionClosed), or a reset if "second" reached the closed socket first.
        with pytest.raises(ConnectionError):
            conn.request(b"second")


def test_reset_cuts_with_rst_on_both_sides() -> None:
    """upstream cut_after=5 with reset: the target reads 5 bytes then a reset; so does the client."""

    def read_to_the_end(conn: socket.socket) -> tuple[str, bytes]:
        data = b""
        try:
            while chunk := conn.recv(100):
                data += chunk
        except ConnectionResetError:
            return "reset", data
        return "eof", data

    with (
        RawServer(read_to_the_end) as raw,
        Proxy(raw.address, upstream=Faults(cut_after=5, reset=True)) as proxy,
        raw_client(proxy) as client,
    ):
        client.sendall(b"0123456789")
        assert raw.result() == ("reset", b"01234")
        with pytest.raises(ConnectionResetError):
            client.recv(100)


def test_reset_reaches_a_connecteur_client_as_connection_reset_error(server: connecteur.Server) -> None:
    """A cut with reset inside a reply: the connecteur client raises ConnectionResetError."""
    with (
        Proxy(server.address, downstream=Faults(cut_after=10, reset=True)) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
        pytest.raises(ConnectionResetError),
    ):
        conn.request(b"z" * 20)


def test_blackhole_after_leaves_the_client_waiting_on_an_open_connection(server: connecteur.Server) -> None:
    """After the first reply, nothing more comes back, yet nothing is closed: recv times out."""
    first = FRAMING.encode(b"first")
    with (
        Proxy(server.address, downstream=Faults(blackhole_after=len(first))) as proxy,
        connecteur.connect(proxy.address, timeout=0.3) as conn,
    ):
        assert conn.request(b"first") == b"first"
        conn.send(b"second")  # send, then recv: a recv timeout leaves the connection usable (request's would close it)
        with pytest.raises(connecteur.Timeout):
            conn.recv()
        assert proxy.active == 1 and server.stats.active == 1
        proxy.set_faults(Faults())  # the peer comes back: held bytes flow again
        assert conn.recv() == b"second"


# --- half-close ----------------------------------------------------------------------


def test_half_close_is_forwarded_and_the_replies_still_flow() -> None:
    """The client sends, half-closes, and reads every reply the target sends after seeing EOF."""
    messages = [f"question {i}".encode() for i in range(5)]

    def answer_after_eof(conn: socket.socket) -> None:
        decoder = FRAMING.decoder()
        received = [m for chunk in iter(lambda: conn.recv(65536), b"") for m in decoder.feed(chunk)]
        conn.sendall(b"".join(FRAMING.encode(m.upper()) for m in received))

    with (
        RawServer(answer_after_eof) as raw,
        Proxy(raw.address, delay=0.02) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()
        assert list(conn) == [m.upper() for m in messages]
        raw.result()


def test_half_close_keeps_delayed_replies_of_a_connecteur_server(server: connecteur.Server) -> None:
    """The client's EOF reaches the server while replies are still held downstream; none is lost."""
    messages = [f"m{i}".encode() for i in range(50)]
    with (
        Proxy(server.address, upstream=Faults(), downstream=Faults(delay=0.05)) as proxy,
        connecteur.connect(proxy.address, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()
        assert list(conn) == messages


# --- while running -------------------------------------------------------------------


def test_set_faults_applies_to_open_connections(server: connecteur.Server) -> None:
    """Faults changed while a connection is open apply to its next bytes: a delay, then a cut."""
    with Proxy(server.address) as proxy, connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
        assert timed_request(conn, b"fast") < 0.15
        proxy.set_faults(Faults(delay=0.1))
        assert proxy.upstream == proxy.downstream == Faults(delay=0.1)
        assert timed_request(conn, b"slow") >= 0.9 * 2 * 0.1
        proxy.set_faults(downstream=Faults(cut_after=0))
        assert proxy.upstream == Faults(delay=0.1)
        wait_until(lambda: proxy.active == 0, what="the cut")
        with pytest.raises(connecteur.ConnectionClosed):
            conn.recv()


def test_a_refused_target_closes_the_client() -> None:
    """The target refuses: the proxy closes the client with FIN, or with RST when reset is set."""
    with socket.socket() as probe:  # bound, not listening: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        with Proxy(probe.getsockname()) as proxy, raw_client(proxy) as client:
            assert client.recv(1) == b""  # a plain FIN
            wait_until(lambda: proxy.active == 0, what="the relay to close")
        with (
            Proxy(probe.getsockname(), reset=True) as proxy,
            pytest.raises(ConnectionResetError),  # from recv(), or even from connect(): the RST is quick
            raw_client(proxy) as client,
        ):
            client.recv(1)


def test_backpressure_stops_reading_a_client_whose_target_does_not_read() -> None:
    """A target that reads nothing: the client's sends block after a bounded amount, then all arrive."""
    may_read = threading.Event()

    def read_later(conn: socket.socket) -> int:
        assert may_read.wait(TIMEOUT)
        return len(read_until_eof(conn)[1])

    chunk, sent = b"b" * 2**16, 0
    with RawServer(read_later) as raw, Proxy(raw.address) as proxy, raw_client(proxy) as client:
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            while sent < 256 * 2**20:
                sent += client.send(chunk)
        assert sent < 256 * 2**20  # kernel buffers + the proxy's bound, not everything
        may_read.set()
        client.settimeout(TIMEOUT)
        client.shutdown(socket.SHUT_WR)
        assert raw.result() == sent


def test_stop_closes_every_connection_and_the_listener(server: connecteur.Server) -> None:
    """stop() closes relayed connections and the listener; address and start() guard misuse."""
    proxy = Proxy(server.address)
    with pytest.raises(RuntimeError):
        _ = proxy.address
    proxy.start()
    try:
        with pytest.raises(RuntimeError):
            proxy.start()
        with connecteur.connect(proxy.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"x") == b"x"
            proxy.stop()
            with pytest.raises(connecteur.ConnectionClosed):
                conn.recv()
        assert proxy.active == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=TIMEOUT).close()
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "faults",
    [{"fragment": 0}, {"delay": -1.0}, {"jitter": math.nan}, {"delay": math.inf}, {"fragment_random": True},
     {"bandwidth": 0}, {"cut_after": -1}, {"blackhole_after": 1.5}, {"fragment": True}],
)  # fmt: skip
def test_impossible_faults_are_value_errors(faults: dict[str, object]) -> None:
    """Impossible faults fail at once, whether given as Faults or as Proxy keywords."""
    with pytest.raises(ValueError):
        Faults(**faults)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Proxy("127.0.0.1:1", **faults)  # type: ignore[arg-type]


# --- the command line ----------------------------------------------------------------


def test_cli_proxies_until_sigint(server: connecteur.Server) -> None:
    """connecteur proxy prints its address, relays (one byte at a time) until SIGINT, exits 0."""
    target = f"127.0.0.1:{server.address[1]}"
    process = subprocess.Popen(
        [*COMMAND, "proxy", "127.0.0.1:0", target, "--fragment", "1", "--delay", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"proxying (\S+) -> (\S+)\n", line)
        assert match and match.group(2) == target, line
        sent = subprocess.run(
            [*COMMAND, "send", match.group(1), "hello", "world"], capture_output=True, text=True, timeout=TIMEOUT * 3
        )
        assert (sent.returncode, sent.stdout) == (0, "hello\nworld\n"), sent.stderr
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize(
    "args",
    [["--fragment", "0"], ["--delay", "soon"], ["--fragment-random"], ["--upstream", "--downstream"]],
)
def test_cli_bad_argument_is_one_line_and_status_2(args: list[str]) -> None:
    """A bad option value or combination: one line on stderr, status 2."""
    result = subprocess.run(
        [*COMMAND, "proxy", "127.0.0.1:0", "127.0.0.1:1", *args], capture_output=True, text=True, timeout=TIMEOUT * 3
    )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecteur: proxy: "), result.stderr
