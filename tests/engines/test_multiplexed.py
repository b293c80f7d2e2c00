"""Multiplexed connections on every engine: request ids, error replies, one-way messages, order."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

import connecteur
from connecteur import ConnectionClosed, Peer, RemoteError, Server, Timeout
from connecteur._envelope import MAX_ONE_WAY
from connecteur.codecs import Json
from tests.engines.conftest import engine_per_family
from tests.support import TIMEOUT, recv_until_closed, wait_until

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]


def upper_or_fail(message: bytes) -> bytes:
    if message == b"fail":
        raise ValueError("asked to fail")
    return message.upper()


def send_envelope(sock: socket.socket, kind: int, request_id: int, payload: bytes = b"") -> None:
    body = struct.pack("!BI", kind, request_id) + payload
    sock.sendall(struct.pack("!I", len(body)) + body)


def read_envelope(sock: socket.socket) -> tuple[int, int, bytes]:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "closed"
            data += chunk
        return data

    (size,) = struct.unpack("!I", exactly(4))
    body = exactly(size)
    kind, request_id = struct.unpack("!BI", body[:5])
    return kind, request_id, body[5:]


def test_replies_carry_their_ids_and_a_failure_answers_only_its_request(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)
    with connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:
        assert conn.request(b"abc") == b"ABC"
        with pytest.raises(RemoteError, match="ValueError: asked to fail") as caught:
            conn.request(b"fail")
        assert caught.value.request_id == 2
        assert conn.request(b"still open") == b"STILL OPEN"


def test_one_way_messages_get_no_reply(serve: Serve) -> None:
    seen: list[bytes] = []

    def handler(message: bytes) -> bytes:
        seen.append(message)
        return str(len(seen)).encode()

    server = serve(handler, multiplexed=True)
    with connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:
        conn.send(b"one")
        conn.send(b"two")
        assert conn.request(b"count") == b"3"  # its reply is the first to come: the one-way ones got none
        assert conn.late_replies == 0


def test_a_timed_out_requests_late_reply_goes_to_nobody(serve: Serve) -> None:
    def slow_first(message: bytes) -> bytes:
        if message == b"slow":
            time.sleep(0.3)
        return message

    server = serve(slow_first, multiplexed=True)
    with connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:
        with pytest.raises(Timeout, match="no reply to request 1"):
            conn.request(b"slow", timeout=0.05)
        assert conn.request(b"next") == b"next"  # not b"slow"
        assert not conn.is_closed
        wait_until(lambda: conn.late_replies == 1, what="the late reply dropped")


def test_values_through_a_codec_and_one_way_messages_from_the_server(serve: Serve) -> None:
    class Pushing:
        def received(self, peer: Peer, value: dict[str, int]) -> dict[str, int]:
            peer.send({"pushed": value["n"]})  # a one-way message to the client
            return {"n": value["n"] + 1}

    server = serve(Pushing(), codec=Json(), multiplexed=True)
    with connecteur.connect(server.address, codec=Json(), multiplexed=True, timeout=TIMEOUT) as conn:
        assert conn.request({"n": 41}) == {"n": 42}
        assert conn.recv() == {"pushed": 41}


def test_pings_get_pongs_and_a_raw_peer_sees_the_documented_bytes(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        send_envelope(sock, 5, 77)  # PING
        send_envelope(sock, 4, 0, b"ignored")  # ONE_WAY
        send_envelope(sock, 1, 9, b"fail")  # REQUEST that fails
        send_envelope(sock, 1, 10, b"x")
        assert read_envelope(sock) == (6, 77, b"")  # PONG
        assert read_envelope(sock)[:2] == (3, 9)  # ERROR
        assert read_envelope(sock) == (2, 10, b"X")  # REPLY


def test_a_client_that_does_not_speak_the_envelope_is_closed(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack("!I", 3) + b"abc")  # a plain message: no 5-byte header
        assert recv_until_closed(sock) == b""


def test_threads_share_one_blocking_connection(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)
    failures: list[BaseException] = []
    with connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:

        def work(n: int) -> None:
            try:
                for i in range(30):
                    message = f"thread {n} request {i}".encode()
                    assert conn.request(message) == message.upper()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not failures


def test_tasks_share_one_aio_connection(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)

    async def main() -> None:
        async with await connecteur.aio.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:

            async def work(n: int) -> None:
                for i in range(10):
                    message = f"task {n} request {i}".encode()
                    assert await conn.request(message) == message.upper()

            await asyncio.gather(*(work(n) for n in range(20)))
            with pytest.raises(RemoteError):
                await conn.request(b"fail")
            assert await conn.request(b"ok") == b"OK"

    asyncio.run(main())


def test_closing_fails_the_requests_in_flight(serve: Serve) -> None:
    release = threading.Event()

    def stuck(message: bytes) -> bytes:
        release.wait(TIMEOUT)
        return message

    server = serve(stuck, multiplexed=True)
    outcome: list[BaseException] = []
    conn = connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT)
    try:

        def wait_for_reply() -> None:
            try:
                conn.request(b"x")
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait_for_reply)
        waiter.start()
        wait_until(lambda: conn.in_flight == 1, what="the request in flight")
        conn.close()  # whether the request is still being sent or waits for its reply
        waiter.join(TIMEOUT)
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosed)
        with pytest.raises(ConnectionClosed, match=r"close\(\)"):
            conn.request(b"y")
    finally:
        release.set()
        conn.close()


def test_async_handlers_answer_as_each_finishes_on_the_asyncio_engine() -> None:
    async def handler(message: bytes) -> bytes:
        await asyncio.sleep(0.3 if message == b"slow" else 0)
        return message

    with (
        Server(handler, "127.0.0.1:0", engine="asyncio", multiplexed=True) as server,
        socket.create_connection(server.address, timeout=TIMEOUT) as sock,
    ):
        send_envelope(sock, 1, 1, b"slow")
        send_envelope(sock, 1, 2, b"fast")
        assert read_envelope(sock) == (2, 2, b"fast")  # overtakes the slow one
        assert read_envelope(sock) == (2, 1, b"slow")


def test_heartbeat_needs_the_envelope() -> None:
    with pytest.raises(ValueError, match="multiplexed"):
        Server(upper_or_fail, "127.0.0.1:0", heartbeat=(1, 1))
    with pytest.raises(ValueError, match="multiplexed"):
        connecteur.connect("127.0.0.1:1", heartbeat=(1, 1))


def test_aio_serve_speaks_the_envelope_too() -> None:
    async def handler(message: bytes) -> bytes:
        await asyncio.sleep(0.2 if message == b"slow" else 0)
        return message

    async def main() -> None:
        async with (
            await connecteur.aio.serve(handler, "127.0.0.1:0", multiplexed=True, heartbeat=(1.0, 1.0)) as server,
            await connecteur.aio.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn,
        ):
            slow = asyncio.ensure_future(conn.request(b"slow"))
            assert await conn.request(b"fast") == b"fast"
            assert not slow.done()  # the fast one overtook it
            assert await slow == b"slow"

    asyncio.run(main())


@pytest.mark.parametrize("engine", ["select", "threads"])
def test_an_async_handler_without_an_event_loop_fails_its_requests_not_the_connection(engine: str) -> None:
    async def handler(message: bytes) -> bytes:
        return message

    with (
        Server(handler, "127.0.0.1:0", engine=engine, multiplexed=True) as server,
        connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn,
    ):
        for _ in range(2):  # the connection stays open
            with pytest.raises(RemoteError, match="engine='asyncio'"):
                conn.request(b"x")


def test_an_aio_request_timed_out_or_cancelled_leaves_a_tombstone() -> None:
    def slow_first(message: bytes) -> bytes:
        if message.startswith(b"slow"):
            time.sleep(0.2)
        return message

    async def main(address: object) -> None:
        async with await connecteur.aio.connect(address, multiplexed=True, timeout=TIMEOUT) as conn:
            with pytest.raises(Timeout, match="no reply to request 1"):
                await conn.request(b"slow 1", timeout=0.02)
            cancelled = asyncio.ensure_future(conn.request(b"slow 2"))
            await asyncio.sleep(0.02)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await conn.request(b"next") == b"next"  # not either late reply
            assert not conn.is_closed and conn.late_replies == 2

    with Server(slow_first, "127.0.0.1:0", engine="threads", multiplexed=True) as server:
        asyncio.run(main(server.address))


def test_one_way_messages_nobody_receives_are_bounded_oldest_dropped_first(serve: Serve) -> None:
    """A client that never calls recv() keeps at most MAX_ONE_WAY of them: its reader cannot stop reading."""
    extra = 5

    class Flooding:
        def received(self, peer: Peer, message: bytes) -> bytes:
            for number in range(MAX_ONE_WAY + extra):
                peer.send(b"%d" % number)
            return b"done"  # after the one-way messages on the wire: they are all in when it arrives

    server = serve(Flooding(), multiplexed=True)
    with connecteur.connect(server.address, multiplexed=True, timeout=TIMEOUT) as conn:
        assert conn.request(b"flood") == b"done"
        assert conn.one_way_dropped == extra
        assert conn.recv() == b"%d" % extra  # the oldest went first

    async def main() -> tuple[int, bytes]:
        conn = await connecteur.aio.connect(server.address, multiplexed=True, timeout=TIMEOUT)
        try:
            assert await conn.request(b"flood") == b"done"
            return conn.one_way_dropped, await conn.recv()
        finally:
            await conn.close()

    assert asyncio.run(main()) == (extra, b"%d" % extra)


def test_requests_in_one_write_are_each_answered_in_order_amid_pings_one_way_messages_and_failures(
    serve: Serve,
) -> None:
    """What threads sharing a connection send: many envelopes in one read, answered by the server's fast path."""

    def handler(message: bytes) -> bytes | None:
        return None if message == b"none" else upper_or_fail(message)

    server = serve(handler, multiplexed=True)
    envelopes = [(1, 1, b"a"), (5, 7, b""), (1, 2, b"fail"), (4, 0, b"one-way"), (1, 3, b"none"), (1, 4, b"b")]
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        for _ in range(2):  # the connection stays open after the failure
            sock.sendall(b"".join(struct.pack("!IBI", 5 + len(p), k, i) + p for k, i, p in envelopes))
            assert read_envelope(sock) == (2, 1, b"A")
            assert read_envelope(sock) == (6, 7, b"")  # PONG
            kind, request_id, text = read_envelope(sock)
            assert (kind, request_id) == (3, 2) and text.startswith(b"ValueError: asked to fail")
            assert read_envelope(sock) == (2, 3, b"")  # None: an empty REPLY; the one-way message got nothing
            assert read_envelope(sock) == (2, 4, b"B")


def test_bad_bytes_after_requests_in_one_write_close_after_their_replies(serve: Serve) -> None:
    server = serve(upper_or_fail, multiplexed=True)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack("!IBI", 6, 1, 1) + b"a" + struct.pack("!IBI", 5, 9, 2))  # kind 9: no envelope
        assert read_envelope(sock) == (2, 1, b"A")
        assert recv_until_closed(sock) == b""
