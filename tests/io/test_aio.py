"""The asyncio client, against connecteur servers and plain asyncio streams."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import connecteur
from connecteur import ConnectionClosed, FramingError, Server, Timeout, TruncatedMessage, aio
from connecteur.framing import Delimited, Netstring
from connecteur.tools.apps import echo, upper
from tests.support import TIMEOUT


def our_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running connecteur's code (the test's own and its peers' are not counted)."""
    package = os.path.dirname(connecteur.__file__)
    return [
        task for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "cr_code", None) is not None
        and task.get_coro().cr_code.co_filename.startswith(package)  # type: ignore[union-attr]
    ]  # fmt: skip


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coroutine(), TIMEOUT))


async def stream_server(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


async def frames_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A plain asyncio peer: 4-byte big-endian length, readexactly, echo."""
    while True:
        try:
            (size,) = struct.unpack("!I", await reader.readexactly(4))
        except asyncio.IncompleteReadError:
            return
        body = await reader.readexactly(size)
        writer.write(struct.pack("!I", size) + body)
        await writer.drain()


@pytest.mark.parametrize("engine", ["select", "asyncio"])
def test_request_send_many_and_iteration_against_a_connecteur_server(engine: str) -> None:
    with Server(upper, "127.0.0.1:0", engine=engine) as server:

        async def main() -> None:
            async with await aio.connect(server.address, timeout=TIMEOUT) as conn:
                assert await conn.request(b"hello") == b"HELLO"
                messages = [b"m%d" % i for i in range(10_000)]
                await conn.send_many(messages)
                assert [await conn.recv() for _ in messages] == [m.upper() for m in messages]
                await conn.send(b"")
                await conn.send(b"last")
                conn.shutdown_write()
                assert [m async for m in conn] == [b"", b"LAST"]
                with pytest.raises(ConnectionClosed):
                    await conn.recv()

        run(main)


def test_against_a_plain_asyncio_streams_server() -> None:
    async def main() -> None:
        server, address = await stream_server(frames_echo)
        async with server, await aio.connect(address, timeout=TIMEOUT) as conn:
            big = bytes(range(256)) * 4096
            assert await conn.request(big) == big
            for i in range(100):
                assert await conn.request(b"%d" % i) == b"%d" % i

    run(main)


def test_truncated_message_and_framing_error_after_the_good_ones() -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!I", 2) + b"ok" + struct.pack("!I", 10) + b"half")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"2:ok,zz:bad")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, address = await stream_server(truncate)
        async with server, await aio.connect(address, timeout=TIMEOUT) as conn:
            assert await conn.recv() == b"ok"
            with pytest.raises(TruncatedMessage):
                await conn.recv()
        server, address = await stream_server(garbage)
        async with server, await aio.connect(address, framing=Netstring(), timeout=TIMEOUT) as conn:
            assert await conn.recv() == b"ok"
            with pytest.raises(FramingError):
                await conn.recv()

    run(main)


def test_recv_timeout_keeps_the_partial_message_and_leaves_no_task() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hel")
        await writer.drain()
        await release.wait()
        writer.write(b"lo\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, address = await stream_server(slow)
        async with server:
            conn = await aio.connect(address, framing=Delimited(b"\n"), timeout=0.2)
            with pytest.raises(Timeout) as info:
                await conn.recv()
            assert isinstance(info.value, TimeoutError)
            release.set()
            assert await conn.recv() == b"hello"
            await conn.close()
            await conn.close()  # idempotent
            assert our_tasks() == []

    run(main)


def test_a_cancelled_recv_leaves_the_connection_usable() -> None:
    async def main() -> None:
        server, address = await stream_server(frames_echo)
        async with server, await aio.connect(address, timeout=TIMEOUT) as conn:
            waiting = asyncio.ensure_future(conn.recv())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await conn.request(b"after") == b"after"
        assert our_tasks() == []

    run(main)


def test_a_client_that_does_not_recv_stops_reading() -> None:
    """Decoded messages waiting for recv() are bounded: reading pauses."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = struct.pack("!I", 1) + b"x"
        try:
            for _ in range(1000):
                writer.write(frame * 1000)
                await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            pass  # the client stopped reading: what we wanted
        await reader.read()

    async def main() -> None:
        server, address = await stream_server(flood)
        async with server, await aio.connect(address, timeout=TIMEOUT) as conn:
            await asyncio.sleep(1.0)
            protocol = conn._protocol
            assert protocol.reading_paused
            assert len(protocol.ready) <= aio.READY_HIGH + aio.RECV_SIZE // 5
            for _ in range(5000):
                assert await conn.recv() == b"x"

    run(main)


def test_send_after_close_and_after_shutdown_write() -> None:
    async def main() -> None:
        server, address = await stream_server(frames_echo)
        async with server:
            conn = await aio.connect(address, timeout=TIMEOUT)
            conn.shutdown_write()
            with pytest.raises(ConnectionClosed):
                await conn.send(b"x")
            await conn.close()
            with pytest.raises(ConnectionClosed):
                await conn.recv()

    run(main)


def test_serve_inside_a_running_loop_with_an_async_handler(tmp_path: Any) -> None:
    async def slow_upper(message: bytes) -> bytes:
        await asyncio.sleep(0.001 * (message[-1] % 5))
        return message.upper()

    async def main() -> None:
        async with await aio.serve(slow_upper, "127.0.0.1:0") as server:
            async with await aio.connect(server.address, timeout=TIMEOUT) as conn:
                messages = [b"r%d" % i for i in range(200)]
                await conn.send_many(messages)
                assert [await conn.recv() for _ in messages] == [m.upper() for m in messages]
            assert server.stats.messages_in == 200
        path = f"{tmp_path}/aio.sock"
        async with await aio.serve(echo, f"unix:{path}") as server:
            assert server.address == f"unix:{path}"
            async with await aio.connect(server.address, timeout=TIMEOUT) as conn:
                assert await conn.request(b"unix") == b"unix"
        assert our_tasks() == []

    run(main)


def test_connect_refused() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await aio.connect(f"127.0.0.1:{port}", timeout=TIMEOUT)

    run(main)
