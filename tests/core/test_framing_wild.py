"""Framings for peers connecteur did not write: `LengthField` (netty's parameters) and `Lines` (CR tolerated).

`test_framing.py` runs both through the shared cases (fragmentation triad,
random cuts, hostile bytes, EOF, linear time). Here: the byte layouts of real
protocols written out by hand (Modbus/TCP, an ISO 8583-style 2-byte header, a
length that counts itself), a hand-written peer on a real socket, the encode
rules, the limits, and properties over random parameters.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import connecteur
from connecteur import FramingError, MessageTooLarge, TruncatedMessage
from connecteur.framing import Delimited, LengthField, LengthPrefixed, Lines
from tests.support import TIMEOUT, cuts, one_byte_at_a_time

# Bytes for the decoder object itself and bytearray's over-allocation.
SLACK = 1024

# --- Modbus/TCP: the MBAP header's length at offset 4 counts the unit id and the PDU ------

# Read Holding Registers, from the Modbus Messaging on TCP/IP Implementation Guide's layout:
# transaction 0x0001, protocol 0, length 6, unit 0x11, function 3, address 0x006B, count 3.
MODBUS_REQUEST = bytes.fromhex("0001 0000 0006 11 03 006B 0003")
# Its answer: length 9, unit 0x11, function 3, 6 bytes: registers 0x022B, 0x0000, 0x0064.
MODBUS_RESPONSE = bytes.fromhex("0001 0000 0009 11 03 06 022B 0000 0064")
MODBUS = LengthField(offset=4, size=2)


def test_modbus_adus_come_out_whole_header_included() -> None:
    decoder = MODBUS.decoder()
    assert decoder.feed(MODBUS_REQUEST + MODBUS_RESPONSE + MODBUS_REQUEST[:7]) == [MODBUS_REQUEST, MODBUS_RESPONSE]
    assert decoder.buffered == 7
    assert decoder.feed(MODBUS_REQUEST[7:]) == [MODBUS_REQUEST]


def test_modbus_adu_one_byte_at_a_time() -> None:
    decoder = MODBUS.decoder()
    got = [m for piece in one_byte_at_a_time(MODBUS_RESPONSE) for m in decoder.feed(piece)]
    assert got == [MODBUS_RESPONSE]


def test_modbus_encode_checks_the_adu_and_keeps_it() -> None:
    assert MODBUS.encode(MODBUS_REQUEST) == MODBUS_REQUEST
    with pytest.raises(FramingError, match="length field says 6"):
        MODBUS.encode(MODBUS_REQUEST + b"\0")  # one byte the MBAP length does not count
    with pytest.raises(FramingError, match="shorter than its 6-byte header"):
        MODBUS.encode(MODBUS_REQUEST[:5])


def _modbus_server(listener: socket.socket, stop: threading.Event) -> None:
    """A hand-written Modbus/TCP server: reads the MBAP header with recv, then what its length says."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        buf = b""
        while not stop.is_set():
            while len(buf) < 6 or len(buf) < 6 + struct.unpack_from("!H", buf, 4)[0]:
                chunk = conn.recv(3)  # small reads: the client's frames arrive cut
                if not chunk:
                    return
                buf += chunk
            size = 6 + struct.unpack_from("!H", buf, 4)[0]
            request, buf = buf[:size], buf[size:]
            assert request[6:8] == b"\x11\x03"
            reply = request[:4] + MODBUS_RESPONSE[4:]
            for i in range(len(reply)):  # one byte at a time: the decoder must wait for the rest
                conn.sendall(reply[i : i + 1])


def test_a_hand_written_modbus_server_answers_a_connecteur_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stop = threading.Event()
        server = threading.Thread(target=_modbus_server, args=(listener, stop), daemon=True)
        server.start()
        try:
            with connecteur.connect(listener.getsockname(), framing=MODBUS, timeout=TIMEOUT) as conn:
                for transaction in (1, 2, 0xBEEF):
                    request = struct.pack("!H", transaction) + MODBUS_REQUEST[2:]
                    assert conn.request(request) == struct.pack("!H", transaction) + MODBUS_RESPONSE[2:]
        finally:
            stop.set()
            server.join(TIMEOUT)
        assert not server.is_alive()


# --- ISO 8583 over TCP: a 2-byte big-endian length of what follows, stripped ---------------

ISO8583 = LengthField(size=2, strip=2)
# A network management request (MTI 0800) with a bitmap and fields 7, 11 and 70, as ASCII.
ISO_MESSAGE = b"0800" + bytes.fromhex("8220000000000000") + b"0400000000" + b"1234560612" + b"0301"


