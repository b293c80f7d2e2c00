"""The blocking client, `connect()` and `Connection`, over real loopback and Unix sockets.

The peer is either a plain socket driven by the test (inline when nothing it
does can block, in a thread when it must run beside the client) or a
`Server` on the threads engine.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import connecteur
from connecteur import Connection, ConnectionClosed, FramingError, MessageTooLarge, Server, Timeout, TruncatedMessage
from connecteur.framing import LengthPrefixed, Netstring
from tests.support import TIMEOUT, recv_until_closed, wait_until

frame = LengthPrefixed().encode
"""The default framing's wire form: a 4-byte big-endian length, then the bytes."""


def echo(message: bytes) -> bytes:
    return message


def decode_all(data: bytes, framing: Any = None) -> list[bytes]:
    """The messages in a complete stream (nothing may be left over)."""
    decoder = (framing or LengthPrefixed()).decoder()
    messages = decoder.feed(data)
    assert decoder.eof() == []
    return messages


def reset(sock: socket.socket) -> None:
    """Close `sock` with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class CountingSocket(socket.socket):
    """A socket that counts the calls a `Connection` makes on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: collections.Counter[str] = collections.Counter()

    def send(self, *args: Any) -> int:
        self.calls["send"] += 1
        return super().send(*args)

    def sendall(self, *args: Any) -> None:
        self.calls["sendall"] += 1
        super().sendall(*args)

    def recv(self, *args: Any) -> bytes:
        self.calls["recv"] += 1
        return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        self.calls["recv_into"] += 1
        return super().recv_into(*args)


# --- peers ---------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain listening socket on 127.0.0.1, port 0."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def accept(listener: socket.socket) -> socket.socket:
    """The next connection on `listener`, with every wait bounded."""
    sock, _ = listener.accept()
    sock.settimeout(TIMEOUT)
    return sock


