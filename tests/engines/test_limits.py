"""The hard limits, proved on every engine: an attacker is closed, counted and logged; everyone else is served.

Each attack runs beside a bystander: a well-behaved client connected before
it, asking for an echo every 20 ms all through it, and answered after it. Why
a connection closed is checked twice: in the `connecteur.server` log (caplog
sees this process only) and through the handler's ``closed(peer, error)``,
which a forked child reports in a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from connecteur import MessageTooLarge, Peer, Server, Timeout, connect
from connecteur.address import format_address
from connecteur.codecs import Codec, Json
from connecteur.framing import CloseDelimited, Framing, LengthPrefixed
from connecteur.server.asyncio import AsyncioEngine
from connecteur.server.select import HIGH_WATER, RECV_SIZE, SelectEngine
from connecteur.server.workers import WorkersEngine
from tests.engines.test_select import _cpu_seconds
from tests.support import TIMEOUT, recv_until_closed, wait_until

Serve = Callable[..., Server]

MIB = 2**20
HAS_PROC = os.path.exists("/proc/self/stat")
SLACK = TIMEOUT / 2
"""How late past its deadline a connection may be closed: generous for a busy
machine (two cores shared with other test runs), still far from the 100 s a
dripped message would take."""


# --- helpers --------------------------------------------------------------------


def raw_client(server: Server) -> socket.socket:
    return socket.create_connection(server.address, timeout=TIMEOUT)


class Recorder:
    """An echo handler that notes why each connection closed, in a file: forked children write there too."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.write_text("")

    def received(self, peer: Peer, message: object) -> object:
        return message

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        if error is not None:
            kinds = " ".join(kind.__name__ for kind in type(error).__mro__)
            with self._path.open("a") as file:
                file.write(f"{format_address(peer.address)} {kinds}\n")

    def assert_closed_by(self, client: str, kind: type[BaseException]) -> None:
        """`client` (see `name_of`) was closed once, by an error of class `kind`."""
        lines = [line for line in self._path.read_text().splitlines() if line.startswith(client + " ")]
        assert len(lines) == 1, lines
        assert kind.__name__ in lines[0].split()[1:], lines[0]


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "closed")


def in_child_processes(engine: str) -> bool:
    """True where connections are served in forked children (the processes engine, workers)."""
    return engine == "processes" or "*" in engine


class Bystander:
    """A well-behaved client connected before an attack: it asks for an echo every
    20 ms until the end of the `with` block, and must get every reply."""

    def __init__(self, server: Server, framing: Framing | None = None, codec: Codec | None = None) -> None:
        self._conn = connect(server.address, framing=framing, codec=codec, timeout=TIMEOUT)
        self._as_value: Callable[[bytes], object] = (lambda m: m) if codec is None else bytes.decode
        self._replies = 0
        self._failure: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._ask_until_done, daemon=True)

    def __enter__(self) -> Self:
        try:
            assert self._conn.request(self._as_value(b"before")) == self._as_value(b"before")
        except BaseException:
            self._conn.close()
            raise
        self._thread.start()
        return self

    def _ask_until_done(self) -> None:
        try:
            while not self._done.wait(0.02):
                message = self._as_value(b"ping %d" % self._replies)
                reply = self._conn.request(message)
                if reply != message:
                    raise AssertionError(f"{message!r} was answered with {reply!r}")
                self._replies += 1
        except BaseException as exc:
            self._failure = exc

    def assert_served(self, count: int = 3) -> None:
        """Wait until `count` more requests were answered; fail if one was not."""
        target = self._replies + count
        wait_until(lambda: self._replies >= target or self._failure is not None, what="the bystander's replies")
        assert self._failure is None, f"the bystander was not served: {self._failure!r}"

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join(TIMEOUT)
        try:
            if exc_type is None:
                assert not self._thread.is_alive(), "the bystander's last request never returned"
                assert self._failure is None, f"the bystander was not served: {self._failure!r}"
                assert self._conn.request(self._as_value(b"after")) == self._as_value(b"after")
        finally:
            self._conn.close()


