"""The PROXY protocol reader and encoders: spec vectors, fragmentation, early errors, hostile input.

Wire vectors come from HAProxy's ``doc/proxy-protocol.txt``: its v1 lines, and
v2 headers written out byte by byte from its layout (never produced by the
encoder under test). Hypothesis round-trips random headers under random cuts,
and checks that arbitrary or damaged bytes only ever give None, a header or
`ProxyProtocolError`, with what the reader holds bounded.
"""

from __future__ import annotations

import gc
import ipaddress
import time
from collections.abc import Callable
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connecteur
from connecteur.errors import AddressError, ConnecteurError, ProxyProtocolError
from connecteur.proxy_protocol import (
    DEFAULT_MAX_SIZE,
    V1_MAX_SIZE,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)
from tests.support import cuts, one_byte_at_a_time

Version = Literal["v1", "v2", "auto"]

SIG = "0d0a0d0a000d0a515549540a"  # the v2 signature, as the spec spells it: \r\n\r\n\0\r\nQUIT\n


def v2(hex_text: str) -> bytes:
    """The v2 signature followed by `hex_text` (spaces allowed, for readability)."""
    return bytes.fromhex(SIG + hex_text)


def unix_field(path: bytes) -> str:
    """A 108-byte AF_UNIX address field, NUL-padded, in hex."""
    return path.hex() + "00" * (108 - len(path))


def feed_all(reader: ProxyHeaderReader, pieces: list[bytes]) -> ProxyHeader | None:
    """Feed `pieces` in order as long as no header is returned; return the header, if any."""
    header, _ = read_header(reader, pieces)
    return header


def read_header(reader: ProxyHeaderReader, pieces: list[bytes]) -> tuple[ProxyHeader | None, bytes]:
    """Do what a loop does: feed until the header comes; return it and the application's bytes."""
    for index, piece in enumerate(pieces):
        if (header := reader.feed(piece)) is not None:
            return header, reader.leftover + b"".join(pieces[index + 1 :])
    return None, b""


def fed_until_error(data: bytes, reader: ProxyHeaderReader | None = None) -> tuple[int, ProxyProtocolError]:
    """Feed one byte at a time; return how many bytes the reader took before failing, and the error."""
    reader = reader or ProxyHeaderReader()
    for fed, piece in enumerate(one_byte_at_a_time(data), start=1):
        try:
            assert reader.feed(piece) is None
        except ProxyProtocolError as exc:
            return fed, exc
    raise AssertionError(f"{len(data)} bytes fed and no ProxyProtocolError")


# --- spec vectors -------------------------------------------------------------------

V1_MAX_IPV4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
V1_MAX_IPV6 = b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"
V1_WORST_CASE = b"PROXY UNKNOWN " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"
ALL_F = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

