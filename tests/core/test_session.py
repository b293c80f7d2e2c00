"""`Session` alone: bytes in, bytes out, a fake clock; no socket, no thread, no sleep."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur._channel import ChannelSpec
from connecteur.errors import FramingError, MessageTooLarge, ProxyProtocolError, Timeout, TruncatedMessage
from connecteur.framing import Buffer, Delimited, Framing, LengthPrefixed
from connecteur.server._budget import Budget, OverBudget
from connecteur.server._engine import Counters, EngineConfig
from connecteur.server._handler import Handler
from connecteur.server._peer import Peer
from connecteur.server._session import Capabilities, Session
from tests.support import cuts

FRAMING = LengthPrefixed()
ADDRESS = ("127.0.0.1", 40000)


def wire(*messages: bytes) -> bytes:
    return b"".join(FRAMING.encode(message) for message in messages)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLink:
    """What a Peer calls: here, straight into the session, as an engine on its own thread would."""

    session: Session

    def send(self, message: Buffer, policy: str | None = None) -> None:
        self.session.send(self.session.frame(message))

    def close(self) -> None:
        self.session.close()


class FakeHolder:
    """The engine's object as the budget sees it."""

    def __init__(self) -> None:
        self.paused: list[bool] = []

    def pause_reading_for_budget(self, paused: bool) -> None:
        self.paused.append(paused)

    def evict(self, error: OverBudget) -> None:  # pragma: no cover - not reached in these tests
        raise AssertionError(error)


