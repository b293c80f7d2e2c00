"""The sans-I/O framings: wire vectors, fragmentation, limits, malformed input, EOF, linear time.

Every framing gets the fragmentation triad (whole stream, one byte at a time,
stream plus the start of the next message), Hypothesis round trips under random
cuts, and hostile-input properties (arbitrary bytes give messages or
`FramingError`, and what a decoder holds stays bounded).
"""

from __future__ import annotations

import gc
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connecteur
from connecteur.framing import (
    DEFAULT_MAX_SIZE,
    FIRST_BODY,
    LARGE_MESSAGE,
    BodyPool,
    CloseDelimited,
    DecimalPrefixed,
    Decoder,
    Delimited,
    DirectDecoder,
    FixedLength,
    Framing,
    LengthField,
    LengthPrefixed,
    Lines,
    Netstring,
    TypeTagged,
    batch_encoder,
    direct_decoder,
)
from tests.core.splits import SPLITS, split_decoder
from tests.support import cuts, one_byte_at_a_time

FramingError = connecteur.FramingError
MessageTooLarge = connecteur.MessageTooLarge
TruncatedMessage = connecteur.TruncatedMessage

AnyFraming = (
    FixedLength
    | Delimited
    | Lines
    | LengthPrefixed
    | LengthField
    | DecimalPrefixed
    | Netstring
    | TypeTagged
    | CloseDelimited
)


# --- helpers --------------------------------------------------------------------


def encode_all(framing: AnyFraming, messages: list[bytes] | tuple[bytes, ...]) -> bytes:
    return b"".join(framing.encode(m) for m in messages)


def names(text: str, number: int) -> bool:
    """True when `text` contains `number` as a whole number (not inside a longer one)."""
    return re.search(rf"(?<!\d){number}(?!\d)", text) is not None


def assert_too_large(exc: MessageTooLarge, *, size: int | None = None, max_size: int) -> None:
    """The error carries the size and the limit, as attributes and in its message."""
    assert exc.max_size == max_size
    assert exc.size > max_size
    if size is not None:
        assert exc.size == size
    assert names(str(exc), exc.size), str(exc)
    assert names(str(exc), max_size), str(exc)


def feed_until_error(decoder: Decoder, data: bytes, *, max_buffered: int | None = None) -> tuple[int, FramingError]:
    """Feed `data` one byte at a time until the decoder fails; return the bytes it took and the error."""
    for fed, piece in enumerate(one_byte_at_a_time(data), start=1):
        try:
            decoder.feed(piece)
        except FramingError as exc:
            return fed, exc
        if max_buffered is not None:
            assert decoder.buffered <= max_buffered
    raise AssertionError(f"{len(data)} bytes fed and no FramingError")


def without(delimiter: bytes) -> Callable[[bytes], bytes]:
    """Remove every occurrence of `delimiter`, including those the removal creates."""

    def strip(message: bytes) -> bytes:
        while delimiter in message:
            message = message.replace(delimiter, b"")
        return message

    return strip