VECTORS = [
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, False, ("192.168.0.1", 56324), ("192.168.0.11", 443), "stream"),
        id="v1-spec-example",
    ),
    pytest.param(
        V1_MAX_IPV4,
        ProxyHeader(1, False, ("255.255.255.255", 65535), ("255.255.255.255", 65535), "stream"),
        id="v1-longest-tcp4",
    ),
    pytest.param(V1_MAX_IPV6, ProxyHeader(1, False, (ALL_F, 65535), (ALL_F, 65535), "stream"), id="v1-longest-tcp6"),
    pytest.param(
        b"PROXY TCP6 2001:DB8::1 ::ffff:192.0.2.1 0 80\r\n",
        ProxyHeader(1, False, ("2001:db8::1", 0), ("::ffff:192.0.2.1", 80), "stream"),
        id="v1-tcp6-upper-case-and-mapped",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", ProxyHeader(1, True, None, None), id="v1-unknown-short"),
    pytest.param(V1_WORST_CASE, ProxyHeader(1, True, None, None), id="v1-unknown-worst-case-107"),
    pytest.param(b"PROXY UNKNOWN \xff anything\r\n", ProxyHeader(1, True, None, None), id="v1-unknown-ignores-rest"),
    pytest.param(v2("20 00 0000"), ProxyHeader(2, True, None, None), id="v2-local"),
    pytest.param(
        # LOCAL with a family and addresses: the spec says to discard them.
        v2("20 11 000c c0000201 c6336407 dc04 01bb"),
        ProxyHeader(2, True, None, None),
        id="v2-local-ignores-addresses",
    ),
    pytest.param(v2("21 00 0000"), ProxyHeader(2, False, None, None), id="v2-proxy-unspec"),
    pytest.param(
        v2("21 11 000c c0000201 c6336407 dc04 01bb"),  # 192.0.2.1:56324 -> 198.51.100.7:443
        ProxyHeader(2, False, ("192.0.2.1", 56324), ("198.51.100.7", 443), "stream"),
        id="v2-tcp4",
    ),
    pytest.param(
        v2("21 12 000c 0a000001 0a000002 3039 0035"),
        ProxyHeader(2, False, ("10.0.0.1", 12345), ("10.0.0.2", 53), "dgram"),
        id="v2-udp4",
    ),
    pytest.param(
        v2("21 21 0024 20010db8000000000000000000000001 00000000000000000000ffffc0000201 ffff 0000"),
        ProxyHeader(2, False, ("2001:db8::1", 65535), ("::ffff:192.0.2.1", 0), "stream"),
        id="v2-tcp6",
    ),
    pytest.param(
        v2("21 22 0024 20010db8000000000000000000000001 20010db8000000000000000000000002 3039 0035"),
        ProxyHeader(2, False, ("2001:db8::1", 12345), ("2001:db8::2", 53), "dgram"),
        id="v2-udp6",
    ),
    pytest.param(
        v2("21 31 00d8" + unix_field(b"/run/client.sock") + unix_field(b"/run/app.sock")),
        ProxyHeader(2, False, "/run/client.sock", "/run/app.sock", "stream"),
        id="v2-unix-stream",
    ),
    pytest.param(
        v2("21 32 00d8" + unix_field(b"") + "2f" * 108),  # unnamed client; a path filling all 108 bytes
        ProxyHeader(2, False, "", "/" * 108, "dgram"),
        id="v2-unix-dgram",
    ),
    pytest.param(
        # tcp4, then ALPN "h2", AUTHORITY "example.com", an empty NOOP: 12 + 5 + 14 + 3 = 34 bytes.
        v2("21 11 0022 c0000201 c6336407 dc04 01bb  01 0002 6832  02 000b 6578616d706c652e636f6d  04 0000"),
        ProxyHeader(
            2,
            False,
            ("192.0.2.1", 56324),
            ("198.51.100.7", 443),
            "stream",
            ((0x01, b"h2"), (0x02, b"example.com"), (0x04, b"")),
        ),
        id="v2-tcp4-tlvs",
    ),
    pytest.param(
        v2("20 00 0007 03 0004 deadbeef"),  # LOCAL with a CRC32C TLV, as HAProxy's health checks may send
        ProxyHeader(2, True, None, None, None, ((0x03, b"\xde\xad\xbe\xef"),)),
        id="v2-local-tlv",
    ),
]


@pytest.mark.parametrize(("wire", "expected"), VECTORS)
def test_spec_vectors_whole(wire: bytes, expected: ProxyHeader) -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(wire) == expected
    assert reader.leftover == b""
    assert reader.buffered == 0


@pytest.mark.parametrize(("wire", "expected"), VECTORS)
def test_spec_vectors_one_byte_at_a_time(wire: bytes, expected: ProxyHeader) -> None:
    """Every prefix gives None; the last byte gives the header."""
    reader = ProxyHeaderReader()
    for fed in range(len(wire) - 1):
        assert reader.feed(wire[fed : fed + 1]) is None
        assert reader.buffered == fed + 1
    assert reader.feed(wire[-1:]) == expected