class PeerThread:
    """Runs ``script(sock)`` on the next connection `listener` accepts, in a thread."""

    def __init__(self, listener: socket.socket, script: Callable[[socket.socket], object]) -> None:
        self._listener = listener
        self._script = script
        self._outcome: tuple[bool, object] = (False, AssertionError("the scripted peer did not finish"))
        self.collected = False
        self._thread = threading.Thread(target=self._run, name="scripted peer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with accept(self._listener) as sock:
                self._outcome = (True, self._script(sock))
        except BaseException as exc:
            self._outcome = (False, exc)

    def result(self) -> object:
        """Wait for the script to end; return its result or raise its exception."""
        self.collected = True
        self._thread.join(TIMEOUT)
        ok, value = self._outcome
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value


@pytest.fixture
def run_peer(listener: socket.socket) -> Iterator[Callable[[Callable[[socket.socket], object]], PeerThread]]:
    """Start scripted peers on `listener`; each is joined, and its failure raised, at teardown."""
    peers: list[PeerThread] = []

    def start(script: Callable[[socket.socket], object]) -> PeerThread:
        peers.append(PeerThread(listener, script))
        return peers[-1]

    yield start
    for peer in peers:
        if not peer.collected:
            peer.result()


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    """A connected loopback pair: (our end, as a `CountingSocket`; the peer's end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        plain = socket.create_connection(server.getsockname(), timeout=TIMEOUT)
        ours = CountingSocket(fileno=plain.detach())
        try:
            server.settimeout(TIMEOUT)
            peer = accept(server)
        except BaseException:
            ours.close()
            raise
    with ours, peer:
        yield ours, peer


@pytest.fixture
def echo_server() -> Iterator[Server]:
    with Server(echo, "127.0.0.1:0", engine="threads") as server:
        yield server


# --- request, pipelining, coalescing --------------------------------------------


def test_request_returns_the_reply(echo_server: Server) -> None:
    """request() sends a message and returns the next message: the reply."""
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"hello") == b"hello"
        assert conn.request(b"world" * 1000) == b"world" * 1000


def test_send_takes_any_bytes_like_and_recv_gives_bytes(echo_server: Server) -> None:
    """bytes, bytearray and memoryview all go out; what comes back is always bytes."""
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:
        conn.send(bytearray(b"from a bytearray"))
        conn.send(memoryview(b"--from a memoryview--")[2:-2])
        conn.send_many([b"plain", bytearray(b"mixed"), memoryview(b"batch")])
        replies = [conn.recv() for _ in range(5)]
        assert replies == [b"from a bytearray", b"from a memoryview", b"plain", b"mixed", b"batch"]
        assert all(type(reply) is bytes for reply in replies)


def test_connect_takes_a_host_port_string(listener: socket.socket) -> None:
    """A "127.0.0.1:PORT" string connects, and `address` is the peer's socket address."""
    host, port = listener.getsockname()
    with connecteur.connect(f"{host}:{port}", timeout=TIMEOUT) as conn, accept(listener) as peer:
        assert conn.address == (host, port)
        conn.send(b"ping")
        peer.sendall(frame(b"pong"))
        assert conn.recv() == b"pong"
        conn.shutdown_write()
        assert recv_until_closed(peer) == b"\x00\x00\x00\x04ping"


def test_the_empty_message_round_trips(listener: socket.socket, echo_server: Server) -> None:
    """b"" is a message like any other: a header announcing 0 bytes, both ways."""
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:
        assert conn.request(b"") == b""
        assert conn.request(b"after") == b"after"
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        conn.send(b"")
        peer.sendall(b"\x00\x00\x00\x00")
        assert conn.recv() == b""
        conn.shutdown_write()
        assert recv_until_closed(peer) == b"\x00\x00\x00\x00"


def test_10000_pipelined_messages_come_back_in_order(echo_server: Server) -> None:
    """send_many() of 10,000 messages, then one recv() per reply, in order."""
    messages = [b"%d" % i for i in range(10_000)]
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        assert [conn.recv() for _ in messages] == messages


def test_send_many_reaches_the_peer_in_few_segments(listener: socket.socket, run_peer: Any) -> None:
    """10,000 small messages arrive in a handful of reads, not one read each."""
    messages = [b"m%d" % i for i in range(10_000)]

    def count_reads(sock: socket.socket) -> tuple[int, bytes]:
        chunks = []
        while chunk := sock.recv(2**20):
            chunks.append(chunk)
        return len(chunks), b"".join(chunks)

    peer = run_peer(count_reads)
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn:
        conn.send_many(messages)
    reads, data = peer.result()
    assert decode_all(data) == messages
    assert reads <= 100, f"{len(messages)} messages took {reads} reads"


def test_send_many_makes_few_system_calls() -> None:
    """send_many() joins small messages: one write for 10,000 of them, not 10,000."""
    messages = [b"m%d" % i for i in range(10_000)]
    with tcp_pair() as (ours, peer), Connection(ours, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        conn.shutdown_write()
        assert decode_all(recv_until_closed(peer)) == messages
        assert ours.calls["sendall"] + ours.calls["send"] <= 2, ours.calls


def test_send_many_sends_nothing_when_one_message_is_too_large(listener: socket.socket) -> None:
    """A message the framing refuses fails the whole batch before any byte leaves."""
    framing = LengthPrefixed("!B")
    with connecteur.connect(listener.getsockname(), framing=framing, timeout=TIMEOUT) as conn:
        with pytest.raises(MessageTooLarge) as info:
            conn.send_many([b"fine", b"x" * 256])
        assert (info.value.size, info.value.max_size) == (256, 255)
        with pytest.raises(MessageTooLarge):
            conn.send(b"y" * 300)
        conn.send(b"ok")
        conn.shutdown_write()
        with accept(listener) as peer:
            assert recv_until_closed(peer) == b"\x02ok"


# --- big messages, partial sends, timeouts --------------------------------------


def connect_with_send_buffer(address: Any, size: int) -> socket.socket:
    """A TCP socket whose SO_SNDBUF is `size`, set before connecting, connected to `address`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.settimeout(TIMEOUT)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    result: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return result


def test_a_4_mib_message_survives_partial_sends_to_a_slow_reader(listener: socket.socket, run_peer: Any) -> None:
    """A small send buffer, a peer that lets it fill then reads 4 KiB at a time: 4 MiB arrives intact, and back."""
    message = os.urandom(4 * 2**20)
    wire = frame(message)

    def slow_echo(sock: socket.socket) -> int:
        # Start reading only once our receive queue holds 32 KiB: 4 MiB cannot fit
        # in the buffers, so the client is then blocked in the middle of its send.
        wait_until(lambda: unread_bytes(sock) >= 32 * 2**10, what="the client to fill the peer's buffer")
        data, reads = bytearray(), 0
        while len(data) < len(wire):
            chunk = sock.recv(4096)
            assert chunk, "the client closed before its message was complete"
            data += chunk
            reads += 1
        sock.sendall(b"".join(frame(m) for m in decode_all(bytes(data))))
        return reads

    peer = run_peer(slow_echo)
    # 64 KiB, not less: with smaller send buffers, loopback TCP stalls for seconds on a
    # reopening zero window (the kernel's window probes), which tests nothing of ours.
    with Connection(connect_with_send_buffer(listener.getsockname(), 64 * 2**10), timeout=TIMEOUT) as conn:
        conn.send(message)
        assert conn.recv() == message
    assert peer.result() >= len(wire) // 4096


def test_a_send_that_times_out_closes_the_connection(listener: socket.socket) -> None:
    """A peer that never reads: send() raises Timeout and, mid-message, closes the connection."""
    client = connect_with_send_buffer(listener.getsockname(), 4096)
    with Connection(client, timeout=0.2) as conn, accept(listener):
        with pytest.raises(Timeout) as info:
            conn.send(b"x" * 8 * 2**20)
        assert isinstance(info.value, TimeoutError)
        assert info.value.seconds == 0.2
        assert conn.is_closed
        with pytest.raises(ConnectionClosed) as closed:
            conn.send(b"more")
        assert closed.value.by_peer is False


def test_recv_times_out_when_the_peer_sends_nothing(listener: socket.socket) -> None:
    """recv() raises Timeout (a TimeoutError) after `timeout`; the connection stays usable."""
    with connecteur.connect(listener.getsockname(), timeout=0.2) as conn, accept(listener) as peer:
        started = time.monotonic()
        with pytest.raises(Timeout) as info:
            conn.recv()
        assert time.monotonic() - started >= 0.15
        assert isinstance(info.value, TimeoutError)
        assert info.value.seconds == 0.2
        assert not conn.is_closed
        peer.sendall(frame(b"late"))
        assert conn.recv() == b"late"


@pytest.mark.parametrize("cut", [2, 4, 600], ids=["in-header", "after-header", "in-body"])
def test_a_recv_timeout_keeps_the_partial_message(listener: socket.socket, cut: int) -> None:
    """Half a message, then a timeout: the bytes are kept and a later recv() returns it whole."""
    message = bytes(range(256)) * 4
    wire = frame(message) + frame(b"next")
    with connecteur.connect(listener.getsockname(), timeout=0.2) as conn, accept(listener) as peer:
        peer.sendall(wire[:cut])
        with pytest.raises(Timeout):
            conn.recv()
        peer.sendall(wire[cut:])
        assert conn.recv() == message
        assert conn.recv() == b"next"


def test_the_recv_timeout_bounds_the_whole_message(listener: socket.socket, run_peer: Any) -> None:
    """A peer trickling a byte every 20 ms never lets one read wait 0.3 s, yet the message's 0.3 s run out."""
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        sock.sendall(b"\x00\x00\x00\x64")  # announces 100 bytes: 2 s at this pace
        for _ in range(100):
            if stop.wait(0.02):  # pacing, not waiting for an event; ends when the test is done
                return
            try:
                sock.sendall(b"x")
            except OSError:  # the client closed (or reset) after its timeout
                return

    run_peer(trickle)
    with connecteur.connect(listener.getsockname(), timeout=0.3) as conn:
        started = time.monotonic()
        try:
            with pytest.raises(Timeout):
                conn.recv()
        finally:
            stop.set()
        # The Timeout is the proof (a per-read timeout returns the message after 2 s);
        # this bound only says it did not hang, and no busy machine reaches it.
        assert time.monotonic() - started < TIMEOUT


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs when the accept queue is full")
def test_connect_times_out_when_the_accept_queue_is_full() -> None:
    """On loopback, a listener with a full backlog drops our SYN: connect() raises Timeout."""
    fillers: list[socket.socket] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        try:
            for _ in range(4):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(full.getsockname())
            started = time.monotonic()
            with pytest.raises(Timeout) as info:
                connecteur.connect(full.getsockname(), timeout=0.3)
            assert isinstance(info.value, TimeoutError)
            assert time.monotonic() - started < TIMEOUT
        finally:
            for filler in fillers:
                filler.close()


def test_connecting_to_a_closed_port_is_refused() -> None:
    """Nobody listens: ConnectionRefusedError, an OSError, at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, never listening: holds the port, refuses connections
        host, port = reserved.getsockname()
        with pytest.raises(ConnectionRefusedError):
            connecteur.connect(f"{host}:{port}", timeout=TIMEOUT)
        with pytest.raises(OSError):
            connecteur.connect((host, port))


# --- half-close, closes and resets ------------------------------------------------


def test_after_shutdown_write_the_peer_reads_eof_and_still_replies(listener: socket.socket) -> None:
    """HTTP-style: send, half-close; the peer sees EOF, answers, and we read every reply."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        conn.send_many([b"one", b"two", b"three"])
        conn.shutdown_write()
        conn.shutdown_write()  # idempotent
        requests = decode_all(recv_until_closed(peer))  # returns at our EOF: we only half-closed
        assert requests == [b"one", b"two", b"three"]
        peer.sendall(b"".join(frame(m.upper()) for m in requests))
        peer.close()
        assert list(conn) == [b"ONE", b"TWO", b"THREE"]


def test_a_server_answers_everything_sent_before_a_half_close(echo_server: Server) -> None:
    """Send many, half-close: the server answers each message, then closes."""
    messages = [b"request %d" % i for i in range(100)]
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:
        conn.send_many(messages)
        conn.shutdown_write()
        assert list(conn) == messages
        with pytest.raises(ConnectionClosed) as info:
            conn.recv()
        assert info.value.by_peer is True


def test_a_clean_close_between_messages_is_connection_closed(listener: socket.socket) -> None:
    """Messages sent before the close come first; then ConnectionClosed, on every later recv()."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn:
        with accept(listener) as peer:
            peer.sendall(frame(b"first") + frame(b"second"))
        assert conn.recv() == b"first"
        assert conn.recv() == b"second"
        for _ in range(2):
            with pytest.raises(ConnectionClosed) as info:
                conn.recv()
            assert isinstance(info.value, ConnectionError)
            assert info.value.by_peer is True


def test_a_close_inside_a_message_is_truncated_message(listener: socket.socket) -> None:
    """The peer closes 3 bytes into a 10-byte body: TruncatedMessage, on every later recv()."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn:
        with accept(listener) as peer:
            peer.sendall(frame(b"whole") + b"\x00\x00\x00\x0aabc")
        assert conn.recv() == b"whole"
        for _ in range(2):
            with pytest.raises(TruncatedMessage) as info:
                conn.recv()
            assert info.value.pending == 7  # the 4-byte header and 3 body bytes


def test_a_reset_raises_connection_reset_error(listener: socket.socket) -> None:
    """An RST from the peer is an OSError (ConnectionResetError), not a clean ConnectionClosed."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        reset(peer)
        with pytest.raises(ConnectionResetError) as info:
            conn.recv()
        assert not isinstance(info.value, ConnectionClosed)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            conn.send(b"anyone there?")


@pytest.mark.parametrize("pending", [b"", b"\x00\x00"], ids=["between-messages", "inside-a-message"])
def test_after_a_reset_recv_keeps_reporting_the_reset(listener: socket.socket, pending: bytes) -> None:
    """The reset is sticky, like a framing error: recv() does not later claim the stream ended."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        peer.sendall(frame(b"before") + pending)
        assert conn.recv() == b"before"
        reset(peer)
        with pytest.raises(ConnectionResetError):
            conn.recv()
        with pytest.raises(ConnectionResetError):
            conn.recv()


def test_iteration_stops_at_a_clean_close(listener: socket.socket) -> None:
    """`for m in conn` yields every message and ends quietly when the peer closes."""
    messages = [b"a", b"", b"c" * 100_000, b"d"]
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn:
        with accept(listener) as peer:
            peer.sendall(b"".join(frame(m) for m in messages))
        received = []
        for message in conn:
            received.append(message)
        assert received == messages


def test_iteration_raises_truncated_message(listener: socket.socket) -> None:
    """Only a clean close ends the loop; a close inside a message raises out of it."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn:
        with accept(listener) as peer:
            peer.sendall(frame(b"ok") + b"\x00\x00")
        received = []
        with pytest.raises(TruncatedMessage):
            for message in conn:
                received.append(message)
        assert received == [b"ok"]


def test_close_is_idempotent_and_then_send_and_recv_raise(listener: socket.socket) -> None:
    """close() twice is fine; afterwards send() and recv() raise ConnectionClosed(by_peer=False)."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        open_before = not conn.is_closed
        conn.close()
        conn.close()
        assert open_before
        assert conn.is_closed
        assert conn.fileno() == -1
        for operation in (lambda: conn.send(b"x"), lambda: conn.send_many([b"x"]), conn.recv):
            with pytest.raises(ConnectionClosed) as info:
                operation()
            assert info.value.by_peer is False
        conn.shutdown_write()  # a no-op once closed
        assert recv_until_closed(peer) == b""


def test_the_with_block_closes_the_connection(listener: socket.socket) -> None:
    """Leaving `with` closes the socket: the peer reads EOF."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        with conn:
            conn.send(b"bye")
        assert conn.is_closed
        assert recv_until_closed(peer) == frame(b"bye")


def test_messages_already_received_stay_readable_after_close() -> None:
    """Two messages in one read; close() after the first; the second is still returned."""
    with tcp_pair() as (ours, peer), Connection(ours, timeout=TIMEOUT) as conn:
        peer.sendall(frame(b"one") + frame(b"two"))
        assert conn.recv() == b"one"
        conn.close()
        assert conn.recv() == b"two"
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_send_after_shutdown_write_raises_connection_closed(listener: socket.socket) -> None:
    """Half-closed: send() raises ConnectionClosed(by_peer=False); receiving still works."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        conn.shutdown_write()
        with pytest.raises(ConnectionClosed) as info:
            conn.send(b"too late")
        assert info.value.by_peer is False
        with pytest.raises(ConnectionClosed):
            conn.send_many([b"too late"])
        assert recv_until_closed(peer) == b""
        peer.sendall(frame(b"still listening"))
        assert conn.recv() == b"still listening"


# --- wrapping sockets, framings, threads ------------------------------------------


def test_wrap_a_socketpair_with_a_framing() -> None:
    """Connection(sock, framing=...) takes over a socket we already have."""
    left, right = socket.socketpair()
    with Connection(left, framing=Netstring(), timeout=TIMEOUT) as conn, right:
        conn.send(b"hello")
        assert right.recv(100) == b"5:hello,"
        right.sendall(b"3:abc,0:,")
        assert conn.recv() == b"abc"
        assert conn.recv() == b""
        right.close()
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_two_connections_on_a_socketpair_talk() -> None:
    """Both ends wrapped: each side's messages reach the other whole."""
    left, right = socket.socketpair()
    with Connection(left, timeout=TIMEOUT) as a, Connection(right, timeout=TIMEOUT) as b:
        a.send_many([b"x", b"", b"y" * 70_000])
        assert [b.recv(), b.recv(), b.recv()] == [b"x", b"", b"y" * 70_000]
        b.send(b"back")
        assert a.recv() == b"back"


@pytest.mark.parametrize("same_read", [True, False], ids=["same-read", "later-read"])
def test_a_framing_error_comes_after_the_messages_before_it(listener: socket.socket, same_read: bool) -> None:
    """Garbage from the peer: the good messages first, then FramingError (and again after)."""
    good, garbage = b"5:hello,3:abc,", b"xyz:nope,"
    with (
        connecteur.connect(listener.getsockname(), framing=Netstring(), timeout=TIMEOUT) as conn,
        accept(listener) as peer,
    ):
        peer.sendall(good + garbage if same_read else good)
        assert conn.recv() == b"hello"
        assert conn.recv() == b"abc"
        if not same_read:
            peer.sendall(garbage)
        with pytest.raises(FramingError) as info:
            conn.recv()
        assert not isinstance(info.value, TruncatedMessage | MessageTooLarge)
        assert isinstance(info.value, ValueError)
        with pytest.raises(FramingError):
            conn.recv()


def test_a_header_over_max_size_raises_message_too_large(listener: socket.socket) -> None:
    """A length header announcing 4 GiB - 1 against the 16 MiB default fails at once."""
    with connecteur.connect(listener.getsockname(), timeout=TIMEOUT) as conn, accept(listener) as peer:
        peer.sendall(b"\xff\xff\xff\xff")
        with pytest.raises(MessageTooLarge) as info:
            conn.recv()
        assert (info.value.size, info.value.max_size) == (2**32 - 1, 16 * 2**20)


def test_one_thread_receives_while_another_sends(echo_server: Server) -> None:
    """Full duplex: 6.4 MiB each way, more than the socket buffers hold, without deadlock."""
    blocks = [bytes([i]) * 64 * 2**10 for i in range(100)]
    failures: queue.Queue[BaseException] = queue.Queue()
    with connecteur.connect(echo_server.address, timeout=TIMEOUT) as conn:

        def send_all() -> None:
            try:
                for block in blocks:
                    conn.send(block)
            except BaseException as exc:
                failures.put(exc)

        sender = threading.Thread(target=send_all, name="sender", daemon=True)
        sender.start()
        try:
            received = [conn.recv() for _ in blocks]
        finally:
            sender.join(TIMEOUT)
        assert not sender.is_alive()
        assert failures.empty(), failures.get_nowait()
        assert received == blocks


def test_the_messages_of_one_read_are_returned_one_by_one() -> None:
    """Two messages in one segment: two recv() calls, one read from the socket."""
    with tcp_pair() as (ours, peer), Connection(ours, timeout=TIMEOUT) as conn:
        peer.sendall(frame(b"first") + frame(b"second"))
        assert conn.recv() == b"first"
        assert conn.recv() == b"second"
        assert ours.calls["recv_into"] + ours.calls["recv"] == 1, ours.calls


# --- Unix sockets ---------------------------------------------------------------------


def test_server_and_client_over_a_unix_socket(tmp_path: Path) -> None:
    """A "unix:/path" address works for Server and connect(); the socket file goes away on stop."""
    path = tmp_path / "sock"
    with Server(echo, f"unix:{path}", engine="threads") as server:
        assert server.address == f"unix:{path}"
        assert path.is_socket()
        with connecteur.connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"over unix") == b"over unix"
            conn.send_many([b"a", b"", b"c"])
            assert [conn.recv(), conn.recv(), conn.recv()] == [b"a", b"", b"c"]
    assert not path.exists()


def test_connect_to_a_plain_unix_listener(tmp_path: Path) -> None:
    """connect("unix:...") to a socket we drive: the bytes on the wire are the framing's."""
    path = str(tmp_path / "raw")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix_listener:
        unix_listener.bind(path)
        unix_listener.listen()
        unix_listener.settimeout(TIMEOUT)
        with connecteur.connect(f"unix:{path}", timeout=TIMEOUT) as conn, accept(unix_listener) as peer:
            assert conn.address == path
            conn.send(b"hi")
            assert peer.recv(100) == frame(b"hi")  # read it: closing over unread data would be a reset
            peer.sendall(frame(b"hello"))
            assert conn.recv() == b"hello"
            peer.close()
            with pytest.raises(ConnectionClosed):
                conn.recv()
            conn.shutdown_write()


def test_connecting_to_a_missing_unix_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connecteur.connect(f"unix:{tmp_path / 'nobody'}", timeout=TIMEOUT)