def line_messages(delimiter: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    """Lines rich in the delimiter's own bytes, so that partial delimiters get exercised."""
    # Bytes below 128 become one of four (two of them from the delimiter); the others stay.
    alphabet = (delimiter[0], delimiter[-1], ord("a"), 0)
    table = bytes(alphabet[i % 4] if i < 128 else i for i in range(256))
    return st.binary(max_size=max_size).map(lambda m: without(delimiter)(m.translate(table)))


# --- the framings under test ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One framing, the messages it can carry, and what it may hold beyond max_size."""

    id: str
    framing: FixedLength | Delimited | LengthPrefixed | LengthField | DecimalPrefixed | Netstring | TypeTagged
    messages: st.SearchStrategy[bytes]
    overhead: int  # bytes beyond max_size a decoder may hold between two feeds (header, delimiter)
    vector: tuple[bytes, ...]  # a few messages; the first one is also cut short as "the next message"
    empty_ok: bool  # whether b"" is a message this framing carries
    c_split: bool | None = None  # LengthPrefixed: split in C (True) or in Python (False)

    def decoder(self) -> Decoder:
        """A new decoder of the framing; skips the test if it is the C split's and that is not built."""
        if self.c_split is None:
            return self.framing.decoder()
        assert isinstance(self.framing, LengthPrefixed)
        return split_decoder(self.framing, self.c_split)


def _cases() -> list[Case]:
    cases = [
        Case("fixed-4", FixedLength(4), st.binary(min_size=4, max_size=4), 0, (b"abcd", b"\0\0\0\0", b"wxyz"), False),
        Case("fixed-1", FixedLength(1), st.binary(min_size=1, max_size=1), 0, (b"a", b"b", b"\n"), False),
        Case("line-lf", Delimited(b"\n", max_size=100), line_messages(b"\n", 100), 1, (b"hello", b"", b"a\rb"), True),
        Case(
            "line-crlf",
            Delimited(b"\r\n", max_size=100),
            line_messages(b"\r\n", 100),
            2,
            (b"hello", b"", b"a\rb\nc\r", b"\n"),
            True,
        ),
    ]
    for header in ["!B", "!H", "!I", "!Q", "<I"]:
        framing = LengthPrefixed(header, max_size=200)
        size = struct.calcsize(header)
        vector = (b"hello", b"", b"\0" * 200)
        for c_split, split in ((False, "python"), (True, "c")):
            cases.append(Case(f"length{header}-{split}", framing, st.binary(max_size=200), size, vector, True, c_split))
    cases += [
        Case("digits-5", DecimalPrefixed(5, max_size=200), st.binary(max_size=200), 5, (b"hello", b"", b"12"), True),
        Case("digits-1", DecimalPrefixed(1), st.binary(max_size=9), 1, (b"hello", b"", b"123456789"), True),
        Case(
            "netstring", Netstring(max_size=200), st.binary(max_size=200), 5, (b"hello", b"", b"1:,", b"x" * 10), True
        ),
        Case(
            "typed",
            TypeTagged({b"P": 0, b"M": 8}),
            st.just(b"P") | st.binary(min_size=8, max_size=8).map(lambda body: b"M" + body),
            0,
            (b"M12345678", b"P", b"P", b"MPPPPPPPP"),
            False,
        ),
    ]
    return cases + _length_field_cases()


def mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus/TCP ADU: transaction id, protocol id 0, the length of what follows it, unit id, PDU."""
    return struct.pack("!HHHB", transaction, 0, 1 + len(pdu), unit) + pdu


def _length_field_cases() -> list[Case]:
    modbus = st.builds(mbap, st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(max_size=253))
    return [
        Case("field-modbus", LengthField(offset=4, size=2, max_size=260), modbus, 6,
             (mbap(1, 0x11, bytes.fromhex("03006B0003")), mbap(2, 0, b""), mbap(0xFFFF, 0xFF, b"\0" * 253)), False),
        Case("field-iso8583", LengthField(size=2, strip=2, max_size=200), st.binary(max_size=200), 2,
             (b"0800" + b"\x82" * 8, b"", b"\0" * 200), True),
        Case("field-self-inclusive", LengthField(byteorder="little", adjustment=-4, strip=4, max_size=200),
             st.binary(max_size=200), 4, (b"hello", b"", b"\0" * 200), True),
        Case("field-3-trailer", LengthField(size=3, adjustment=2, strip=3, max_size=200),
             st.binary(min_size=2, max_size=200), 3, (b"hello", b"ok", b"\0" * 200), False),
    ]  # fmt: skip


CASES = _cases()
each_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
# Framings whose messages can be cut short (FixedLength(1) messages are one byte: never partial).
PARTIAL_CASES = [c for c in CASES if len(c.framing.encode(c.vector[0])) >= 2]
each_partial_case = pytest.mark.parametrize("case", PARTIAL_CASES, ids=[c.id for c in PARTIAL_CASES])


# --- public wire vectors --------------------------------------------------------


def test_netstring_vectors() -> None:
    framing = Netstring()
    assert framing.encode(b"hello world!") == b"12:hello world!,"
    assert framing.encode(b"") == b"0:,"
    assert framing.encode(b"hello") == b"5:hello,"
    assert framing.decoder().feed(b"12:hello world!,0:,5:hello,") == [b"hello world!", b"", b"hello"]


@pytest.mark.parametrize(
    ("header", "wire"),
    [
        ("!I", b"\x00\x00\x00\x05hello"),  # Twisted's Int32StringReceiver
        (">I", b"\x00\x00\x00\x05hello"),
        ("<I", b"\x05\x00\x00\x00hello"),
        ("!B", b"\x05hello"),  # Twisted's Int8StringReceiver
        ("!H", b"\x00\x05hello"),  # Twisted's Int16StringReceiver
        ("!Q", b"\x00\x00\x00\x00\x00\x00\x00\x05hello"),
        ("<Q", b"\x05\x00\x00\x00\x00\x00\x00\x00hello"),
    ],
)
def test_length_prefixed_vectors(header: str, wire: bytes) -> None:
    framing = LengthPrefixed(header)
    assert framing.encode(b"hello") == wire
    assert framing.decoder().feed(wire) == [b"hello"]


def test_length_prefixed_default_is_four_bytes_big_endian_and_16_mib() -> None:
    framing = LengthPrefixed()
    assert framing.encode(b"hello") == b"\x00\x00\x00\x05hello"
    assert framing.max_size == 16 * 2**20


def test_length_prefixed_header_by_position_or_keyword() -> None:
    by_position = LengthPrefixed("<H", 100)
    by_keyword = LengthPrefixed(header="<H", max_size=100)
    assert by_position.encode(b"ab") == by_keyword.encode(b"ab") == b"\x02\x00ab"
    assert by_position.max_size == by_keyword.max_size == 100


def test_length_prefixed_design_walkthrough() -> None:
    """The exact sequence DESIGN.md shows."""
    decoder = LengthPrefixed(header="!I", max_size=16 * 2**20).decoder()
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.buffered == 2
    assert decoder.feed(b"\x00\x05hel") == []
    assert decoder.buffered == 7
    assert decoder.feed(b"lo\x00\x00") == [b"hello"]
    assert decoder.buffered == 2
    with pytest.raises(TruncatedMessage) as info:
        decoder.eof()
    assert info.value.pending == 2


def test_decimal_prefixed_vectors() -> None:
    framing = DecimalPrefixed(5)
    assert framing.encode(b"hello") == b"00005hello"
    assert framing.encode(b"") == b"00000"
    assert framing.max_size == 99999
    assert framing.decoder().feed(b"00005hello00000") == [b"hello", b""]
    assert DecimalPrefixed(width=2).encode(b"x" * 12) == b"12" + b"x" * 12


def test_delimited_vectors() -> None:
    crlf = Delimited(b"\r\n")
    assert crlf.encode(b"hello") == b"hello\r\n"
    assert crlf.decoder().feed(b"a\r\nb\r\n\r\n") == [b"a", b"b", b""]
    # A lone CR or LF is part of the line.
    assert crlf.decoder().feed(b"a\rb\nc\r\r\n") == [b"a\rb\nc\r"]
    lines = Delimited()
    assert lines.encode(b"hi") == b"hi\n"
    assert lines.max_size == 64 * 2**10
    assert lines.decoder().feed(b"one\ntwo\n\n") == [b"one", b"two", b""]


def test_type_tagged_vectors() -> None:
    framing = TypeTagged({b"P": 0, b"M": 8})
    assert framing.encode(b"P") == b"P"
    assert framing.encode(b"M12345678") == b"M12345678"
    assert framing.max_size == 9
    assert framing.decoder().feed(b"PM12345678PP") == [b"P", b"M12345678", b"P", b"P"]


def test_type_tagged_accepts_int_types() -> None:
    framing = TypeTagged({0x50: 0, 0x4D: 2})
    assert framing.decoder().feed(b"PMabP") == [b"P", b"Mab", b"P"]


def test_fixed_length_vectors() -> None:
    framing = FixedLength(4)
    assert framing.encode(b"abcd") == b"abcd"
    assert framing.max_size == 4
    assert framing.decoder().feed(b"abcdefgh") == [b"abcd", b"efgh"]


def test_close_delimited_vectors() -> None:
    framing = CloseDelimited()
    assert framing.encode(b"GET / HTTP/1.0\r\n\r\n") == b"GET / HTTP/1.0\r\n\r\n"
    decoder = framing.decoder()
    assert decoder.feed(b"HTTP/1.0 200 OK\r\n\r\n") == []
    assert decoder.feed(b"body") == []
    assert decoder.eof() == [b"HTTP/1.0 200 OK\r\n\r\nbody"]


# --- the fragmentation triad ----------------------------------------------------


@each_case
def test_whole_stream(case: Case) -> None:
    wire = encode_all(case.framing, case.vector)
    decoder = case.decoder()
    assert decoder.feed(wire) == list(case.vector)
    assert decoder.buffered == 0
    assert decoder.eof() == []


@each_case
def test_one_byte_at_a_time(case: Case) -> None:
    """Each message comes out exactly when its last byte arrives; nothing is held beyond it."""
    encoded = [case.framing.encode(m) for m in case.vector]
    ends = {}
    position = 0
    for message, chunk in zip(case.vector, encoded, strict=True):
        position += len(chunk)
        ends[position] = message
    decoder = case.decoder()
    returned = 0
    for received, piece in enumerate(one_byte_at_a_time(b"".join(encoded)), start=1):
        got = decoder.feed(piece)
        assert type(got) is list
        if received in ends:
            assert got == [ends[received]]
            returned = received
        else:
            assert got == []
        assert decoder.buffered == received - returned
    assert decoder.buffered == 0
    assert decoder.eof() == []


@each_partial_case
def test_start_of_next_message_stays_buffered(case: Case) -> None:
    wire = encode_all(case.framing, case.vector)
    following = case.framing.encode(case.vector[0])
    for cut in range(1, len(following)):
        decoder = case.decoder()
        assert decoder.feed(wire + following[:cut]) == list(case.vector)
        assert decoder.buffered == cut
        assert decoder.feed(following[cut:]) == [case.vector[0]]
        assert decoder.buffered == 0


@each_case
def test_messages_are_bytes_whatever_the_input_type(case: Case) -> None:
    wire = encode_all(case.framing, case.vector)
    for data in (bytearray(wire), memoryview(wire)):
        got = case.decoder().feed(data)
        assert got == list(case.vector)
        assert all(type(m) is bytes for m in got)
    for message in case.vector:
        assert case.framing.encode(bytearray(message)) == case.framing.encode(message)
        assert case.framing.encode(memoryview(message)) == case.framing.encode(message)
        assert type(case.framing.encode(memoryview(message))) is bytes


@each_partial_case
def test_feeding_nothing_changes_nothing(case: Case) -> None:
    decoder = case.decoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0
    first = case.framing.encode(case.vector[0])
    assert decoder.feed(first[:1]) == []
    assert decoder.feed(b"") == []
    assert decoder.buffered == 1


@each_partial_case
def test_decoders_do_not_share_state(case: Case) -> None:
    """A framing is stateless: two decoders from it are independent."""
    first, second = case.decoder(), case.decoder()
    wire = case.framing.encode(case.vector[0])
    assert first.feed(wire[:1]) == []
    assert second.buffered == 0
    assert second.feed(wire) == [case.vector[0]]
    assert first.feed(wire[1:]) == [case.vector[0]]


# --- Hypothesis: round trips under any cut, hostile input -----------------------


@each_case
@given(data=st.data())
def test_any_cut_gives_back_the_messages(case: Case, data: st.DataObject) -> None:
    messages = data.draw(st.lists(case.messages, max_size=15), label="messages")
    wire = encode_all(case.framing, messages)
    decoder = case.decoder()
    got = [m for piece in cuts(wire, data) for m in decoder.feed(piece)]
    assert got == messages
    assert decoder.buffered == 0
    assert decoder.eof() == []


def hostile_streams(case: Case) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, mixed with valid encodings so that decoders get past the first header."""
    chunk = st.binary(max_size=16) | case.messages.map(case.framing.encode)
    return st.lists(chunk, max_size=10).map(b"".join)


@each_case
@given(data=st.data())
def test_arbitrary_bytes_give_messages_or_framing_error(case: Case, data: st.DataObject) -> None:
    """Never another exception, never a lost or merged message, memory bounded by max_size + header."""
    framing = case.framing
    wire = data.draw(hostile_streams(case), label="wire")
    decoder = framing.decoder()
    bound = framing.max_size + case.overhead
    received = 0
    decoded = b""  # the decoded messages, encoded again: must be exactly the consumed prefix
    for piece in cuts(wire, data):
        try:
            got = decoder.feed(piece)
        except FramingError as exc:
            decoded += encode_all(framing, exc.messages)
            assert wire.startswith(decoded)
            with pytest.raises(FramingError):
                decoder.feed(b"\0")
            with pytest.raises(FramingError):
                decoder.eof()
            return
        assert type(got) is list
        assert all(type(m) is bytes for m in got)
        received += len(piece)
        decoded += encode_all(framing, got)
        assert decoded == wire[: received - decoder.buffered]
        assert decoder.buffered <= bound
    try:
        assert decoder.eof() == []
    except TruncatedMessage as exc:
        assert exc.pending == decoder.buffered > 0
    else:
        assert decoder.buffered == 0


@given(message=st.binary(max_size=500), data=st.data())
def test_close_delimited_any_cut_gives_back_the_message(message: bytes, data: st.DataObject) -> None:
    decoder = CloseDelimited(max_size=500).decoder()
    for piece in cuts(message, data):
        assert decoder.feed(piece) == []
    assert decoder.buffered == len(message)
    assert decoder.eof() == [message]
    assert decoder.buffered == 0


@given(data=st.data())
def test_close_delimited_arbitrary_bytes_stay_bounded(data: st.DataObject) -> None:
    decoder = CloseDelimited(max_size=100).decoder()
    wire = data.draw(st.binary(max_size=300), label="wire")
    received = 0
    for piece in cuts(wire, data):
        try:
            assert decoder.feed(piece) == []
        except MessageTooLarge as exc:
            assert received + len(piece) > 100
            assert_too_large(exc, max_size=100)
            return
        received += len(piece)
        assert decoder.buffered == received <= 100
    assert decoder.eof() == [wire]


# --- oversize -------------------------------------------------------------------


@pytest.mark.parametrize("c_split", SPLITS)
def test_length_header_over_max_size_raises_before_any_body_byte(c_split: bool) -> None:
    decoder = split_decoder(LengthPrefixed(), c_split)
    assert decoder.feed(b"\xff\xff\xff") == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"\xff")
    assert_too_large(info.value, size=2**32 - 1, max_size=16 * 2**20)
    assert "4294967295" in str(info.value)
    assert "16777216" in str(info.value)


