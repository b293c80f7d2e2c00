"""The demo: each HOWTO lesson shown live on 127.0.0.1, each result checked."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable

from ..connection import connect
from ..errors import ConnectionClosed
from ..framing import LengthPrefixed
from ..server import Server
from .apps import upper

__all__ = ["run"]

PIPELINED = 10_000


def run(say: Callable[[str], object]) -> bool:
    """Run every step, reporting with `say`; return True when all gave what they should."""
    framing = LengthPrefixed()
    results: list[bool] = []

    def check(ok: bool, text: str) -> None:
        results.append(ok)
        say(f"  {'ok  ' if ok else 'FAIL'} {text}")

    with Server(upper, "127.0.0.1:0", framing=framing, engine="threads") as server:
        host, port = server.address[:2]
        say(f"A server (threads engine, 4-byte length prefix) replies in upper case on {host}:{port}.")
        with connect(server.address, framing=framing, timeout=10) as conn:
            say("1. A request and its reply, with no hand-written send/recv loop:")
            reply = conn.request(b"hello")
            check(reply == b"HELLO", f"request(b'hello') -> {reply!r}")

            say(f"2. {PIPELINED:,} messages pipelined with send_many(), coalesced into a few writes:")
            started = time.perf_counter()
            conn.send_many(b"message %d" % i for i in range(PIPELINED))
            replies = [conn.recv() for _ in range(PIPELINED)]
            elapsed = time.perf_counter() - started
            expected = [b"MESSAGE %d" % i for i in range(PIPELINED)]
            check(
                replies == expected,
                f"every reply, in order, in {elapsed:.2f} s ({PIPELINED / elapsed:,.0f} messages/s)",
            )

            say("3. Half-close: send, shutdown_write(), read the replies until the server closes:")
            conn.send_many([b"one", b"two", b"three"])
            conn.shutdown_write()
            rest = list(conn)
            check(rest == [b"ONE", b"TWO", b"THREE"], f"replies after the half-close: {rest!r}")

        say("4. The stream has no message boundaries; the decoder finds them however bytes arrive:")
        wire = b"".join(framing.encode(m) for m in (b"fragmented", b"", b"stream"))
        decoder = framing.decoder()
        found = [m for i in range(len(wire)) for m in decoder.feed(wire[i : i + 1])]
        check(found == [b"fragmented", b"", b"stream"], f"fed one byte at a time: {found!r}")

        say("5. A hostile peer announces a 4 GiB message; the server refuses before allocating:")
        with socket.create_connection(server.address, timeout=10) as raw:
            raw.sendall(struct.pack("!I", 2**32 - 1))
            closed = raw.recv(1) == b""
        check(closed, "the connection was closed at once; the server goes on")
        with connect(server.address, framing=framing, timeout=10) as conn:
            check(conn.request(b"still here") == b"STILL HERE", "another client is still served")
            conn.shutdown_write()
            with contextlib.suppress(ConnectionClosed):
                conn.recv()
    stats = server.stats
    say(
        f"Server stats: {stats.accepted} connections, {stats.messages_in:,} messages in, "
        f"{stats.messages_out:,} out, {stats.errors} closed by an error."
    )
    ok = all(results)
    say("Every step gave the expected result." if ok else "Some steps FAILED.")
    return ok
