"""The servers `connecteur bench` measures, each run as its own process.

``python -m connecteur.tools._bench_servers TARGET [--cpu N]`` pins itself to
CPU N (before any thread starts, so every thread and child inherits it),
serves echo on 127.0.0.1 with a free port, prints ``serving echo on
HOST:PORT`` and runs until SIGTERM.

A connecteur engine runs `Server(echo, ...).serve_forever()`, as ``connecteur
serve --app echo`` does but without timeouts: idle connections must stay.

The peers are what a careful user of the standard library would write in a
few lines, each with a 4-byte big-endian length header (connecteur's default
framing) and a handler called per message: asyncio streams with
``readexactly``; an asyncio Protocol (one write per read, flow control on),
also run on uvloop; ``socketserver``'s ThreadingTCPServer (a thread per
connection); ``multiprocessing.connection`` (a thread per connection; its
header is the same for messages under 2 GiB). All of them set TCP_NODELAY,
as connecteur does, and listen with a backlog of 128, connecteur's default
(socketserver's 5 and Listener's 1 would drop the many workload's handshakes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from typing import Final, cast

from ..server import Server
from .apps import echo

__all__ = ["ENGINES", "PEERS", "main"]

HOST: Final = "127.0.0.1"
BACKLOG: Final = 128
HEADER: Final = struct.Struct("!I")
MAX_SIZE: Final = 16 * 2**20
"""Largest message a peer accepts (bytes): connecteur's default cap."""
MAX_CONNECTIONS: Final = 100_000
"""Connections an engine serves at once: above any workload's."""

ENGINES: Final[dict[str, tuple[str, str]]] = {
    "select": ("select", "asyncio"),
    "threads": ("threads", "asyncio"),
    "processes": ("processes", "asyncio"),
    "asyncio": ("asyncio", "asyncio"),
    "asyncio@uvloop": ("asyncio", "uvloop"),
}
"""The engine and the event loop (for the asyncio engine) of each engine target."""


_handle: Final = echo
"""The peers' handler, called per message: the engines' too."""


def _ready(address: tuple[str, int]) -> None:  # a socket-module address: host, port
    print(f"serving echo on {address[0]}:{address[1]}", flush=True)


# --- asyncio ------------------------------------------------------------------------


async def _streams_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(HEADER.size)
            (size,) = HEADER.unpack(header)
            if size > MAX_SIZE:
                return
            reply = _handle(await reader.readexactly(size))
            writer.write(HEADER.pack(len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _EchoProtocol(asyncio.Protocol):
    """Decodes what each read brings, calls the handler per message, writes the replies at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of asyncio's
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        replies: list[bytes] = []
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            if size > MAX_SIZE:
                self._transport.abort()
                return
            end = start + HEADER.size + size
            if end > len(buffer):
                break
            reply = _handle(bytes(buffer[start + HEADER.size : end]))
            replies += (HEADER.pack(len(reply)), reply)
            start = end
        del buffer[:start]
        if replies:
            self._transport.write(b"".join(replies))

    def pause_writing(self) -> None:  # the peer reads slower than it writes: stop reading
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._transport.resume_reading()


async def _serve_asyncio(kind: str) -> None:
    loop = asyncio.get_running_loop()
    server: asyncio.Server
    if kind == "streams":
        server = await asyncio.start_server(_streams_client, HOST, 0, backlog=BACKLOG)
    else:
        server = await loop.create_server(_EchoProtocol, HOST, 0, backlog=BACKLOG)
    _ready(server.sockets[0].getsockname())
    await server.serve_forever()


def _run_asyncio(kind: str, loop: str) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve_asyncio(kind))


# --- threads --------------------------------------------------------------------------


class _EchoRequestHandler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def handle(self) -> None:
        read, write = self.rfile.read, self.wfile.write
        while True:
            header = read(HEADER.size)
            if len(header) < HEADER.size:
                return
            (size,) = HEADER.unpack(header)
            message = read(size) if size <= MAX_SIZE else b""
            if len(message) < size:
                return
            reply = _handle(message)
            write(HEADER.pack(len(reply)) + reply)


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = BACKLOG


def _run_socketserver() -> None:
    with _ThreadingServer((HOST, 0), _EchoRequestHandler) as server:
        _ready(server.socket.getsockname())
        server.serve_forever()


def _mp_client(conn: Connection) -> None:
    # Listener's connections leave Nagle on: set TCP_NODELAY through a duplicate descriptor.
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        try:
            while True:
                conn.send_bytes(_handle(conn.recv_bytes(MAX_SIZE)))
        except (EOFError, OSError):
            pass


def _run_multiprocessing() -> None:
    with Listener((HOST, 0), backlog=BACKLOG) as listener:  # no authkey: no handshake
        _ready(listener.address)
        while True:  # an accept() error ends the peer: the benchmark reports it, the client never aborts
            threading.Thread(target=_mp_client, args=(listener.accept(),), daemon=True).start()


PEERS: Final[dict[str, Callable[[], None]]] = {
    "asyncio-streams": lambda: _run_asyncio("streams", "asyncio"),
    "asyncio-protocol": lambda: _run_asyncio("protocol", "asyncio"),
    "socketserver": _run_socketserver,
    "multiprocessing": _run_multiprocessing,
    "uvloop-protocol": lambda: _run_asyncio("protocol", "uvloop"),
}
"""How to run each standard-library peer, by target name."""


def main(argv: list[str] | None = None) -> int:
    """Run one target's server until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m connecteur.tools._bench_servers")
    parser.add_argument("target", choices=[*ENGINES, *PEERS])
    parser.add_argument("--cpu", type=int, help="the CPU to run on")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.target in PEERS:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: SIGTERM stops a peer
        PEERS[args.target]()
        return 0
    engine, loop = ENGINES[args.target]
    server = Server(echo, (HOST, 0), engine=engine, loop=loop, max_connections=MAX_CONNECTIONS)
    server.serve_forever(ready=lambda: _ready(server.address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
