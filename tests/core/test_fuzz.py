"""Hostile input for every decoder and codec, as Hypothesis state machines and properties.

`test_framing.py` feeds one hostile stream per example. Here a state machine
per framing interleaves valid messages (whole, cut anywhere, or started and
finished later), arbitrary bytes and the end of the stream, and checks after
every step: only messages or `FramingError` come out; a decoder that failed
or saw the end stays that way; what it holds stays under max_size plus a
header; and while only valid bytes were fed, the messages come out equal and
in order. The codecs get the inputs that break parsers: deep nesting, huge
numbers, invalid UTF-8.
"""

from __future__ import annotations

import contextlib
import importlib.util
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from connecteur import CodecError, FramingError, MessageTooLarge, TruncatedMessage
from connecteur.codecs import MAX_DEPTH, Json, MsgPack, Struct, Text
from connecteur.framing import (
    CloseDelimited,
    DecimalPrefixed,
    Decoder,
    Delimited,
    FixedLength,
    LengthField,
    LengthPrefixed,
    Netstring,
    TypeTagged,
)
from tests.core.splits import split_decoder
from tests.support import cuts

StreamFraming = FixedLength | Delimited | LengthPrefixed | LengthField | DecimalPrefixed | Netstring | TypeTagged

MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=30)


# --- a state machine per framing -------------------------------------------------


def _without(delimiter: bytes) -> Callable[[bytes], bytes]:
    def strip(message: bytes) -> bytes:
        while delimiter in message:
            message = message.replace(delimiter, b"")
        return message

    return strip