@pytest.mark.parametrize("c_split", SPLITS)
@pytest.mark.parametrize("header", ["!B", "!H", "!I", "!Q", "<I"])
def test_length_header_one_over_the_limit_raises_when_complete(header: str, c_split: bool) -> None:
    framing = LengthPrefixed(header, max_size=10)
    wire = struct.pack(header, 11)
    decoder = split_decoder(framing, c_split)
    for piece in one_byte_at_a_time(wire[:-1]):
        assert decoder.feed(piece) == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(wire[-1:])
    assert_too_large(info.value, size=11, max_size=10)


@pytest.mark.parametrize("c_split", SPLITS)
@pytest.mark.parametrize("header", ["!B", "!H", "!I", "!Q", "<I"])
def test_length_header_at_the_limit_is_accepted(header: str, c_split: bool) -> None:
    framing = LengthPrefixed(header, max_size=10)
    assert split_decoder(framing, c_split).feed(struct.pack(header, 10) + b"x" * 10) == [b"x" * 10]


@pytest.mark.parametrize("c_split", SPLITS)
def test_length_prefixed_error_carries_messages_before_the_bad_header(c_split: bool) -> None:
    framing = LengthPrefixed(max_size=10)
    with pytest.raises(MessageTooLarge) as info:
        split_decoder(framing, c_split).feed(framing.encode(b"ok") + framing.encode(b"") + b"\x00\x00\x00\x0b")
    assert info.value.messages == [b"ok", b""]