@pytest.mark.parametrize(("wire", "expected"), VECTORS)
def test_bytes_after_the_header_are_leftover_unchanged(wire: bytes, expected: ProxyHeader) -> None:
    after = b"\r\n\r\n\x00PROXY GET / HTTP/1.1\r\n"
    reader = ProxyHeaderReader()
    assert reader.feed(memoryview(wire + after)) == expected
    assert reader.leftover == after
    assert reader.buffered == len(after)


@pytest.mark.parametrize(("wire", "expected"), VECTORS)
def test_the_version_decides_which_vectors_are_accepted(wire: bytes, expected: ProxyHeader) -> None:
    allowed: Version = "v1" if expected.version == 1 else "v2"
    other: Version = "v2" if expected.version == 1 else "v1"
    assert ProxyHeaderReader(allowed).feed(bytearray(wire)) == expected
    with pytest.raises(ProxyProtocolError, match=f"starts PROXY {allowed}; this reader takes only {other}"):
        ProxyHeaderReader(other).feed(wire)


def test_spec_example_before_an_http_request() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    reader = ProxyHeaderReader("v1")
    header = reader.feed(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request)
    assert header is not None
    assert header.source == ("192.168.0.1", 56324)
    assert header.destination == ("192.168.0.11", 443)
    assert reader.leftover == request


def test_the_spec_line_lengths() -> None:
    assert (len(V1_MAX_IPV4), len(V1_MAX_IPV6), len(b"PROXY UNKNOWN\r\n"), len(V1_WORST_CASE)) == (56, 104, 15, 107)
    assert V1_MAX_SIZE == 107


@pytest.mark.parametrize(
    ("call", "wire"),
    [
        (lambda: encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)),
         b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
        (lambda: encode_v1((ALL_F, 65535), (ALL_F.upper(), 65535)), V1_MAX_IPV6),
        (lambda: encode_v1(None, None), b"PROXY UNKNOWN\r\n"),
        (lambda: encode_v2(None, None, local=True), v2("20 00 0000")),
        (lambda: encode_v2(None, None), v2("21 00 0000")),
        (lambda: encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443)),
         v2("21 11 000c c0000201 c6336407 dc04 01bb")),
        (lambda: encode_v2(("2001:db8::1", 12345), ("2001:db8::2", 53), transport="dgram"),
         v2("21 22 0024 20010db8000000000000000000000001 20010db8000000000000000000000002 3039 0035")),
        (lambda: encode_v2("/run/client.sock", "/run/app.sock"),
         v2("21 31 00d8" + unix_field(b"/run/client.sock") + unix_field(b"/run/app.sock"))),
        (lambda: encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443),
                           tlvs=[(1, b"h2"), (2, bytearray(b"example.com")), (4, b"")]),
         v2("21 11 0022 c0000201 c6336407 dc04 01bb  01 0002 6832  02 000b 6578616d706c652e636f6d  04 0000")),
    ],
)  # fmt: skip
def test_encoders_write_the_spec_vectors(call: Callable[[], bytes], wire: bytes) -> None:
    assert call() == wire


# --- round trips under random cuts --------------------------------------------------

PORTS = st.integers(min_value=0, max_value=65535)
TRANSPORTS: st.SearchStrategy[Literal["stream", "dgram"]] = st.sampled_from(("stream", "dgram"))
TLVS = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=5)
UNIX_PATHS = (
    st.binary(max_size=108).filter(lambda raw: b"\0" not in raw).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
)


def ip_pairs(version: Literal[4, 6]) -> st.SearchStrategy[tuple[tuple[str, int], tuple[str, int]]]:
    endpoint = st.tuples(st.ip_addresses(v=version).map(str), PORTS)
    return st.tuples(endpoint, endpoint)


