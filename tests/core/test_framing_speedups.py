"""The C split and join of length-prefixed messages (``framing/_speedups.c``) against the Python ones.

`feed` hands a read to the C routine, which takes its whole messages and
stops at the first header it does not finish (cut short, over `max_size`, or
its message not whole yet); `feed` deals with that header in Python. These
properties check the routine against a Python statement of that contract on
any bytes, and two decoders, one splitting in C and one in Python, against
each other on any stream cut anywhere: the same messages, errors, and bytes
held. The other LengthPrefixed properties (tests/core/test_framing.py,
test_fuzz.py, test_framing_oversize.py) run on both splits too.

`LengthPrefixed.encode_all` hands a list of messages to the C join, which
frames them all in one new bytes object, or gives up (None) when one is over
`max_size`, for the Python loop to raise its error: the same bytes and
errors as framing each message in Python.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur import FramingError, MessageTooLarge
from connecteur.framing import LengthPrefixed, length
from tests.core.splits import C_BUILT, NOT_BUILT, SPLITS, join_framing, split_decoder
from tests.support import TIMEOUT, cuts

HEADERS = [order + code for order in "!<>" for code in "BHILQ"]

needs_c = pytest.mark.skipif(not C_BUILT, reason=NOT_BUILT)


def python_split(data: bytes, pos: int, header: struct.Struct, max_size: int) -> tuple[int, list[bytes]]:
    """The C routine's contract in Python: the whole messages from `pos` on, and where they stop."""
    out = []
    while len(data) - pos >= header.size:
        (size,) = header.unpack_from(data, pos)
        stop = pos + header.size + size
        if size > max_size or stop > len(data):
            break
        out.append(data[pos + header.size : stop])
        pos = stop
    return pos, out


def c_split(data: object, pos: int, header: struct.Struct, max_size: int) -> tuple[int, list[bytes]]:
    assert length._C_SPLIT is not None
    out: list[bytes] = []
    stop = length._C_SPLIT(data, pos, out, header.size, header.format.startswith("<"), max_size)  # type: ignore[arg-type]
    return stop, out