@pytest.mark.parametrize(
    ("header", "limit"),
    [("!B", 255), ("!H", 65535), ("<H", 65535), ("!I", 2**32 - 1), ("!Q", 2**40)],
)
def test_length_prefixed_limit_is_what_the_header_can_express(header: str, limit: int) -> None:
    framing = LengthPrefixed(header, max_size=2**40)
    assert framing.max_size == limit


def test_one_byte_header_caps_messages_at_255() -> None:
    framing = LengthPrefixed("!B")
    assert framing.max_size == 255
    assert framing.decoder().feed(framing.encode(b"x" * 255)) == [b"x" * 255]
    with pytest.raises(MessageTooLarge) as info:
        framing.encode(b"x" * 256)
    assert_too_large(info.value, size=256, max_size=255)


def test_decimal_header_over_max_size_raises_when_complete() -> None:
    decoder = DecimalPrefixed(5, max_size=10).decoder()
    assert decoder.feed(b"0001") == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"1")
    assert_too_large(info.value, size=11, max_size=10)


def test_decimal_max_size_never_exceeds_what_width_digits_can_write() -> None:
    framing = DecimalPrefixed(2, max_size=1000)
    assert framing.encode(b"x" * 99) == b"99" + b"x" * 99
    with pytest.raises(MessageTooLarge):
        framing.encode(b"x" * 100)


def test_decimal_max_size_defaults_to_16_mib_whatever_the_width() -> None:
    """A ten-digit header no longer announces up to 9,999,999,999 bytes by default."""
    assert DecimalPrefixed(10).max_size == DecimalPrefixed(20).max_size == DEFAULT_MAX_SIZE
    assert DecimalPrefixed(5).max_size == 99_999  # fewer digits: what they can write
    assert DecimalPrefixed(10, max_size=2**40).max_size == 10**10 - 1
    with pytest.raises(MessageTooLarge) as info:
        DecimalPrefixed(10).decoder().feed(b"9999999999")
    assert_too_large(info.value, size=9_999_999_999, max_size=DEFAULT_MAX_SIZE)


def test_fixed_length_refuses_a_size_over_max_size() -> None:
    assert FixedLength(DEFAULT_MAX_SIZE).max_size == DEFAULT_MAX_SIZE
    with pytest.raises(ValueError, match=r"1000000000 is over max_size 16777216"):
        FixedLength(10**9)
    with pytest.raises(ValueError, match="is over max_size 10"):
        FixedLength(11, max_size=10)
    assert FixedLength(10**9, max_size=10**9).max_size == 10**9


def test_type_tagged_refuses_a_type_over_max_size() -> None:
    assert TypeTagged({b"M": DEFAULT_MAX_SIZE - 1}).max_size == DEFAULT_MAX_SIZE
    with pytest.raises(ValueError, match=r"b'M' makes 16777217-byte messages; max_size is 16777216"):
        TypeTagged({b"P": 0, b"M": DEFAULT_MAX_SIZE})
    assert TypeTagged({b"M": 10}, max_size=11).max_size == 11
    with pytest.raises(ValueError):
        TypeTagged({b"M": 10}, max_size=10)


def test_netstring_length_over_max_size_raises_at_the_latest_on_the_colon() -> None:
    decoder = Netstring(max_size=10).decoder()
    with pytest.raises(MessageTooLarge) as info:
        for piece in one_byte_at_a_time(b"11:"):
            decoder.feed(piece)
    assert_too_large(info.value, size=11, max_size=10)
    assert Netstring(max_size=10).decoder().feed(b"10:0123456789,") == [b"0123456789"]


def test_netstring_with_too_many_digits_raises_before_the_colon() -> None:
    """A peer sending digits for ever is stopped once they cannot be a length under max_size."""
    decoder = Netstring().decoder()  # max_size 16777216: 8 digits
    fed, exc = feed_until_error(decoder, b"1" * 1000)
    assert fed <= 9
    assert isinstance(exc, MessageTooLarge)
    assert_too_large(exc, max_size=16 * 2**20)


