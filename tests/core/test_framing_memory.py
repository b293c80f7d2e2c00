"""What a decoder holds follows the bytes the peer sent, never a size it announced.

A header announcing the largest message, then silence, must cost a server
next to nothing: measured with `tracemalloc` (what Python allocated, whatever
the decoder reports) and with each decoder's `held`. The property tests cut
large messages anywhere, feed them or read them straight into the body as
the select engine does, and check the bound at every step.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur.framing import (
    DEFAULT_MAX_SIZE,
    FIRST_BODY,
    LARGE_MESSAGE,
    BodyPool,
    CloseDelimited,
    DecimalPrefixed,
    Decoder,
    Delimited,
    FixedLength,
    Framing,
    LengthField,
    LengthPrefixed,
    Lines,
    Netstring,
    TypeTagged,
    direct_decoder,
)

# A few hundred bytes for the decoder objects themselves, and bytearray's over-allocation.
SLACK = 1024

# (framing, the first bytes of a message of the largest size it accepts)
LARGEST_STARTS = [
    pytest.param(LengthPrefixed(), struct.pack("!I", DEFAULT_MAX_SIZE) + b"abc", id="length"),
    pytest.param(LengthPrefixed("!Q"), struct.pack("!Q", DEFAULT_MAX_SIZE) + b"abc", id="length-8"),
    pytest.param(LengthPrefixed("<I"), struct.pack("<I", DEFAULT_MAX_SIZE) + b"a" * 5000, id="length-direct-read"),
    pytest.param(Netstring(), b"%d:abc" % DEFAULT_MAX_SIZE, id="netstring"),
    pytest.param(DecimalPrefixed(8), b"%08dabc" % DEFAULT_MAX_SIZE, id="digits-8"),
    pytest.param(FixedLength(DEFAULT_MAX_SIZE), b"abc", id="fixed"),
    pytest.param(TypeTagged({b"M": DEFAULT_MAX_SIZE - 1}), b"Mabc", id="typed"),
    pytest.param(CloseDelimited(), b"abc", id="close"),
    pytest.param(Delimited(), b"abc", id="line"),
    pytest.param(Lines(), b"abc\r", id="lines"),
    # Modbus-like: the field at offset 2 counts itself and the 2 bytes before it: a 16 MiB message.
    pytest.param(
        LengthField(offset=2, size=4, adjustment=-6),
        b"\x00\x01" + struct.pack("!I", DEFAULT_MAX_SIZE) + b"abc",
        id="field",
    ),
]


def _allocated_while_holding(framing: Framing, start: bytes, count: int) -> tuple[int, list[Decoder]]:
    """Bytes Python allocated for `count` decoders that each received `start`, and the decoders."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoders = [framing.decoder() for _ in range(count)]
        for decoder in decoders:
            assert decoder.feed(start) == []
        return tracemalloc.get_traced_memory()[0] - before, decoders
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("framing", "start"), LARGEST_STARTS)
def test_the_start_of_a_largest_message_costs_what_was_received(framing: Framing, start: bytes) -> None:
    """24 connections that each sent a 16 MiB header and a few bytes cost kilobytes, not 24 x 16 MiB."""
    allocated, decoders = _allocated_while_holding(framing, start, 24)
    per_decoder = allocated / len(decoders)
    bound = 2 * len(start) + FIRST_BODY + SLACK
    assert per_decoder <= bound, f"{per_decoder:,.0f} bytes per decoder for {len(start)} received"
    for decoder in decoders:
        assert decoder.buffered == len(start)
        assert len(start) <= decoder.held <= bound  # type: ignore[attr-defined]


def test_an_empty_pool_allocates_nothing_for_a_header() -> None:
    pool = BodyPool()
    decoder = LengthPrefixed().decoder()
    decoder.use_pool(pool)  # type: ignore[attr-defined]
    tracemalloc.start()
    try:
        assert decoder.feed(struct.pack("!I", DEFAULT_MAX_SIZE) + b"abc") == []
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert allocated <= FIRST_BODY + SLACK
    assert pool.take(DEFAULT_MAX_SIZE) is None


def test_a_spare_that_fits_is_borrowed_not_allocated() -> None:
    """The loop's spare, already allocated, carries the next message of its size: no growth, no copy."""
    pool, framing, size = BodyPool(), LengthPrefixed(), 4 * LARGE_MESSAGE
    decoder = framing.decoder()
    decoder.use_pool(pool)  # type: ignore[attr-defined]
    wire = framing.encode(b"a" * size)
    assert decoder.feed(wire[:100]) == [] and decoder.feed(wire[100:]) == [b"a" * size]  # cut: a body of its own
    tracemalloc.start()
    try:
        assert decoder.feed(struct.pack("!I", size) + b"b") == []
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert allocated <= SLACK
    assert size <= decoder.held <= size + 64  # type: ignore[attr-defined]  # the spare itself, its NUL byte
    direct = direct_decoder(decoder)
    assert direct is not None
    room = direct.recv_buffer()
    assert room is not None and len(room) == size - 1  # the whole rest at once: the spare is already there


def test_held_falls_back_once_the_message_is_out() -> None:
    framing = LengthPrefixed()
    decoder = framing.decoder()
    wire = framing.encode(b"x" * (8 * LARGE_MESSAGE))
    assert decoder.feed(wire[:-1]) == []
    assert decoder.held >= decoder.buffered - 4  # type: ignore[attr-defined]
    assert decoder.feed(wire[-1:]) == [b"x" * (8 * LARGE_MESSAGE)]
    assert decoder.held <= SLACK  # type: ignore[attr-defined]


