"""The server-wide memory budget (`max_buffered`); the memory it bounds is measured in test_memory.py."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connecteur import Server, connect
from connecteur.framing import LengthPrefixed
from tests.support import TIMEOUT, wait_until

MiB = 2**20


@pytest.fixture
def one_process_engine(engine: str) -> str:
    """The budget is per process: these tests need every connection in the test's process."""
    if engine == "processes" or "*" in engine:
        pytest.skip("each process has a budget of its own; these tests count one process's connections")
    return engine


def _header(size: int) -> bytes:
    return struct.pack("!I", size)


@contextlib.contextmanager
def _raw(server: Server) -> Iterator[socket.socket]:
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def _is_closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); False if it is still open."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_over_budget_the_largest_holder_is_closed_and_the_others_are_served(
    serve: Callable[..., Server], one_process_engine: str
) -> None:
    """3 MiB of an 8 MiB message and a whole 2 MiB one under a 5 MiB budget: the half-sent one is
    closed (it holds the most), the whole one is answered, a newcomer is served.

    The budget counts memory: a body doubles as its bytes arrive, so the 3 MiB hold 4 MiB, and
    the 2 MiB message's body reaches 2 MiB once half of it is in: 6 MiB, over the budget."""
    server = serve(lambda message: message, max_buffered=5 * MiB)
    with _raw(server) as hoarder, _raw(server) as honest:
        hoarder.sendall(_header(8 * MiB) + b"h" * (3 * MiB))
        wait_until(lambda: server.stats.bytes_in >= 3 * MiB, what="the server has read the hoarder's bytes")
        # In two parts, so that the server holds the first (one read could take the whole message).
        honest.sendall(_header(2 * MiB) + b"m" * (3 * MiB // 2))
        wait_until(lambda: server.stats.bytes_in >= 9 * MiB // 2, what="the server has read the honest part")
        honest.sendall(b"m" * (MiB // 2))  # the server is over: not read until the hoarder goes
        decoder = LengthPrefixed().decoder()
        replies: list[bytes] = []
        while not replies:
            data = honest.recv(2**20)
            assert data, "the honest connection was closed"
            replies += decoder.feed(data)
        assert replies == [b"m" * (2 * MiB)]
        wait_until(lambda: _is_closed_by_server(hoarder), what="the hoarder closed")
        assert server.stats.evicted == 1
        with connect(server.address, timeout=TIMEOUT) as newcomer:
            assert newcomer.request(b"hello") == b"hello"


def test_under_budget_nobody_is_closed(serve: Callable[..., Server], one_process_engine: str) -> None:
    """Large messages whose sum stays under the budget are all answered."""
    server = serve(lambda message: message, max_buffered=8 * MiB)
    with connect(server.address, timeout=TIMEOUT) as first, connect(server.address, timeout=TIMEOUT) as second:
        first.send(b"a" * (3 * MiB))
        second.send(b"b" * (3 * MiB))
        assert first.recv() == b"a" * (3 * MiB)
        assert second.recv() == b"b" * (3 * MiB)
    assert server.stats.evicted == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1"])
def test_max_buffered_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(ValueError, match="max_buffered"):
        Server(lambda message: message, "127.0.0.1:0", max_buffered=value)