def test_delimited_without_delimiter_past_max_size() -> None:
    decoder = Delimited(b"\n", max_size=10).decoder()
    assert decoder.feed(b"x" * 10) == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"x")
    assert_too_large(info.value, max_size=10)


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"\r\n\r\n"])
def test_delimited_stops_a_line_that_never_ends(delimiter: bytes) -> None:
    """Raised by the time max_size + len(delimiter) bytes are held, never before the line is too long."""
    decoder = Delimited(delimiter, max_size=10).decoder()
    fed, exc = feed_until_error(decoder, b"x" * 1000, max_buffered=10 + len(delimiter))
    assert 10 < fed <= 10 + len(delimiter)
    assert isinstance(exc, MessageTooLarge)
    assert_too_large(exc, max_size=10)


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"\r\n\r\n"])
def test_delimited_line_of_exactly_max_size_is_accepted_byte_by_byte(delimiter: bytes) -> None:
    decoder = Delimited(delimiter, max_size=10).decoder()
    got = [m for piece in one_byte_at_a_time(b"x" * 10 + delimiter) for m in decoder.feed(piece)]
    assert got == [b"x" * 10]


def test_delimited_complete_line_over_max_size() -> None:
    with pytest.raises(MessageTooLarge) as info:
        Delimited(b"\n", max_size=10).decoder().feed(b"short\n" + b"x" * 11 + b"\n")
    assert_too_large(info.value, size=11, max_size=10)
    assert info.value.messages == [b"short"]


def test_close_delimited_over_max_size_raises_before_buffering() -> None:
    decoder = CloseDelimited(max_size=10).decoder()
    assert decoder.feed(b"x" * 10) == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"y")
    assert_too_large(info.value, size=11, max_size=10)
    assert decoder.buffered == 10  # the extra byte was not kept
    with pytest.raises(FramingError):
        decoder.eof()


def test_close_delimited_single_oversize_feed_keeps_nothing() -> None:
    decoder = CloseDelimited(max_size=10).decoder()
    with pytest.raises(MessageTooLarge):
        decoder.feed(b"x" * 1000)
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "framing",
    [
        LengthPrefixed(max_size=10),
        LengthPrefixed("!B", max_size=10),
        DecimalPrefixed(3, max_size=10),
        Netstring(max_size=10),
        Delimited(b"\n", max_size=10),
        CloseDelimited(max_size=10),
    ],
    ids=repr,
)
def test_encode_over_max_size(framing: AnyFraming) -> None:
    assert framing.decoder().feed(framing.encode(b"x" * 10)) in ([b"x" * 10], [])
    with pytest.raises(MessageTooLarge) as info:
        framing.encode(b"x" * 11)
    assert_too_large(info.value, size=11, max_size=10)


# --- malformed input and bad arguments ------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"01:a,",  # leading zero
        b"00:,",
        b"1:ab",  # missing comma
        b"5:hello;",
        b"x:",  # non-digit length
        b"1x:a,",
        b":,",  # empty length
        b"-1:a,",
        b" 1:a,",
        b"1 :a,",
        b"+1:a,",
    ],
)
def test_netstring_malformed(wire: bytes) -> None:
    with pytest.raises(FramingError) as info:
        Netstring().decoder().feed(wire)
    assert not isinstance(info.value, MessageTooLarge)


def test_netstring_missing_comma_error_names_what_was_found() -> None:
    with pytest.raises(FramingError, match="b';'"):
        Netstring().decoder().feed(b"5:hello;")


@pytest.mark.parametrize("wire", [b"0000x", b"-0001", b" 0001", b"+0001", b"0x001", b"\xb9\xb2\xb3\xb4\xb5"])
def test_decimal_prefixed_non_digit_header(wire: bytes) -> None:
    with pytest.raises(FramingError) as info:
        DecimalPrefixed(5).decoder().feed(wire)
    assert repr(wire) in str(info.value)


def test_type_tagged_unknown_type_byte() -> None:
    with pytest.raises(FramingError) as info:
        TypeTagged({b"P": 0, b"M": 8}).decoder().feed(b"PPX")
    assert "b'X'" in str(info.value)
    assert info.value.messages == [b"P", b"P"]


@pytest.mark.parametrize("message", [b"", b"X", b"M123", b"M123456789", b"PP"])
def test_type_tagged_encode_rejects_what_it_cannot_frame(message: bytes) -> None:
    with pytest.raises(FramingError):
        TypeTagged({b"P": 0, b"M": 8}).encode(message)


@pytest.mark.parametrize(("delimiter", "message"), [(b"\n", b"a\nb"), (b"\n", b"\n"), (b"\r\n", b"end\r\n")])
def test_delimited_encode_rejects_the_delimiter(delimiter: bytes, message: bytes) -> None:
    with pytest.raises(FramingError) as info:
        Delimited(delimiter).encode(message)
    assert not isinstance(info.value, MessageTooLarge)


@pytest.mark.parametrize(
    ("delimiter", "message"),
    [(b"\r\n\r\n", b"Host: a\r\n"), (b"\r\n\r\n", b"a\r\n"), (b"\n\n", b"x\n"), (b"aba", b"ab")],
)
def test_delimited_encode_refuses_a_message_ending_with_part_of_a_self_overlapping_delimiter(
    delimiter: bytes, message: bytes
) -> None:
    """Such a message does not contain the delimiter, but its encoding would be cut before the end."""
    assert delimiter not in message
    assert (message + delimiter).find(delimiter) < len(message)
    with pytest.raises(FramingError) as info:
        Delimited(delimiter).encode(message)
    assert not isinstance(info.value, MessageTooLarge)