def same_endpoint(got: object, sent: object) -> bool:
    """An (ip, port) received equals the one sent, whatever way the IP was written."""
    if isinstance(got, tuple) and isinstance(sent, tuple):
        return ipaddress.ip_address(got[0]) == ipaddress.ip_address(sent[0]) and got[1] == sent[1]
    return got == sent


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, tuple[object, object]]:
    """A v1 line and the (source, destination) it carries."""
    source, destination = draw(st.one_of(ip_pairs(4), ip_pairs(6), st.just((None, None))))
    return encode_v1(source, destination), (source, destination)


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A v2 header and what it carries (addresses as sent)."""
    kind = draw(st.sampled_from(["local", "unspec", "ipv4", "ipv6", "unix"]))
    transport, tlvs = draw(TRANSPORTS), tuple(draw(TLVS))
    if kind == "local":
        return encode_v2(None, None, local=True, tlvs=tlvs), ProxyHeader(2, True, None, None, None, tlvs)
    pairs = {"unspec": st.just((None, None)), "ipv4": ip_pairs(4), "ipv6": ip_pairs(6)}
    source, destination = draw(pairs.get(kind, st.tuples(UNIX_PATHS, UNIX_PATHS)))
    wire = encode_v2(source, destination, transport=transport, tlvs=tlvs)
    return wire, ProxyHeader(2, False, source, destination, None if kind == "unspec" else transport, tlvs)


@given(v1_headers(), st.binary(max_size=200), st.sampled_from(("v1", "auto")), st.data())
def test_v1_round_trip_under_any_cut(
    header: tuple[bytes, tuple[object, object]], after: bytes, version: Version, data: st.DataObject
) -> None:
    wire, (source, destination) = header
    reader = ProxyHeaderReader(version)
    got, application = read_header(reader, list(cuts(wire + after, data)))
    assert got is not None
    assert got.version == 1 and got.is_local == (source is None)
    assert same_endpoint(got.source, source) and same_endpoint(got.destination, destination)
    assert application == after


@given(v2_headers(), st.binary(max_size=200), st.sampled_from(("v2", "auto")), st.data())
def test_v2_round_trip_under_any_cut(
    header: tuple[bytes, ProxyHeader], after: bytes, version: Version, data: st.DataObject
) -> None:
    wire, sent = header
    reader = ProxyHeaderReader(version)
    got, application = read_header(reader, list(cuts(wire + after, data)))
    assert got is not None
    assert (got.version, got.is_local, got.transport, got.tlvs) == (2, sent.is_local, sent.transport, sent.tlvs)
    assert same_endpoint(got.source, sent.source) and same_endpoint(got.destination, sent.destination)
    assert application == after


@given(st.ip_addresses(v=6), PORTS)
def test_hosts_are_written_in_one_canonical_form(ip: ipaddress.IPv6Address, port: int) -> None:
    """The same address gives the same host string through v1 and v2, whatever the sender wrote."""
    from_v1 = ProxyHeaderReader().feed(f"PROXY TCP6 {ip.exploded.upper()} ::1 {port} 1\r\n".encode())
    from_v2 = ProxyHeaderReader().feed(encode_v2((str(ip), port), ("::1", 1)))
    assert from_v1 is not None and from_v2 is not None
    assert from_v1.source == from_v2.source
    assert from_v1.source[0] == (f"::ffff:{ip.ipv4_mapped}" if ip.ipv4_mapped else str(ip))  # type: ignore[index]


# --- hostile input --------------------------------------------------------------------


def valid_wire() -> st.SearchStrategy[bytes]:
    return st.one_of(v1_headers().map(lambda pair: pair[0]), v2_headers().map(lambda pair: pair[0]))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid header with one byte changed, or cut short, followed by anything."""
    wire = bytearray(draw(valid_wire()))
    index = draw(st.integers(0, len(wire) - 1))
    if draw(st.booleans()):
        wire[index] ^= draw(st.integers(1, 255))
    else:
        del wire[index:]
    return bytes(wire) + draw(st.binary(max_size=50))


HOSTILE = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: bytes.fromhex(SIG) + tail),
    st.binary(max_size=300).map(lambda tail: b"PROXY " + tail),
    st.lists(st.sampled_from([b"PROXY", b" ", b"TCP4", b"TCP6", b"UNKNOWN", b"1.2.3.4", b"::1", b"80", b"\r\n"])).map(
        b"".join
    ),
    damaged(),
)