def test_iso8583_header_is_the_length_of_the_message() -> None:
    wire = struct.pack("!H", len(ISO_MESSAGE)) + ISO_MESSAGE
    assert ISO8583.encode(ISO_MESSAGE) == wire
    assert ISO8583.encode(ISO_MESSAGE) == LengthPrefixed("!H").encode(ISO_MESSAGE)
    decoder = ISO8583.decoder()
    assert decoder.feed(wire * 2 + wire[:1]) == [ISO_MESSAGE, ISO_MESSAGE]
    assert decoder.buffered == 1


def test_a_hand_written_iso8583_peer_over_a_socket_pair() -> None:
    """The peer writes the 2-byte header itself, in pieces; the decoder gives the message alone."""
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(TIMEOUT)
        left.sendall(struct.pack("!H", len(ISO_MESSAGE))[:1])
        left.sendall(struct.pack("!H", len(ISO_MESSAGE))[1:] + ISO_MESSAGE[:10])
        left.sendall(ISO_MESSAGE[10:])
        left.shutdown(socket.SHUT_WR)
        decoder = ISO8583.decoder()
        got: list[bytes] = []
        while chunk := right.recv(7):
            got += decoder.feed(chunk)
        assert got == [ISO_MESSAGE]
        assert decoder.eof() == []


# --- a length that counts itself ---------------------------------------------------------


def test_a_length_that_includes_itself() -> None:
    framing = LengthField(size=4, adjustment=-4)  # the whole frame, header kept
    wire = b"\x00\x00\x00\x09hello"
    assert framing.decoder().feed(wire + wire) == [wire, wire]
    stripped = LengthField(size=4, adjustment=-4, strip=4)
    assert stripped.decoder().feed(wire) == [b"hello"]
    assert stripped.encode(b"hello") == wire


@pytest.mark.parametrize("field", [0, 1, 2, 3])
def test_a_self_inclusive_length_shorter_than_its_header_is_a_framing_error(field: int) -> None:
    decoder = LengthField(size=4, adjustment=-4).decoder()
    with pytest.raises(FramingError, match=f"length field {field} with adjustment -4 gives a {field}-byte frame"):
        decoder.feed(struct.pack("!I", field) + b"rest")
    with pytest.raises(FramingError):
        decoder.feed(b"more")


def test_a_frame_shorter_than_strip_is_a_framing_error() -> None:
    decoder = LengthField(size=1, strip=5).decoder()
    with pytest.raises(FramingError, match="5 bytes to strip"):
        decoder.feed(b"\x02abcdef")


# --- limits ------------------------------------------------------------------------------


def test_max_size_is_checked_on_the_message_as_soon_as_the_field_is_complete() -> None:
    """Modbus with max_size 10: length 5 makes an 11-byte message, refused before any byte after the field."""
    decoder = LengthField(offset=4, size=2, max_size=10).decoder()
    assert decoder.feed(b"\x00\x01\x00\x00\x00") == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"\x05")
    assert (info.value.size, info.value.max_size) == (11, 10)
    assert "11" in str(info.value) and "10" in str(info.value)


def test_max_size_counts_the_message_after_strip() -> None:
    framing = LengthField(size=2, strip=2, max_size=10)
    assert framing.decoder().feed(b"\x00\x0a" + b"x" * 10) == [b"x" * 10]
    with pytest.raises(MessageTooLarge):
        framing.decoder().feed(b"\x00\x0b")
    with pytest.raises(MessageTooLarge):
        framing.encode(b"x" * 11)


def test_a_huge_announced_length_costs_nothing() -> None:
    decoder = LengthField(size=8, byteorder="little").decoder()
    with pytest.raises(MessageTooLarge):
        decoder.feed(b"\xff" * 8)
    assert decoder.held <= SLACK  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("framing", "largest"),
    [
        (LengthField(size=1, strip=1), 255),
        (LengthField(size=2, strip=2), 65535),
        (LengthField(size=2), 65537),  # the header is part of the message
        (LengthField(size=2, adjustment=-2, strip=2), 65533),
        (LengthField(size=3, strip=3), 2**24 - 1),
        (LengthField(size=4), 16 * 2**20),  # the default max_size is smaller
    ],
)
def test_max_size_is_at_most_what_the_field_can_express(framing: LengthField, largest: int) -> None:
    assert framing.max_size == largest


def test_length_field_prepended_is_length_prefixed() -> None:
    for size, header in [(1, "!B"), (2, "!H"), (4, "!I"), (8, "!Q")]:
        for order, mark in [("big", "!"), ("little", "<")]:
            field = LengthField(size=size, byteorder=order, strip=size)  # type: ignore[arg-type]
            assert field.encode(b"hello") == LengthPrefixed(mark + header[1]).encode(b"hello")


@pytest.mark.parametrize(
    "framing",
    [LengthField(offset=2, size=2, strip=4), LengthField(size=2, strip=1), LengthField(size=2, strip=3)],
)
def test_encode_refuses_a_layout_it_cannot_rebuild(framing: LengthField) -> None:
    with pytest.raises(ValueError, match="can only decode"):
        framing.encode(b"hello")