@st.composite
def streams(draw: st.DrawFn, header: struct.Struct, max_size: int) -> bytes:
    """Messages around `max_size` (some over it), garbage, and headers announcing anything."""
    limit = 2 ** (8 * header.size) - 1
    message = st.binary(max_size=min(max_size + 3, 64))
    if max_size <= 64:  # often right at the limit, and one over it
        message |= st.integers(max(max_size - 1, 0), max_size + 1).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    chunk = (
        message.map(lambda m: header.pack(min(len(m), limit)) + m)
        | st.integers(0, limit).map(header.pack)
        | st.binary(max_size=12)
    )
    return b"".join(draw(st.lists(chunk, max_size=8)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[struct.Struct, int, bytes]:
    header = struct.Struct(draw(st.sampled_from(HEADERS), label="header"))
    limit = 2 ** (8 * header.size) - 1
    max_size = draw(st.integers(0, 40) | st.integers(0, limit) | st.just(limit), label="max_size")
    return header, max_size, draw(streams(header, max_size), label="data")


@needs_c
@given(case=cases(), data=st.data())
def test_the_c_routine_takes_exactly_the_whole_messages_python_would(
    case: tuple[struct.Struct, int, bytes], data: st.DataObject
) -> None:
    header, max_size, wire = case
    pos = data.draw(st.integers(0, len(wire)), label="pos")
    expected = python_split(wire, pos, header, max_size)
    for kind in (bytes, bytearray, memoryview):
        stop, out = c_split(kind(wire), pos, header, max_size)
        assert (stop, out) == expected
        assert all(type(message) is bytes for message in out)


@needs_c
@given(case=cases(), data=st.data())
def test_decoders_splitting_in_c_and_in_python_agree_on_any_stream(
    case: tuple[struct.Struct, int, bytes], data: st.DataObject
) -> None:
    """The same messages, errors (type, text, messages before them), skips and held bytes, read by read."""
    header, max_size, wire = case
    on_oversize = data.draw(st.sampled_from(["close", "skip"]), label="on_oversize")
    framing = LengthPrefixed(header.format, max_size, on_oversize=on_oversize)  # type: ignore[arg-type]
    in_c, in_python = split_decoder(framing, True), split_decoder(framing, False)
    max_piece = data.draw(st.sampled_from([1, 7, 64, max(len(wire), 1)]), label="max_piece")
    for piece in cuts(wire, data, max_piece=max_piece):
        results: list[tuple[str, object]] = []
        for decoder in (in_c, in_python):
            try:
                results.append(("messages", decoder.feed(piece)))
            except FramingError as exc:
                results.append((f"{type(exc).__name__}: {exc}", exc.messages))
            results.append(("held", (decoder.buffered, decoder.held, decoder.skipped)))  # type: ignore[attr-defined]
        assert results[:2] == results[2:]
        if results[0][0] != "messages":
            return


@pytest.mark.parametrize("c_split", SPLITS)
@given(messages=st.lists(st.binary(max_size=40), min_size=1, max_size=6), tail=st.binary(max_size=7))
def test_messages_of_a_read_do_not_share_the_engines_read_buffer(
    c_split: bool, messages: list[bytes], tail: bytes
) -> None:
    """An engine reads into one buffer and feeds a view of it: the messages must outlive the next read into it."""
    framing = LengthPrefixed()
    wire = framing.encode_all(messages) + tail[:3]  # whole messages, then maybe part of a header
    buffer = bytearray(wire)
    decoder = split_decoder(framing, c_split)
    with memoryview(buffer) as view:
        got = decoder.feed(view)
    buffer[:] = b"\xff" * len(buffer)  # the next read
    assert got == messages
    assert decoder.buffered == len(tail[:3])


@needs_c
@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"", 0, [], 3, False, 10), ValueError),  # no such header
        ((b"", 1, [], 4, False, 10), ValueError),  # past the end
        ((b"", -1, [], 4, False, 10), ValueError),
        ((b"", 0, (), 4, False, 10), TypeError),  # out is not a list
        (("text", 0, [], 4, False, 10), TypeError),  # not bytes-like
        ((b"", 0, [], 4, False, -1), OverflowError),
        ((b"", 0, [], 4, False), TypeError),
    ],
)
def test_the_c_routine_refuses_what_feed_never_passes(args: tuple[object, ...], error: type[Exception]) -> None:
    assert length._C_SPLIT is not None
    with pytest.raises(error):
        length._C_SPLIT(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("c_split", SPLITS)
@pytest.mark.parametrize("header", HEADERS)
def test_a_message_one_over_the_limit_raises_even_when_it_came_whole(header: str, c_split: bool) -> None:
    """In one read with the message before it: the read the C routine takes, not the one-byte feeds."""
    framing = LengthPrefixed(header, max_size=10)
    wire = framing.encode(b"ok") + struct.pack(header, 11) + b"x" * 11 + framing.encode(b"never")
    with pytest.raises(MessageTooLarge) as info:
        split_decoder(framing, c_split).feed(wire)
    assert (str(info.value), info.value.messages) == ("length header announces 11 bytes; max_size is 10", [b"ok"])


@needs_c
def test_a_header_over_max_size_stops_the_c_routine_before_its_body() -> None:
    """The header's message is not allocated by C: `feed` raises the Python path's error on it."""
    framing = LengthPrefixed(max_size=10)
    wire = framing.encode(b"ok") + struct.pack("!I", 2**32 - 1)
    assert c_split(wire, 0, struct.Struct("!I"), 10) == (6, [b"ok"])
    errors = []
    for c in (True, False):
        with pytest.raises(FramingError) as info:
            split_decoder(framing, c).feed(wire)
        errors.append((type(info.value), str(info.value), info.value.messages))
    assert errors[0] == errors[1]
    assert errors[0][1] == "length header announces 4294967295 bytes; max_size is 10"


def python_join(messages: list[bytes], header: struct.Struct, max_size: int) -> bytes | None:
    """The C join's contract in Python."""
    if any(len(message) > max_size for message in messages):
        return None
    return b"".join(header.pack(len(message)) + message for message in messages)


@st.composite
def batches(draw: st.DrawFn) -> tuple[struct.Struct, int, list[bytes]]:
    header = struct.Struct(draw(st.sampled_from(HEADERS), label="header"))
    limit = 2 ** (8 * header.size) - 1
    max_size = draw(st.integers(0, 40) | st.just(min(limit, 300)), label="max_size")
    messages = draw(st.lists(st.binary(max_size=min(max_size + 2, 300)), max_size=8), label="messages")
    return header, max_size, messages


@needs_c
@given(batch=batches(), kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_the_c_join_frames_exactly_as_python_would(batch: tuple[struct.Struct, int, list[bytes]], kind: type) -> None:
    header, max_size, messages = batch
    assert length._C_JOIN is not None
    joined = length._C_JOIN(
        [kind(message) for message in messages], header.size, header.format.startswith("<"), max_size
    )
    assert joined == python_join(messages, header, max_size)


@needs_c
@given(batch=batches())
def test_encode_all_gives_the_same_bytes_and_errors_joined_in_c_and_in_python(
    batch: tuple[struct.Struct, int, list[bytes]],
) -> None:
    header, max_size, messages = batch
    outcomes = []
    for c_join in (True, False):
        framing = join_framing(LengthPrefixed(header.format, max_size), c_join)
        try:
            outcomes.append(framing.encode_all(messages))
        except MessageTooLarge as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    assert outcomes[0] == outcomes[1]
    expected = python_join(messages, header, max_size)
    if expected is None:
        assert isinstance(outcomes[0], str) and outcomes[0].startswith("MessageTooLarge: message has ")
    else:
        assert outcomes[0] == expected


@needs_c
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (([b"x"], 3, False, 10), ValueError),  # no such header
        (((b"x",), 4, False, 10), TypeError),  # not a list
        ((["text"], 4, False, 10), TypeError),  # not bytes-like
        (([memoryview(b"abcd")[::2]], 4, False, 10), BufferError),  # not contiguous
        (([b"x"], 4, False, -1), OverflowError),
        (([b"x"], 4, False), TypeError),
    ],
)
def test_the_c_join_refuses_what_encode_all_never_passes(args: tuple[object, ...], error: type[Exception]) -> None:
    assert length._C_JOIN is not None
    with pytest.raises(error):
        length._C_JOIN(*args)  # type: ignore[arg-type]