@given(HOSTILE, st.sampled_from(("v1", "v2", "auto")), st.integers(232, 600), st.data())
def test_hostile_bytes_give_none_a_header_or_proxy_protocol_error(
    wire: bytes, version: Version, max_size: int, data: st.DataObject
) -> None:
    reader = ProxyHeaderReader(version, max_size=max_size)
    for piece in cuts(wire, data):
        try:
            header = reader.feed(piece)
        except ProxyProtocolError:
            return
        if header is not None:
            assert isinstance(header, ProxyHeader)
            return
        assert reader.buffered <= max_size


@given(valid_wire(), st.data())
def test_a_prefix_of_a_valid_header_is_never_rejected(wire: bytes, data: st.DataObject) -> None:
    """Early errors fire only on proof: every strict prefix of a valid header waits for more."""
    prefix = wire[: data.draw(st.integers(0, len(wire) - 1))]
    reader = ProxyHeaderReader()
    assert feed_all(reader, list(cuts(prefix, data))) is None
    assert reader.buffered == len(prefix)
    assert reader.leftover == b""


# --- early errors, with messages that say what is wrong ------------------------------


@pytest.mark.parametrize(
    ("wire", "fails_at", "message"),
    [
        (b"GET / HTTP/1.1\r\n", 1, "first byte b'G' starts neither PROXY v1 (b'P') nor v2"),
        (b"\x16\x03\x01", 1, "first byte b'\\x16' starts neither"),
        (b"POST / HTTP/1.1\r\n", 2, "b'PO' does not start a PROXY v1 header: expected b'PROXY '"),
        (b"PROXY\tTCP4", 6, "does not start a PROXY v1 header"),
        (b"\r\n\r\n\x00\r\nQUIT\r", 12, "does not start a PROXY v2 header"),
        (b"\r\n\r\nGET", 5, "does not start a PROXY v2 header"),
        (b"PROXY UNKNOWN" + b" " * 100, 107, "no CRLF in its first 107 bytes"),
        (V1_WORST_CASE[:-2] + b"f\r\n", 107, "no CRLF in its first 107 bytes"),
        (b"PROXY UNKNOWN\n", 14, "bare LF at byte 13"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31, "bare LF"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 32, "protocol b'TCP5' is none of TCP4, TCP6, UNKNOWN"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 32, "protocol b'UDP4'"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 33, "protocol b''"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", 33, "5 fields after the protocol; 4 are required"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 30, "3 fields after the protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 33, "5 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", 33, "port b'2\\r'"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", 34, "address b'1.2.3.256' is not an IP address"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", 33, "address b'01.2.3.4' is not an IP address"),
        (b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", 34, "address b'localhost'"),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", 28, "address b'::1' is not IPv4, as TCP4 announces"),
        (b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n", 28, "address b'1.2.3.4' is not IPv6, as TCP6 announces"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 33, "address b'fe80::1%eth0' is not an IP address"),
        (b"PROXY TCP6 \xc3\xa9::1 ::1 1 2\r\n", 26, "is not an IP address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 36,
         "port b'65536' is not a decimal 0..65535 without leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", 34, "port b'080'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", 34, "port b'+80'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", 33, "port b'-2'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa3\r\n", 33, "port"),
        (v2("31"), 13, "PROXY v2 version is 3 (byte 0x31); only 2 exists"),
        (v2("10"), 13, "PROXY v2 version is 1"),
        (v2("22"), 13, "PROXY v2 command is 2; only 0 (LOCAL) and 1 (PROXY) exist"),
        (v2("21 13"), 14, "family/protocol byte 0x13 is none of 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32"),
        (v2("21 41"), 14, "family/protocol byte 0x41"),
        (v2("21 10"), 14, "family/protocol byte 0x10"),
        (v2("21 11 ffff"), 16, "PROXY v2 header announces 65551 bytes; max_size is 16384"),
        (v2("21 11 3ff1"), 16, "announces 16385 bytes; max_size is 16384"),
        (v2("21 11 000b c0000201 c6336407 dc04 01"), 16,
         "0x11 needs a 12-byte address block; the length field says 11"),
        (v2("21 21 000c c0000201 c6336407 dc04 01bb"), 16, "0x21 needs a 36-byte address block"),
        (v2("21 31 0000"), 16, "0x31 needs a 216-byte address block; the length field says 0"),
        (v2("21 11 000e c0000201 c6336407 dc04 01bb 0100"), 30,
         "TLV at byte 28 has 2 bytes; its type and length need 3"),
        (v2("21 11 0011 c0000201 c6336407 dc04 01bb 01 0003 6832"), 33,
         "TLV type 0x01 at byte 28 announces 3 bytes; only 2 remain in the header"),
        (v2("20 00 0005 04 0000 02 ff"), 21, "TLV at byte 19 has 2 bytes"),
        (v2("20 00 0006 04 0000 02 0001"), 22, "TLV type 0x02 at byte 19 announces 1 bytes; only 0 remain"),
    ],
)  # fmt: skip
def test_malformed_headers_fail_as_soon_as_the_bytes_prove_it(wire: bytes, fails_at: int, message: str) -> None:
    fed, exc = fed_until_error(wire)
    assert message in str(exc)
    assert fed == fails_at, f"failed after {fed} bytes, expected {fails_at}: {exc}"


def test_v1_line_of_exactly_107_bytes_is_accepted_and_108_is_not() -> None:
    assert ProxyHeaderReader().feed(V1_WORST_CASE) == ProxyHeader(1, True, None, None)
    with pytest.raises(ProxyProtocolError, match="no CRLF in its first 107 bytes"):
        ProxyHeaderReader().feed(V1_WORST_CASE[:-2] + b"f\r\n")


def test_v2_length_is_checked_before_buffering_the_rest() -> None:
    reader = ProxyHeaderReader(max_size=300)
    with pytest.raises(ProxyProtocolError, match="announces 301 bytes; max_size is 300"):
        reader.feed(v2("21 11 011d"))
    assert reader.buffered == 16


def test_v2_header_of_exactly_max_size_is_accepted() -> None:
    wire = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(0x04, b"\0" * (300 - 16 - 12 - 3))])
    assert len(wire) == 300
    header = ProxyHeaderReader(max_size=300).feed(wire)
    assert header is not None and header.tlvs == ((0x04, b"\0" * 269),)