def test_encode_refuses_a_message_shorter_than_the_adjustment() -> None:
    with pytest.raises(FramingError, match="negative length"):
        LengthField(size=2, adjustment=2, strip=2).encode(b"x")


def test_eof_inside_a_frame_is_truncated() -> None:
    decoder = MODBUS.decoder()
    assert decoder.feed(MODBUS_REQUEST[:9]) == []
    with pytest.raises(TruncatedMessage) as info:
        decoder.eof()
    assert info.value.pending == 9


# --- properties: random parameters, random frames, any cut --------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[LengthField, list[bytes], list[bytes], bytes]:
    """A random layout, random frames in it, the messages they give, and the start of one more frame."""
    offset = draw(st.integers(0, 6), label="offset")
    size = draw(st.sampled_from([1, 2, 3, 4, 8]), label="size")
    header = offset + size
    adjustment = draw(st.integers(-header - 3, 5), label="adjustment")
    strip = draw(st.integers(0, header + 2), label="strip")
    byteorder = draw(st.sampled_from(["big", "little"]), label="byteorder")
    framing = LengthField(offset=offset, size=size, byteorder=byteorder, adjustment=adjustment, strip=strip)
    frames = []
    for _ in range(draw(st.integers(1, 6), label="count")):
        length = draw(st.integers(0, 60), label="length")
        after = length + adjustment  # bytes after the field
        assume(after >= 0 and header + after >= strip)
        prefix = draw(st.binary(min_size=offset, max_size=offset), label="before the field")
        rest = draw(st.binary(min_size=after, max_size=after), label="after the field")
        frames.append(prefix + length.to_bytes(size, byteorder) + rest)
    following = frames[0][: draw(st.integers(0, len(frames[0]) - 1), label="cut")]
    return framing, frames, [frame[strip:] for frame in frames], following


@given(layout=layouts(), data=st.data())
def test_any_layout_cut_anywhere_gives_the_frames_minus_strip(
    layout: tuple[LengthField, list[bytes], list[bytes], bytes], data: st.DataObject
) -> None:
    """Every frame comes out once, stripped; the next frame's start stays; memory follows the bytes received."""
    framing, frames, messages, following = layout
    wire = b"".join(frames) + following
    decoder = framing.decoder()
    got: list[bytes] = []
    received = 0
    for piece in cuts(wire, data, max_piece=data.draw(st.sampled_from([1, 3, 17, 200]), label="max piece")):
        got += decoder.feed(piece)
        received += len(piece)
        out = sum(len(frame) for frame in frames[: len(got)])
        assert decoder.buffered == received - out
        assert decoder.buffered <= decoder.held <= 2 * decoder.buffered + SLACK  # type: ignore[attr-defined]
    assert got == messages
    assert decoder.buffered == len(following)


@given(layout=layouts())
def test_encode_gives_back_the_frame_where_it_can(layout: tuple[LengthField, list[bytes], list[bytes], bytes]) -> None:
    """strip == 0: the frame unchanged; offset 0, strip == size: the field rebuilt; otherwise a ValueError."""
    framing, frames, messages, _ = layout
    for frame, message in zip(frames, messages, strict=True):
        if framing.strip == 0 or (framing.offset == 0 and framing.strip == framing.size):
            assert framing.encode(message) == frame
        else:
            with pytest.raises(ValueError):
                framing.encode(message)


# --- Lines: \n ends a line, a \r before it goes ------------------------------------------


@pytest.mark.parametrize(
    ("wire", "lines", "left"),
    [
        (b"one\ntwo\r\nthree\n", [b"one", b"two", b"three"], 0),
        (b"a\r\n\r\n\n", [b"a", b"", b""], 0),
        (b"a\rb\n", [b"a\rb"], 0),  # a \r elsewhere stays
        (b"a\r\r\n", [b"a\r"], 0),  # only one \r goes
        (b"\rx\n", [b"\rx"], 0),
        (b"done\r", [], 5),  # a \r at the end waits: its \n may come
        (b"USER ann\r\nPASS x\nQUIT\r", [b"USER ann", b"PASS x"], 5),
    ],
)
def test_lines_take_lf_and_crlf_mixed(wire: bytes, lines: list[bytes], left: int) -> None:
    decoder = Lines().decoder()
    assert decoder.feed(wire) == lines
    assert decoder.buffered == left
    one_by_one = Lines().decoder()
    assert [m for piece in one_byte_at_a_time(wire) for m in one_by_one.feed(piece)] == lines


def test_where_delimited_keeps_the_cr_lines_drops_it() -> None:
    assert Delimited(b"\n").decoder().feed(b"abc\r\n") == [b"abc\r"]
    assert Lines().decoder().feed(b"abc\r\n") == [b"abc"]


