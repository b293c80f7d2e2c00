"""connecteur's multiplexed server and clients against a peer written from the docs alone (envelope_peer.py)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import connecteur
from connecteur import RemoteError
from tests.interop import envelope_peer as peer
from tests.support import TIMEOUT


def handler(message: bytes) -> bytes:
    if message == b"fail":
        raise RuntimeError("as asked")
    return message[::-1]


@pytest.mark.parametrize("engine", ["select", "asyncio"])
def test_the_docs_client_against_connecteurs_server(engine: str) -> None:
    with (
        connecteur.Server(handler, "127.0.0.1:0", engine=engine, multiplexed=True) as server,
        socket.create_connection(server.address, timeout=TIMEOUT) as sock,
    ):
        client = peer.Client(sock)
        ids = [client.send_request(payload) for payload in (b"abc", b"fail", b"xyz")]
        peer.send(sock, peer.ONE_WAY, 0, b"no answer")
        peer.send(sock, peer.PING, 99)
        assert client.wait_for(ids[2]) == (peer.REPLY, b"zyx")  # any order: matched by id
        assert client.wait_for(ids[0]) == (peer.REPLY, b"cba")
        kind, text = client.wait_for(ids[1])
        assert kind == peer.ERROR and text.startswith(b"RuntimeError: as asked")
        assert peer.receive(sock) == (peer.PONG, 99, b"")  # and nothing for the one-way message


def serve_docs_peer(batch: int) -> tuple[socket.socket, threading.Thread, list[list[int]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    results: list[list[int]] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            results.append(peer.serve_one_connection(conn, batch))

    thread = threading.Thread(target=run)
    thread.start()
    return listener, thread, results


def test_connecteurs_blocking_client_against_the_docs_server() -> None:
    listener, thread, results = serve_docs_peer(batch=4)
    try:
        with connecteur.connect(listener.getsockname(), multiplexed=True, timeout=TIMEOUT) as conn:
            conn.send(b"one-way")
            outcomes: dict[bytes, object] = {}

            def ask(payload: bytes) -> None:
                try:
                    outcomes[payload] = conn.request(payload)
                except RemoteError as exc:
                    outcomes[payload] = exc

            threads = [threading.Thread(target=ask, args=(p,)) for p in (b"ab", b"cd", b"fail", b"ef")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT)
        assert outcomes[b"ab"] == b"ba" and outcomes[b"cd"] == b"dc" and outcomes[b"ef"] == b"fe"
        assert isinstance(outcomes[b"fail"], RemoteError) and "as asked" in str(outcomes[b"fail"])
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert results == [[0]]  # the one-way message, with id 0


def test_connecteurs_aio_client_against_the_docs_server() -> None:
    listener, thread, _ = serve_docs_peer(batch=10)

    async def main() -> list[bytes]:
        async with await connecteur.aio.connect(listener.getsockname(), multiplexed=True, timeout=TIMEOUT) as conn:
            return await asyncio.gather(*(conn.request(f"req{n}".encode()) for n in range(10)))

    try:
        assert asyncio.run(main()) == [f"req{n}".encode()[::-1] for n in range(10)]
    finally:
        thread.join(TIMEOUT)
        listener.close()
