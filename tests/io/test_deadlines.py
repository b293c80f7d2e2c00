"""Timeouts are deadlines, in both clients: a whole call, a whole connect, and a reply that answers its own request.

The peers are plain sockets driven by threads, so the same peer serves the
blocking client and the asyncio one. Durations are never asserted tightly:
each bound sits far below what the call took before it was a deadline (a
trickle that needs 20 s, a connect that waited a whole timeout per address),
and far above what a busy machine adds to a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import connecteur
from connecteur import ConnectionClosed, Server, Timeout, _socket, aio
from connecteur.address import TcpAddress
from tests.support import TIMEOUT

CLIENTS = ["blocking", "aio"]


def run(coroutine: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine(), TIMEOUT))


# --- peers -------------------------------------------------------------------------


@contextlib.contextmanager
def peer(script: Callable[[socket.socket, threading.Event], None], *, rcvbuf: int | None = None) -> Iterator[Any]:
    """A listener on 127.0.0.1 whose first connection runs ``script(sock, stop)`` in a thread.

    Yields the address. At the end `stop` is set, so a pacing script returns,
    and the thread is joined.
    """
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        if rcvbuf is not None:  # inherited by the accepted socket, before the handshake sets the window
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            with contextlib.suppress(OSError), listener.accept()[0] as sock:
                sock.settimeout(TIMEOUT)
                script(sock, stop)

        thread = threading.Thread(target=serve, name="scripted peer", daemon=True)
        thread.start()
        try:
            yield listener.getsockname()
        finally:
            stop.set()
            thread.join(TIMEOUT)


def trickle_reply(sock: socket.socket, stop: threading.Event) -> None:
    """Read the request, then announce a 100-byte reply and send it one byte every 0.2 s: 20 s in all."""
    sock.recv(65536)
    sock.sendall(b"\x00\x00\x00\x64")
    for _ in range(100):
        if stop.wait(0.2):  # pacing; ends as soon as the test is done
            return
        sock.sendall(b"x")


def drain_later(sock: socket.socket, stop: threading.Event) -> None:
    """Read nothing for 2 s, then read everything and never answer."""
    if stop.wait(2.0):
        return
    while not stop.is_set() and sock.recv(2**20):
        pass


def read_slowly(sock: socket.socket, stop: threading.Event) -> None:
    """Read 64 KiB every 50 ms (about 1.3 MB/s) until the client goes."""
    while not stop.wait(0.05) and sock.recv(64 * 2**10):
        pass


def call(client: str, address: Any, method: str, *args: Any, **options: Any) -> Any:
    """Connect with `client`, call `method` once, close; return what it returned."""
    if client == "blocking":
        with connecteur.connect(address, **options) as conn:
            return getattr(conn, method)(*args)

    async def main() -> Any:
        async with await aio.connect(address, **options) as conn:
            return await getattr(conn, method)(*args)

    return run(main)


# --- 5. a whole call within its timeout ----------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("method", ["request", "recv"])
def test_a_trickled_reply_times_out_at_the_deadline(client: str, method: str) -> None:
    """A reply trickled over 20 s: Timeout long before, although every read returns within 0.2 s.

    The asyncio client used to restart its timeout on every chunk and ran for the whole 20 s.
    """
    with peer(trickle_reply) as address:
        started = time.monotonic()
        if method == "recv":
            with pytest.raises(Timeout):
                call_after_send(client, address, timeout=1.0)
        else:
            with pytest.raises(Timeout):
                call(client, address, "request", b"go", timeout=1.0)
        assert time.monotonic() - started < 8.0  # the deadline is 1 s; the trickle needs 20


def call_after_send(client: str, address: Any, **options: Any) -> Any:
    """send(b"go") then recv(): the recv alone must time out."""
    if client == "blocking":
        with connecteur.connect(address, **options) as conn:
            conn.send(b"go")
            return conn.recv()

    async def main() -> Any:
        async with await aio.connect(address, **options) as conn:
            await conn.send(b"go")
            return await conn.recv()

    return run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_request_has_one_deadline_for_sending_and_receiving(client: str) -> None:
    """The request takes 2 s to go out, the reply never comes: Timeout at 3 s, not 2 + 3.

    A 12 MiB request (more than the kernel's buffers take: 4 MiB of send buffer at most here)
    to a peer that reads nothing for 2 s waits to go out; it then has 1 s left for the reply.
    """
    with peer(drain_later, rcvbuf=64 * 2**10) as address:
        started = time.monotonic()
        with pytest.raises(Timeout):
            call(client, address, "request", b"x" * 12 * 2**20, timeout=3.0)
        assert time.monotonic() - started < 4.5  # 3 s; 5 s when each part had its own timeout


def test_send_many_has_one_deadline_for_all_its_writes() -> None:
    """10 MiB to a peer reading 1.3 MB/s: each 256 KiB write takes 0.2 s, the whole 8 s; timeout 1 s.

    Each write used to get the whole timeout, so the call ran for 8 s and never timed out.
    """
    messages = [b"m" * 64 * 2**10] * 160
    with peer(read_slowly, rcvbuf=64 * 2**10) as address:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 2**10)
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        with connecteur.Connection(sock, timeout=1.0) as conn:
            started = time.monotonic()
            with pytest.raises(Timeout):
                conn.send_many(messages)
            assert time.monotonic() - started < 5.0
            assert conn.is_closed  # the stream stopped inside a message


def test_one_send_to_a_slow_reader_times_out_at_the_deadline() -> None:
    """send() of 10 MiB to the same slow reader: Timeout near 1 s (sendall's timeout is a deadline)."""
    with peer(read_slowly, rcvbuf=64 * 2**10) as address:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 2**10)
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        with connecteur.Connection(sock, timeout=1.0) as conn:
            started = time.monotonic()
            with pytest.raises(Timeout):
                conn.send(b"m" * 10 * 2**20)
            assert time.monotonic() - started < 5.0


# --- 7. one deadline for the connect, across the addresses of a name --------------------


@pytest.fixture
def dead() -> Iterator[Callable[[str], tuple[str, int]]]:
    """Make addresses that drop SYNs: listeners with `listen(0)` and a full accept queue.

    Linux drops a SYN for a full queue (unless ``tcp_abort_on_overflow``), so a
    connect to one waits, retransmitting, like one to a host that is down.
    """
    if sys.platform != "linux":
        pytest.skip("relies on Linux dropping SYNs when the accept queue is full")
    with open("/proc/sys/net/ipv4/tcp_abort_on_overflow") as flag:
        if flag.read().strip() != "0":
            pytest.skip("tcp_abort_on_overflow is set: a full queue resets instead of dropping")
    sockets: list[socket.socket] = []

    def make(host: str) -> tuple[str, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(listener)
        listener.bind((host, 0))
        listener.listen(0)
        for index in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(filler)
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            if index == 0:  # the first fills the queue: wait until it is in
                assert select_writable(filler), "the first filler did not connect"
        return listener.getsockname()

    try:
        yield make
    finally:
        for sock in sockets:
            sock.close()


def select_writable(sock: socket.socket) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        return bool(selector.select(TIMEOUT))


@pytest.fixture
def name(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[tuple[str, int]]], str]:
    """Make ``several.test`` resolve to the given loopback addresses (IPv4), in that order."""
    real = socket.getaddrinfo

    def use(addresses: list[tuple[str, int]]) -> str:
        def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != "several.test":
                return real(host, port, *args, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return "several.test:1"  # the port is the fake's business

    return use


def open_with(client: str, address: str, **options: Any) -> Any:
    """Connect with `client`; return the peer address the connection got."""
    if client == "blocking":
        with connecteur.connect(address, **options) as conn:
            return conn.address

    async def main() -> Any:
        async with await aio.connect(address, **options) as conn:
            return conn.address

    return run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_two_dead_addresses_then_a_live_one_connect_at_once(
    client: str, dead: Callable[[str], tuple[str, int]], name: Callable[[list[tuple[str, int]]], str]
) -> None:
    """The live third address is tried 0.5 s in (happy eyeballs), well within the timeout.

    It used to wait a whole timeout for each dead address first: 2 x TIMEOUT.
    """
    with socket.create_server(("127.0.0.4", 0)) as live:
        address = name([dead("127.0.0.2"), dead("127.0.0.3"), live.getsockname()])
        descriptors = open_descriptors()
        started = time.monotonic()
        assert open_with(client, address, timeout=TIMEOUT) == live.getsockname()
        assert time.monotonic() - started < TIMEOUT / 2
        assert open_descriptors() == descriptors  # the losing attempts were closed


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("client", CLIENTS)
def test_all_dead_time_out_once_for_the_whole_connect(
    client: str, dead: Callable[[str], tuple[str, int]], name: Callable[[list[tuple[str, int]]], str]
) -> None:
    """Four addresses that drop SYNs, timeout 1.5 s: Timeout near 1.5 s (it was 6 s), naming all four."""
    addresses = [dead(f"127.0.0.{host}") for host in (2, 3, 4, 5)]
    address = name(addresses)
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        open_with(client, address, timeout=1.5)
    assert time.monotonic() - started < 4.5
    assert info.value.seconds == 1.5
    for host, port in addresses:
        assert f"{host}:{port}" in str(info.value)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_address_refused_raises_connection_refused_naming_each(
    client: str, name: Callable[[list[tuple[str, int]]], str]
) -> None:
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.2", 0))  # bound, never listening: refuses
        two.bind(("127.0.0.3", 0))
        addresses = [one.getsockname(), two.getsockname()]
        with pytest.raises(ConnectionRefusedError) as info:
            open_with(client, name(addresses), timeout=TIMEOUT)
    for host, port in addresses:
        assert f"{host}:{port}" in str(info.value)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_refused_first_address_moves_on_at_once(client: str, name: Callable[[list[tuple[str, int]]], str]) -> None:
    """Without the attempt delay either: a refusal starts the next address now."""
    with socket.socket() as refusing, socket.create_server(("127.0.0.3", 0)) as live:
        refusing.bind(("127.0.0.2", 0))
        address = name([refusing.getsockname(), live.getsockname()])
        assert open_with(client, address, timeout=TIMEOUT, happy_eyeballs_delay=None) == live.getsockname()


def test_the_families_are_interleaved_starting_with_the_first() -> None:
    """RFC 8305 section 4: getaddrinfo's IPv6-first list becomes v6, v4, v6, v4, v4."""
    v6, v4 = socket.AF_INET6, socket.AF_INET
    targets = [(v6, ("::1", 1)), (v6, ("::2", 1)), (v4, ("1.0.0.1", 1)), (v4, ("1.0.0.2", 1)), (v4, ("1.0.0.3", 1))]
    assert [target[1][0] for target in _socket.interleave(targets)] == ["::1", "1.0.0.1", "::2", "1.0.0.2", "1.0.0.3"]
    assert _socket.interleave(targets[2:]) == targets[2:]


def test_resolve_interleaves_what_getaddrinfo_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 7, 0, 0)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::2", 7, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 7)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: infos)
    assert [target for _, target in _socket.resolve(TcpAddress("several.test", 7))] == [
        ("::1", 7, 0, 0),
        ("127.0.0.1", 7),
        ("::2", 7, 0, 0),
    ]


# --- 8. a reply answers its own request ------------------------------------------------


def slow_or_fast(message: bytes) -> bytes:
    if message == b"slow":
        time.sleep(1.0)
    return message


@pytest.fixture
def slow_server() -> Iterator[Server]:
    with Server(slow_or_fast, "127.0.0.1:0", engine="threads") as server:
        yield server


def test_after_a_request_timeout_the_next_request_cannot_get_the_stale_reply(slow_server: Server) -> None:
    """request(b"slow") times out: the connection is closed, and request(b"fast") says why.

    It used to return b"slow": the late reply to the request that timed out.
    """
    with connecteur.connect(slow_server.address, timeout=0.3) as conn:
        with pytest.raises(Timeout, match="connection is closed"):
            conn.request(b"slow")
        assert conn.is_closed
        conn.timeout = TIMEOUT
        with pytest.raises(ConnectionClosed, match=r"request\(\) timed out") as info:
            conn.request(b"fast")
        assert info.value.by_peer is False
        with pytest.raises(ConnectionClosed, match=r"request\(\) timed out"):
            conn.recv()


def test_aio_after_a_request_timeout_the_next_request_cannot_get_the_stale_reply(slow_server: Server) -> None:
    async def main() -> None:
        async with await aio.connect(slow_server.address, timeout=0.3) as conn:
            with pytest.raises(Timeout, match="connection is closed"):
                await conn.request(b"slow")
            assert conn.is_closed
            with pytest.raises(ConnectionClosed, match=r"request\(\) timed out") as info:
                await conn.request(b"fast")
            assert info.value.by_peer is False
            with pytest.raises(ConnectionClosed, match=r"request\(\) timed out"):
                await conn.recv()

    run(main)


def test_aio_a_cancelled_request_closes_the_connection(slow_server: Server) -> None:
    """The caller's own timeout (wait_for) leaves the reply owed just the same."""

    async def main() -> None:
        async with await aio.connect(slow_server.address, timeout=TIMEOUT) as conn:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.request(b"slow"), 0.3)
            assert conn.is_closed
            with pytest.raises(ConnectionClosed, match=r"request\(\) was cancelled"):
                await conn.request(b"fast")

    run(main)


@pytest.mark.parametrize("client", CLIENTS)
def test_send_then_recv_may_keep_waiting_after_a_recv_timeout(client: str, slow_server: Server) -> None:
    """With nothing owed by the library, a recv() timeout leaves the connection usable: the reply still comes."""
    attempts = int(TIMEOUT / 0.3)  # the reply comes after 1 s; this bounds the loop

    if client == "blocking":
        with connecteur.connect(slow_server.address, timeout=0.3) as conn:
            conn.send(b"slow")
            with pytest.raises(Timeout):
                conn.recv()
            for _ in range(attempts):
                with contextlib.suppress(Timeout):
                    assert conn.recv() == b"slow"
                    break
            else:
                pytest.fail("the late reply never came")
            assert conn.request(b"fast") == b"fast"
        return

    async def main() -> None:
        async with await aio.connect(slow_server.address, timeout=0.3) as conn:
            await conn.send(b"slow")
            with pytest.raises(Timeout):
                await conn.recv()
            for _ in range(attempts):
                with contextlib.suppress(Timeout):
                    assert await conn.recv() == b"slow"
                    break
            else:
                pytest.fail("the late reply never came")
            assert await conn.request(b"fast") == b"fast"

    run(main)