def name_of(sock: socket.socket) -> str:
    """How the server names the client of `sock` in its logs: ``127.0.0.1:port``."""
    return format_address(sock.getsockname())


def assert_logged_once(engine: str, caplog: pytest.LogCaptureFixture, client: str, *facts: str) -> None:
    """Exactly one `connecteur.server` record names `client` (see `name_of`), with `facts` in it.

    Not checked where a forked child serves the connection (the processes
    engine, workers): the child logs to its own stderr, which caplog, living
    in this process, cannot see.
    """
    if in_child_processes(engine):
        return
    records = [r.getMessage() for r in caplog.records if r.name == "connecteur.server" and client in r.getMessage()]
    assert len(records) == 1, records
    for fact in facts:
        assert fact in records[0], records[0]


def is_closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); never blocks."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.settimeout(timeout)


def drip(sock: socket.socket, data: bytes, interval: float) -> int:
    """Send `data` one byte every `interval` s until the server closes; return the bytes sent."""
    for sent in range(len(data)):
        if is_closed_by_server(sock):
            return sent
        try:
            sock.send(data[sent : sent + 1])
        except ConnectionError:
            return sent
        time.sleep(interval)  # the attack itself: a byte now and then
    return len(data)


def _kib_to_bytes(ru_maxrss: int) -> int:
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024  # macOS reports bytes, Linux KiB


def _peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@contextlib.contextmanager
def memory_stays_bounded(engine: str, server: Server) -> Iterator[None]:
    """Fail if what the block makes the server do allocates more than a few MiB.

    In this process: every Python allocation is traced (a 4 GiB buffer would
    show, touched or not). In a processes-engine child: its peak resident
    memory, known once it is reaped; a fork starts with this process's pages.
    In workers: their peak resident memory before and after.
    """
    if engine == "processes":
        before = _kib_to_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        yield
        after = _kib_to_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        own = _kib_to_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        assert after <= max(before, own + 64 * MIB), f"a child reached {after / MIB:.0f} MiB"
    elif "*" in engine:
        engine_object = server._engine
        assert isinstance(engine_object, WorkersEngine)
        pids = [worker.pid for worker in engine_object._workers.values()]
        if not HAS_PROC:
            yield  # no portable way to read another process's peak memory
            return
        before = [_peak_rss(pid) for pid in pids]
        yield
        growth = max(_peak_rss(pid) - peak for pid, peak in zip(pids, before, strict=True))
        assert growth < 64 * MIB, f"a worker grew by {growth / MIB:.0f} MiB"
    else:
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            yield
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            if not was_tracing:
                tracemalloc.stop()
        assert peak < 16 * MIB, f"{peak / MIB:.1f} MiB allocated at the peak"


def server_cpu_seconds(server: Server) -> float:
    """CPU used so far where the server accepts: this process, plus each worker."""
    used = time.process_time()
    engine = server._engine
    if isinstance(engine, WorkersEngine) and HAS_PROC:
        used += sum(_cpu_seconds(worker.pid) for worker in list(engine._workers.values()))
    return used


def echoes(sock: socket.socket, message: bytes) -> bool:
    """Ask for an echo on a raw socket: True if answered, False if the server closed it."""
    framing = LengthPrefixed()
    try:
        sock.sendall(framing.encode(message))
        decoder = framing.decoder()
        replies: list[bytes] = []
        while not replies:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            replies = decoder.feed(chunk)
    except ConnectionError:
        return False
    assert replies == [message]
    return True


# --- a header announcing more than any buffer -------------------------------------


