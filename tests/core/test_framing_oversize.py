"""``on_oversize="skip"``: a message over `max_size` is dropped as it streams by, and the next one follows.

Properties for each decoder that can skip: random messages, some oversized,
cut anywhere down to single bytes and followed by the start of the next
message, give exactly the messages that fit, in order, with the others
counted; what a decoder holds stays within `max_size` and a read whatever size
was announced.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connecteur import FramingError, MessageTooLarge
from connecteur.framing import (
    LARGE_MESSAGE,
    BodyPool,
    DecimalPrefixed,
    Decoder,
    Delimited,
    Framing,
    LengthField,
    LengthPrefixed,
    Lines,
    direct_decoder,
)
from tests.core.splits import SPLITS, split_decoder
from tests.support import LONG_TESTS, cuts

EXAMPLES = 100 if LONG_TESTS else 30


@dataclass(frozen=True)
class Family:
    """A framing that can skip, and how to put any message, oversized or not, on the wire."""

    name: str
    make: Callable[[int], Framing]  # max_size -> the skipping framing
    wire: Callable[[bytes], bytes]  # a message's wire bytes, whatever its size
    alphabet: bytes = b"ab\x00\xff"
    c_split: bool | None = None  # LengthPrefixed: split in C (True) or in Python (False)


def _field_wire(message: bytes) -> bytes:
    """Modbus-like: 2 bytes of id, a 2-byte length of what follows it, the message; all 4 stripped."""
    return b"ID" + struct.pack("!H", len(message)) + message


def _encoder(framing: Framing) -> Callable[[bytes], bytes]:
    return framing.encode


FAMILIES = [
    *(
        Family(f"{name}-{split}", make, wire, c_split=c_split)
        for name, make, wire in [
            ("length", lambda m: LengthPrefixed("!H", m, on_oversize="skip"), _encoder(LengthPrefixed("!H"))),
            ("length-le8", lambda m: LengthPrefixed("<Q", m, on_oversize="skip"), _encoder(LengthPrefixed("<Q"))),
        ]
        for c_split, split in [(False, "python"), (True, "c")]
    ),
    Family("field", lambda m: LengthField(offset=2, size=2, strip=4, max_size=m, on_oversize="skip"), _field_wire),
    Family("digits", lambda m: DecimalPrefixed(3, m, on_oversize="skip"), _encoder(DecimalPrefixed(3))),
    Family("line", lambda m: Delimited(b"\n", m, on_oversize="skip"), _encoder(Delimited(b"\n", 2**20)), b"ab\r\n"),
    Family("crlf", lambda m: Delimited(b"\r\n", m, on_oversize="skip"), _encoder(Delimited(b"\r\n", 2**20)), b"ab\r\n"),
    Family(
        "double-newline",  # a delimiter that overlaps itself
        lambda m: Delimited(b"\n\n", m, on_oversize="skip"),
        _encoder(Delimited(b"\n\n", 2**20)),
        b"a\n",
    ),
    Family("lines", lambda m: Lines(m, on_oversize="skip"), _encoder(Lines(2**20)), b"ab\r\n"),
    Family("lines-crlf", lambda m: Lines(m, on_oversize="skip"), _encoder(Lines(2**20, crlf=True)), b"ab\r\n"),
]


def _wireable(family: Family, messages: list[bytes]) -> list[bytes]:
    """The messages the family can carry at all (a line cannot hold its delimiter)."""
    kept = []
    for message in messages:
        try:
            family.wire(message)
        except FramingError:
            continue
        kept.append(message)
    return kept


def _skipping(framing: Framing, c_split: bool | None = None) -> tuple[Decoder, list[MessageTooLarge]]:
    if c_split is None:
        decoder = framing.decoder()
    else:
        assert isinstance(framing, LengthPrefixed)
        decoder = split_decoder(framing, c_split)
    seen: list[MessageTooLarge] = []
    decoder.on_skip = seen.append  # type: ignore[attr-defined]
    return decoder, seen


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_skipping_gives_exactly_the_messages_that_fit_in_order(family: Family, data: st.DataObject) -> None:
    """However cut, down to one byte: the messages that fit, in order; the others counted; bounded memory."""
    max_size = data.draw(st.integers(0, 20), label="max_size")
    letters = st.sampled_from(family.alphabet)
    message = st.lists(letters, max_size=3 * max_size + 2).map(bytes) | st.just(b"x" * 200)
    messages = _wireable(family, data.draw(st.lists(message, max_size=8), label="messages"))
    following = family.wire(data.draw(st.lists(st.sampled_from(b"ab"), max_size=max_size).map(bytes)))
    cut = data.draw(st.integers(0, len(following) - 1), label="cut")
    wire = b"".join(map(family.wire, messages)) + following[:cut]

    decoder, seen = _skipping(family.make(max_size), family.c_split)
    got: list[bytes] = []
    max_piece = data.draw(st.sampled_from([1, 3, 64]), label="max_piece")
    for piece in cuts(wire, data, max_piece=max_piece):
        got += decoder.feed(piece)
        assert decoder.buffered <= max_size + 8  # the message under way, never one being skipped

    fitting = [m for m in messages if len(m) <= max_size]
    assert got == fitting
    assert decoder.skipped == len(seen) == len(messages) - len(fitting)  # type: ignore[attr-defined]
    assert all(error.max_size == max_size and error.size > max_size for error in seen)
    assert decoder.buffered == cut
    assert len(decoder.feed(following[cut:])) == 1
    assert decoder.eof() == []


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_policy_shows_in_the_repr(family: Family) -> None:
    framing = family.make(4)
    assert framing.on_oversize == "skip" and "on_oversize='skip'" in repr(framing)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: LengthPrefixed(**kw),
        lambda **kw: LengthField(**kw),
        lambda **kw: DecimalPrefixed(3, **kw),
        lambda **kw: Delimited(**kw),
        lambda **kw: Lines(**kw),
    ],
    ids=["length", "field", "digits", "line", "lines"],
)
def test_the_default_closes_and_a_bad_policy_is_refused(make: Callable[..., Framing]) -> None:
    assert make().on_oversize == "close"  # type: ignore[attr-defined]
    assert "on_oversize" not in repr(make())
    with pytest.raises(ValueError, match="on_oversize must be 'close' or 'skip', not 'drop'"):
        make(on_oversize="drop")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_end_of_the_stream_inside_a_skipped_message_is_a_clean_end(family: Family) -> None:
    """Nothing was to be delivered: the skip was counted when found, and the end loses nothing more.

    The wire is cut before its last byte: inside the body, or (delimited) with
    the start of a two-byte delimiter held, in case it is one.
    """
    decoder, seen = _skipping(family.make(4), family.c_split)
    assert decoder.feed(family.wire(b"a" * 50)[:-1]) == []
    assert decoder.eof() == [] and len(seen) == 1


_HUGE = 8 * 2**20
_READ = 64 * 2**10

# (the skipping framing, the header of an 8 MiB message, what follows its body: a message that fits)
HUGE_STARTS = [
    pytest.param(
        LengthPrefixed(max_size=1000, on_oversize="skip"),
        struct.pack("!I", _HUGE),
        LengthPrefixed().encode(b"ok"),
        id="length",
    ),
    pytest.param(
        LengthPrefixed(max_size=LARGE_MESSAGE + 1, on_oversize="skip"),  # the size of large messages
        struct.pack("!I", _HUGE),
        LengthPrefixed().encode(b"ok"),
        id="length-large",
    ),
    pytest.param(
        LengthField(offset=2, size=4, strip=6, max_size=1000, on_oversize="skip"),
        b"ID" + struct.pack("!I", _HUGE),
        b"ID" + struct.pack("!I", 2) + b"ok",
        id="field",
    ),
    pytest.param(
        DecimalPrefixed(7, 1000, on_oversize="skip"), b"%07d" % _HUGE, DecimalPrefixed(7).encode(b"ok"), id="digits"
    ),
    pytest.param(Delimited(b"\r\n", 1000, on_oversize="skip"), b"", b"\r\nok\r\n", id="crlf"),
    pytest.param(Lines(1000, on_oversize="skip"), b"", b"\r\nok\n", id="lines"),
]


@pytest.mark.parametrize(("framing", "head", "tail"), HUGE_STARTS)
def test_skipping_a_huge_message_holds_no_more_than_a_read(framing: Framing, head: bytes, tail: bytes) -> None:
    """8 MiB announced (or a line of 8 MiB), far less allowed: the decoder holds about one 64 KiB read.

    Measured two ways: the decoder's own `held`, and what Python allocated
    (`tracemalloc`'s peak) while the 8 MiB went by in 64 KiB reads.
    """
    decoder, seen = _skipping(framing)
    chunk = memoryview(b"a" * _READ)
    held, under_way = 0, True
    tracemalloc.start()
    try:
        assert decoder.feed(head) == []
        reads = _HUGE // _READ
        for count in range(1, reads + 1):
            assert decoder.feed(chunk) == []
            held = max(held, decoder.held)  # type: ignore[attr-defined]
            under_way = under_way and (decoder.buffered >= 1 or count == reads)  # the last may end it
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held <= 2 * _READ + 1024
    assert peak <= 2 * _READ + 16 * 1024, f"{peak:,} bytes allocated to skip {_HUGE:,}"
    assert decoder.skipped == len(seen) == 1  # type: ignore[attr-defined]
    assert seen[0].size >= framing.max_size
    # Nothing kept, but the message is under way until its last byte: a server's message_timeout applies to it.
    assert under_way
    assert decoder.feed(tail) == [b"ok"]
    assert decoder.buffered == 0


_SIZES = st.sampled_from([0, 1, 100, LARGE_MESSAGE - 1, LARGE_MESSAGE + 7, 2 * LARGE_MESSAGE, 3 * LARGE_MESSAGE + 3])
# Big steps: the cuts down to one byte are the property above's; here, which path each read takes.
_STEPS = st.sampled_from([1, 1000, 4096, LARGE_MESSAGE, 5 * LARGE_MESSAGE])
_MAX_STEPS = 64
"""Steps drawn per example, after which the rest of the wire comes in one step:
runs of one-byte steps through 192 KiB bodies cost seconds an example in draws
and show no path the first dozens did not."""


@pytest.mark.parametrize("c_split", SPLITS)
@pytest.mark.parametrize("pooled", [False, True])
@settings(max_examples=EXAMPLES)
@given(sizes=st.lists(_SIZES, min_size=1, max_size=5), data=st.data())
def test_skipping_large_messages_read_as_the_engines_read(
    pooled: bool, c_split: bool, sizes: list[int], data: st.DataObject
) -> None:
    """The default framing's large messages, read straight into their body or fed, some of them skipped.

    The limit lets large messages through (up to 2 x `LARGE_MESSAGE`) and
    skips larger ones: a skip never starts a body, so `recv_buffer` stays
    None while the decoder drops bytes.
    """
    max_size = 2 * LARGE_MESSAGE
    framing = LengthPrefixed(max_size=max_size, on_oversize="skip")
    messages = [bytes([seed % 251]) * size for seed, size in enumerate(sizes)]
    wire = b"".join(LengthPrefixed().encode(message) for message in messages) + b"\x00\x00"
    decoder = direct_decoder(split_decoder(framing, c_split))
    assert decoder is not None
    if pooled:
        decoder.use_pool(BodyPool())  # type: ignore[attr-defined]
    got: list[bytes] = []
    pos = steps = 0
    while pos < len(wire):
        steps += 1
        step = data.draw(_STEPS) if steps <= _MAX_STEPS else len(wire)
        target = decoder.recv_buffer()
        if target is not None and data.draw(st.booleans()):
            count = min(step, len(target), len(wire) - pos)
            target[:count] = wire[pos : pos + count]
            got += decoder.buffer_filled(count)
        else:
            count = min(step, len(wire) - pos)
            got += decoder.feed(memoryview(wire)[pos : pos + count])
        pos += count
        assert decoder.held <= 2 * max_size + 5 * LARGE_MESSAGE  # type: ignore[attr-defined]
    assert got == [m for m in messages if len(m) <= max_size]
    assert decoder.skipped == sum(len(m) > max_size for m in messages)  # type: ignore[attr-defined]
    assert decoder.buffered == 2
