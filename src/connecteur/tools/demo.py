"""The demo: the HOWTO's lessons shown live on 127.0.0.1, every result checked.

Each step prints what it shows and ``ok``/``FAIL``; `run` returns False if any
step failed. Nothing leaves the machine: servers listen on 127.0.0.1 port 0.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

from ..connection import connect
from ..errors import Timeout
from ..framing import (
    CloseDelimited,
    DecimalPrefixed,
    Delimited,
    FixedLength,
    Framing,
    LengthPrefixed,
    Netstring,
    TypeTagged,
)
from ..server import ENGINES, Server
from .apps import Chat, upper
from .proxy import Faults, Proxy

__all__ = ["run"]

ROUND_TRIPS: Final = 300
PIPELINED: Final = 5_000
Say = Callable[[str], object]


class _Checks:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.results: list[bool] = []

    def __call__(self, ok: bool, text: str) -> None:
        self.results.append(ok)
        self.say(f"    {'ok  ' if ok else 'FAIL'} {text}")


def run(say: Say) -> bool:
    """Run every step, reporting with `say`; return True when all gave what they should."""
    check = _Checks(say)
    say("connecteur demo: everything below runs on 127.0.0.1 and checks its own result.\n")
    _framings_on_the_wire(say, check)
    rows = _engines(say, check)
    with Server(upper, "127.0.0.1:0", engine="select") as server:
        _fragmentation(say, check, server)
        _dead_peer(say, check, server)
        _hostile_header(say, check, server)
    _half_close(say, check)
    _chat(say, check)
    say("\nEngines side by side (this machine, this run; a Python client on the same cores):")
    say(f"    {'engine':<16}{'messages':>10}{'round trips/s':>15}{'pipelined msg/s':>17}")
    for engine, messages, rate, pipelined in rows:
        say(f"    {engine:<16}{messages:>10,}{rate:>15,.0f}{pipelined:>17,.0f}")
    ok = all(check.results)
    say("\nEvery step gave the expected result." if ok else "\nSome steps FAILED.")
    return ok


def _framings_on_the_wire(say: Say, check: _Checks) -> None:
    say("1. A stream has no message boundaries: each framing marks them its own way. b'hello' on the wire:")
    framings: list[tuple[str, Framing, bytes]] = [
        ("length (4-byte big-endian)", LengthPrefixed(), b"hello"),
        ("length:2", LengthPrefixed("!H"), b"hello"),
        ("line", Delimited(b"\n"), b"hello"),
        ("netstring", Netstring(), b"hello"),
        ("digits:5", DecimalPrefixed(5), b"hello"),
        ("fixed:5", FixedLength(5), b"hello"),
        ("type byte (M + 4 bytes)", TypeTagged({b"M": 4}), b"Mello"),
        ("close (the end of stream)", CloseDelimited(), b"hello"),
    ]
    for name, framing, message in framings:
        wire = framing.encode(message)
        decoder = framing.decoder()
        back = [m for i in range(len(wire)) for m in decoder.feed(wire[i : i + 1])] + decoder.eof()
        check(back == [message], f"{name:<28} {wire!r}")


def _engines(say: Say, check: _Checks) -> list[tuple[str, int, float, float]]:
    say("\n2. One handler, every engine (the HOWTO's thread per client, process per client, select; and asyncio):")
    variants = [(engine, "asyncio") for engine in ENGINES]
    if importlib.util.find_spec("uvloop") is not None:
        variants.append(("asyncio", "uvloop"))
    rows = []
    for engine, loop in variants:
        label = engine if loop == "asyncio" else f"{engine}+{loop}"
        with (
            Server(upper, "127.0.0.1:0", engine=engine, loop=loop) as server,
            connect(server.address, timeout=10) as conn,
        ):
            started = time.perf_counter()
            good = all(conn.request(b"m%d" % i) == b"M%d" % i for i in range(ROUND_TRIPS))
            rate = ROUND_TRIPS / (time.perf_counter() - started)
            started = time.perf_counter()
            conn.send_many(b"p%d" % i for i in range(PIPELINED))
            good &= [conn.recv() for _ in range(PIPELINED)] == [b"P%d" % i for i in range(PIPELINED)]
            pipelined = PIPELINED / (time.perf_counter() - started)
        check(good, f"{label:<16} {ROUND_TRIPS} requests and {PIPELINED:,} pipelined messages, every reply in order")
        rows.append((label, ROUND_TRIPS + PIPELINED, rate, pipelined))
    return rows


def _fragmentation(say: Say, check: _Checks, server: Server) -> None:
    say('\n3. "send and recv move only part of the bytes": a proxy forwards every byte as its own segment:')
    messages = [b"burst %d" % i for i in range(100)]
    with Proxy(server.address, fragment=1) as proxy, connect(proxy.address, timeout=10) as conn:
        conn.send_many(messages)
        replies = [conn.recv() for _ in messages]
    check(replies == [m.upper() for m in messages], f"{len(messages)} messages cut into 1-byte pieces, all intact")


def _dead_peer(say: Say, check: _Checks, server: Server) -> None:
    say("\n4. When sockets die: a peer that stops answering but never closes (a half-open connection):")
    first = LengthPrefixed().encode(b"FIRST")
    with (
        Proxy(server.address, downstream=Faults(blackhole_after=len(first))) as proxy,
        connect(proxy.address, timeout=0.3) as conn,
    ):
        answered = conn.request(b"first") == b"FIRST"
        started = time.perf_counter()
        try:
            conn.request(b"second")
            caught = False
        except Timeout:
            caught = True
        waited = time.perf_counter() - started
    check(answered and caught, f"the reader gave up after {waited:.1f} s with Timeout, instead of hanging for ever")


def _hostile_header(say: Say, check: _Checks, server: Server) -> None:
    say("\n5. A hostile peer announces a 4 GiB message; the server refuses before allocating anything:")
    with socket.create_connection(server.address, timeout=10) as raw:
        raw.sendall(struct.pack("!I", 2**32 - 1))
        closed = raw.recv(1) == b""
    with connect(server.address, timeout=10) as conn:
        served = conn.request(b"still here") == b"STILL HERE"
    check(closed and served, "that connection was closed at once; the next client is served")


def _half_close(say: Say, check: _Checks) -> None:
    say("\n6. Half-close, HTTP/1.0 style: send, shutdown_write(), read the reply until the server closes:")
    framing = CloseDelimited()
    with (
        Server(upper, "127.0.0.1:0", framing=framing) as server,
        connect(server.address, framing=framing, timeout=10) as conn,
    ):
        conn.send(b"GET /index.html")
        conn.shutdown_write()
        reply = conn.recv()
    check(reply == b"GET /INDEX.HTML", f"one request, one reply ended by the close: {reply!r}")


def _chat(say: Say, check: _Checks) -> None:
    say("\n7. A chat room: each message goes to every other member, under its sender's name:")
    with Server(Chat(), "127.0.0.1:0") as server:
        members = {name: connect(server.address, timeout=10) for name in (b"ann", b"bob", b"cid")}
        try:
            for name, conn in members.items():
                conn.send(name)
                conn.recv()  # the welcome
            for name in (b"ann", b"bob"):  # each hears who joined after it
                for _ in range(2 if name == b"ann" else 1):
                    members[name].recv()
            members[b"ann"].send(b"hi all")
            heard = [members[name].recv() for name in (b"bob", b"cid")]
        finally:
            for conn in members.values():
                conn.close()
    check(heard == [b"ann: hi all"] * 2, f"bob and cid both received {heard[0]!r}; ann did not get her own")