class Recorder:
    """A handler object that echoes and notes every call."""

    def __init__(self, received: Callable[[Peer, bytes], Any] | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self._received = received

    def connected(self, peer: Peer) -> None:
        self.calls.append(("connected", peer.address))

    def received(self, peer: Peer, message: bytes) -> Any:
        self.calls.append(("received", message))
        return message if self._received is None else self._received(peer, message)

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        self.calls.append(("closed", error))


def make_session(
    handler: object = bytes,
    *,
    framing: Framing = FRAMING,
    clock: Clock | None = None,
    idle_timeout: float | None = None,
    message_timeout: float | None = None,
    channel: ChannelSpec | None = None,
    handshake_timeout: float | None = None,
    max_buffered: int = 2**30,
    async_replies: bool = False,
) -> tuple[Session, Counters, Budget]:
    counters = Counters()
    config = EngineConfig(
        handler=Handler(handler),
        framing=framing,
        counters=counters,
        max_connections=10,
        idle_timeout=idle_timeout,
        message_timeout=message_timeout,
        channel=channel or ChannelSpec(server_side=True),
        handshake_timeout=handshake_timeout,
        max_buffered=max_buffered,
    )
    budget = Budget(max_buffered, counters, lambda seconds, action: None)
    link = FakeLink()
    session = Session(
        config,
        ADDRESS,
        link,
        traffic=counters.traffic(),
        budget=budget,
        holder=FakeHolder(),
        clock=clock or Clock(),
        async_replies=async_replies,
    )
    link.session = session
    counters.opened()
    session.start()
    return session, counters, budget


def sent(session: Session) -> bytes:
    return b"".join(bytes(buffer) for buffer in session.data_to_send())


# --- fragmentation and order ----------------------------------------------------------------


@pytest.mark.parametrize("handler", [bytes, Recorder()], ids=["plain", "object"])
@given(messages=st.lists(st.binary(max_size=200), max_size=20), draw=st.data())
def test_any_cut_gives_every_reply_in_order(handler: object, messages: list[bytes], draw: st.DataObject) -> None:
    """However the bytes are cut, the replies are the messages, in order, and the counts add up."""
    session, counters, _ = make_session(handler)
    out = b""
    stream = wire(*messages)
    for piece in cuts(stream, draw):
        session.receive_data(piece)
        out += sent(session)
    assert out == stream
    stats = counters.snapshot()
    assert (stats.messages_in, stats.messages_out) == (len(messages), len(messages))
    assert stats.bytes_in == stats.bytes_out == len(stream)
    assert session.error is None and not session.closing


def test_pipelined_replies_leave_in_one_buffer_in_order() -> None:
    """The replies to one read are framed together: one buffer, one write."""
    session, _, _ = make_session(lambda message: message.upper())
    session.receive_data(wire(*(b"m%d" % i for i in range(100))))
    buffers = session.data_to_send()
    assert len(buffers) == 1
    assert bytes(buffers[0]) == wire(*(b"M%d" % i for i in range(100)))
    assert session.data_to_send() == []


def test_peer_send_in_a_handler_keeps_its_place_among_the_replies() -> None:
    def received(peer: Peer, message: bytes) -> bytes:
        peer.send(b"before " + message)
        return message

    session, counters, _ = make_session(Recorder(received))
    session.receive_data(wire(b"a", b"b"))
    assert sent(session) == wire(b"before a", b"a", b"before b", b"b")
    assert counters.snapshot().messages_out == 4


def test_a_large_reply_leaves_as_header_and_body_uncopied() -> None:
    """LengthPrefixed's encode_parts: a gathering write of the header and the very body."""
    body = b"x" * 100_000
    session, _, _ = make_session(lambda message: body)
    session.receive_data(wire(b"big?"))
    header, data = session.data_to_send()
    assert bytes(header) == struct.pack("!I", len(body)) and data is body


def _room(session: Session) -> memoryview | None:
    """Where a loop reads next: the large body under way, as `Session.direct` lends it."""
    decoder = session.direct
    return decoder.recv_buffer() if decoder is not None and decoder.reading_body else None


def test_a_large_message_can_be_read_straight_into_its_body() -> None:
    session, _, _ = make_session()
    body = bytes(range(256)) * 400
    session.receive_data(wire(body)[:10_000])
    assert _room(session) is not None
    rest = wire(body)[10_000:]
    while rest:
        room = _room(session)
        assert room is not None
        count = min(len(room), len(rest))
        room[:count] = rest[:count]
        session.buffer_filled(count)
        rest = rest[count:]
    assert sent(session) == wire(body)
    assert _room(session) is None


def test_capabilities_are_probed_once_from_the_framing() -> None:
    length = Capabilities.probe(FRAMING, FRAMING.decoder())
    assert length.direct_reads and length.pools_bodies and length.encode_parts is not None
    lines = Capabilities.probe(Delimited(), Delimited().decoder())
    assert not lines.direct_reads and not lines.pools_bodies and lines.encode_parts is None
    assert lines.encode_all([b"a", b"b"]) == b"a\nb\n"


# --- async replies ---------------------------------------------------------------------------


def settle(awaitable: Any) -> Any:
    """What a coroutine that never suspends returns (the asyncio loop would await it)."""
    try:
        awaitable.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")  # pragma: no cover


def test_async_replies_come_back_through_the_loop_in_order() -> None:
    """An awaitable reply is handed out; the replies after it wait behind it, even ready ones."""

    async def later(message: bytes) -> bytes:
        return message.upper()

    def handler(message: bytes) -> object:
        return later(message) if message.startswith(b"slow") else message

    session, counters, _ = make_session(handler, async_replies=True)
    session.receive_data(wire(b"first", b"slow one", b"after"))
    assert sent(session) == wire(b"first")  # before the awaitable: at once
    chained = session.take_async_replies()
    assert [counts for _, counts in chained] == [True, True] and session.pending_replies == 2
    session.close()  # waits for them
    assert not session.close_expected()
    for reply, counts in chained:
        session.reply(settle(reply) if not isinstance(reply, bytes) else reply, counts=counts)
    assert sent(session) == wire(b"SLOW ONE", b"after")
    assert session.close_expected() and session.error is None
    assert counters.snapshot().messages_out == 3


def test_an_async_reply_that_raises_ends_the_connection() -> None:
    async def broken(message: bytes) -> bytes:
        raise ValueError("no")

    session, _, _ = make_session(broken, async_replies=True)
    session.receive_data(wire(b"x"))
    ((reply, counts),) = session.take_async_replies()
    try:
        settle(reply)
    except ValueError as exc:
        session.reply(None, counts=counts, error=exc)
    assert isinstance(session.error, ValueError) and session.close_expected()


def test_an_async_reply_is_refused_without_an_event_loop() -> None:
    async def handler(message: bytes) -> bytes:  # pragma: no cover - never awaited
        return message

    session, _, _ = make_session(handler)
    session.receive_data(wire(b"x"))
    assert isinstance(session.error, TypeError) and "engine='asyncio'" in str(session.error)


# --- closing ---------------------------------------------------------------------------------


def test_a_clean_end_reports_once_with_no_error() -> None:
    handler = Recorder()
    session, counters, _ = make_session(handler)
    session.receive_data(wire(b"last"))
    session.receive_eof()
    assert sent(session) == wire(b"last")
    assert session.close_expected() and session.error is None
    session.connection_lost()
    session.connection_lost()
    assert handler.calls == [("connected", ADDRESS), ("received", b"last"), ("closed", None)]
    assert counters.snapshot().errors == 0


def test_bad_bytes_answer_the_messages_before_then_fail() -> None:
    handler = Recorder()
    session, counters, _ = make_session(handler, framing=LengthPrefixed(max_size=10))
    session.receive_data(wire(b"ok") + struct.pack("!I", 11))
    assert sent(session) == wire(b"ok")
    assert isinstance(session.error, MessageTooLarge) and session.close_expected()
    session.connection_lost()
    assert handler.calls[-1] == ("closed", session.error)
    assert counters.snapshot().errors == 1


def test_an_end_inside_a_message_is_an_error() -> None:
    session, _, _ = make_session()
    session.receive_data(wire(b"cut")[:5])
    session.receive_eof()
    assert isinstance(session.error, TruncatedMessage)


def test_a_handler_that_raises_ends_the_connection_after_the_replies_before() -> None:
    def received(peer: Peer, message: bytes) -> bytes:
        if message == b"boom":
            raise ValueError("boom")
        return message

    handler = Recorder(received)
    session, _, _ = make_session(handler)
    session.receive_data(wire(b"1", b"boom", b"never"))
    assert sent(session) == wire(b"1")
    assert isinstance(session.error, ValueError)  # the handler's own exception, as closed() gets it
    assert ("received", b"never") not in handler.calls


def test_a_handler_that_closes_still_gets_its_reply_sent() -> None:
    def received(peer: Peer, message: bytes) -> bytes:
        peer.close()
        return b"bye"

    session, _, _ = make_session(Recorder(received))
    session.receive_data(wire(b"1", b"2"))
    assert sent(session) == wire(b"bye")  # the second message is not answered
    assert session.close_expected() and session.error is None


def test_a_reply_the_framing_cannot_carry_fails_after_those_before() -> None:
    session, _, _ = make_session(lambda message: message * 20, framing=LengthPrefixed(max_size=30))
    session.receive_data(wire(b"a", b"bb"))
    assert sent(session) == LengthPrefixed(max_size=30).encode(b"a" * 20)
    assert isinstance(session.error, FramingError)


# --- deadlines -----------------------------------------------------------------------------


def test_no_deadline_without_a_timeout() -> None:
    session, _, _ = make_session()
    assert session.next_deadline() is None


def test_idle_timeout_expires_on_the_fake_clock() -> None:
    clock = Clock()
    session, counters, _ = make_session(clock=clock, idle_timeout=5.0)
    assert session.next_deadline() == clock.now + 5.0
    clock.now += 3.0
    session.receive_data(wire(b"moved"))  # a whole message: idle time counts from now
    assert session.next_deadline() == clock.now + 5.0
    session.check_deadlines(clock.now + 4.9)
    assert session.error is None
    session.check_deadlines(clock.now + 5.0)
    assert isinstance(session.error, Timeout) and session.error.seconds == 5.0
    session.connection_lost()
    assert counters.snapshot().errors == 1


def test_message_timeout_counts_from_a_message_s_first_byte() -> None:
    clock = Clock()
    session, _, _ = make_session(clock=clock, message_timeout=2.0)
    assert session.next_deadline() is None  # no message under way
    clock.now += 10.0
    session.receive_data(wire(b"slow")[:3])
    assert session.new_deadline
    assert session.next_deadline() == clock.now + 2.0
    assert not session.new_deadline
    session.check_deadlines(clock.now + 1.0)
    assert session.error is None
    session.check_deadlines(clock.now + 2.0)
    assert isinstance(session.error, Timeout)
    assert "a message took more than 2.0 s" in str(session.error)


def test_each_message_s_deadline_is_its_own_and_whole_messages_read_no_clock() -> None:
    """With only a message timeout, reads of whole messages leave no deadline and read no clock;
    a finished message clears its deadline, and the next counts from its own first byte."""
    clock = Clock()
    reads = 0

    def counting() -> float:
        nonlocal reads
        reads += 1
        return clock()

    session, _, _ = make_session(clock=counting, message_timeout=2.0)  # type: ignore[arg-type]
    reads = 0
    session.receive_data(wire(b"whole") * 3)
    assert reads == 0 and session.next_deadline() is None
    session.receive_data(wire(b"first")[:3])
    started = clock.now
    assert session.next_deadline() == started + 2.0
    clock.now += 1.5
    session.receive_data(wire(b"first")[3:] + wire(b"second")[:3])  # the first ends, the second begins
    assert session.next_deadline() == clock.now + 2.0  # not started + 2.0: the second's own
    clock.now += 1.0
    session.receive_data(wire(b"second")[3:])
    assert session.next_deadline() is None
    session.check_deadlines(started + 10.0)
    assert session.error is None


# --- the handshake -------------------------------------------------------------------------

PROXY = ChannelSpec.build(server_side=True, proxy_protocol="v1", proxy_trusted=["127.0.0.0/8"])


def test_a_proxy_header_gives_the_handler_the_original_client() -> None:
    handler = Recorder()
    session, _, _ = make_session(handler, channel=PROXY)
    assert handler.calls == [] and session.data_to_send() == []
    header = b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 443\r\n"
    session.receive_data(header[:10])
    assert handler.calls == []
    session.receive_data(header[10:] + wire(b"hello"))  # the first message with the header's end
    assert handler.calls == [("connected", ("192.0.2.1", 56324)), ("received", b"hello")]
    assert session.peer.proxy_address == ADDRESS
    assert sent(session) == wire(b"hello")


def test_a_stalled_proxy_header_times_out_without_the_handler() -> None:
    clock = Clock()
    handler = Recorder()
    session, counters, _ = make_session(handler, clock=clock, channel=PROXY, handshake_timeout=1.5, idle_timeout=60)
    session.receive_data(b"PROXY TCP4 ")
    assert session.next_deadline() == clock.now + 1.5
    session.check_deadlines(clock.now + 1.5)
    assert isinstance(session.error, ProxyProtocolError)
    session.connection_lost()
    assert handler.calls == []
    stats = counters.snapshot()
    assert (stats.errors, stats.handshake_errors) == (1, 1)


def test_a_bad_proxy_header_fails_the_handshake() -> None:
    handler = Recorder()
    session, counters, _ = make_session(handler, channel=PROXY)
    session.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(session.error, ProxyProtocolError)
    session.connection_lost()
    assert handler.calls == [] and counters.snapshot().handshake_errors == 1


# --- memory ---------------------------------------------------------------------------------


def test_the_budget_hears_what_the_connection_holds() -> None:
    session, _, budget = make_session()
    session.receive_data(wire(b"x" * 100)[:50])
    session.account(queued=1000)
    # The decoder's memory (its buffer's capacity), not only the 50 bytes: at least them, not twice.
    assert 50 <= budget.held - 1000 < 2 * 50
    session.receive_data(wire(b"x" * 100)[50:])
    session.account(queued=0)
    assert budget.held == 0
    session.receive_data(b"\0\0")
    session.account(queued=0)
    session.connection_lost()
    assert budget.held == 0