# --- properties: any cut, fed or read directly ----------------------------------------

_SIZES = st.sampled_from([0, 1, 100, LARGE_MESSAGE - 1, LARGE_MESSAGE, LARGE_MESSAGE + 7, 3 * LARGE_MESSAGE + 3])
_STEPS = st.sampled_from([1, 3, 4, 5, 1000, 4096, FIRST_BODY + 1, LARGE_MESSAGE, 5 * LARGE_MESSAGE])


MAX_STEPS = 64
"""Steps drawn per example, after which the rest of the wire comes in one step.

A run of one-byte steps through a 192 KiB body tests nothing its first
dozens did not, and cost seconds an example in draws (two per step); the
longest runs went over Hypothesis's budget of choices and were thrown away
after costing the most. Cut this way, the two cases take a few seconds, not
a minute and a half."""


def _patterned(size: int, seed: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(min(size, 251))) * (size // 251) + bytes(size % 251)


@pytest.mark.parametrize("pooled", [False, True])
@given(sizes=st.lists(_SIZES, min_size=1, max_size=4), data=st.data())
def test_held_stays_within_twice_the_bytes_received(pooled: bool, sizes: list[int], data: st.DataObject) -> None:
    """Messages come out whole, and at every step: held <= 2 x received + FIRST_BODY.

    With a pool, a decoder may also borrow the spare: the buffer of a message
    already received whole (at most twice its size), which costs no new memory.
    """
    framing = LengthPrefixed()
    messages = [_patterned(size, seed) for seed, size in enumerate(sizes)]
    wire = b"".join(framing.encode(message) for message in messages) + b"\x00\x00"  # the next header's start
    decoder = direct_decoder(framing.decoder())
    assert decoder is not None
    if pooled:
        decoder.use_pool(BodyPool())  # type: ignore[attr-defined]
    got: list[bytes] = []
    largest_out = pos = steps = 0
    while pos < len(wire):
        step = data.draw(_STEPS) if steps < MAX_STEPS else len(wire)
        steps += 1
        target = decoder.recv_buffer()
        if target is not None and data.draw(st.booleans()):
            count = min(step, len(target), len(wire) - pos)
            target[:count] = wire[pos : pos + count]
            got += decoder.buffer_filled(count)
        else:
            count = min(step, len(wire) - pos)
            got += decoder.feed(memoryview(wire)[pos : pos + count])
        pos += count
        largest_out = max([largest_out, *map(len, got)])
        received = pos - sum(4 + len(m) for m in got)
        assert decoder.buffered == received
        held = decoder.held  # type: ignore[attr-defined]
        assert held <= 2 * received + FIRST_BODY or (pooled and held <= 2 * largest_out + SLACK), (held, received)
    assert got == messages
    assert decoder.buffered == 2


_OTHER_FRAMINGS = [
    pytest.param(Netstring(), id="netstring"),
    pytest.param(DecimalPrefixed(7), id="digits-7"),
    pytest.param(FixedLength(5 * LARGE_MESSAGE), id="fixed"),
    pytest.param(Delimited(max_size=6 * LARGE_MESSAGE), id="line"),
    pytest.param(Lines(max_size=6 * LARGE_MESSAGE, crlf=True), id="lines"),
    pytest.param(LengthField(size=3, byteorder="little", strip=3), id="field"),
    pytest.param(TypeTagged({b"M": 5 * LARGE_MESSAGE, b"P": 0}), id="typed"),
]


@pytest.mark.parametrize("framing", _OTHER_FRAMINGS)
@given(data=st.data())
def test_every_framing_holds_at_most_twice_what_it_received(
    framing: Netstring | DecimalPrefixed | FixedLength | Delimited | Lines | LengthField | TypeTagged,
    data: st.DataObject,
) -> None:
    """The other framings keep only received bytes: held <= 2 x buffered + a little, however cut."""
    if isinstance(framing, (FixedLength, TypeTagged)):
        body = b"M" + b"x" * (5 * LARGE_MESSAGE) if isinstance(framing, TypeTagged) else b"x" * framing.size
        messages = [body, body]
    else:
        messages = [b"x" * size for size in data.draw(st.lists(_SIZES, min_size=1, max_size=3))]
    wire = b"".join(framing.encode(message) for message in messages)
    ends = [*sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=40), label="cuts")), len(wire)]
    decoder = framing.decoder()
    got: list[bytes] = []
    pos = 0
    for end in ends:
        got += decoder.feed(wire[pos:end])
        pos = end
        held = decoder.held  # type: ignore[attr-defined]
        assert decoder.buffered <= held <= 2 * decoder.buffered + SLACK
    assert got == messages


def test_a_body_grows_even_while_a_caller_still_holds_a_view_of_it() -> None:
    """Doubling in place is refused while a view is exported (BufferError): the body is then copied."""
    decoder = direct_decoder(LengthPrefixed().decoder())
    assert decoder is not None
    size = 4 * FIRST_BODY
    assert decoder.feed(struct.pack("!I", size)) == []
    kept = []
    got: list[bytes] = []
    while (target := decoder.recv_buffer()) is not None:
        kept.append(target)  # never released: the next growth cannot resize this buffer
        target[:] = bytes([len(kept)]) * len(target)
        got += decoder.buffer_filled(len(target))
    assert len(kept) >= 3
    assert got == [b"".join(bytes([i + 1]) * len(view) for i, view in enumerate(kept))]
