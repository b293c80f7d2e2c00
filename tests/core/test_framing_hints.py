"""A length header that is really text says so: the usual sign of a peer using another framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from connecteur.errors import MessageTooLarge
from connecteur.framing import DecimalPrefixed, LengthPrefixed

HINT = "look like text: is the peer using another framing?"


def too_large(framing: LengthPrefixed | DecimalPrefixed, data: bytes) -> MessageTooLarge:
    with pytest.raises(MessageTooLarge) as info:
        framing.decoder().feed(data)
    return info.value


def test_an_http_request_to_a_length_prefixed_server_is_named_as_text() -> None:
    exc = too_large(LengthPrefixed(), b"HTTP/1.1 200 OK\r\n\r\n")
    assert str(exc) == (
        'length header announces 1213486160 bytes; max_size is 16777216 (the bytes "HTTP" look like text: '
        "is the peer using another framing?)"
    ).replace('"HTTP"', "'HTTP'")
    assert (exc.size, exc.max_size) == (1213486160, 16777216)


def test_a_line_of_text_through_an_eight_byte_header() -> None:
    assert "the bytes 'hello wo' look like text" in str(too_large(LengthPrefixed("!Q"), b"hello world\n"))


def test_binary_headers_and_decimal_headers_get_no_hint() -> None:
    assert HINT not in str(too_large(LengthPrefixed(), b"\xff\xff\xff\xff"))
    assert HINT not in str(too_large(LengthPrefixed(max_size=10), b"\x00\x00\x00\x41"))  # one byte of text
    decimal = too_large(DecimalPrefixed(10, max_size=100), b"1213486160")  # digits are text by design
    assert HINT not in str(decimal) and str(decimal).startswith("decimal length header announces 1213486160")


@given(st.binary(min_size=4, max_size=4))
@example(b"\x00\x00  ")  # printable but for its zero bytes: not text (the hint once said it was)
def test_the_hint_appears_exactly_when_the_header_is_printable(header: bytes) -> None:
    (size,) = struct.unpack("!I", header)
    framing = LengthPrefixed(max_size=1000)
    if size <= 1000:
        return  # not too large: no error to look at
    exc = too_large(framing, header)
    printable = all(0x20 <= byte <= 0x7E for byte in header)
    assert (HINT in str(exc)) == printable
    assert (exc.size, exc.max_size) == (size, 1000)
    if printable:
        assert repr(header.decode()) in str(exc)
