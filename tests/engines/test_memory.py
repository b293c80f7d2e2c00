"""An attacker's few bytes must not cost the server more than a little memory, on every engine.

The server runs in a subprocess and its memory is read from /proc (PSS over
the process tree for the processes engine and workers): see
tests/memory_support.py, which benchmarks/memory.py uses too with larger
figures. The last test runs the server in-process, with the cyclic garbage
collector off, to prove a closed connection's objects are freed at once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import struct
import weakref
from collections.abc import Callable

import pytest

from connecteur import Peer, Server
from connecteur.server.select import RECV_SIZE
from tests.engines.conftest import VARIANTS
from tests.memory_support import KIB, MAX_SIZE, ServerProcess, budget_flood, churn, has_max_buffered, header_flood
from tests.support import TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="reads memory from /proc")

MIB = 1024 * KIB
NOISE_KIB = 8 * KIB
"""What a server's memory may move by without any client doing anything: the allocator, the first uses of code."""


def test_a_header_flood_costs_little_per_connection(engine: str) -> None:
    """16 connections each announce a max-size message and send nothing more: at most 64 KiB each.

    Before the decoder grew the body with the bytes received, each header
    cost the whole announced body at once: 16 MiB.
    """
    count = 16
    with ServerProcess(engine, timeout=TIMEOUT) as server:
        growth = header_flood(server, count)["header"] * count
    assert growth <= count * 64 + NOISE_KIB, f"{growth / count:,.0f} KiB per header of {MAX_SIZE:,} bytes"


def test_connect_header_close_churn_stays_flat(engine: str) -> None:
    """200 connections, one at a time, each sends a max-size header and closes: the server grows by ≤ 32 MiB.

    Before, a closed connection's 16 MiB body waited for the cyclic garbage
    collector on the select and asyncio engines: hundreds of MiB. The churn
    stops early past 256 MiB, not to take the machine's memory.
    """
    with ServerProcess(engine, timeout=TIMEOUT) as server:
        result = churn(server, 200, cap_kib=256 * MIB // KIB)
    assert not result["stopped_early"], f"grew past 256 MiB after {result['cycles']} cycles"
    assert result["growth"] <= 32 * MIB // KIB, f"grew by {result['growth'] / KIB:,.1f} MiB"


@pytest.mark.skipif(not has_max_buffered(), reason="Server has no max_buffered yet")
def test_the_server_stays_within_max_buffered_and_serves_others(engine: str) -> None:
    """16 connections each send a max-size header and 1 MiB of its body: the server holds ≤ its 4 MiB budget.

    Each decoder grows only with the bytes received, but 16 of them hold
    16 MiB together: past the budget the server stops reading, closes the
    connections holding the most, and still answers another client.
    """
    if engine == "processes":
        pytest.skip("the budget is per process: each child serves one connection, which max_size bounds")
    budget, connections = 4 * MIB, 16
    processes = 2 if engine == "select*2" else 1  # each worker has a budget of its own
    with ServerProcess(engine, timeout=TIMEOUT, max_buffered=budget) as server:
        result = budget_flood(server, connections, body=MIB, chunk=64 * KIB)
    # The worst case docs/limits.md gives: the budget, plus one read for each connection that
    # starts growing while its process is over the budget (it is paused after that read).
    bound = processes * budget + connections * RECV_SIZE
    assert result["peak"] <= bound // KIB + NOISE_KIB, f"grew by {result['peak'] / KIB:,.1f} MiB"
    assert result["served"], "another client got no reply"


IN_PROCESS = [variant for variant in VARIANTS if variant not in ("processes", "select*2")]
"""The variants whose connections live in this process: the others' live and die with a child process."""
RELEASE_WAIT = TIMEOUT / 10
"""Seconds a closed connection's objects may take to go: a connection's thread still returning (microseconds)."""


class _Canary:
    """An object only a connection's `Peer` holds (in its `data`): alive while the Peer is."""


class _Watcher:
    """Echoes, and hands each connection a canary watched by a weak reference."""

    def __init__(self) -> None:
        self.canaries: list[weakref.ref[_Canary]] = []

    def connected(self, peer: Peer) -> None:
        canary = _Canary()
        peer.data["canary"] = canary
        self.canaries.append(weakref.ref(canary))

    def received(self, peer: Peer, message: bytes) -> bytes:
        return message


def _round_trip(sock: socket.socket, message: bytes = b"ping") -> None:
    sock.sendall(struct.pack("!I", len(message)) + message)
    reply = b""
    while len(reply) < 4 + len(message):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        reply += chunk


def _close_cleanly(sock: socket.socket) -> None:
    _round_trip(sock)
    sock.close()


def _close_mid_message(sock: socket.socket) -> None:
    _round_trip(sock)
    sock.sendall(struct.pack("!I", MAX_SIZE) + b"x" * 1000)  # a large message under way
    sock.close()


def _reset(sock: socket.socket) -> None:
    _round_trip(sock)
    sock.sendall(struct.pack("!I", MAX_SIZE))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a RST
    sock.close()


def _bad_bytes(sock: socket.socket) -> None:
    """A header over max_size: the server's decoder fails, and the server closes."""
    sock.sendall(struct.pack("!I", 2**32 - 1))
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass


def _holders(canary: object) -> str:
    """What holds the Peer whose data holds `canary`: a clue for whoever breaks the cycle."""
    peers = [o for o in gc.get_referrers(*gc.get_referrers(canary)) if isinstance(o, Peer)]
    held = ({type(o).__name__ for o in gc.get_referrers(peer) if o is not peers} for peer in peers)
    return ", ".join(f"{peer!r} held by {sorted(names)}" for peer, names in zip(peers, held, strict=True))


@pytest.mark.parametrize("engine", IN_PROCESS)
@pytest.mark.parametrize(
    "close",
    [_close_cleanly, _close_mid_message, _reset, _bad_bytes],
    ids=["clean", "mid-message", "reset", "bad-bytes"],
)
def test_a_closed_connection_is_freed_without_the_garbage_collector(
    serve: Callable[..., Server], close: Callable[[socket.socket], None]
) -> None:
    """With `gc` disabled, a connection's Peer (and so its link, which holds it) dies as soon as it closes.

    Only a reference cycle keeps it: before, the link and its Peer held each
    other, and their buffers waited for the collector. A second connection's
    round trip runs the engine's loop once more after the close, so a loop
    variable still naming the last connection does not count.
    """
    gc.collect()
    gc.disable()
    try:
        watcher = _Watcher()
        server = serve(watcher)
        with socket.create_connection(server.address[:2], timeout=TIMEOUT) as sock:
            close(sock)
        wait_until(lambda: server.stats.active == 0, what="the connection closed")
        with socket.create_connection(server.address[:2], timeout=TIMEOUT) as other:
            _round_trip(other)
            first = watcher.canaries[0]
            try:
                wait_until(lambda: first() is None, timeout=RELEASE_WAIT, what="the closed connection's Peer freed")
            except AssertionError:
                raise AssertionError(f"the closed connection's Peer is still alive: {_holders(first())}") from None
    finally:
        gc.enable()
