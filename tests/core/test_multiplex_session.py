"""A multiplexed connection's `Session` alone: its fast path answers as the general path does, byte for byte."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur.errors import CodecError
from connecteur.server import engine_config
from connecteur.server._budget import Budget
from connecteur.server._engine import EngineConfig
from connecteur.server._multiplex import MultiplexedHandler, Unordered
from connecteur.server._session import Session
from tests.core.test_session import ADDRESS, FRAMING, Clock, FakeHolder, FakeLink, sent
from tests.support import cuts

REQUEST, REPLY, ERROR, ONE_WAY, PING, PONG = range(1, 7)


def handler(message: bytes) -> object:
    """A plain function with every kind of outcome the envelope distinguishes."""
    if message == b"fail":
        raise ValueError("asked to fail")
    if message == b"none":
        return None
    if message == b"array":
        return bytearray(b"ARRAY")
    if message == b"int":
        return 42  # not bytes: an error reply
    return message.upper()


def envelope(kind: int, request_id: int, payload: bytes = b"") -> bytes:
    return FRAMING.encode(struct.pack("!BI", kind, request_id) + payload)


def config(handler: object = handler, *, multiplexed: bool = True, **options: Any) -> EngineConfig:
    return engine_config(
        handler,
        framing=FRAMING,
        max_connections=10,
        idle_timeout=None,
        message_timeout=None,
        multiplexed=multiplexed,
        **options,
    )


def make(config: EngineConfig, *, fast: bool = True, async_replies: bool = False) -> Session:
    """A session on `config`; without `fast`, one that answers every message through the general path."""
    if not fast:
        config = dataclasses.replace(config, plain_envelopes=None)
    link = FakeLink()
    budget = Budget(config.max_buffered, config.counters, lambda seconds, action: None)
    session = Session(
        config,
        ADDRESS,
        link,
        traffic=config.counters.traffic(),
        budget=budget,
        holder=FakeHolder(),
        clock=Clock(),
        async_replies=async_replies,
    )
    link.session = session
    session.start()
    return session


def parse(data: bytes) -> list[tuple[int, int, bytes]]:
    """The envelopes of the server's wire bytes."""
    found, decoder = [], FRAMING.decoder()
    for message in decoder.feed(data):
        kind, request_id = struct.unpack_from("!BI", message)
        found.append((kind, request_id, message[5:]))
    return found


PAYLOADS = st.one_of(st.sampled_from([b"fail", b"none", b"array", b"int", b""]), st.binary(max_size=40))
ENVELOPES = st.one_of(
    st.builds(lambda i, p: envelope(REQUEST, i, p), st.integers(0, 2**32 - 1), PAYLOADS),
    st.builds(lambda i: envelope(PING, i), st.integers(0, 2**32 - 1)),
    st.builds(lambda p: envelope(ONE_WAY, 0, p), PAYLOADS),
    st.builds(lambda i: envelope(PONG, i), st.integers(0, 2**32 - 1)),
)


@given(messages=st.lists(ENVELOPES, max_size=20), draw=st.data())
def test_the_fast_path_answers_every_cut_as_the_general_path_does(messages: list[bytes], draw: st.DataObject) -> None:
    """Replies, error replies, pongs, silence for one-way messages and pongs: the same bytes, in order."""
    cfg = config()
    fast, general = make(cfg), make(cfg, fast=False)
    stream = b"".join(messages)
    out = {True: b"", False: b""}
    for piece in cuts(stream, draw):
        for session, is_fast in ((fast, True), (general, False)):
            session.receive_data(piece)
            out[is_fast] += sent(session)
    assert out[True] == out[False]
    assert fast.error is None and general.error is None
    replies = parse(out[True])
    requests = [m for m in messages if m[4] in (REQUEST, PING)]
    assert [r[1] for r in replies] == [struct.unpack_from("!I", m, 5)[0] for m in requests]  # every one, in order


def test_a_multiplexed_plain_function_takes_the_fast_path() -> None:
    """The general path (`MultiplexedHandler.received`, once per message) is not taken."""
    session = make(config())
    with mock.patch.object(MultiplexedHandler, "received", side_effect=AssertionError("the general path")):
        session.receive_data(envelope(REQUEST, 1, b"a") + envelope(PING, 2) + envelope(REQUEST, 3, b"fail"))
    assert [r[:2] for r in parse(sent(session))] == [(REPLY, 1), (PONG, 2), (ERROR, 3)]
    assert session.error is None


def test_a_handler_object_or_a_codec_keeps_the_general_path() -> None:
    class Echo:
        def received(self, peer: object, message: bytes) -> bytes:
            return message

    assert config(Echo()).plain_envelopes is None
    assert config(handler, codec=mock.Mock()).plain_envelopes is None
    assert config(handler).plain_envelopes is not None
    assert config(handler, multiplexed=False).plain_envelopes is None


@pytest.mark.parametrize("bad", [b"\x01\x00", struct.pack("!BI", 9, 1), struct.pack("!BI", REPLY, 1)])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_bytes_that_are_no_clients_envelope_close_after_the_replies_before(bad: bytes, fast: bool) -> None:
    session = make(config(), fast=fast)
    session.receive_data(envelope(REQUEST, 1, b"a") + FRAMING.encode(bad) + envelope(REQUEST, 2, b"b"))
    assert parse(sent(session)) == [(REPLY, 1, b"A")]
    assert isinstance(session.error, CodecError) and session.closing


def test_requests_count_as_signs_of_life_for_the_heartbeat() -> None:
    cfg, clock = config(heartbeat=(1.0, 1.0)), Clock()
    watch = cfg.plain_envelopes._watch  # type: ignore[union-attr]
    watch._clock = clock
    watch._running = True  # so it starts no threads: this test reads its table, nothing pings or closes
    session = make(cfg)
    assert watch._last[session.peer] == clock.now
    clock.now += 5.0
    session.receive_data(envelope(REQUEST, 1, b"a"))
    assert watch._last[session.peer] == clock.now
    session.connection_lost()
    assert session.peer not in watch._last


def test_async_replies_leave_as_each_finishes_on_the_fast_path() -> None:
    async def slow_or_fast(message: bytes) -> bytes:
        await asyncio.sleep(0.05 if message == b"slow" else 0)
        return message

    async def main() -> list[tuple[int, int, bytes]]:
        session = make(config(slow_or_fast), async_replies=True)
        session.receive_data(envelope(REQUEST, 1, b"slow") + envelope(REQUEST, 2, b"fast") + envelope(PING, 3))
        out = sent(session)  # the pong, at once
        pending = [reply for reply, _ in session.take_async_replies() if isinstance(reply, Unordered)]
        assert len(pending) == 2
        for next_done in asyncio.as_completed([asyncio.ensure_future(reply) for reply in pending]):
            session.reply(await next_done)
            out += sent(session)
        assert session.pending_replies == 0
        return parse(out)

    assert asyncio.run(main()) == [(PONG, 3, b""), (REPLY, 2, b"fast"), (REPLY, 1, b"slow")]
