"""Fan-out and flow control: `server.peers`, `server.broadcast`, water marks and slow-consumer policies."""

from __future__ import annotations

import random
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import connecteur._socket
from connecteur import Peer, Server, connect
from connecteur.framing import LengthPrefixed
from connecteur.server import BroadcastResult, Stats
from connecteur.server._engine import Counters
from tests.engines.conftest import VARIANTS, engine_options
from tests.support import LONG_TESTS, TIMEOUT, wait_until

FAN_OUT_ENGINES = ["select", "asyncio", "threads"]
"""The engines that hold every connection in one process."""

QUEUING_ENGINES = ["select", "asyncio", "threads"]
"""The engines that queue (and so can drop) without waiting for a slow peer."""

DROP_OLDEST_VARIANTS = [*QUEUING_ENGINES, *(["asyncio@uvloop"] if "asyncio@uvloop" in VARIANTS else [])]
"""The queuing engines, and the asyncio engine on uvloop, whose transports hold the messages differently."""
HARD_CAP_OF = {
    "select": "connecteur.server.select.HARD_CAP",
    "asyncio": "connecteur.server.asyncio.HARD_CAP",
    "threads": "connecteur.server._blocking.HARD_CAP",
}
"""Where each engine reads the hard cap, for the tests that lower it."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on Unix sockets; every one is stopped at the end.

    Unix sockets, not TCP: loopback TCP's large segments make the kernel take
    megabytes for a peer that does not read before the server queues any,
    which the slow-consumer tests would have to send first; a Unix socket
    takes some 200 KiB.
    """
    servers: list[Server] = []

    def start(handler: object, **options: Any) -> Server:
        server = Server(handler, f"unix:{tmp_path}/{len(servers)}.sock", **options)
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop(timeout=1.0)


class Recorder:
    """A handler that records the writability hooks it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def received(self, peer: Peer, message: bytes) -> bytes | None:
        return None

    def paused(self, peer: Peer) -> None:
        self.events.append(("paused", peer.queued))

    def resumed(self, peer: Peer) -> None:
        self.events.append(("resumed", peer.queued))


def client_socket(server: Server) -> socket.socket:
    """A raw client of `server` (on a Unix socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(server.address.removeprefix("unix:"))
    return sock


def slow_socket(server: Server) -> tuple[socket.socket, Peer]:
    """A client that will never read, and its peer on the server (the first to connect)."""
    sock = client_socket(server)
    wait_until(lambda: len(server.peers) == 1, what="the peer")
    return sock, server.peers[0]


def numbered(index: int, size: int) -> bytes:
    """Message `index` of a broadcast: its number, then padding to `size` bytes."""
    return index.to_bytes(4, "big") + b"." * (size - 4)


def read_numbers(sock: socket.socket, until: int) -> list[int]:
    """Read numbered messages from `sock` until message `until - 1` arrives or the server closes."""
    decoder, numbers = LengthPrefixed().decoder(), []
    sock.settimeout(TIMEOUT)
    while not numbers or numbers[-1] != until - 1:
        data = sock.recv(65536)
        if not data:
            break
        numbers.extend(int.from_bytes(message[:4], "big") for message in decoder.feed(data))
    return numbers


# --- peers and broadcast -------------------------------------------------------------


@pytest.mark.parametrize("engine", FAN_OUT_ENGINES)
def test_peers_lists_the_live_connections_and_broadcast_reaches_them(serve: Callable[..., Server], engine: str) -> None:
    server = serve(lambda message: None, engine=engine)
    assert server.peers == []
    clients = [connect(server.address, timeout=TIMEOUT) for _ in range(3)]
    try:
        wait_until(lambda: len(server.peers) == 3, what="three peers")
        result = server.broadcast(b"news", exclude=server.peers[0])
        assert result == BroadcastResult(delivered=2)
        assert server.broadcast(b"all") == BroadcastResult(delivered=3)
        received = sorted(client.recv() for client in clients)
        assert received == [b"all", b"news", b"news"]  # the excluded one's first message is the second broadcast
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: server.peers == [], what="no peers once the clients left")


