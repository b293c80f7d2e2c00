"""Servers and clients with codecs: values on every engine, bad payloads contained."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connecteur import CodecError, ConnectionClosed, Peer, Server, aio, connect
from connecteur.codecs import Json, Struct, Text
from tests.engines.conftest import engine_per_family
from tests.support import TIMEOUT, wait_until

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def describe(value: Any) -> Any:
    return {"type": type(value).__name__, "value": value}


def test_json_values_both_ways_on_every_engine(serve: Serve) -> None:
    server = serve(describe, codec=Json())
    with connect(server.address, codec=Json(), timeout=TIMEOUT) as conn:
        assert conn.request({"a": [1, 2.5, None]}) == {"type": "dict", "value": {"a": [1, 2.5, None]}}
        conn.send_many(["x", 3])
        assert [conn.recv(), conn.recv()] == [{"type": "str", "value": "x"}, {"type": "int", "value": 3}]


@pytest.fixture(scope="module")
def json_echo() -> Iterator[Server]:
    # Wrapped: a handler returning None sends no reply, so a bare null could not come back.
    with Server(lambda value: {"echo": value}, "127.0.0.1:0", codec=Json()) as server:
        yield server


@settings(max_examples=60)
@given(value=json_values)
def test_any_json_value_round_trips_through_a_real_connection(json_echo: Server, value: Any) -> None:
    with connect(json_echo.address, codec=Json(), timeout=TIMEOUT) as conn:
        assert conn.request(value) == {"echo": value}


def test_undecodable_payload_closes_that_connection_counts_and_serves_others(serve: Serve) -> None:
    server = serve(describe, codec=Json())
    with (
        connect(server.address, codec=Json(), timeout=TIMEOUT) as good,
        connect(server.address, timeout=TIMEOUT) as bad,
    ):
        bad.send(b"{not json")
        with pytest.raises(ConnectionClosed):
            bad.recv()
        assert good.request([1]) == {"type": "list", "value": [1]}
    wait_until(lambda: server.stats.errors == 1, what="the bad payload counted")


def test_a_reply_the_codec_cannot_encode_is_the_handlers_error(serve: Serve) -> None:
    server = serve(lambda value: {"unencodable": object()}, codec=Json())
    with connect(server.address, codec=Json(), timeout=TIMEOUT) as conn:
        conn.send(1)
        with pytest.raises(ConnectionClosed):
            conn.recv()
    wait_until(lambda: server.stats.errors == 1, what="the handler error counted")


def test_client_raises_codec_error_and_stays_usable() -> None:
    with Server(lambda m: m, "127.0.0.1:0") as server, connect(server.address, codec=Text(), timeout=TIMEOUT) as conn:
        conn._send_bytes(b"\x00\x00\x00\x02\xff\xfe")  # raw bytes that are not UTF-8
        with pytest.raises(CodecError):
            conn.recv()
        assert conn.request("still fine") == "still fine"
        with pytest.raises(CodecError):
            conn.send(b"not a str")


def test_struct_records_against_a_howto_style_client(serve: Serve) -> None:
    """The HOWTO's way: a plain socket, struct.pack in network byte order."""
    record = Struct("!IId")

    def add(values: tuple[int, int, float]) -> tuple[int, int, float]:
        a, b, scale = values
        return (a + b, a * b, scale * 2)

    server = serve(add, codec=record, framing=None)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        body = struct.pack("!IId", 3, 4, 1.25)
        sock.sendall(struct.pack("!I", len(body)) + body)
        header = sock.recv(4, socket.MSG_WAITALL)
        reply = sock.recv(struct.unpack("!I", header)[0], socket.MSG_WAITALL)
        assert struct.unpack("!IId", reply) == (7, 12, 2.5)


def test_peer_send_with_a_codec(serve: Serve) -> None:
    class Greeter:
        def connected(self, peer: Peer) -> None:
            peer.send({"hello": list(peer.address[:1])})

    server = serve(Greeter(), codec=Json())
    with connect(server.address, codec=Json(), timeout=TIMEOUT) as conn:
        assert conn.recv() == {"hello": ["127.0.0.1"]}


def test_json_connection_against_an_asyncio_streams_peer() -> None:
    """A peer that frames by hand and uses json.loads: no connecteur on that side."""
    ready = threading.Event()
    address: list[Any] = []
    stop: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("!I", await reader.readexactly(4))
                value = json.loads(await reader.readexactly(size))
                body = json.dumps({"got": value}).encode()
                writer.write(struct.pack("!I", len(body)) + body)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        stop.append(asyncio.Event())
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            address.append(server.sockets[0].getsockname()[:2])
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    try:
        assert ready.wait(TIMEOUT)
        with connect(address[0], codec=Json(), timeout=TIMEOUT) as conn:
            assert conn.request({"x": [1, "é"]}) == {"got": {"x": [1, "é"]}}
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(TIMEOUT)
        loop.close()


def test_aio_client_with_a_codec() -> None:
    with Server(describe, "127.0.0.1:0", codec=Json()) as server:

        async def main() -> None:
            async with await aio.connect(server.address, codec=Json(), timeout=TIMEOUT) as conn:
                assert await conn.request([1]) == {"type": "list", "value": [1]}
                await conn.send_many([True, None])
                assert await conn.recv() == {"type": "bool", "value": True}
                assert await conn.recv() == {"type": "NoneType", "value": None}

        asyncio.run(main())
