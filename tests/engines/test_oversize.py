"""``on_oversize="skip"`` on every engine: a message over max_size is dropped, counted and logged; the rest served."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable

import pytest

from connecteur import Server, connect
from connecteur.framing import Framing, LengthPrefixed, Lines
from connecteur.tools.apps import echo
from tests.engines.conftest import engine_per_family
from tests.support import TIMEOUT, recv_until_closed, wait_until

engine = engine_per_family  # each engine family, not each variant: see FAMILIES

Serve = Callable[..., Server]

# (the server's skipping framing, the client's, which can send the oversized message)
FRAMINGS = [
    pytest.param(LengthPrefixed(max_size=100, on_oversize="skip"), LengthPrefixed(), id="length"),
    pytest.param(Lines(100, on_oversize="skip"), Lines(2**20), id="lines"),
]

BIG = b"x" * 300_000
"""Several reads' worth, far over the limit: skipped as it streams by, not once buffered."""


@pytest.mark.parametrize(("framing", "sender"), FRAMINGS)
def test_small_oversized_small_gets_both_replies_on_the_same_connection(
    serve: Serve, framing: Framing, sender: Framing
) -> None:
    server = serve(echo, framing=framing)
    with connect(server.address, framing=sender, timeout=TIMEOUT) as conn:
        conn.send_many([b"first", BIG, b"second"])
        assert conn.recv() == b"first"
        assert conn.recv() == b"second"
        assert conn.request(b"still open") == b"still open"
    # With workers or the processes engine, counters arrive in reports: wait for the final figures.
    wait_until(lambda: server.stats.skipped == 1 and server.stats.active == 0, what="the skip counted")
    stats = server.stats
    assert (stats.messages_in, stats.messages_out, stats.errors) == (3, 3, 0)
    assert stats.bytes_in >= len(BIG)  # the skipped bytes were received all the same


def test_a_skip_is_a_rate_limited_peer_fault_warning(
    engine: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    if engine == "processes" or "*" in engine:
        pytest.skip("the connection is served in a forked child: its log records go to the child's stderr")
    server = serve(echo, framing=LengthPrefixed(max_size=100, on_oversize="skip"))
    with caplog.at_level(logging.INFO, logger="connecteur.server"):
        with connect(server.address, timeout=TIMEOUT) as conn:
            conn.send_many([b"a" * 101] * 12)
            assert conn.request(b"after") == b"after"
        wait_until(lambda: server.stats.skipped == 12, what="the skips counted")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "connecteur.server"]
    skips = [line for line in lines if line[1].startswith("skipping a message from 127.0.0.1:")]
    assert len(skips) == 12
    assert re.fullmatch(
        r"skipping a message from 127\.0\.0\.1:\d+: length header announces 101 bytes; max_size is 100", skips[0][1]
    )
    # The peer-fault budget (10 a minute): the rest are INFO lines.
    assert [level for level, _ in skips] == [logging.WARNING] * 10 + [logging.INFO] * 2


@pytest.mark.parametrize(
    ("framing", "head"),
    [(FRAMINGS[0].values[0], b"\x00\x10\x00\x00"), (FRAMINGS[1].values[0], b"")],
    ids=["length", "lines"],
)
def test_message_timeout_still_bounds_a_message_being_skipped(serve: Serve, framing: Framing, head: bytes) -> None:
    """Skipping keeps no bytes, but the message is still under way: a peer trickling it is the slowloris case."""
    server = serve(echo, framing=framing, message_timeout=0.3)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(head + b"x" * 200)  # 1 MiB announced (or a line of 200 bytes and counting), then silence
        assert recv_until_closed(sock) == b""  # closed by the deadline, well before TIMEOUT
    wait_until(lambda: server.stats.skipped == 1 and server.stats.errors == 1, what="the skip and the timeout counted")