@needs_c
@pytest.mark.parametrize("header", [order + code for order in "!<>" for code in "BH"])  # 4 GiB for "I": too long
def test_the_c_join_gives_up_on_a_message_its_header_cannot_say(header: str) -> None:
    """Whatever `max_size` it is given: a header that wrapped would frame the wrong bytes."""
    assert length._C_JOIN is not None
    size = struct.calcsize(header)
    too_long = b"x" * 2 ** (8 * size)
    assert length._C_JOIN([b"ok", too_long], size, header.startswith("<"), 2**64 - 1) is None
    assert length._C_JOIN([b"ok"], size, header.startswith("<"), 2**64 - 1) == struct.pack(header, 2) + b"ok"


def speedups_in_a_fresh_interpreter(**environ: str) -> str:
    code = "from connecteur.framing import length; print(length.SPEEDUPS, length._C_SPLIT is not None)"
    env = {**os.environ, **environ}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_connecteur_pure_forces_the_python_split_at_import() -> None:
    assert speedups_in_a_fresh_interpreter(CONNECTEUR_PURE="1") == f"False {C_BUILT}"
    assert speedups_in_a_fresh_interpreter(CONNECTEUR_PURE="0") == f"{C_BUILT} {C_BUILT}"


def test_a_default_decoder_splits_and_a_framing_joins_as_speedups_says() -> None:
    decoder = LengthPrefixed().decoder()
    assert (decoder._split is not None) == length.SPEEDUPS  # type: ignore[attr-defined]
    assert (LengthPrefixed()._join is not None) == length.SPEEDUPS
    if not C_BUILT:
        with pytest.raises(RuntimeError, match="not built"):
            LengthPrefixed()._decoder(True)