def test_default_max_size_takes_haproxy_buffer_sized_headers() -> None:
    assert DEFAULT_MAX_SIZE == 16384
    wire = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[(0xE0, b"x" * (DEFAULT_MAX_SIZE - 16 - 12 - 3))])
    header = ProxyHeaderReader().feed(wire)
    assert header is not None and len(header.tlvs[0][1]) == DEFAULT_MAX_SIZE - 31


# --- the reader's life ----------------------------------------------------------------


def test_a_failed_reader_stays_failed() -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError) as first:
        reader.feed(b"HELLO")
    with pytest.raises(ProxyProtocolError, match="reader already failed: first byte b'H'") as again:
        reader.feed(b"PROXY UNKNOWN\r\n")
    assert again.value.__cause__ is first.value


def test_feed_after_the_header_is_a_caller_error() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN\r\nhello") is not None
    with pytest.raises(RuntimeError, match="framing decoder"):
        reader.feed(b"more")
    assert reader.leftover == b"hello"


def test_feeding_nothing_changes_nothing() -> None:
    reader = ProxyHeaderReader()
    assert repr(reader) == "ProxyHeaderReader('auto', max_size=16384)"
    assert reader.feed(b"") is None
    assert reader.buffered == 0
    assert reader.feed(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, True, None, None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ProxyHeaderReader("v3"),  # type: ignore[arg-type]
        lambda: ProxyHeaderReader(max_size=231),
        lambda: ProxyHeaderReader(max_size=True),
        lambda: ProxyHeaderReader(max_size=1000.0),  # type: ignore[arg-type]
    ],
)
def test_bad_reader_arguments_raise_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_proxy_protocol_error_is_a_value_error_and_exported() -> None:
    assert issubclass(ProxyProtocolError, ConnecteurError)
    assert issubclass(ProxyProtocolError, ValueError)
    assert connecteur.ProxyProtocolError is ProxyProtocolError
    assert "ProxyProtocolError" in connecteur.__all__


