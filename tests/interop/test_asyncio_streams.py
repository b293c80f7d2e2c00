"""connecteur against asyncio streams: frames read with ``readexactly``, a peer we did not write.

The asyncio side speaks the default framing by hand, a 4-byte big-endian
length then the body, as any asyncio program would: ``readexactly(4)``, then
``readexactly(n)``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

import connecteur
from connecteur import ConnectionClosed, Server, TruncatedMessage
from tests.support import TIMEOUT

HEADER = struct.Struct("!I")

MESSAGES = [b"hello", b"", b"\x00\xff" * 10, os.urandom(2**20), b"last"]
"""Several messages, the empty one and a 1 MiB one among them."""

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def reverse(message: bytes) -> bytes:
    return message[::-1]


def frame(message: bytes) -> bytes:
    return HEADER.pack(len(message)) + message


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body, or None at a clean EOF between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    (size,) = HEADER.unpack(header)
    return await reader.readexactly(size)


class AsyncioStreamServer:
    """``asyncio.start_server`` on 127.0.0.1:0, run by its own event loop in a background thread.

    Each connection runs `handler`; what went wrong in one is kept and
    re-raised when the server stops.
    """

    def __init__(self, handler: StreamHandler) -> None:
        self._handler = handler
        self._started: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.failures: list[BaseException] = []
        self.address: tuple[str, int] = ("", 0)
        self._thread = threading.Thread(target=self._run, name="asyncio streams server", daemon=True)

    def __enter__(self) -> AsyncioStreamServer:
        self._thread.start()
        started = self._started.get(timeout=TIMEOUT)
        if isinstance(started[0], BaseException):
            self._thread.join(TIMEOUT)
            raise started[0]
        self.address = started[0]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the asyncio server did not stop"
        if exc is None and self.failures:
            raise self.failures[0]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._started.put((exc,))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        async with server:
            self._started.put((server.sockets[0].getsockname()[:2],))
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except Exception as exc:
            self.failures.append(exc)
        finally:
            writer.close()


async def answer_reversed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reply to every frame with its body reversed, until a clean EOF."""
    while (message := await read_frame(reader)) is not None:
        writer.write(frame(reverse(message)))
        await writer.drain()


# --- connecteur.connect against an asyncio streams server ---------------------------------


def test_connect_gets_replies_from_an_asyncio_server() -> None:
    """request() to a server reading readexactly(4) + readexactly(n): b"" and 1 MiB included."""
    with (
        AsyncioStreamServer(answer_reversed) as server,
        connecteur.connect(server.address, timeout=TIMEOUT) as conn,
    ):
        for message in MESSAGES:
            assert conn.request(message) == reverse(message)


def test_connect_pipelines_and_half_closes_to_an_asyncio_server() -> None:
    """send_many() then shutdown_write(): asyncio sees every frame then a clean EOF; we get every reply."""
    messages = [b"%d" % i for i in range(1000)] + [b""]
    with (
        AsyncioStreamServer(answer_reversed) as server,
        connecteur.connect(server.address, timeout=TIMEOUT) as conn,
    ):
        conn.send_many(messages)
        conn.shutdown_write()
        assert list(conn) == [reverse(m) for m in messages]


def test_an_asyncio_server_pushes_frames_in_pieces_then_closes() -> None:
    """Frames written in odd pieces (a header split, bodies merged) come out of recv() whole, then the close."""
    wire = b"".join(frame(m) for m in MESSAGES)

    async def push_in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for start in range(0, len(wire), 77_777):
            writer.write(wire[start : start + 2])
            await writer.drain()
            writer.write(wire[start + 2 : start + 77_777])
            await writer.drain()

    with (
        AsyncioStreamServer(push_in_pieces) as server,
        connecteur.connect(server.address, timeout=TIMEOUT) as conn,
    ):
        assert list(conn) == MESSAGES
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_an_asyncio_server_closing_inside_a_frame_is_truncated_message() -> None:
    """asyncio writes a header and half the body, then closes: TruncatedMessage after the whole frames."""

    async def close_mid_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(b"whole") + frame(b"half of this")[:9])
        await writer.drain()

    with (
        AsyncioStreamServer(close_mid_frame) as server,
        connecteur.connect(server.address, timeout=TIMEOUT) as conn,
    ):
        assert conn.recv() == b"whole"
        with pytest.raises(TruncatedMessage) as info:
            conn.recv()
        assert info.value.pending == 9


# --- an asyncio streams client against a connecteur Server ------------------------------


@pytest.fixture(params=["tcp", "unix"])
def server_address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "127.0.0.1:0" if request.param == "tcp" else f"unix:{tmp_path / 'sock'}"


async def open_connection(address: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` (or ``open_unix_connection``) to a `Server.address`."""
    if isinstance(address, str) and address.startswith("unix:"):
        return await asyncio.open_unix_connection(address.removeprefix("unix:"))
    host, port = address[:2]
    return await asyncio.open_connection(host, port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def test_an_asyncio_client_gets_replies_from_a_server(server_address: str) -> None:
    """open_connection() + readexactly() against a Server: each message answered, b"" and 1 MiB included."""

    async def client(address: object) -> list[bytes]:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await open_connection(address)
            try:
                replies = []
                for message in MESSAGES:
                    writer.write(frame(message))
                    await writer.drain()
                    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                    replies.append(await reader.readexactly(size))
                return replies
            finally:
                await close(writer)

    with Server(reverse, server_address, engine="threads") as server:
        assert asyncio.run(client(server.address)) == [reverse(m) for m in MESSAGES]


def test_an_asyncio_client_pipelines_then_half_closes_to_a_server() -> None:
    """All frames in one write, then write_eof(): every reply arrives, then the server's EOF."""
    messages = [b"%d" % i for i in range(1000)] + [b"", b"x" * 100_000]

    async def client(address: object) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await open_connection(address)
            try:
                writer.write(b"".join(frame(m) for m in messages))
                writer.write_eof()
                await writer.drain()
                return await reader.read()  # until the server closes
            finally:
                await close(writer)

    with Server(reverse, "127.0.0.1:0", engine="threads") as server:
        data = asyncio.run(client(server.address))
    assert data == b"".join(frame(reverse(m)) for m in messages)
