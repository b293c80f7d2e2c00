"""A multiplexed peer written from docs/multiplexing.md alone: plain `socket` and `struct`, no connecteur.

It is what another language would write in an afternoon: a client that sends
requests with ids and matches replies by id, and a server that answers
requests out of order, returns error replies, and answers pings. The tests in
``test_envelope_peer.py`` pit it against connecteur's server and clients.
"""

from __future__ import annotations

import socket
import struct

REQUEST, REPLY, ERROR, ONE_WAY, PING, PONG = 1, 2, 3, 4, 5, 6


def send(sock: socket.socket, kind: int, request_id: int, payload: bytes = b"") -> None:
    """One envelope inside the default framing: a 4-byte big-endian length, then kind, id, payload."""
    envelope = struct.pack("!BI", kind, request_id) + payload
    sock.sendall(struct.pack("!I", len(envelope)) + envelope)


def _exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("the peer closed the connection")
        data += chunk
    return data


def receive(sock: socket.socket) -> tuple[int, int, bytes]:
    """The next envelope: (kind, request id, payload)."""
    (length,) = struct.unpack("!I", _exactly(sock, 4))
    envelope = _exactly(sock, length)
    if length < 5 or envelope[0] not in (REQUEST, REPLY, ERROR, ONE_WAY, PING, PONG):
        raise ValueError(f"not an envelope: {envelope[:5]!r}")
    kind, request_id = struct.unpack("!BI", envelope[:5])
    return kind, request_id, envelope[5:]


class Client:
    """Sends several requests before reading; matches each reply by its id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_id = 0
        self.replies: dict[int, tuple[int, bytes]] = {}

    def send_request(self, payload: bytes) -> int:
        self.next_id += 1
        send(self.sock, REQUEST, self.next_id, payload)
        return self.next_id

    def wait_for(self, request_id: int) -> tuple[int, bytes]:
        """The (kind, payload) of the reply to `request_id`; answers pings while waiting."""
        while request_id not in self.replies:
            kind, rid, payload = receive(self.sock)
            if kind == PING:
                send(self.sock, PONG, rid)
            elif kind in (REPLY, ERROR):
                self.replies[rid] = (kind, payload)
        return self.replies.pop(request_id)


def serve_one_connection(sock: socket.socket, batch: int) -> list[int]:
    """Answer `batch` requests at a time, in reverse order of arrival (to prove ids, not order, match).

    A payload ``b"fail"`` gets an error reply; a ping a pong at once; one-way
    messages nothing. Once the client closes, returns the ids the one-way
    messages carried.
    """
    waiting: list[tuple[int, bytes]] = []
    one_way: list[int] = []
    try:
        while True:
            kind, request_id, payload = receive(sock)
            if kind == PING:
                send(sock, PONG, request_id)
            elif kind == ONE_WAY:
                one_way.append(request_id)
            elif kind == REQUEST:
                waiting.append((request_id, payload))
                if len(waiting) == batch:
                    for rid, body in reversed(waiting):
                        if body == b"fail":
                            send(sock, ERROR, rid, b"RuntimeError: as asked")
                        else:
                            send(sock, REPLY, rid, body[::-1])
                    waiting.clear()
    except EOFError:
        return one_way