def test_public_names_have_docstrings() -> None:
    import connecteur.proxy_protocol as module

    assert module.__doc__
    assert sorted(module.__all__) == ["ProxyHeader", "ProxyHeaderReader", "encode_v1", "encode_v2"]
    for name in module.__all__:
        assert getattr(module, name).__doc__, name
    for member in ("feed", "buffered", "leftover"):
        assert getattr(ProxyHeaderReader, member).__doc__, member


# --- encoders refuse what they cannot write -------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: encode_v1(("192.0.2.1", 1), None), AddressError, "destination must be an (IP address, port"),
        (lambda: encode_v1(("example.com", 1), ("192.0.2.1", 1)), AddressError, "source must be"),
        (lambda: encode_v1(("192.0.2.1", 65536), ("192.0.2.1", 1)), AddressError, "port 0..65535"),
        (lambda: encode_v1(("192.0.2.1", True), ("192.0.2.1", 1)), AddressError, "source must be"),
        (lambda: encode_v1(("192.0.2.1", 1), ("::1", 1)), AddressError, "mix IPv4 and IPv6"),
        (lambda: encode_v1(("fe80::1%eth0", 1), ("::1", 1)), AddressError, "source must be"),
        (lambda: encode_v1("/run/a", "/run/b"), AddressError, "source must be"),  # type: ignore[arg-type]
        (lambda: encode_v2(("192.0.2.1", 1), ("::1", 1)), AddressError, "mix IPv4 and IPv6"),
        (lambda: encode_v2("/run/a", ("::1", 1)), AddressError, "source must be"),
        (lambda: encode_v2("/" * 109, "/b"), AddressError, "over 108 bytes or contains NUL"),
        (lambda: encode_v2("/a\0b", "/b"), AddressError, "contains NUL"),
        (lambda: encode_v2(("::1", 1), ("::1", 2), local=True), ValueError, "a LOCAL header carries no addresses"),
        (lambda: encode_v2(None, None, transport="raw"), ValueError, "transport must be"),  # type: ignore[arg-type]
        (lambda: encode_v2(None, None, tlvs=[(256, b"")]), ValueError, "TLV type must be an int 0..255"),
        (lambda: encode_v2(None, None, tlvs=[(1, b"x" * 65536)]), ValueError, "65536 bytes; a TLV holds 65535"),
        (lambda: encode_v2(None, None, tlvs=[(1, b"x" * 40000)] * 2), ValueError, "80006 bytes"),
    ],
)
def test_encoders_reject_what_they_cannot_write(
    call: Callable[[], bytes], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as exc:
        call()
    assert message in str(exc.value)


# --- linear time ------------------------------------------------------------------------


def _time_one_byte_at_a_time(pieces: list[bytes]) -> float:
    reader = ProxyHeaderReader(max_size=16 + 65535)
    gc.disable()
    try:
        start = time.perf_counter()
        header = feed_all(reader, pieces)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    assert header is not None
    return elapsed


def test_a_big_v2_header_byte_by_byte_takes_linear_time() -> None:
    """Four times the bytes take about four times as long (a quadratic reader would take sixteen)."""
    small_pieces, large_pieces = (
        list(one_byte_at_a_time(encode_v2(None, None, tlvs=[(0xE0, b"x" * (n - 3))]))) for n in (16000, 64000)
    )
    small = large = float("inf")
    for _ in range(3):
        small = min(small, _time_one_byte_at_a_time(small_pieces))
        large = min(large, _time_one_byte_at_a_time(large_pieces))
    assert large / small < 8, f"16000 bytes: {small:.4f} s; 64000 bytes: {large:.4f} s"