def test_lines_encode_lf_or_crlf() -> None:
    assert Lines().encode(b"hello") == b"hello\n"
    assert Lines(crlf=True).encode(b"hello") == b"hello\r\n"
    assert Lines(crlf=True).encode(b"ends\r") == b"ends\r\r\n"
    assert Lines(crlf=True).decoder().feed(b"ends\r\r\n") == [b"ends\r"]


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("message", [b"a\nb", b"\n", b"end\r\n"])
def test_lines_encode_refuses_a_newline(crlf: bool, message: bytes) -> None:
    with pytest.raises(FramingError, match="cannot contain"):
        Lines(crlf=crlf).encode(message)


def test_lines_encode_refuses_a_trailing_cr_it_would_lose() -> None:
    with pytest.raises(FramingError, match="crlf=True"):
        Lines().encode(b"ends\r")


def test_lines_defaults_to_64_kib() -> None:
    assert Lines().max_size == 64 * 2**10 == Delimited().max_size


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_of_exactly_max_size_is_accepted_byte_by_byte(ending: bytes) -> None:
    decoder = Lines(max_size=10).decoder()
    got = [m for piece in one_byte_at_a_time(b"x" * 10 + ending) for m in decoder.feed(piece)]
    assert got == [b"x" * 10]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_complete_line_over_max_size(ending: bytes) -> None:
    with pytest.raises(MessageTooLarge) as info:
        Lines(max_size=10).decoder().feed(b"ok\n" + b"x" * 11 + ending)
    assert (info.value.size, info.value.max_size) == (11, 10)
    assert info.value.messages == [b"ok"]


def test_a_line_that_never_ends_is_stopped_one_byte_past_the_limit() -> None:
    """Past max_size bytes only a \r may still come (the start of the line's ending)."""
    decoder = Lines(max_size=10).decoder()
    assert decoder.feed(b"x" * 10 + b"\r") == []
    with pytest.raises(MessageTooLarge, match="no end of line after 12 bytes"):
        decoder.feed(b"y")
    other = Lines(max_size=10).decoder()
    with pytest.raises(MessageTooLarge, match="no end of line after 11 bytes"):
        other.feed(b"x" * 11)
    assert Lines(max_size=10).encode(b"x" * 10) == b"x" * 10 + b"\n"
    with pytest.raises(MessageTooLarge):
        Lines(max_size=10).encode(b"x" * 11)


def _reference_lines(wire: bytes) -> tuple[list[bytes], int]:
    """What a line reader must give: split at \n, one \r before it dropped; the bytes left after the last \n."""
    *lines, rest = wire.split(b"\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in lines], len(rest)


_LINE_BYTES = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\0"]), max_size=60).map(b"".join)


@given(wire=_LINE_BYTES, data=st.data())
def test_lines_match_a_reference_reader_under_any_cut(wire: bytes, data: st.DataObject) -> None:
    decoder = Lines(max_size=1000).decoder()
    got = [m for piece in cuts(wire, data, max_piece=5) for m in decoder.feed(piece)]
    lines, left = _reference_lines(wire)
    assert got == lines
    assert decoder.buffered == left


@pytest.mark.parametrize("crlf", [False, True])
@given(messages=st.lists(_LINE_BYTES.map(lambda m: m.replace(b"\n", b"")), max_size=10), data=st.data())
def test_lines_round_trip_under_any_cut(crlf: bool, messages: list[bytes], data: st.DataObject) -> None:
    framing = Lines(max_size=100, crlf=crlf)
    if not crlf:
        messages = [m.rstrip(b"\r") for m in messages]
    wire = b"".join(framing.encode(m) for m in messages)
    decoder = framing.decoder()
    assert [m for piece in cuts(wire, data) for m in decoder.feed(piece)] == messages
    assert decoder.buffered == 0
    assert decoder.eof() == []


@given(wire=st.binary(max_size=200) | _LINE_BYTES, max_size=st.integers(0, 20), data=st.data())
def test_lines_hostile_bytes_give_lines_or_too_large_and_stay_bounded(
    wire: bytes, max_size: int, data: st.DataObject
) -> None:
    decoder = Lines(max_size=max_size).decoder()
    got: list[bytes] = []
    for piece in cuts(wire, data, max_piece=8):
        try:
            got += decoder.feed(piece)
        except MessageTooLarge as exc:
            got += exc.messages
            break
        assert decoder.buffered <= max_size + 1  # the limit, and the \r that may begin its ending
        assert decoder.held <= 2 * decoder.buffered + SLACK  # type: ignore[attr-defined]
    lines, _ = _reference_lines(wire)
    assert got == lines[: len(got)]
    assert all(len(line) <= max_size for line in got)
