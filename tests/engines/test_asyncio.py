"""What only the asyncio engine promises: async handlers in order, flow control, loops."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import sys
import threading
import time

import pytest

from connecteur import ConnectionClosed, Peer, Server, connect
from connecteur.framing import LengthPrefixed
from connecteur.server.asyncio import AsyncioEngine, loop_factory
from connecteur.server.select import HIGH_WATER, RECV_SIZE
from connecteur.tools.apps import echo
from tests.engines.conftest import VARIANTS
from tests.support import TIMEOUT, recv_until_closed, wait_until

LOOPS = ["asyncio", "uvloop"] if "asyncio@uvloop" in VARIANTS else ["asyncio"]


async def shuffled_upper(message: bytes) -> bytes:
    await asyncio.sleep(random.random() * 0.003)  # later requests often finish first
    return message.upper()


@pytest.mark.parametrize("loop", LOOPS)
def test_async_replies_leave_in_request_order(loop: str) -> None:
    with (
        Server(shuffled_upper, "127.0.0.1:0", engine="asyncio", loop=loop) as server,
        connect(server.address, timeout=TIMEOUT) as conn,
    ):
        messages = [b"request %d" % i for i in range(500)]
        conn.send_many(messages)
        assert [conn.recv() for _ in messages] == [m.upper() for m in messages]


@pytest.mark.parametrize("loop", LOOPS)
def test_mixed_sync_and_async_replies_keep_their_order(loop: str) -> None:
    def mixed(message: bytes) -> object:
        return shuffled_upper(message) if int(message) % 3 == 0 else message.upper()

    with (
        Server(mixed, "127.0.0.1:0", engine="asyncio", loop=loop) as server,
        connect(server.address, timeout=TIMEOUT) as conn,
    ):
        messages = [b"%d" % i for i in range(300)]
        conn.send_many(messages)
        assert [conn.recv() for _ in messages] == messages


@pytest.mark.parametrize("loop", LOOPS)
def test_no_reply_sync_and_async_replies_in_one_read_keep_their_order(loop: str) -> None:
    """The plain-handler fast path stops at the first awaitable: the messages after it are the right ones."""

    def mixed(message: bytes) -> object:
        n = int(message)
        if n % 5 == 0:
            return None
        return shuffled_upper(message) if n % 3 == 0 else message + b"!"

    with (
        Server(mixed, "127.0.0.1:0", engine="asyncio", loop=loop) as server,
        connect(server.address, timeout=TIMEOUT) as conn,
    ):
        messages = [b"%d" % i for i in range(4, 304)]  # 5: no reply, then 6: the first awaitable
        conn.send_many(messages)
        expected = [m if int(m) % 3 == 0 else m + b"!" for m in messages if int(m) % 5]
        assert [conn.recv() for _ in expected] == expected


def test_async_hooks_and_an_async_handler_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []

    class Hub:
        async def connected(self, peer: Peer) -> None:
            await asyncio.sleep(0.01)
            events.append("connected")

        async def received(self, peer: Peer, message: bytes) -> bytes:
            if message == b"boom":
                raise RuntimeError("async handler bug")
            return b"after " + b",".join(e.encode() for e in events)

        async def closed(self, peer: Peer, error: BaseException | None) -> None:
            events.append(f"closed {type(error).__name__}")

    with (
        caplog.at_level(logging.ERROR, logger="connecteur.server"),
        Server(Hub(), "127.0.0.1:0", engine="asyncio") as server,
    ):
        with connect(server.address, timeout=TIMEOUT) as conn:
            assert conn.request(b"first") == b"after connected"  # connected() finished first
            conn.send(b"boom")
            with pytest.raises(ConnectionClosed):
                conn.recv()
        wait_until(lambda: server.stats.errors == 1, what="the error counted")
        wait_until(lambda: len(events) == 2, what="the async closed() hook")
    assert events == ["connected", "closed RuntimeError"]
    assert any(isinstance(r.exc_info[1], RuntimeError) for r in caplog.records if r.exc_info)  # type: ignore[index]


def test_an_async_handler_on_a_thread_engine_is_refused_clearly(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="connecteur.server"),
        Server(shuffled_upper, "127.0.0.1:0", engine="select") as server,
        connect(server.address, timeout=TIMEOUT) as conn,
        pytest.raises(ConnectionClosed),
    ):
        conn.request(b"x")
    assert any("needs engine='asyncio'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_never_reads_cannot_grow_the_write_buffer(loop: str) -> None:
    wire = LengthPrefixed().encode(b"x" * 65536)
    with Server(echo, "127.0.0.1:0", engine="asyncio", loop=loop) as server:
        engine = server._engine
        assert isinstance(engine, AsyncioEngine)
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                for link in list(engine._links):
                    transport = link._transport
                    if transport is not None and not transport.is_closing():
                        peak = max(peak, transport.get_write_buffer_size())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        sock = socket.create_connection(server.address, timeout=0.5)
        sent = 0
        try:
            try:
                while sent < 4096:  # 256 MiB, far more than any buffer on the way
                    sock.sendall(wire)
                    sent += 1
            except TimeoutError:
                pass  # the server stopped reading us
            assert sent < 1024
            assert 0 < peak <= HIGH_WATER + RECV_SIZE + 2 * len(wire)
            sock.settimeout(TIMEOUT)
            sock.shutdown(socket.SHUT_WR)
            assert len(recv_until_closed(sock)) >= sent * len(wire)
        finally:
            stop.set()
            watcher.join(TIMEOUT)
            sock.close()


def test_uvloop_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    with pytest.raises(ValueError, match=r"uvloop is not installed: pip install 'connecteur\[uvloop\]'"):
        Server(echo, "127.0.0.1:0", engine="asyncio", loop="uvloop")
    with pytest.raises(ValueError, match="unknown loop"):
        loop_factory("trio")
    with pytest.raises(ValueError, match="needs engine='asyncio'"):
        Server(echo, "127.0.0.1:0", engine="select", loop="uvloop")