def _lines(delimiter: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    """Lines made of the delimiter's bytes and a few others, so that partial delimiters occur."""
    pieces = st.sampled_from([delimiter[:1], delimiter[-1:], b"a", b"\0"])
    return st.lists(pieces, max_size=max_size).map(b"".join).map(_without(delimiter))


@dataclass(frozen=True)
class Spec:
    """A framing with a small limit, the messages it carries, and its header's size."""

    id: str
    framing: StreamFraming
    messages: st.SearchStrategy[bytes]
    overhead: int  # bytes beyond max_size a decoder may hold between two feeds
    c_split: bool | None = None  # LengthPrefixed: split in C (True) or in Python (False)

    def decoder(self) -> Decoder:
        """A new decoder of the framing; skips the test if it is the C split's and that is not built."""
        if self.c_split is None:
            return self.framing.decoder()
        assert isinstance(self.framing, LengthPrefixed)
        return split_decoder(self.framing, self.c_split)


SPECS = [
    Spec("fixed-3", FixedLength(3), st.binary(min_size=3, max_size=3), 0),
    Spec("line-crlf", Delimited(b"\r\n", max_size=16), _lines(b"\r\n", 16), 2),
    Spec("line-lf", Delimited(b"\n", max_size=16), _lines(b"\n", 16), 1),
    Spec("length-!H-python", LengthPrefixed("!H", max_size=32), st.binary(max_size=32), 2, False),
    Spec("length-!H-c", LengthPrefixed("!H", max_size=32), st.binary(max_size=32), 2, True),
    Spec("length-<Q-python", LengthPrefixed("<Q", max_size=32), st.binary(max_size=32), 8, False),
    Spec("length-<Q-c", LengthPrefixed("<Q", max_size=32), st.binary(max_size=32), 8, True),
    Spec(
        "field-modbus",
        LengthField(offset=4, size=2, max_size=40),
        st.binary(min_size=4, max_size=4).flatmap(
            lambda head: st.binary(max_size=34).map(lambda rest: head + struct.pack("!H", len(rest)) + rest)
        ),
        0,
    ),
    Spec(
        "field-self-inclusive",
        LengthField(size=2, byteorder="little", adjustment=-2, strip=2, max_size=32),
        st.binary(max_size=32),
        2,
    ),
    Spec("digits-2", DecimalPrefixed(2, max_size=40), st.binary(max_size=40), 2),
    Spec("netstring", Netstring(max_size=40), st.binary(max_size=40), len("40") + 2),
    Spec(
        "typed",
        TypeTagged({b"P": 0, b"M": 3}),
        st.just(b"P") | st.binary(min_size=3, max_size=3).map(lambda body: b"M" + body),
        0,
    ),
]


class DecoderMachine(RuleBasedStateMachine):
    """One decoder, fed valid messages, junk and eof in any order."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self._reset()

    def _reset(self) -> None:
        self.decoder = self.spec.decoder()
        self.wire = bytearray()  # every byte fed so far
        self.decoded = bytearray()  # every message returned, encoded again
        self.got: list[bytes] = []
        self.in_sync = True  # only valid encodings fed so far, each in order
        self.expected: list[bytes] = []  # the valid messages fed whole while in sync
        self.started: tuple[bytes, bytes] | None = None  # a message begun in sync, and the rest of its bytes
        self.stopped: str | None = None  # why the decoder must refuse anything more

    # --- feeding ---

    def feed(self, piece: bytes) -> None:
        if self.stopped is not None:
            with pytest.raises(FramingError):
                self.decoder.feed(piece)
            return
        self.wire += piece
        try:
            got = self.decoder.feed(piece)
        except FramingError as exc:
            assert not self.in_sync, f"valid bytes raised {exc!r}"
            self.take(exc.messages)
            assert self.wire.startswith(self.decoded)
            self.stopped = f"failed: {exc!r}"
            return
        assert type(got) is list
        self.take(got)
        assert self.decoded == self.wire[: len(self.wire) - self.decoder.buffered]

    def take(self, messages: list[bytes]) -> None:
        assert all(type(m) is bytes for m in messages)
        self.got += messages
        for message in messages:
            self.decoded += self.spec.framing.encode(message)

    def lose_sync(self) -> None:
        self.in_sync = False
        self.started = None

    # --- rules ---

    @precondition(lambda self: self.stopped is not None)
    @rule()
    def start_a_new_decoder(self) -> None:
        """A new connection after a failure or an end: nothing of the last decoder carries over."""
        self._reset()

    @rule(data=st.data())
    def feed_a_message(self, data: st.DataObject) -> None:
        message = data.draw(self.spec.messages, label="message")
        if self.started is not None:
            self.lose_sync()  # its bytes land inside the message begun earlier
        for piece in cuts(self.spec.framing.encode(message), data):
            self.feed(piece)
        if self.in_sync:
            self.expected.append(message)

    @rule(data=st.data())
    def feed_several_messages(self, data: st.DataObject) -> None:
        """Pieces of up to 64 bytes: one feed may complete several messages."""
        messages = data.draw(st.lists(self.spec.messages, min_size=2, max_size=8), label="messages")
        if self.started is not None:
            self.lose_sync()
        for piece in cuts(b"".join(map(self.spec.framing.encode, messages)), data):
            self.feed(piece)
        if self.in_sync:
            self.expected += messages

    @rule(data=st.data())
    def begin_a_message(self, data: st.DataObject) -> None:
        message = data.draw(self.spec.messages, label="message")
        wire = self.spec.framing.encode(message)
        cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
        if self.started is not None:
            self.lose_sync()
        self.feed(wire[:cut])
        if self.in_sync:
            self.started = (message, wire[cut:])

    @precondition(lambda self: self.started is not None)
    @rule(data=st.data())
    def finish_the_message(self, data: st.DataObject) -> None:
        assert self.started is not None
        message, rest = self.started
        self.started = None
        for piece in cuts(rest, data):
            self.feed(piece)
        if self.in_sync:
            self.expected.append(message)

    @rule(junk=st.binary(min_size=1, max_size=48), data=st.data())
    def feed_junk(self, junk: bytes, data: st.DataObject) -> None:
        self.lose_sync()
        for piece in cuts(junk, data):
            self.feed(piece)

    @rule()
    def end_the_stream(self) -> None:
        if self.stopped is not None:
            with pytest.raises(FramingError):
                self.decoder.eof()
            return
        pending = self.decoder.buffered
        try:
            result = self.decoder.eof()
        except TruncatedMessage as exc:
            assert exc.pending == pending > 0
        else:
            assert result == []
            assert pending == 0
        self.stopped = "ended"

    # --- invariants ---

    @invariant()
    def holds_at_most_one_message(self) -> None:
        if self.stopped is None:
            assert self.decoder.buffered <= self.spec.framing.max_size + self.spec.overhead

    @invariant()
    def valid_messages_come_out_equal_and_in_order(self) -> None:
        if self.in_sync and self.stopped is None:
            assert self.got == self.expected
            begun = 0 if self.started is None else len(self.spec.framing.encode(self.started[0])) - len(self.started[1])
            assert self.decoder.buffered == begun


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_a_decoder_under_any_mix_of_messages_junk_and_eof(spec: Spec) -> None:
    run_state_machine_as_test(lambda: DecoderMachine(spec), settings=MACHINE_SETTINGS)


class CloseDelimitedMachine(RuleBasedStateMachine):
    """The stream is the message: every byte is kept until eof, up to max_size, and not one more."""

    MAX_SIZE = 64

    def __init__(self) -> None:
        super().__init__()
        self.decoder = CloseDelimited(max_size=self.MAX_SIZE).decoder()
        self.stream = b""
        self.stopped = False

    @rule(data=st.binary(max_size=40))
    def feed(self, data: bytes) -> None:
        if self.stopped:
            with pytest.raises(FramingError):
                self.decoder.feed(data)
        elif len(self.stream) + len(data) > self.MAX_SIZE:
            with pytest.raises(MessageTooLarge) as info:
                self.decoder.feed(data)
            assert info.value.size == len(self.stream) + len(data)
            assert info.value.max_size == self.MAX_SIZE
            self.stopped = True
        else:
            assert self.decoder.feed(data) == []
            self.stream += data

    @rule()
    def end_the_stream(self) -> None:
        if self.stopped:
            with pytest.raises(FramingError):
                self.decoder.eof()
        else:
            assert self.decoder.eof() == [self.stream]
            self.stopped = True

    @invariant()
    def holds_the_stream_and_no_more(self) -> None:
        if not self.stopped:
            assert self.decoder.buffered == len(self.stream) <= self.MAX_SIZE


def test_close_delimited_under_any_mix_of_bytes_and_eof() -> None:
    run_state_machine_as_test(CloseDelimitedMachine, settings=MACHINE_SETTINGS)


# --- codecs: hostile bytes give a value or CodecError, nothing else --------------

HAS_MSGPACK = importlib.util.find_spec("msgpack") is not None
needs_msgpack = pytest.mark.skipif(not HAS_MSGPACK, reason="msgpack is not installed (pip install msgpack)")


def nesting(depth: int, draw: st.DataObject) -> bytes:
    """A JSON document nested `depth` levels deep, arrays and objects mixed."""
    opening = [draw.draw(st.sampled_from([b"[", b'{"k":']), label="level") for _ in range(depth)]
    closing = [b"]" if level == b"[" else b"}" for level in reversed(opening)]
    return b"".join(opening) + b"1" + b"".join(closing)


@given(depth=st.integers(0, 3 * MAX_DEPTH), data=st.data())
def test_json_nesting_past_the_limit_is_a_codec_error(depth: int, data: st.DataObject) -> None:
    document = nesting(depth, data)
    if depth <= MAX_DEPTH:
        assert Json().decode(document) is not None
    else:
        with pytest.raises(CodecError, match="deep"):
            Json().decode(document)


JSON_TOKENS = [
    b"[", b"]", b"{", b"}", b":", b",", b'"', b'"k"', b" ", b"\n", b"0", b"1", b"-", b"+", b".", b"e", b"E",
    b"9" * 40, b"1e999", b"null", b"true", b"false", b"NaN", b"Infinity", b"\\", b"\\u", b"\\ud800", b"\\u00e9",
    b"\xff", b"\xc3", b"\xc3\xa9", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf",
]  # fmt: skip


@given(st.lists(st.sampled_from(JSON_TOKENS), max_size=40).map(b"".join) | st.binary(max_size=100))
def test_json_near_miss_documents_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Json().decode(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"1" * 4301, id="int-4301-digits"),
        pytest.param(b"-" + b"9" * 100_000, id="int-100000-digits"),
        pytest.param(b'{"n": [' + b"1" * 5000 + b"]}", id="int-in-a-document"),
        pytest.param(b"1" * 4300, id="int-4300-digits"),
        pytest.param(b"0." + b"1" * 100_000, id="float-100000-digits"),
        pytest.param(b'"\xed\xa0\x80"', id="utf8-encoded-surrogate"),
        pytest.param(b'"\xff"', id="invalid-utf8"),
        pytest.param(b"\xef\xbb\xbf1", id="utf8-bom"),
    ],
)
def test_json_huge_numbers_and_bad_utf8_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Json().decode(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"1e999", id="float-overflow"),
        pytest.param(b"[-1e400]", id="float-overflow-negative"),
        pytest.param(b"1" + b"0" * 400 + b".5", id="float-400-digits"),
        pytest.param(b'"\\ud83d\\ude00"', id="surrogate-pair"),
    ],
)
def test_json_decodes_only_values_it_can_encode(data: bytes) -> None:
    """A handler can echo what it was given: decode() refuses what encode() would (Infinity).

    Lone surrogates (``"\\ud800"``) are the exception: JSON allows them, Python
    decodes them, and UTF-8 cannot carry them back (encode raises CodecError).
    """
    codec = Json()
    try:
        value = codec.decode(data)
    except CodecError:
        return
    codec.encode(value)


# Every encoding here is one Python knows; `Text` promises CodecError for bytes invalid in it.
TEXT_ENCODINGS = ["utf-8", "ascii", "latin-1", "utf-16", "utf-32", "utf-7", "shift_jis", "idna", "punycode"]


TEXT_NEAR_MISSES = st.lists(st.sampled_from([b"\\", b"-", b"+", b"\xff", b"a", b"\x80"])).map(b"".join)


@pytest.mark.parametrize("encoding", TEXT_ENCODINGS)
@given(data=st.binary(max_size=64) | TEXT_NEAR_MISSES)
def test_text_arbitrary_bytes_raise_only_codec_error(encoding: str, data: bytes) -> None:
    with contextlib.suppress(CodecError):
        assert isinstance(Text(encoding).decode(data), str)


@pytest.mark.parametrize("fmt", ["!IH", "<q?d", "e", "5s", "3p", "!"])
@given(data=st.binary(max_size=32))
def test_struct_arbitrary_bytes_of_any_length_raise_only_codec_error(fmt: str, data: bytes) -> None:
    codec = Struct(fmt)
    try:
        record = codec.decode(data)
    except CodecError:
        assert len(data) != codec.size
    else:
        assert len(data) == codec.size
        assert isinstance(record, tuple)


MSGPACK_TOKENS = [
    b"\x91", b"\x92", b"\x81", b"\xdc\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\xc4\x05", b"\xc5\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xd9\x03", b"\xdb\xff\xff\xff\xff", b"\xa1", b"\xa3",
    b"\xd4\x01", b"\xc7\x00\x05", b"\xd6\xff", b"\xc1", b"\xc0", b"\xc2", b"\xcf", b"\xd3", b"\xcb", b"\xff",
    b"\xed\xa0\x80", b"a",
]  # fmt: skip


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@needs_msgpack
@given(st.lists(st.sampled_from(MSGPACK_TOKENS), max_size=40).map(b"".join))
def test_msgpack_near_miss_payloads_raise_only_codec_error(data: bytes) -> None:
    codec = MsgPack(max_size=1024)
    try:
        value = codec.decode(data)
    except CodecError:
        return
    assert _depth(value) <= MAX_DEPTH


@needs_msgpack
@given(depth=st.integers(0, 3 * MAX_DEPTH), data=st.data())
def test_msgpack_nesting_past_the_limit_is_a_codec_error(depth: int, data: st.DataObject) -> None:
    levels = [data.draw(st.sampled_from([b"\x91", b"\x81\xa1k"]), label="level") for _ in range(depth)]
    document = b"".join(levels) + b"\x01"
    if depth <= MAX_DEPTH:
        assert _depth(MsgPack().decode(document)) == depth
    else:
        with pytest.raises(CodecError, match="deep"):
            MsgPack().decode(document)


@needs_msgpack
@pytest.mark.parametrize("size", [2**16 - 1, 2**32 - 1])
def test_msgpack_a_header_announcing_more_than_max_size_is_refused(size: int) -> None:
    """Array, map, str and bin headers announcing `size` in a short payload: no allocation of `size`."""
    header = struct.pack("!H", size) if size < 2**16 else struct.pack("!I", size)
    wide = size >= 2**16
    for marker in (b"\xdd", b"\xdf", b"\xdb", b"\xc6") if wide else (b"\xdc", b"\xde", b"\xda", b"\xc5"):
        with pytest.raises(CodecError):
            MsgPack(max_size=1024).decode(marker + header + b"\x00" * 16)