@pytest.mark.parametrize("engine", FAN_OUT_ENGINES)
def test_a_handler_broadcasts_to_the_others(serve: Callable[..., Server], engine: str) -> None:
    server: Server | None = None

    class Relay:
        def received(self, peer: Peer, message: bytes) -> bytes:
            assert server is not None
            result = server.broadcast(b"from " + message, exclude=peer)
            return b"sent to %d" % result.delivered

    server = serve(Relay(), engine=engine)
    with connect(server.address, timeout=TIMEOUT) as a, connect(server.address, timeout=TIMEOUT) as b:
        wait_until(lambda: len(server.peers) == 2, what="two peers")
        assert a.request(b"a") == b"sent to 1"
        assert b.recv() == b"from a"


def test_peers_and_broadcast_refuse_what_spans_processes(serve: Callable[..., Server]) -> None:
    server = Server(lambda message: None, "127.0.0.1:0", engine="select", workers=2)
    with pytest.raises(RuntimeError, match="one process"):
        server.peers  # noqa: B018
    with pytest.raises(RuntimeError, match="not started"):
        Server(lambda message: None, "127.0.0.1:0").broadcast(b"x")
    with pytest.raises(ValueError, match="unknown slow-consumer policy"):
        Server(lambda message: None, "127.0.0.1:0", slow_consumer="later")
    with pytest.raises(ValueError, match="low_water"):
        Server(lambda message: None, "127.0.0.1:0", high_water=10, low_water=20)


def test_broadcast_from_another_thread_returns_once_the_server_stopped(serve: Callable[..., Server]) -> None:
    server = serve(lambda message: None, engine="select")
    server.stop(timeout=1.0)
    assert server.broadcast(b"late") == BroadcastResult()


# --- writability ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_paused_and_resumed_follow_the_water_marks(serve: Callable[..., Server], engine: str) -> None:
    high, low = 64 * 1024, 16 * 1024
    recorder = Recorder()
    server = serve(recorder, engine=engine, high_water=high, low_water=low)
    sock, peer = slow_socket(server)
    try:
        for _ in range(2000):  # until the queue passes high_water (bounded: ~8 MiB at most)
            server.broadcast(b"x" * 4096)
            if recorder.events:
                break
        assert recorder.events[0][0] == "paused" and recorder.events[0][1] > high
        assert peer.queued > high and server.stats.queued >= peer.queued
        sock.settimeout(TIMEOUT)
        wait_until(lambda: sock.recv(1 << 20) and len(recorder.events) == 2, what="resumed")
        assert recorder.events[1][0] == "resumed" and recorder.events[1][1] <= low
    finally:
        sock.close()


def test_the_queued_gauge_adds_up_this_process_and_the_workers_reports() -> None:
    counters = Counters()
    counters.watch_queued(lambda: 100)
    counters.report_elsewhere(1, Stats(queued=20, dropped=3))
    counters.report_elsewhere(2, Stats(queued=5, dropped=1))
    counters.dropped_messages(2)
    assert (counters.snapshot().queued, counters.snapshot().dropped) == (125, 6)
    counters.retire_elsewhere(1)  # an ended worker's drops stay counted; its queue went with it
    assert (counters.snapshot().queued, counters.snapshot().dropped) == (105, 6)


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_a_paused_hook_that_raises_closes_its_connection(serve: Callable[..., Server], engine: str) -> None:
    closed: list[BaseException | None] = []

    class Faulty:
        def received(self, peer: Peer, message: bytes) -> None:
            return None

        def paused(self, peer: Peer) -> None:
            raise RuntimeError("no room")

        def closed(self, peer: Peer, error: BaseException | None) -> None:
            closed.append(error)

    server = serve(Faulty(), engine=engine, high_water=32 * 1024, low_water=8 * 1024)
    sock, _ = slow_socket(server)
    try:
        for _ in range(2000):  # until the queue passes high_water (bounded: ~8 MiB at most)
            server.broadcast(b"x" * 4096)
            if closed or not server.peers:
                break
        wait_until(lambda: closed, what="the connection closed")
        assert isinstance(closed[0], RuntimeError) and str(closed[0]) == "no room"
    finally:
        sock.close()


