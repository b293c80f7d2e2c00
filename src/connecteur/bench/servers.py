"""The servers `connecteur bench` measures, each run as its own process.

``python -m connecteur.bench.servers TARGET [--cpu N]`` pins itself to
CPU N (before any thread starts, so every thread and child inherits it),
serves echo on 127.0.0.1 with a free port, prints ``serving echo on
HOST:PORT`` and runs until SIGTERM. ``--multiplexed`` (engines only): the
server speaks the multiplexing envelope, for the mux workload.

A connecteur engine runs `Server(echo, ...).serve_forever()`, as ``connecteur
serve --app echo`` does but without timeouts: idle connections must stay.
``select*2`` is the select engine with ``workers=2``: two forked processes on
one port, started without ``--cpu`` since it needs two cores.

The peers are what a careful user of the standard library would write in a
few lines, each with a 4-byte big-endian length header (connecteur's default
framing) and a handler called per message: asyncio streams with
``readexactly``; an asyncio Protocol (one write per read, flow control on),
also run on uvloop; ``socketserver``'s ThreadingTCPServer (a thread per
connection); ``multiprocessing.connection`` (a thread per connection; its
header is the same for messages under 2 GiB). All of them set TCP_NODELAY,
as connecteur does, and listen with a backlog of 128, connecteur's default
(socketserver's 5 and Listener's 1 would drop the many workload's handshakes).

``fanout:TARGET`` serves the fanout workload instead (`connecteur.bench.fanout`):
an engine whose handler broadcasts each message to the other connections, or
``fanout:selectors-broadcast``, the same written by hand.

One more peer is no server a user would write but a bound: ``recv-into``, a
bare ``recv_into`` loop with no framing (a thread per connection, a 64 KiB
buffer each, ``sendall`` of what each read brought). It echoes bytes, not
messages, which every workload accepts since the client checks the echoed
stream; what it moves per second is what Python's socket calls allow, so the
engines' bulk figure is judged against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from typing import Final, cast

from ..server import Peer, Server
from ..tools.apps import echo
from . import proc
from .fanout import run_selectors_broadcaster

__all__ = ["ENGINES", "PEERS", "main"]

HOST: Final = "127.0.0.1"
BACKLOG: Final = 128
HEADER: Final = struct.Struct("!I")
MAX_SIZE: Final = 16 * 2**20
"""Largest message a peer accepts (bytes): connecteur's default cap."""
MAX_CONNECTIONS: Final = 100_000
"""Connections an engine serves at once: above any workload's."""

ENGINES: Final[dict[str, tuple[str, str, int]]] = {
    "select": ("select", "asyncio", 1),
    "select*2": ("select", "asyncio", 2),
    "threads": ("threads", "asyncio", 1),
    "processes": ("processes", "asyncio", 1),
    "asyncio": ("asyncio", "asyncio", 1),
    "asyncio@uvloop": ("asyncio", "uvloop", 1),
}
"""The engine, the event loop (for the asyncio engine) and the workers of each engine target."""
SETTLED_COUNTS: Final = 5
"""Equal readings of a multi-worker server's processes and threads, 10 ms apart, that make it started."""
RECV_INTO_SIZE: Final = 64 * 2**10
"""The recv-into peer's buffer (bytes), one per connection."""
EPOLL_LOOP_READ: Final = 256 * 2**10
"""The epoll-loop peer's read buffer (bytes), one for all connections, as the select engine's."""


_handle: Final = echo
"""The peers' handler, called per message: the engines' too."""


def _ready(address: tuple[str, int], app: str = "echo") -> None:  # a socket-module address: host, port
    print(f"serving {app} on {address[0]}:{address[1]}", flush=True)


def _ready_once_forked(server: Server, workers: int) -> None:
    """Say "serving" from a thread once every worker runs, with the threads it keeps.

    `ready` comes before the workers fork. The client counts the server's
    processes and threads before each workload and waits for the server to
    be back to them after; a worker still starting would break that count.
    """

    def wait() -> None:
        recent: deque[tuple[int, int]] = deque(maxlen=SETTLED_COUNTS)  # (processes, threads)
        while len(recent) < SETTLED_COUNTS or len(set(recent)) > 1 or recent[0][0] != workers + 1:
            time.sleep(0.01)
            recent.append(proc.task_counts(os.getpid()))
        _ready(server.address)

    threading.Thread(target=wait, name="ready", daemon=True).start()


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


def _recv_into_client(sock: socket.socket) -> None:
    buffer = bytearray(RECV_INTO_SIZE)
    view = memoryview(buffer)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while n := sock.recv_into(buffer):
                sock.sendall(view[:n])
        except OSError:  # reset: the client is gone
            pass


def _run_recv_into() -> None:
    with socket.create_server((HOST, 0), backlog=BACKLOG) as listener:
        _ready(listener.getsockname())
        while True:  # an accept() error ends the peer: the benchmark reports it
            sock, _ = listener.accept()
            threading.Thread(target=_recv_into_client, args=(sock,), daemon=True).start()


