"""The clients with ``on_oversize="skip"``: a reply over max_size is dropped, counted and logged; `recv` goes on."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import pytest

from connecteur import MessageTooLarge, Server, aio, connect
from connecteur.framing import Framing, LengthPrefixed, Lines
from tests.support import TIMEOUT

BIG = 300_000


def grow(message: bytes) -> bytes:
    """The reply: `BIG` bytes for ``b"big"``, the message itself otherwise."""
    return b"y" * BIG if message == b"big" else message


# (the server's framing, which can send the big reply; the client's, which skips it)
FRAMINGS = [
    pytest.param((LengthPrefixed(), LengthPrefixed(max_size=100, on_oversize="skip")), id="length"),
    pytest.param((Lines(2**20), Lines(100, on_oversize="skip")), id="lines"),
]

WARNING = re.compile(r"skipping a message from 127\.0\.0\.1:\d+: .*max_size is 100")


@pytest.fixture(params=FRAMINGS)
def framings(request: pytest.FixtureRequest) -> tuple[Framing, Framing]:
    pair: tuple[Framing, Framing] = request.param
    return pair


@pytest.fixture
def server(framings: tuple[Framing, Framing]) -> Iterator[Server]:
    running = Server(grow, "127.0.0.1:0", framing=framings[0])
    running.start()
    try:
        yield running
    finally:
        running.stop(timeout=1.0)


def test_connect_skips_an_oversized_reply_and_counts_it(
    server: Server, framings: tuple[Framing, Framing], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="connecteur.client"),
        connect(server.address, framing=framings[1], timeout=TIMEOUT) as conn,
    ):
        assert conn.skipped == 0
        conn.send_many([b"first", b"big", b"second"])
        assert conn.recv() == b"first"
        assert conn.recv() == b"second"
        assert conn.request(b"still open") == b"still open"
        assert conn.skipped == 1
    (record,) = [r for r in caplog.records if r.name == "connecteur.client"]
    assert record.levelno == logging.WARNING and WARNING.fullmatch(record.getMessage())


def test_aio_skips_an_oversized_reply_and_counts_it(
    server: Server, framings: tuple[Framing, Framing], caplog: pytest.LogCaptureFixture
) -> None:
    async def exchange() -> None:
        async with await aio.connect(server.address, framing=framings[1], timeout=TIMEOUT) as conn:
            assert conn.skipped == 0
            await conn.send_many([b"first", b"big", b"second"])
            assert await conn.recv() == b"first"
            assert await conn.recv() == b"second"
            assert await conn.request(b"still open") == b"still open"
            assert conn.skipped == 1

    with caplog.at_level(logging.WARNING, logger="connecteur.client"):
        asyncio.run(exchange())
    (record,) = [r for r in caplog.records if r.name == "connecteur.client"]
    assert record.levelno == logging.WARNING and WARNING.fullmatch(record.getMessage())


def test_by_default_a_client_still_fails_on_an_oversized_reply(
    server: Server, framings: tuple[Framing, Framing]
) -> None:
    closing = type(framings[1])(max_size=100)  # type: ignore[call-arg]
    with connect(server.address, framing=closing, timeout=TIMEOUT) as conn:
        conn.send(b"big")
        with pytest.raises(MessageTooLarge):
            conn.recv()
        assert conn.skipped == 0