# --- slow-consumer policies ---------------------------------------------------------------


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_drop_keeps_the_slow_peers_queue_at_the_high_water_mark(serve: Callable[..., Server], engine: str) -> None:
    high, size = 64 * 1024, 1024
    server = serve(lambda message: None, engine=engine, high_water=high, low_water=high // 4, slow_consumer="drop")
    sock, peer = slow_socket(server)
    try:
        total, peak = BroadcastResult(), 0
        for index in range(2000):
            total += server.broadcast(numbered(index, size))
            peak = max(peak, peer.queued)
        assert total.dropped > 0 and total.dropped == peer.dropped == server.stats.dropped
        assert total.delivered + total.dropped == 2000
        assert high < peak <= high + size + 4
        numbers = read_numbers(sock, until=total.delivered)  # what was kept, in order, whole
        assert numbers == sorted(numbers) and len(numbers) == total.delivered
    finally:
        sock.close()


@pytest.mark.parametrize("engine", DROP_OLDEST_VARIANTS)
def test_drop_oldest_keeps_the_newest_messages_whole(serve: Callable[..., Server], engine: str) -> None:
    high, size, count = 64 * 1024, 1024, 2000
    recorder = Recorder()
    server = serve(recorder, **engine_options(engine), high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    try:
        total, peak = BroadcastResult(), 0
        for index in range(count):
            total += server.broadcast(numbered(index, size), policy="drop_oldest")
            peak = max(peak, peer.queued)
        assert total.delivered == count and total.dropped == peer.dropped == server.stats.dropped > 0
        # select: its queue, and one message past it; asyncio: the transport's buffer (as far as one
        # message past high water), and the newest message held in front of it.
        assert peak <= high + (size + 4) * (1 if engine == "select" else 2)
        numbers = read_numbers(sock, until=count)
        assert numbers[-1] == count - 1  # the newest is never the one dropped
        assert numbers == sorted(numbers) and len(numbers) == count - total.dropped
        assert numbers != list(range(len(numbers)))  # not the oldest only: those dropped were before the newest
        wait_until(lambda: peer.queued == 0 and len(recorder.events) == 2, what="the queue drained")
        assert [event for event, _ in recorder.events] == ["paused", "resumed"]  # once each, however it was fed
    finally:
        sock.close()


@pytest.mark.parametrize("engine", DROP_OLDEST_VARIANTS)
def test_what_follows_drop_oldest_messages_waits_behind_them(serve: Callable[..., Server], engine: str) -> None:
    high, size, count = 32 * 1024, 1024, 1000
    server = serve(lambda message: None, **engine_options(engine), high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    try:
        total = BroadcastResult()
        for index in range(count):
            total += server.broadcast(numbered(index, size), policy="drop_oldest")
        assert total.dropped > 0
        peer.send(numbered(count, size))  # "close": never dropped, and after every message before it
        server.broadcast(numbered(count + 1, size), policy="drop_oldest")
        numbers = read_numbers(sock, until=count + 2)
        assert numbers[-2:] == [count, count + 1] and numbers == sorted(numbers)
        assert len(numbers) == count + 2 - peer.dropped
    finally:
        sock.close()


@pytest.mark.parametrize("engine", DROP_OLDEST_VARIANTS)
def test_a_close_after_drop_oldest_messages_sends_them_first(serve: Callable[..., Server], engine: str) -> None:
    high, size, count = 32 * 1024, 1024, 1000
    server = serve(lambda message: None, **engine_options(engine), high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    try:
        for index in range(count):
            server.broadcast(numbered(index, size), policy="drop_oldest")
        peer.close()
        numbers = read_numbers(sock, until=count + 1)  # to the end of the stream: the server closes after the last
        assert numbers[-1] == count - 1 and len(numbers) == count - peer.dropped
        wait_until(lambda: server.peers == [], what="the connection closed")
    finally:
        sock.close()


@pytest.mark.parametrize("engine", [variant for variant in DROP_OLDEST_VARIANTS if variant.startswith("asyncio")])
def test_what_waits_behind_held_drop_oldest_messages_counts_to_the_hard_cap(
    serve: Callable[..., Server], engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asyncio's queue in front of the transport counts in `peer.queued`, so towards the hard cap.

    (Not on select, whose queue has always counted: there the HARD_CAP patch
    has no effect once the module is compiled.)
    """
    cap, high, size = 256 * 1024, 32 * 1024, 1024
    monkeypatch.setattr("connecteur.server.asyncio.HARD_CAP", cap)
    closed: list[BaseException | None] = []

    class Watch:
        def received(self, peer: Peer, message: bytes) -> None:
            return None

        def closed(self, peer: Peer, error: BaseException | None) -> None:
            closed.append(error)

    server = serve(Watch(), **engine_options(engine), high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    try:
        for index in range(1000):  # the queue passes high water: drop_oldest messages wait in front of it
            server.broadcast(numbered(index, size), policy="drop_oldest")
        assert peer.dropped > 0
        for index in range(1000):  # "close": each waits behind them, undroppable, and counts
            try:
                peer.send(numbered(index, size))
            except connecteur.ConnectionClosed:
                break  # closed at the cap by the loop, before its closed() hook ran
            if closed:
                break
        wait_until(lambda: closed, what="the slow peer closed at the hard cap")
        assert "limit is" in str(closed[0])
    finally:
        sock.close()


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_peer_send_applies_its_policy(serve: Callable[..., Server], engine: str) -> None:
    high = 32 * 1024
    server = serve(lambda message: None, engine=engine, high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    try:
        for _ in range(1000):
            peer.send(b"y" * 1024, policy="drop")
        wait_until(lambda: peer.dropped > 0, what="drops")  # from this thread, the loop applies it soon after
        assert peer.queued <= high + 1024 + 4
        with pytest.raises(ValueError, match="unknown slow-consumer policy"):
            peer.send(b"z", policy="sometimes")
    finally:
        sock.close()


def patch_hard_cap(monkeypatch: pytest.MonkeyPatch, engine: str, cap: int) -> None:
    """Lower `engine`'s 16 MiB hard cap for a test (the real one would take long to fill)."""
    if connecteur.COMPILED and engine in ("select", "threads"):
        pytest.skip(f"compiled, the {engine} engine reads HARD_CAP as a C constant: a patch cannot lower it")
    monkeypatch.setattr(HARD_CAP_OF[engine], cap)


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_close_disconnects_the_slow_peer_at_the_hard_cap(
    serve: Callable[..., Server], engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 256 * 1024
    patch_hard_cap(monkeypatch, engine, cap)
    closed: list[BaseException | None] = []

    class Watch:
        def received(self, peer: Peer, message: bytes) -> None:
            return None

        def closed(self, peer: Peer, error: BaseException | None) -> None:
            closed.append(error)

    server = serve(Watch(), engine=engine, high_water=32 * 1024, low_water=8 * 1024)
    sock, _ = slow_socket(server)
    try:
        total = BroadcastResult()
        for _ in range(4000):
            total += server.broadcast(b"z" * 1024)
            if total.closed:
                break
        wait_until(lambda: closed, what="the slow peer closed")
        assert "limit is" in str(closed[0]) and total.dropped == 0
    finally:
        sock.close()


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_queued_copies_count_against_max_buffered(serve: Callable[..., Server], engine: str) -> None:
    budget = 1024 * 1024
    closed: list[BaseException | None] = []

    class Watch:
        def received(self, peer: Peer, message: bytes) -> None:
            return None

        def closed(self, peer: Peer, error: BaseException | None) -> None:
            closed.append(error)

    # "close" with the 16 MiB hard cap: only the budget can stop these queues.
    server = serve(Watch(), engine=engine, max_buffered=budget, high_water=256 * 1024, low_water=64 * 1024)
    slow = [client_socket(server) for _ in range(3)]
    try:
        wait_until(lambda: len(server.peers) == 3, what="three peers")
        for _ in range(1000):  # 3 x 1 MiB over what the kernel takes: past the budget
            server.broadcast(b"w" * 4096)
            if server.stats.queued > budget:
                break
        assert server.stats.queued > budget
        # BUDGET_GRACE (1 s) later, the largest holders are closed until the server is under its budget.
        # closed() runs just after the queue is let go: wait for it too.
        wait_until(lambda: closed and server.stats.evicted > 0 and server.stats.queued <= budget, what="eviction")
        assert all("max_buffered" in str(error) for error in closed)
    finally:
        for sock in slow:
            sock.close()


# --- the proof: one reader that never reads, many that do -----------------------------------


class Readers:
    """`count` clients read by one thread: the numbers of the messages each received, in order."""

    def __init__(self, server: Server, count: int) -> None:
        self.sockets = [client_socket(server) for _ in range(count)]
        self.numbers: list[list[int]] = [[] for _ in range(count)]
        self._decoders = [LengthPrefixed().decoder() for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readers")

    def __enter__(self) -> Readers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for sock in self.sockets:
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for index, sock in enumerate(self.sockets):
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, index)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    try:
                        data = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    messages = self._decoders[key.data].feed(data)
                    self.numbers[key.data].extend(int.from_bytes(m[:4], "big") for m in messages)

    def have(self, count: int) -> bool:
        """True once every reader has `count` messages."""
        return all(len(numbers) >= count for numbers in self.numbers)


PROOF_READERS = 100 if LONG_TESTS else 20
"""The issue asks for 100 readers: ~5 s per case on 2 busy cores, so 20 unless CONNECTEUR_LONG_TESTS=1."""
PROOF_MESSAGES = 400
PROOF_SIZE = 2048
"""400 messages of 2 KiB: 800 KiB each, several times what the kernel takes for the slow reader (~200 KiB)."""


@pytest.mark.parametrize(
    ("engine", "policy"),
    [
        ("select", "drop"),
        ("select", "drop_oldest"),
        ("asyncio", "drop"),
        ("asyncio", "drop_oldest"),
        ("threads", "drop"),
        ("threads", "drop_oldest"),
        ("select", "close"),
        ("asyncio", "close"),
        ("threads", "close"),
    ],
)
def test_one_slow_reader_among_many_gets_its_policy_and_slows_no_one(
    serve: Callable[..., Server], engine: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    high, cap, framed = 128 * 1024, 256 * 1024, PROOF_SIZE + 4
    patch_hard_cap(monkeypatch, engine, cap)
    server = serve(lambda message: None, engine=engine, high_water=high, low_water=high // 4)
    slow, slow_peer = slow_socket(server)
    try:
        with Readers(server, PROOF_READERS) as readers:
            wait_until(lambda: len(server.peers) == PROOF_READERS + 1, what="every peer")
            total, peak_slow, peak_all = BroadcastResult(), 0, 0
            for index in range(PROOF_MESSAGES):  # at full speed: each call returns once the loop queued it
                total += server.broadcast(numbered(index, PROOF_SIZE), policy=policy)
                peak_slow = max(peak_slow, slow_peer.queued)
                peak_all = max(peak_all, server.stats.queued)
            wait_until(lambda: readers.have(PROOF_MESSAGES), what="every reader's messages")
            for numbers in readers.numbers:
                assert numbers == list(range(PROOF_MESSAGES))
        if policy == "close":
            assert total.closed == 1 and slow_peer.dropped == 0 and peak_slow <= cap + framed
        else:
            # asyncio's drop_oldest: the transport's buffer, and the newest message held in front of it
            held = framed if (engine, policy) == ("asyncio", "drop_oldest") else 0
            assert slow_peer.dropped == total.dropped > 0 and peak_slow <= high + framed + held
        assert peak_all <= PROOF_READERS * high + cap + framed  # every queue under its bound, together
        print(
            f"\n{engine} {policy}, {PROOF_READERS} readers: delivered {total.delivered}, dropped {total.dropped}, "
            f"closed {total.closed}, slow peer's peak {peak_slow} B, all queues' peak {peak_all} B"
        )
    finally:
        slow.close()


# --- select: queued messages leave several to a sendmsg ----------------------------------------


def patterned(index: int, size: int) -> bytes:
    """Message `index` of `size` bytes: its number, then a byte that tells it from its neighbours."""
    return index.to_bytes(4, "big") + bytes([index % 251]) * (size - 4)


@pytest.mark.parametrize("seed", range(3))
def test_batched_writes_keep_the_stream_whole_across_partial_writes_and_drops(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A property of the select engine's gathering writes, for random messages and a slow reader.

    The server's socket takes a few KiB at a time (a tiny SO_SNDBUF), so that
    nearly every ``sendmsg`` of queued messages is partial, ending inside one
    of them or between two; meanwhile "drop_oldest" drops whole ones that
    went back to the queue unsent. The reader must receive exactly the
    messages sent, in order, whole, minus those counted as dropped, and never
    one sent with "close".
    """
    configure_stream = connecteur._socket.configure_stream

    def tiny_send_buffer(sock: socket.socket, keepalive: Any = None) -> None:
        configure_stream(sock, keepalive)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(connecteur._socket, "configure_stream", tiny_send_buffer)
    rng = random.Random(seed)
    server = serve(lambda message: None, engine="select", high_water=16 * 1024, low_water=4 * 1024)
    sock, peer = slow_socket(server)
    count = 600
    sizes = [rng.randint(4, 3000) for _ in range(count)]
    policies = ["close" if rng.random() < 0.2 or index == count - 1 else "drop_oldest" for index in range(count)]
    received: list[bytes] = []
    decoder, reads = LengthPrefixed().decoder(), random.Random(seed)

    def read_slowly() -> None:
        while not received or int.from_bytes(received[-1][:4], "big") != count - 1:
            data = sock.recv(reads.randint(1, 8192))
            if not data:
                return
            received.extend(decoder.feed(data))
            threading.Event().wait(0.0005)  # slower than the broadcasts: the queue fills, and drops

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        dropped = sum(
            server.broadcast(patterned(index, size), policy=policy).dropped
            for index, (size, policy) in enumerate(zip(sizes, policies, strict=True))
        )
    finally:
        reader.join(TIMEOUT)
        sock.close()
    numbers = [int.from_bytes(message[:4], "big") for message in received]
    assert all(message == patterned(number, sizes[number]) for number, message in zip(numbers, received, strict=True))
    assert numbers == sorted(set(numbers)) and decoder.buffered == 0  # in order, once each, nothing cut
    assert {index for index, policy in enumerate(policies) if policy == "close"} <= set(numbers)
    assert dropped == peer.dropped > 0 and len(numbers) == count - dropped


# --- nothing waits for a slow peer, on the threads engine too --------------------------------


def read_messages(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` messages from `sock` (fewer if the server closes first)."""
    decoder, messages = LengthPrefixed().decoder(), []
    sock.settimeout(TIMEOUT)
    while len(messages) < count:
        data = sock.recv(65536)
        if not data:
            break
        messages.extend(decoder.feed(data))
    return messages


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_a_reader_that_never_reads_does_not_hold_up_a_broadcast(serve: Callable[..., Server], engine: str) -> None:
    count, size = 600, 2048  # 1.2 MiB: several times what the kernel takes for the slow reader (~200 KiB)
    server = serve(lambda message: None, engine=engine, high_water=4 * 2**20, low_water=2**20)
    slow, slow_peer = slow_socket(server)
    try:
        with Readers(server, 3) as readers:
            wait_until(lambda: len(server.peers) == 4, what="every peer")
            results: list[BroadcastResult] = []
            broadcaster = threading.Thread(
                target=lambda: results.extend(server.broadcast(numbered(i, size)) for i in range(count))
            )
            broadcaster.start()
            # A send that waited for the slow reader would hold this thread until the slow socket closes below.
            broadcaster.join(TIMEOUT)
            assert not broadcaster.is_alive(), "a broadcast waited for the reader that does not read"
            assert sum(results, BroadcastResult()) == BroadcastResult(delivered=4 * count)
            wait_until(lambda: readers.have(count), what="every reader's messages")
            assert all(numbers == list(range(count)) for numbers in readers.numbers)
            # Meanwhile the slow one took nothing more: the rest of its copies wait, queued in the server.
            assert slow_peer.queued > 0 and server.stats.queued >= slow_peer.queued
        assert read_numbers(slow, until=count) == list(range(count))  # and it gets them all once it reads
    finally:
        slow.close()


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_replies_and_broadcasts_to_one_peer_stay_whole_and_in_order(serve: Callable[..., Server], engine: str) -> None:
    count, size = 300, 1024  # each side's 300 KiB: more than the client's socket takes unread, so both queue
    server = serve(lambda message: b"R" + message[1:], engine=engine)
    sock = client_socket(server)
    try:
        wait_until(lambda: len(server.peers) == 1, what="the peer")
        broadcaster = threading.Thread(
            target=lambda: [server.broadcast(b"B" + numbered(i, size)) for i in range(count)]
        )
        broadcaster.start()
        sock.sendall(b"".join(LengthPrefixed().encode(b"Q" + numbered(i, size)) for i in range(count)))
        broadcaster.join(TIMEOUT)
        messages = read_messages(sock, 2 * count)
        assert len(messages) == 2 * count and {len(message) for message in messages} == {size + 1}  # none cut
        numbers: dict[bytes, list[int]] = {b"R": [], b"B": []}
        for message in messages:
            numbers[message[:1]].append(int.from_bytes(message[1:5], "big"))
        assert numbers == {b"R": list(range(count)), b"B": list(range(count))}
    finally:
        sock.close()


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_a_peer_closing_mid_broadcast_leaves_the_others_whole(serve: Callable[..., Server], engine: str) -> None:
    count, size = 400, 2048  # half of it, 400 KiB, leaves copies queued for the peer that does not read
    server = serve(lambda message: None, engine=engine)
    quitter, quitter_peer = slow_socket(server)
    halfway, left = threading.Event(), threading.Event()
    results: list[BroadcastResult] = []

    def broadcast_all() -> None:
        for index in range(count):
            if index == count // 2:
                halfway.set()
                left.wait(TIMEOUT)
            results.append(server.broadcast(numbered(index, size)))

    broadcaster = threading.Thread(target=broadcast_all, daemon=True)  # daemon: it may wait for a slow peer
    try:
        with Readers(server, 5) as readers:
            wait_until(lambda: len(server.peers) == 6, what="every peer")
            broadcaster.start()
            wait_until(lambda: halfway.is_set() and quitter_peer.queued > 0, what="copies queued for the quitter")
            quitter.close()  # with copies unread: a reset, while the server still has some to write
            left.set()
            broadcaster.join(TIMEOUT)
            assert not broadcaster.is_alive()
            wait_until(lambda: readers.have(count), what="every reader's messages")
            assert all(numbers == list(range(count)) for numbers in readers.numbers)
            total = sum(results, BroadcastResult())
            assert total.delivered >= 5 * count and total.dropped == 0
            wait_until(lambda: len(server.peers) == 5, what="the quitter to be gone")
    finally:
        left.set()
        quitter.close()


class Flood:
    """A handler that sends `count` numbered messages to a peer that does not read yet, under `policy`."""

    def __init__(self, flag: Path, policy: str, count: int) -> None:
        self.flag, self.policy, self.count = flag, policy, count

    def received(self, peer: Peer, message: bytes) -> bytes:
        for index in range(self.count):
            peer.send(numbered(index, 1024), policy=self.policy)
        self.flag.touch()  # the client reads once it is all sent or dropped
        return b"done %d" % peer.dropped


@pytest.mark.parametrize("engine", ["threads", "processes"])
@pytest.mark.parametrize("policy", ["drop", "drop_oldest"])
def test_the_blocking_engines_apply_a_policy_to_peer_send(
    serve: Callable[..., Server], engine: str, policy: str, tmp_path: Path
) -> None:
    count, flag = 2000, tmp_path / "flooded"
    server = serve(Flood(flag, policy, count), engine=engine, high_water=64 * 1024, low_water=16 * 1024)
    sock = client_socket(server)
    try:
        sock.sendall(LengthPrefixed().encode(b"flood"))
        wait_until(flag.exists, what="the flood")  # 2 MiB sent while the client reads nothing
        decoder, messages = LengthPrefixed().decoder(), []
        while not messages or not messages[-1].startswith(b"done"):
            data = sock.recv(65536)
            assert data, "closed before the reply"
            messages.extend(decoder.feed(data))
        dropped = int(messages[-1].split()[1])
        numbers = [int.from_bytes(message[:4], "big") for message in messages[:-1]]
        assert 0 < dropped == count - len(numbers) and numbers == sorted(numbers)
        if policy == "drop_oldest":
            assert numbers[-1] == count - 1  # the newest is never the one dropped
    finally:
        sock.close()


class Echo(Recorder):
    """A `Recorder` that answers each request with itself."""

    def received(self, peer: Peer, message: bytes) -> bytes:
        return message


@pytest.mark.parametrize("engine", QUEUING_ENGINES)
def test_a_client_that_does_not_read_its_replies_is_no_longer_read(serve: Callable[..., Server], engine: str) -> None:
    high, size, count = 64 * 1024, 1024, 2048  # 2 MiB of requests: far more than the marks and the kernel hold
    recorder = Echo()
    server = serve(recorder, engine=engine, high_water=high, low_water=high // 4)
    sock, peer = slow_socket(server)
    requests = b"".join(LengthPrefixed().encode(numbered(index, size)) for index in range(count))
    sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)  # blocks while not read
    try:
        sender.start()
        wait_until(lambda: recorder.events, what="paused")
        # One read's replies at most past the mark (256 KiB: the event loops' read; 64 KiB on threads)...
        assert recorder.events[0][0] == "paused" and high < peer.queued <= high + 256 * 1024 + size + 4
        assert sender.is_alive()  # ...and the rest of the requests wait in the kernel: the peer is not read
        assert read_numbers(sock, until=count) == list(range(count))  # once it reads, it gets every reply
        sender.join(TIMEOUT)
        wait_until(lambda: recorder.events[-1][0] == "resumed", what="resumed")
        names = [name for name, _ in recorder.events]
        assert names == ["paused", "resumed"] * (len(names) // 2)  # in turn, however often it paused
    finally:
        sock.close()