@pytest.mark.parametrize(
    ("header", "announced"),
    [pytest.param("!I", 2**32 - 1, id="4GiB-!I"), pytest.param("!Q", 2**63, id="2**63-!Q")],
)
def test_a_huge_length_header_is_refused_without_allocating(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture, header: str, announced: int
) -> None:
    framing = LengthPrefixed(header)
    server = serve(recorder, framing=framing)
    with (
        caplog.at_level(logging.INFO, logger="connecteur.server"),
        Bystander(server, framing) as bystander,
        raw_client(server) as bad,
    ):
        name_of_bad = name_of(bad)
        with memory_stays_bounded(engine, server):
            bad.sendall(struct.pack(header, announced))
            assert recv_until_closed(bad) == b""
            wait_until(lambda: server.stats.errors == 1, what="the error counted")
        bystander.assert_served()
    assert_logged_once(engine, caplog, name_of_bad, str(announced), str(framing.max_size))
    recorder.assert_closed_by(name_of_bad, MessageTooLarge)
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    stats = server.stats
    assert (stats.accepted, stats.rejected, stats.errors) == (2, 0, 1)


# --- slowloris: a message that never ends --------------------------------------


def test_a_slowloris_is_closed_by_message_timeout(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(recorder, message_timeout=0.5)
    wire = LengthPrefixed().encode(b"s" * 1000)  # 100 s at a byte per 0.1 s
    with (
        caplog.at_level(logging.INFO, logger="connecteur.server"),
        Bystander(server) as bystander,
        raw_client(server) as slow,
    ):
        name_of_slow = name_of(slow)
        slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        sent = drip(slow, wire, interval=0.1)
        elapsed = time.monotonic() - started
        assert sent < len(wire)
        assert 0.45 < elapsed < 0.5 + SLACK, f"closed after {elapsed:.2f} s"
        bystander.assert_served()
        wait_until(lambda: server.stats.errors == 1, what="the timeout counted")
    assert_logged_once(engine, caplog, name_of_slow, "0.5 s")
    recorder.assert_closed_by(name_of_slow, Timeout)
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    assert server.stats.errors == 1


def test_fifty_slowloris_at_once_are_all_closed_and_others_served(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(recorder, message_timeout=0.5)
    wire = LengthPrefixed().encode(b"s" * 1000)
    slow: list[socket.socket] = []
    names: list[str] = []
    try:
        with caplog.at_level(logging.INFO, logger="connecteur.server"), Bystander(server) as bystander:
            for _ in range(50):
                sock = raw_client(server)
                slow.append(sock)
                names.append(name_of(sock))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(wire[:5])  # the header and one byte: each message has begun
            started = time.monotonic()
            still_open = set(slow)
            sent = 5
            # Closed within 2 TIMEOUTs, where the trickle needs 100 s to finish a message: the message
            # timeout closed them. No tighter bound: at a load average of 10 the last took 6.8 s.
            while still_open and time.monotonic() - started < 2 * TIMEOUT:
                still_open = {sock for sock in still_open if not is_closed_by_server(sock)}
                for sock in still_open:
                    with contextlib.suppress(ConnectionError):
                        sock.send(wire[sent : sent + 1])
                sent += 1
                time.sleep(0.1)  # the attack itself: a byte now and then
            elapsed = time.monotonic() - started
            assert not still_open, f"{len(still_open)} of 50 still open after {elapsed:.1f} s"
            bystander.assert_served()
            wait_until(lambda: server.stats.errors == 50, what="the 50 timeouts counted")
        for name in names:
            assert_logged_once(engine, caplog, name, "0.5 s")
            recorder.assert_closed_by(name, Timeout)
    finally:
        for sock in slow:
            sock.close()
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    assert server.stats.errors == 50


# --- a client that sends and never reads -----------------------------------------


class QueueWatch:
    """The most bytes an event-loop engine held for its peers at once, sampled every ms (white-box)."""

    def __init__(self, server: Server) -> None:
        self._engine = server._engine
        self.peak = 0
        self.is_measuring = isinstance(self._engine, SelectEngine | AsyncioEngine)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _queued(self) -> int:
        engine = self._engine
        if isinstance(engine, SelectEngine):
            return sum(link._queued for link in list(engine._links.values()))
        assert isinstance(engine, AsyncioEngine)
        transports = [link._transport for link in list(engine._links)]
        return sum(t.get_write_buffer_size() for t in transports if t is not None and not t.is_closing())

    def _watch(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self._queued())

    def __enter__(self) -> Self:
        if self.is_measuring:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self.is_measuring:
            self._thread.join(TIMEOUT)


def test_a_client_that_never_reads_is_bounded_then_closed_by_idle_timeout(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Event loops stop reading it (bounded queue); a thread or child blocks in send; idle_timeout ends both."""
    server = serve(recorder, idle_timeout=0.5)
    wire = LengthPrefixed().encode(b"x" * 65536)
    with (
        caplog.at_level(logging.INFO, logger="connecteur.server"),
        Bystander(server) as bystander,
        raw_client(server) as hog,
        QueueWatch(server) as queue,
    ):
        name_of_hog = name_of(hog)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Blocked for 1 s means the server stopped reading (it closes at 0.5 s idle anyway):
        # a shorter wait could give up while a busy server was still filling its kernel
        # buffers, before any reply was queued in the process (a peak of 0, seen once in CI).
        hog.settimeout(1.0)
        sent = 0
        started = time.monotonic()
        try:
            while sent < 4096:  # 256 MiB, far more than any buffer on the way
                hog.sendall(wire)
                sent += 1
        except (TimeoutError, ConnectionError):
            pass  # the server stopped taking requests (or already closed the connection)
        blocked = time.monotonic()
        assert sent * len(wire) < 64 * MIB, f"the server took {sent} requests it could not answer"
        bystander.assert_served()
        wait_until(lambda: server.stats.errors == 1, what="the idle connection closed")
        closed = time.monotonic()
        assert closed - started > 0.45  # replies moved after the start: idle for 0.5 s from then
        assert closed - blocked < 0.5 + SLACK, f"closed {closed - blocked:.2f} s after the client blocked"
        hog.settimeout(TIMEOUT)
        recv_until_closed(hog)  # returns: the connection is closed (replies still in flight aside)
    if queue.is_measuring:
        assert 0 < queue.peak <= HIGH_WATER + RECV_SIZE + 2 * len(wire), f"{queue.peak} bytes queued"
    assert_logged_once(engine, caplog, name_of_hog)
    recorder.assert_closed_by(name_of_hog, TimeoutError)  # Timeout, or a send that timed out
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    assert server.stats.errors == 1


# --- more connections than max_connections --------------------------------------


def test_a_flood_beyond_max_connections_is_refused_without_spinning(
    engine: str, serve: Serve, recorder: Recorder
) -> None:
    """Every engine closes the excess at once (none waits in the backlog) and counts it in `rejected`."""
    server = serve(recorder, max_connections=5)
    flood: list[socket.socket] = []
    try:
        with Bystander(server) as bystander:  # holds one of the 5 slots (of its worker's 5)
            flood = [raw_client(server) for _ in range(50)]
            wait_until(lambda: server.stats.accepted + server.stats.rejected == 51, what="every connection decided")
            before = server_cpu_seconds(server)
            time.sleep(1.0)  # measuring: nothing to wait for
            used = server_cpu_seconds(server) - before
            assert used < 0.3, f"the server used {used:.2f} s of CPU in 1 s after the flood"
            stats = server.stats
            if "*" in engine:  # max_connections is per worker, and the kernel picks the worker
                assert 5 <= stats.accepted <= 10
            else:
                assert stats.accepted == 5
            assert stats.rejected == 51 - stats.accepted
            served = [sock for sock in flood if echoes(sock, b"admitted?")]
            assert len(served) == stats.accepted - 1
            bystander.assert_served()
            for sock in flood:
                sock.close()
            wait_until(lambda: server.stats.active == 1, what="the flood's slots freed")
            newcomers = [connect(server.address, timeout=TIMEOUT) for _ in range(4)]
            try:
                for i, conn in enumerate(newcomers):
                    assert conn.request(b"newcomer %d" % i) == b"newcomer %d" % i
            finally:
                for conn in newcomers:
                    conn.close()
    finally:
        for sock in flood:
            sock.close()
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    assert server.stats.errors == 0


def test_connections_refused_beyond_max_connections_are_logged(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """At least one line says why connections are closed at once; never more than one per connection."""
    if "*" in engine:
        pytest.skip("workers refuse in forked children: their log records go to the child's stderr, not to caplog")
    server = serve(recorder, max_connections=1)
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with connect(server.address, timeout=TIMEOUT) as holder:
            assert holder.request(b"holding") == b"holding"
            for _ in range(10):
                with raw_client(server) as extra:
                    assert recv_until_closed(extra) == b""
            assert holder.request(b"still") == b"still"
        wait_until(lambda: server.stats.rejected == 10, what="the refusals counted")
    records = [r.getMessage() for r in caplog.records if r.name == "connecteur.server"]
    assert 1 <= len(records) <= 10, f"{len(records)} log records for 10 refused connections: {records}"


# --- CloseDelimited: the whole stream is capped ----------------------------------


def test_close_delimited_caps_the_whole_stream(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    framing = CloseDelimited(max_size=1024)
    server = serve(recorder, framing=framing)
    with (
        caplog.at_level(logging.INFO, logger="connecteur.server"),
        connect(server.address, framing=framing, timeout=TIMEOUT) as early,
    ):
        early.send(b"sent before, ")  # its one message is finished after the attack
        with raw_client(server) as big:
            name_of_big = name_of(big)
            big.sendall(b"b" * 2048)
            big.shutdown(socket.SHUT_WR)
            assert recv_until_closed(big) == b""
        wait_until(lambda: server.stats.errors == 1, what="the error counted")
        with raw_client(server) as small:
            small.sendall(b"s" * 500)
            small.shutdown(socket.SHUT_WR)
            assert recv_until_closed(small) == b"s" * 500
        early.send(b"sent after")
        early.shutdown_write()
        assert early.recv() == b"sent before, sent after"
    assert_logged_once(engine, caplog, name_of_big, "1024")
    recorder.assert_closed_by(name_of_big, MessageTooLarge)
    # Workers report every 0.2 s: wait for the three connections' final figures.
    wait_until(lambda: server.stats.accepted == 3 and server.stats.active == 0, what="every connection closed")
    stats = server.stats
    assert (stats.accepted, stats.errors, stats.messages_in, stats.messages_out) == (3, 1, 2, 2)


# --- a message the codec chokes on ----------------------------------------------


class FragileCodec:
    """UTF-8 text, except that one message makes decode() raise what no codec should: a bug in user code."""

    def encode(self, value: str) -> bytes:
        return value.encode()

    def decode(self, data: bytes) -> str:
        if data == b"boom":
            raise RuntimeError("codec bug")
        return data.decode()


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        pytest.param(FragileCodec(), b"boom", id="codec-bug"),
        pytest.param(Json(), b"1" * 5000, id="json-5000-digits"),  # int() refuses over 4300 digits
    ],
)
def test_a_message_the_codec_chokes_on_closes_only_its_connection(
    engine: str, serve: Serve, recorder: Recorder, caplog: pytest.LogCaptureFixture, codec: Codec, message: bytes
) -> None:
    """A server outlives its codec as it outlives its handlers: whatever decode() raises ends one connection."""
    server = serve(recorder, codec=codec)
    with (
        caplog.at_level(logging.INFO, logger="connecteur.server"),
        Bystander(server, codec=codec) as bystander,
        raw_client(server) as bad,
    ):
        name_of_bad = name_of(bad)
        bad.sendall(LengthPrefixed().encode(message))
        assert recv_until_closed(bad) == b""
        bystander.assert_served()
        wait_until(lambda: server.stats.errors == 1, what="the error counted")
    with connect(server.address, codec=codec, timeout=TIMEOUT) as newcomer:
        assert newcomer.request("new") == "new"
    assert_logged_once(engine, caplog, name_of_bad)
    wait_until(lambda: server.stats.active == 0, what="every connection closed")
    assert server.stats.errors == 1