def _run_epoll_loop() -> None:
    """The HOWTO's third design written by hand: one thread, non-blocking sockets, ``select.epoll``."""
    buffer = bytearray(EPOLL_LOOP_READ)
    view = memoryview(buffer)
    pending: dict[int, bytearray] = {}  # per connection: bytes of a message not whole yet
    unsent: dict[int, bytes] = {}  # per connection: replies the socket did not take
    socks: dict[int, socket.socket] = {}
    poller = select.epoll()
    with socket.create_server((HOST, 0), backlog=BACKLOG) as listener:
        listener.setblocking(False)
        poller.register(listener.fileno(), select.EPOLLIN)
        _ready(listener.getsockname())

        def close(fd: int) -> None:
            poller.unregister(fd)
            socks.pop(fd).close()
            pending.pop(fd)
            unsent.pop(fd, None)

        while True:
            for fd, events in poller.poll():
                if fd == listener.fileno():
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            sock, _ = listener.accept()
                            sock.setblocking(False)
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            socks[sock.fileno()], pending[sock.fileno()] = sock, bytearray()
                            poller.register(sock.fileno(), select.EPOLLIN)
                    continue
                sock = socks[fd]
                if events & select.EPOLLOUT:  # send what was left, then read again
                    rest = unsent.pop(fd)
                    try:
                        sent = sock.send(rest)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        close(fd)
                        continue
                    if sent < len(rest):
                        unsent[fd] = rest[sent:]
                    else:
                        poller.modify(fd, select.EPOLLIN)
                    continue
                try:
                    count = sock.recv_into(buffer)
                except BlockingIOError:
                    continue
                except OSError:
                    count = 0
                if not count:
                    close(fd)
                    continue
                data = pending[fd]
                data += view[:count]
                replies: list[bytes] = []
                start, size = 0, 0
                while len(data) - start >= HEADER.size:
                    (size,) = HEADER.unpack_from(data, start)
                    end = start + HEADER.size + size
                    if size > MAX_SIZE or end > len(data):
                        break
                    reply = _handle(bytes(data[start + HEADER.size : end]))
                    replies += (HEADER.pack(len(reply)), reply)
                    start = end
                if size > MAX_SIZE:  # a hostile header: drop the peer
                    close(fd)
                    continue
                del data[:start]
                if replies:
                    wire = b"".join(replies)
                    try:
                        sent = sock.send(wire)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        close(fd)
                        continue
                    if sent < len(wire):  # stop reading this peer until it takes its replies
                        unsent[fd] = wire[sent:]
                        poller.modify(fd, select.EPOLLOUT)


PEERS: Final[dict[str, Callable[[], None]]] = {
    "asyncio-streams": lambda: _run_asyncio("streams", "asyncio"),
    "asyncio-protocol": lambda: _run_asyncio("protocol", "asyncio"),
    "socketserver": _run_socketserver,
    "multiprocessing": _run_multiprocessing,
    "uvloop-protocol": lambda: _run_asyncio("protocol", "uvloop"),
    "recv-into": _run_recv_into,
    "epoll-loop": _run_epoll_loop,
}
"""How to run each standard-library peer, by target name."""


# --- fan-out ------------------------------------------------------------------------------


class _Broadcaster:
    """The fanout workload's handler: each message to every other connection (`Server.broadcast`)."""

    def __init__(self) -> None:
        self.server: Server | None = None

    def received(self, peer: Peer, message: bytes) -> None:
        assert self.server is not None
        self.server.broadcast(message, exclude=peer)


def _run_fanout(target: str) -> None:
    """Serve the fanout workload: an engine broadcasting, or the hand-written broadcaster."""
    if target == "selectors-broadcast":
        run_selectors_broadcaster(lambda address: _ready(address, "fanout"), HOST, BACKLOG)
        return
    engine, loop, _ = ENGINES[target]
    handler = _Broadcaster()
    server = Server(handler, (HOST, 0), engine=engine, loop=loop, max_connections=MAX_CONNECTIONS)
    handler.server = server
    server.serve_forever(ready=lambda: _ready(server.address, "fanout"))


FANOUT: Final = ("select", "asyncio", "asyncio@uvloop", "threads", "selectors-broadcast")
"""The targets that serve the fanout workload, as ``fanout:TARGET``."""


def main(argv: list[str] | None = None) -> int:
    """Run one target's server until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m connecteur.bench.servers")
    parser.add_argument("target", choices=[*ENGINES, *PEERS, *(f"fanout:{name}" for name in FANOUT)])
    parser.add_argument("--cpu", type=int, help="the CPU to run on")
    parser.add_argument("--multiplexed", action="store_true", help="speak the multiplexing envelope (engines only)")
    args = parser.parse_args(argv)
    if args.multiplexed and args.target in PEERS:
        parser.error(f"{args.target} is a standard-library peer: it speaks no envelope")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.target in PEERS or args.target == "fanout:selectors-broadcast":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: SIGTERM stops a peer
    if args.target in PEERS:
        PEERS[args.target]()
        return 0
    if args.target.startswith("fanout:"):
        _run_fanout(args.target.removeprefix("fanout:"))
        return 0
    engine, loop, workers = ENGINES[args.target]
    server = Server(
        echo,
        (HOST, 0),
        engine=engine,
        loop=loop,
        workers=workers,
        max_connections=MAX_CONNECTIONS,
        multiplexed=args.multiplexed,
    )
    if workers == 1:
        server.serve_forever(ready=lambda: _ready(server.address))
    else:
        server.serve_forever(ready=lambda: _ready_once_forked(server, workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