def over_ab(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes made of a, b and LF only, so that delimiters overlap with themselves and with messages."""
    return st.lists(st.sampled_from([b"a", b"b", b"\n"]), min_size=min_size, max_size=max_size).map(b"".join)


@given(
    delimiter=over_ab(1, 4),
    messages=st.lists(over_ab(0, 12), max_size=8),
    data=st.data(),
)
def test_delimited_encode_gives_back_the_message_or_refuses_it(
    delimiter: bytes, messages: list[bytes], data: st.DataObject
) -> None:
    """Any delimiter, self-overlapping or not: what encode() accepts decodes to the same messages."""
    framing = Delimited(delimiter)
    accepted = []
    for message in messages:
        try:
            framing.encode(message)
        except FramingError:
            assert (message + delimiter).find(delimiter) != len(message)
        else:
            accepted.append(message)
    decoder = framing.decoder()
    wire = encode_all(framing, accepted)
    assert [m for piece in cuts(wire, data) for m in decoder.feed(piece)] == accepted
    assert decoder.buffered == 0


@pytest.mark.parametrize("message", [b"", b"abc", b"abcde"])
def test_fixed_length_encode_rejects_the_wrong_size(message: bytes) -> None:
    with pytest.raises(FramingError, match=str(len(message))):
        FixedLength(4).encode(message)


# mypyc converts each argument to its annotated type at the call: a bool
# given for an int arrives as 0 or 1, and a float raises TypeError there.
_PURE_ONLY = pytest.mark.skipif(connecteur.COMPILED, reason="compiled: mypyc checks the int before LengthField can")


@pytest.mark.parametrize(
    "make",
    [
        lambda: LengthPrefixed("I"),  # no byte order
        lambda: LengthPrefixed("!i"),  # signed
        lambda: LengthPrefixed("!q"),
        lambda: LengthPrefixed("!f"),
        lambda: LengthPrefixed("!II"),
        lambda: LengthPrefixed("!"),
        lambda: LengthPrefixed(""),
        lambda: LengthPrefixed(max_size=-1),
        lambda: FixedLength(0),
        lambda: FixedLength(-4),
        lambda: FixedLength(4, max_size=-1),
        lambda: DecimalPrefixed(5, max_size=-1),
        lambda: TypeTagged({b"P": 0}, max_size=-1),
        lambda: Delimited(b""),
        lambda: Delimited(b"\n", max_size=-1),
        lambda: DecimalPrefixed(0),
        lambda: Netstring(max_size=-1),
        lambda: CloseDelimited(max_size=-1),
        lambda: TypeTagged({}),
        lambda: TypeTagged({b"PP": 0}),
        lambda: TypeTagged({b"": 0}),
        lambda: TypeTagged({256: 0}),
        lambda: TypeTagged({b"P": -1}),
        lambda: Lines(max_size=-1),
        lambda: LengthField(size=0),
        lambda: LengthField(size=5),
        pytest.param(lambda: LengthField(size=True), marks=_PURE_ONLY),
        lambda: LengthField(offset=-1),
        lambda: LengthField(strip=-1),
        lambda: LengthField(byteorder="network"),  # type: ignore[arg-type]
        pytest.param(lambda: LengthField(adjustment=1.5), marks=_PURE_ONLY),  # type: ignore[arg-type]
        lambda: LengthField(max_size=-1),
        lambda: LengthField(size=1, adjustment=-300),
    ],
)
def test_bad_constructor_arguments_raise_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_bad_length_header_error_names_it() -> None:
    with pytest.raises(ValueError, match="'!i'"):
        LengthPrefixed("!i")


# --- errors keep earlier messages; a failed decoder stays failed -----------------


BAD_AFTER_GOOD = [
    pytest.param(LengthPrefixed(max_size=10), b"\x00\x00\x00\x0b", id="length"),
    pytest.param(DecimalPrefixed(5), b"hello", id="digits"),
    pytest.param(Netstring(), b"01:a,", id="netstring"),
    pytest.param(Netstring(), b"1:ab", id="netstring-comma"),
    pytest.param(TypeTagged({b"P": 0, b"M": 8}), b"X", id="typed"),
    pytest.param(Delimited(b"\n", max_size=10), b"x" * 11 + b"\n", id="line"),
    pytest.param(Lines(max_size=10), b"x" * 11 + b"\r\n", id="lines"),
    pytest.param(LengthField(size=2, strip=2, max_size=10), b"\x00\x0b", id="field"),
    pytest.param(LengthField(adjustment=-4, strip=4), b"\x00\x00\x00\x03", id="field-negative"),
]


def _good_messages(framing: AnyFraming) -> list[bytes]:
    return [b"P", b"M12345678"] if isinstance(framing, TypeTagged) else [b"one", b"", b"two"]


@pytest.mark.parametrize(("framing", "bad"), BAD_AFTER_GOOD)
def test_messages_before_bad_bytes_are_on_the_exception(framing: AnyFraming, bad: bytes) -> None:
    good = _good_messages(framing)
    decoder = framing.decoder()
    with pytest.raises(FramingError) as info:
        decoder.feed(encode_all(framing, good) + bad)
    assert info.value.messages == good


@pytest.mark.parametrize(("framing", "bad"), BAD_AFTER_GOOD)
def test_a_failed_decoder_stays_failed(framing: AnyFraming, bad: bytes) -> None:
    good = _good_messages(framing)
    decoder = framing.decoder()
    assert decoder.feed(encode_all(framing, good)) == good
    with pytest.raises(FramingError) as info:
        decoder.feed(bad)
    assert info.value.messages == []
    with pytest.raises(FramingError):
        decoder.feed(encode_all(framing, good))
    with pytest.raises(FramingError):
        decoder.eof()


# --- eof ------------------------------------------------------------------------


@each_case
def test_eof_with_nothing_pending_returns_an_empty_list(case: Case) -> None:
    decoder = case.decoder()
    assert decoder.eof() == []
    decoder = case.decoder()
    assert decoder.feed(encode_all(case.framing, case.vector)) == list(case.vector)
    result = decoder.eof()
    assert type(result) is list
    assert result == []


@each_partial_case
def test_eof_inside_a_message_raises_truncated_message(case: Case) -> None:
    wire = encode_all(case.framing, case.vector)
    following = case.framing.encode(case.vector[0])
    for cut in range(1, len(following)):
        decoder = case.decoder()
        assert decoder.feed(wire + following[:cut]) == list(case.vector)
        with pytest.raises(TruncatedMessage) as info:
            decoder.eof()
        assert info.value.pending == cut
        assert names(str(info.value), cut)


def test_eof_inside_an_unfinished_line() -> None:
    decoder = Delimited(b"\r\n").decoder()
    assert decoder.feed(b"done\r\nunfinished\r") == [b"done"]
    with pytest.raises(TruncatedMessage) as info:
        decoder.eof()
    assert info.value.pending == len(b"unfinished\r")


def test_feed_after_eof_raises_framing_error() -> None:
    decoder = Netstring().decoder()
    assert decoder.eof() == []
    with pytest.raises(FramingError):
        decoder.feed(b"0:,")


@pytest.mark.parametrize("pieces", [[], [b""], [b"a"], [b"abc", b"", b"def"]])
def test_close_delimited_eof_returns_exactly_one_message(pieces: list[bytes]) -> None:
    decoder = CloseDelimited().decoder()
    for piece in pieces:
        result = decoder.feed(piece)
        assert type(result) is list
        assert result == []
    assert decoder.buffered == sum(map(len, pieces))
    result = decoder.eof()
    assert type(result) is list
    assert result == [b"".join(pieces)]
    assert decoder.buffered == 0
    with pytest.raises(FramingError):
        decoder.feed(b"more")


# --- the empty message ----------------------------------------------------------


@each_case
def test_empty_message_round_trips_where_allowed(case: Case) -> None:
    if not case.empty_ok:
        with pytest.raises(FramingError):
            case.framing.encode(b"")
        return
    wire = case.framing.encode(b"")
    assert wire  # even an empty message leaves a trace on the wire
    decoder = case.decoder()
    assert decoder.feed(wire * 3) == [b"", b"", b""]
    assert decoder.buffered == 0


def test_close_delimited_empty_message_round_trips() -> None:
    framing = CloseDelimited()
    decoder = framing.decoder()
    assert decoder.feed(framing.encode(b"")) == []
    assert decoder.eof() == [b""]


# --- linear time ----------------------------------------------------------------

LINEAR_N = 64 * 1024


def _time_one_byte_at_a_time(framing: AnyFraming, pieces: list[bytes], expected: bytes) -> float:
    decoder = framing.decoder()
    got: list[bytes] = []
    gc.disable()
    try:
        start = time.process_time()  # this process's CPU: other processes on a busy machine do not count
        for piece in pieces:
            got += decoder.feed(piece)
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    assert got == [expected]
    return elapsed


LINEAR_CASES = [
    pytest.param(LengthPrefixed(), lambda framing, n: framing.encode(b"x" * n), id="length"),
    pytest.param(Delimited(b"\r\n", max_size=8 * LINEAR_N), lambda framing, n: b"x" * n + b"\r\n", id="line"),
    pytest.param(Netstring(), lambda framing, n: framing.encode(b"x" * n), id="netstring"),
    pytest.param(Lines(max_size=8 * LINEAR_N), lambda framing, n: b"x" * n + b"\r\n", id="lines"),
    pytest.param(LengthField(strip=4), lambda framing, n: framing.encode(b"x" * n), id="field"),
]


@pytest.mark.parametrize(("framing", "make_wire"), LINEAR_CASES)
def test_one_big_message_byte_by_byte_takes_linear_time(
    framing: AnyFraming, make_wire: Callable[[AnyFraming, int], bytes]
) -> None:
    """Four times the bytes take about four times as long (a quadratic decoder would take sixteen).

    The best of three runs each, small and large interleaved, so that a busy
    machine slows both alike.
    """
    small_pieces = list(one_byte_at_a_time(make_wire(framing, LINEAR_N)))
    large_pieces = list(one_byte_at_a_time(make_wire(framing, 4 * LINEAR_N)))
    small = large = float("inf")
    for _ in range(3):
        small = min(small, _time_one_byte_at_a_time(framing, small_pieces, b"x" * LINEAR_N))
        large = min(large, _time_one_byte_at_a_time(framing, large_pieces, b"x" * (4 * LINEAR_N)))
    assert large / small < 8, f"{LINEAR_N} bytes: {small:.4f} s; {4 * LINEAR_N} bytes: {large:.4f} s"


# --- the default framing's large messages and batches ---------------------------------

_LARGE_SIZES = st.sampled_from([0, 1, 100, LARGE_MESSAGE - 1, LARGE_MESSAGE, LARGE_MESSAGE + 7, 3 * LARGE_MESSAGE])


def _patterned(size: int, seed: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(min(size, 251))) * (size // 251) + bytes(size % 251)


_STEPS = st.sampled_from([1, 3, 4, 5, 1000, LARGE_MESSAGE, 5 * LARGE_MESSAGE])
_MAX_STEPS = 64
"""Steps drawn per example, after which the rest of the wire comes in one step:
a run of one-byte steps through a 192 KiB body tests nothing its first dozens
did not, and cost seconds an example in draws (two per step)."""


@pytest.mark.parametrize("pooled", [False, True])
@given(sizes=st.lists(_LARGE_SIZES, min_size=1, max_size=4), data=st.data())
def test_large_messages_through_feed_and_direct_reads(pooled: bool, sizes: list[int], data: st.DataObject) -> None:
    """Random cuts down to 1 byte, each piece fed or read straight into the body when the decoder offers it."""
    messages = [_patterned(size, seed) for seed, size in enumerate(sizes)]
    wire = b"".join(LengthPrefixed().encode(message) for message in messages) + b"\x00\x00"  # the next header's start
    decoder = LengthPrefixed().decoder()
    if pooled:
        decoder.use_pool(BodyPool())  # type: ignore[attr-defined]
    got: list[bytes] = []
    pos = steps = 0
    while pos < len(wire):
        steps += 1
        step = data.draw(_STEPS) if steps <= _MAX_STEPS else len(wire)
        target = decoder.recv_buffer()  # type: ignore[attr-defined]
        if target is not None and data.draw(st.booleans()):
            count = min(step, len(target), len(wire) - pos)
            target[:count] = wire[pos : pos + count]
            got += decoder.buffer_filled(count)  # type: ignore[attr-defined]
        else:
            count = min(step, len(wire) - pos)
            got += decoder.feed(memoryview(wire)[pos : pos + count])
        pos += count
        assert decoder.buffered == pos - sum(4 + len(m) for m in got)
    assert got == messages
    assert all(type(message) is bytes for message in got)
    assert decoder.buffered == 2
    with pytest.raises(TruncatedMessage):
        decoder.eof()


def test_a_large_header_over_the_limit_allocates_nothing() -> None:
    decoder = LengthPrefixed(max_size=LARGE_MESSAGE).decoder()
    with pytest.raises(MessageTooLarge):
        decoder.feed(struct.pack("!I", LARGE_MESSAGE + 1) + b"x")
    assert decoder.recv_buffer() is None  # type: ignore[attr-defined]
    assert decoder.buffered == 0


def _read_rest_directly(decoder: DirectDecoder, filler: bytes) -> list[bytes]:
    """Fill the large message under way through `recv_buffer` alone, as the select engine reads."""
    for _ in range(64):  # doubling reaches any size up to 2**64 well within this
        target = decoder.recv_buffer()
        assert target is not None and len(target) > 0
        target[:] = filler * len(target)
        messages = decoder.buffer_filled(len(target))
        if messages:
            assert decoder.recv_buffer() is None
            return messages
    raise AssertionError("recv_buffer never finished the message")


def test_recv_buffer_is_free_room_in_the_large_message_only() -> None:
    decoder = direct_decoder(LengthPrefixed().decoder())
    assert decoder is not None and decoder.recv_buffer() is None
    assert decoder.feed(struct.pack("!I", LARGE_MESSAGE) + b"ab") == []
    target = decoder.recv_buffer()
    assert target is not None and len(target) == FIRST_BODY - 2  # the first allocation's room, not the whole body
    assert _read_rest_directly(decoder, b"c") == [b"ab" + b"c" * (LARGE_MESSAGE - 2)]


def test_recv_buffer_never_goes_past_the_message_and_doubles() -> None:
    size = LARGE_MESSAGE + 5  # the last doubling is cut to the size announced
    decoder = direct_decoder(LengthPrefixed().decoder())
    assert decoder is not None
    assert decoder.feed(struct.pack("!I", size) + b"ab") == []
    rooms, received = [], 2
    while (target := decoder.recv_buffer()) is not None:
        rooms.append(len(target))
        assert len(target) <= max(received, FIRST_BODY)  # the room is at most what came before it
        target[:] = b"c" * len(target)
        received += len(target)
        decoder.buffer_filled(len(target))
    assert sum(rooms) == size - 2 and rooms[-1] == 5
    assert len(rooms) <= 2 + (size // FIRST_BODY).bit_length()  # doubling: a few reads, not one per 16 KiB
    assert decoder.buffered == 0


@pytest.mark.parametrize("framing", [LengthPrefixed(), LengthPrefixed("<H"), Netstring(), Delimited()])
@given(messages=st.lists(st.binary(max_size=300).filter(lambda m: b"\n" not in m), max_size=20))
def test_batch_encoder_is_encode_of_each_joined(framing: Framing, messages: list[bytes]) -> None:
    assert batch_encoder(framing)(messages) == b"".join(framing.encode(message) for message in messages)


def test_batch_encoder_refuses_a_message_over_the_limit() -> None:
    with pytest.raises(MessageTooLarge):
        batch_encoder(LengthPrefixed(max_size=3))([b"abc", b"abcd"])


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encode_all_of_one_message_is_its_encode_as_bytes(kind: type) -> None:
    """One reply, the common case, has a path of its own: the same bytes, refused over the limit alike."""
    framing = LengthPrefixed(max_size=3)
    wire = framing.encode_all([kind(b"abc")])
    assert type(wire) is bytes and wire == framing.encode(b"abc")
    with pytest.raises(MessageTooLarge):
        framing.encode_all([kind(b"abcd")])


def test_reading_body_says_when_a_read_may_go_straight_into_a_large_message() -> None:
    assert direct_decoder(Netstring().decoder()) is None
    decoder = direct_decoder(LengthPrefixed().decoder())
    assert decoder is not None and not decoder.reading_body
    assert decoder.feed(struct.pack("!I", LARGE_MESSAGE) + b"ab" + struct.pack("!I", 1)[:2]) == []
    assert decoder.reading_body
    assert _read_rest_directly(decoder, b"c") == [b"ab" + struct.pack("!I", 1)[:2] + b"c" * (LARGE_MESSAGE - 4)]
    assert not decoder.reading_body and decoder.recv_buffer() is None


def test_body_pool_lends_its_spare_only_for_a_size_it_fits_without_waste() -> None:
    pool = BodyPool()
    assert pool.take(1000) is None  # it never allocates: no spare yet
    pool.give(memoryview(bytearray(b"a" * 1000)))
    again = pool.take(600)  # fits, wastes less than half: the same memory
    assert again is not None and len(again) == 600 and bytes(again[:3]) == b"aaa"
    assert pool.take(600) is None  # the spare is lent out
    pool.give(again)
    assert pool.take(400) is None  # 1000 > 2 * 400: not lent, the spare stays
    assert pool.take(1001) is None  # too small
    spare = pool.take(1000)
    assert spare is not None and bytes(spare[:3]) == b"aaa"
    pool.give(memoryview(bytearray(10)))
    pool.give(spare)
    assert pool.take(1000) is not None  # the larger one is kept


def test_two_decoders_sharing_a_pool_keep_their_messages_apart() -> None:
    pool, framing = BodyPool(), LengthPrefixed()
    one, two = framing.decoder(), framing.decoder()
    one.use_pool(pool)  # type: ignore[attr-defined]
    two.use_pool(pool)  # type: ignore[attr-defined]
    a, b = framing.encode(b"a" * LARGE_MESSAGE), framing.encode(b"b" * LARGE_MESSAGE)
    assert one.feed(a[:100]) == [] and two.feed(b[:100]) == []
    assert one.feed(a[100:]) == [b"a" * LARGE_MESSAGE]
    assert two.feed(b[100:]) == [b"b" * LARGE_MESSAGE]
    assert one.feed(b) == [b"b" * LARGE_MESSAGE]  # the spare, reused, holds b's bytes now
