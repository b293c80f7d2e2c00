"""The bench's epoll-loop peer with one change at a time, for A/B runs of what the select engine does.

    KNOB=thread python benchmarks/floor/knob_server.py --cpu 0

KNOB: unset, the peer as it is (one 256 KiB read buffer, ``recv_into`` and ``send``); ``buf4k`` (a 4 KiB
buffer); ``write`` (``os.readv`` and ``os.write`` on the descriptor instead of the socket's methods);
``keepalive`` (SO_KEEPALIVE on each connection, as connecteur sets it); ``thread`` (the loop in a second
thread while the main thread waits, as ``Server.serve_forever`` runs an engine); ``maxev64``
(``epoll.poll(maxevents=64)``); ``raw`` (no framing: send back what each read brought, the least a Python
server can do per message). Prints ``serving echo on HOST:PORT`` as the bench's servers do.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading

HEADER = struct.Struct("!I")
KNOB = os.environ.get("KNOB", "")
SIZE = 4096 if KNOB == "buf4k" else 256 * 1024
MAX_EVENTS = 64 if KNOB == "maxev64" else -1


def accept(listener: socket.socket, poller: select.epoll, socks: dict[int, socket.socket]) -> None:
    try:
        while True:
            sock, _ = listener.accept()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if KNOB == "keepalive":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            socks[sock.fileno()] = sock
            poller.register(sock.fileno(), select.EPOLLIN)
    except BlockingIOError:
        pass


def loop(listener: socket.socket) -> None:  # one function, as the peer it copies
    buffer = bytearray(SIZE)
    view = memoryview(buffer)
    pending: dict[int, bytearray] = {}
    socks: dict[int, socket.socket] = {}
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    on_descriptor = KNOB == "write"
    while True:
        for fd, _ in poller.poll(-1, MAX_EVENTS):
            if fd == listener.fileno():
                accept(listener, poller, socks)
                continue
            sock = socks[fd]
            try:
                count = os.readv(fd, [buffer]) if on_descriptor else sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                count = 0
            if not count:
                poller.unregister(fd)
                socks.pop(fd).close()
                pending.pop(fd, None)
                continue
            if KNOB == "raw":
                sock.send(view[:count])  # 68 bytes: always taken whole
                continue
            data = pending.setdefault(fd, bytearray())
            data += view[:count]
            replies: list[bytes] = []
            start = 0
            while len(data) - start >= HEADER.size:
                (size,) = HEADER.unpack_from(data, start)
                end = start + HEADER.size + size
                if end > len(data):
                    break
                replies += (HEADER.pack(size), bytes(data[start + HEADER.size : end]))
                start = end
            del data[:start]
            if replies:
                wire = b"".join(replies)
                sent = os.write(fd, wire) if on_descriptor else sock.send(wire)
                assert sent == len(wire), "a reply the socket did not take whole: not this benchmark's case"


def main() -> None:
    if "--cpu" in sys.argv:
        os.sched_setaffinity(0, {int(sys.argv[sys.argv.index("--cpu") + 1])})
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    print(f"serving echo on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    if KNOB != "thread":
        loop(listener)
        return
    threading.Thread(target=loop, args=(listener,), daemon=True).start()
    waiter, _ = socket.socketpair()
    waiter.recv(1)  # for ever, as serve_forever's thread waits for the engine's


if __name__ == "__main__":
    main()
