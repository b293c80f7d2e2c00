"""Sans-I/O PROXY protocol v1 and v2 (HAProxy's ``doc/proxy-protocol.txt``): who the client really is.

A load balancer relaying a connection prepends one header: v1 is an ASCII line
(``PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n``), v2 a binary block
(signature, four fixed bytes, addresses, optional TLVs). Part of the core, like
`connecteur.framing`: no socket, clock or log. `ProxyHeaderReader.feed` turns a
connection's first bytes into one `ProxyHeader`; the bytes after it belong to
the framing decoder. `encode_v1` and `encode_v2` write headers.

Strategy: bytes go into one ``bytearray`` and each field is checked as soon as
its bytes are present (the first byte decides the version; the v2 length meets
`max_size` once the 16-byte fixed part is complete), so a peer that is not a
balancer fails at once and memory stays bounded. The v1 LF search resumes where
it stopped.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, final

from .errors import AddressError, ProxyProtocolError

__all__ = ["ProxyHeader", "ProxyHeaderReader", "encode_v1", "encode_v2"]

Buffer: TypeAlias = bytes | bytearray | memoryview
Endpoint: TypeAlias = tuple[str, int] | str | None
"""An address in a header: ``(host, port)`` for TCP/UDP, a path for AF_UNIX, None when unknown."""
Transport: TypeAlias = Literal["stream", "dgram"]
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

V1_SIGNATURE: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

V1_MAX_SIZE: Final = 107
"""107 bytes: the longest v1 line, CRLF included, fixed by the spec (the
``PROXY UNKNOWN`` worst case with two full IPv6 addresses and ports)."""

DEFAULT_MAX_SIZE: Final = 16 * 2**10
"""16 KiB: the largest v2 header `ProxyHeaderReader` accepts by default, in
bytes, the 16-byte fixed part included. The spec lets the length field reach
16 + 65535 bytes but aims headers at 536 bytes; HAProxy builds and reads a
header in one buffer of ``tune.bufsize``, 16384 bytes by default, so no header
it sends is larger. Room for TLVs such as a client certificate (``0x28``),
while a hostile length cannot make each pending connection hold 64 KiB."""

_V2_FIXED: Final = struct.Struct("!BBH")  # after the signature: version/command, family/protocol, length
_V2_FIXED_SIZE: Final = len(V2_SIGNATURE) + _V2_FIXED.size
_TLV_HEAD: Final = struct.Struct("!BH")
_UNIX_PATH_SIZE: Final = 108

# The family/protocol bytes the spec lists: address block size in bytes, transport.
_V2_FAMILIES: Final[dict[int, tuple[int, Transport | None]]] = {
    0x00: (0, None),
    0x11: (12, "stream"),
    0x12: (12, "dgram"),
    0x21: (36, "stream"),
    0x22: (36, "dgram"),
    0x31: (216, "stream"),
    0x32: (216, "dgram"),
}
_MIN_MAX_SIZE: Final = _V2_FIXED_SIZE + max(size for size, _ in _V2_FAMILIES.values())  # 232
_TRANSPORTS: Final[dict[str, int]] = {"stream": 0x1, "dgram": 0x2}
_SIGNATURES: Final = {"v1": V1_SIGNATURE, "v2": V2_SIGNATURE}
_FIRST_BYTES: Final[dict[int, Literal["v1", "v2"]]] = {V1_SIGNATURE[0]: "v1", V2_SIGNATURE[0]: "v2"}


@final
@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY protocol header, as the balancer sent it.

    Attributes:
        version: 1 or 2.
        is_local: True for a v2 LOCAL command (the balancer's own health
            check) or a v1 ``UNKNOWN`` line: the connection's own addresses
            apply, and `source` and `destination` are None.
        source: the original client: ``(host, port)`` over IPv4 or IPv6 (host
            written as ``"192.0.2.1"`` or ``"2001:db8::1"``), the socket path
            for AF_UNIX (cut at its first NUL), or None when the header gives
            none (LOCAL, UNKNOWN, or v2 UNSPEC: use the connection's).
        destination: the address the client connected to (the balancer's
            frontend), in the same forms.
        transport: ``"stream"`` (TCP, Unix stream) or ``"dgram"`` (UDP, Unix
            datagram); None when the header does not say.
        tlvs: v2 type-length-value extensions as ``(type, value)`` pairs, in
            wire order, uninterpreted (a CRC32C TLV is not verified).
    """

    version: Literal[1, 2]
    is_local: bool
    source: Endpoint
    destination: Endpoint
    transport: Transport | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()


@final
class ProxyHeaderReader:
    """Reads the PROXY header at the start of one connection.

    Feed it the connection's first bytes until it returns the header; then
    `leftover` holds the bytes that came after it, for the framing decoder.
    Not thread-safe: one reader per connection.

    Args:
        version: ``"v1"`` or ``"v2"`` accepts only that version; ``"auto"``
            tells them apart by the first byte. None of them makes the header
            optional: the spec forbids guessing whether one is present.
        max_size: the largest v2 header accepted, in bytes, fixed part
            included; at least 232 (a header with Unix paths and no TLV). A
            v1 line is limited to 107 bytes by the spec.

    Raises:
        ValueError: an unknown `version`, or `max_size` not an int >= 232.
    """

    __slots__ = ("_buf", "_failure", "_header", "_scanned", "_version", "max_size", "version")

    def __init__(self, version: Literal["v1", "v2", "auto"] = "auto", *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if version not in ("v1", "v2", "auto"):
            raise ValueError(f"version must be 'v1', 'v2' or 'auto', not {version!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < _MIN_MAX_SIZE:
            raise ValueError(f"max_size must be an int of at least {_MIN_MAX_SIZE} bytes, not {max_size!r}")
        self.version = version
        self.max_size = max_size
        self._version: Literal["v1", "v2"] | None = None  # decided by the first byte
        self._buf = bytearray()
        self._scanned = 0  # bytes of a v1 line known to hold no LF
        self._header: ProxyHeader | None = None
        self._failure: ProxyProtocolError | None = None

    def __repr__(self) -> str:
        return f"ProxyHeaderReader({self.version!r}, max_size={self.max_size})"

    @property
    def buffered(self) -> int:
        """Bytes held: the incomplete header, or after it the `leftover`."""
        return len(self._buf)

    @property
    def leftover(self) -> bytes:
        """The bytes received after the header, unchanged (``b""`` until it is complete)."""
        return bytes(self._buf) if self._header is not None else b""

    def feed(self, data: Buffer) -> ProxyHeader | None:
        """Add bytes from the peer; return the header once they complete it.

        `data` may be cut anywhere. Bytes after the header are kept in
        `leftover`. An error is raised as soon as the bytes received prove
        the header wrong, without waiting for the rest.

        Returns:
            None while the header is incomplete, then the `ProxyHeader`.

        Raises:
            ProxyProtocolError: the bytes are not a PROXY header of an allowed
                version, break the spec, or announce more than `max_size`. The
                reader stays failed: every later call raises again.
            RuntimeError: the header was already returned; feed the bytes
                that follow to the framing decoder instead.
        """
        if self._header is not None:
            raise RuntimeError("the PROXY header is complete: give leftover and later bytes to the framing decoder")
        if self._failure is not None:
            raise ProxyProtocolError(f"reader already failed: {self._failure}") from self._failure
        self._buf += data
        try:
            self._header = self._try_header()
        except ProxyProtocolError as exc:
            self._failure = exc
            raise
        return self._header

    def _try_header(self) -> ProxyHeader | None:
        buf = self._buf
        if not buf:
            return None
        if self._version is None:
            self._version = _detect(buf[0], self.version)
        _check_signature(buf, self._version)
        return self._try_v1() if self._version == "v1" else self._try_v2()

    def _try_v1(self) -> ProxyHeader | None:
        buf = self._buf
        end = buf.find(b"\n", self._scanned, V1_MAX_SIZE)
        if end < 0:
            self._scanned = len(buf)
            if len(buf) >= V1_MAX_SIZE:
                raise ProxyProtocolError(f"PROXY v1 line has no CRLF in its first {V1_MAX_SIZE} bytes")
            return None
        if buf[end - 1] != 0x0D:  # end >= 6: the signature holds no LF
            raise ProxyProtocolError(f"PROXY v1 line ends with a bare LF at byte {end}; CRLF is required")
        header = _parse_v1(bytes(buf[: end - 1]))
        del buf[: end + 1]
        return header

    def _try_v2(self) -> ProxyHeader | None:
        buf = self._buf
        _check_v2_bytes(buf)
        if len(buf) < _V2_FIXED_SIZE:
            return None
        command, family, length = _V2_FIXED.unpack_from(buf, len(V2_SIGNATURE))
        size = _V2_FIXED_SIZE + length
        if size > self.max_size:
            raise ProxyProtocolError(f"PROXY v2 header announces {size} bytes; max_size is {self.max_size}")
        addresses = _V2_FAMILIES[family][0]
        if command & 0xF and length < addresses:
            raise ProxyProtocolError(
                f"PROXY v2 family/protocol 0x{family:02x} needs a {addresses}-byte address block; "
                f"the length field says {length}"
            )
        if len(buf) < size:
            return None
        header = _parse_v2(command & 0xF == 0, family, bytes(buf[_V2_FIXED_SIZE:size]))
        del buf[:size]
        return header


# --- reading ----------------------------------------------------------------------


def _detect(first: int, allowed: str) -> Literal["v1", "v2"]:
    """The version the first byte starts, if `allowed` (``"v1"``, ``"v2"`` or ``"auto"``) accepts it."""
    version = _FIRST_BYTES.get(first)
    if version is None:
        raise ProxyProtocolError(f"first byte {bytes([first])!r} starts neither PROXY v1 (b'P') nor v2 (b'\\r')")
    if allowed not in ("auto", version):
        raise ProxyProtocolError(
            f"first byte {bytes([first])!r} starts PROXY {version}; this reader takes only {allowed}"
        )
    return version


def _check_signature(buf: bytearray, version: str) -> None:
    """Fail as soon as the bytes received differ from the signature."""
    signature = _SIGNATURES[version]
    head = bytes(buf[: len(signature)])
    if not signature.startswith(head):
        raise ProxyProtocolError(f"{head!r} does not start a PROXY {version} header: expected {signature!r}")


def _check_v2_bytes(buf: bytearray) -> None:
    """Check the version/command and family/protocol bytes once each has arrived."""
    if len(buf) > 12 and buf[12] not in (0x20, 0x21):
        value = buf[12]
        if value >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2 version is {value >> 4} (byte 0x{value:02x}); only 2 exists")
        raise ProxyProtocolError(f"PROXY v2 command is {value & 0xF}; only 0 (LOCAL) and 1 (PROXY) exist")
    if len(buf) > 13 and buf[13] not in _V2_FAMILIES:
        known = ", ".join(f"0x{family:02x}" for family in _V2_FAMILIES)
        raise ProxyProtocolError(f"PROXY v2 family/protocol byte 0x{buf[13]:02x} is none of {known}")


def _parse_v1(line: bytes) -> ProxyHeader:
    fields = line.split(b" ")
    protocol = fields[1]
    if protocol == b"UNKNOWN":  # the spec: ignore whatever follows, up to CRLF
        return ProxyHeader(version=1, is_local=True, source=None, destination=None)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol {protocol!r} is none of TCP4, TCP6, UNKNOWN")
    if len(fields) != 6:
        raise ProxyProtocolError(
            f"PROXY v1 {protocol.decode()} line has {len(fields) - 2} fields after the protocol; "
            "4 are required (2 addresses, 2 ports), each after a single space"
        )
    family = protocol[-1] - 0x30
    source, destination = (_parse_v1_host(field, family) for field in fields[2:4])
    source_port, destination_port = (_parse_v1_port(field) for field in fields[4:6])
    return ProxyHeader(1, False, (source, source_port), (destination, destination_port), "stream")


def _parse_v1_host(field: bytes, family: int) -> str:
    try:
        ip = ipaddress.ip_address(field.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        ip = None
    if ip is None or b"%" in field:  # no IPv6 scope: the spec's format has none
        raise ProxyProtocolError(f"PROXY v1 address {field!r} is not an IP address")
    if ip.version != family:
        raise ProxyProtocolError(f"PROXY v1 address {field!r} is not IPv{family}, as TCP{family} announces")
    return _format_ip(ip)


def _parse_v1_port(field: bytes) -> int:
    if not field.isdigit() or len(field) > 5 or (field[0] == 0x30 and len(field) > 1) or int(field) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 port {field!r} is not a decimal 0..65535 without leading zeros")
    return int(field)


def _parse_v2(is_local: bool, family: int, block: bytes) -> ProxyHeader:
    size, transport = _V2_FAMILIES[family]
    # LOCAL: the spec says to discard the addresses, so a short block is accepted and ignored.
    size = min(size, len(block))
    tlvs = _parse_tlvs(block[size:], _V2_FIXED_SIZE + size)
    if is_local:
        return ProxyHeader(2, True, None, None, None, tlvs)
    source, destination = _parse_v2_addresses(family >> 4, block[:size])
    return ProxyHeader(2, False, source, destination, transport, tlvs)


def _parse_v2_addresses(family: int, block: bytes) -> tuple[Endpoint, Endpoint]:
    if family == 0x3:
        return _parse_unix_path(block[:_UNIX_PATH_SIZE]), _parse_unix_path(block[_UNIX_PATH_SIZE:])
    if family == 0x0:
        return None, None
    width = 4 if family == 0x1 else 16
    source, destination = (ipaddress.ip_address(block[i : i + width]) for i in (0, width))
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * width)
    return (_format_ip(source), source_port), (_format_ip(destination), destination_port)


def _parse_unix_path(field: bytes) -> str:
    # Byte-for-byte as os.fsdecode does on POSIX with UTF-8, so any path survives.
    return field.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _parse_tlvs(raw: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """Split `raw` (starting at byte `offset` of the header) into (type, value) pairs."""
    tlvs = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < _TLV_HEAD.size:
            raise ProxyProtocolError(
                f"PROXY v2 TLV at byte {offset + pos} has {len(raw) - pos} bytes; its type and length need 3"
            )
        kind, length = _TLV_HEAD.unpack_from(raw, pos)
        start, pos = pos + _TLV_HEAD.size, pos + _TLV_HEAD.size + length
        if pos > len(raw):
            raise ProxyProtocolError(
                f"PROXY v2 TLV type 0x{kind:02x} at byte {offset + start - 3} announces {length} bytes; "
                f"only {len(raw) - start} remain in the header"
            )
        tlvs.append((kind, raw[start:pos]))
    return tuple(tlvs)


def _format_ip(ip: _IP) -> str:
    """Write `ip` as the socket module does (Python 3.11's ipaddress writes ::ffff:c000:201)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


# --- writing ----------------------------------------------------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Return a v1 header line: ``PROXY TCP4|TCP6 ...\\r\\n``, or ``PROXY UNKNOWN\\r\\n``.

    Args:
        source: the original client as ``(ip, port)``; None with `destination`
            None for ``UNKNOWN``.
        destination: the address the client connected to, of the same family.

    Raises:
        AddressError: a host that is not an IP address, a port outside
            0..65535, one address None, or IPv4 mixed with IPv6.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    (source_ip, source_port), (destination_ip, destination_port) = _ip_pair(source, destination)
    line = f"PROXY TCP{source_ip.version} {source_ip} {destination_ip} {source_port} {destination_port}\r\n"
    return line.encode("ascii")


def encode_v2(
    source: Endpoint,
    destination: Endpoint,
    *,
    local: bool = False,
    transport: Transport = "stream",
    tlvs: Iterable[tuple[int, Buffer]] = (),
) -> bytes:
    """Return a binary v2 header.

    Args:
        source: the original client: ``(ip, port)``, a Unix socket path, or
            None with `destination` None (family UNSPEC: "use the connection's").
        destination: the address the client connected to, in the same form.
        local: send the LOCAL command (a health check); both addresses must be None.
        transport: ``"stream"`` (TCP) or ``"dgram"`` (UDP) for the addresses given.
        tlvs: ``(type, value)`` pairs appended after the addresses, types 0..255.

    Raises:
        AddressError: an address as `encode_v1` describes, a Unix path over
            108 bytes or containing NUL, or mixed address kinds.
        ValueError: addresses with `local`, an unknown `transport`, a TLV
            type outside 0..255, or a header over 16 + 65535 bytes.
    """
    if local and (source is not None or destination is not None):
        raise ValueError("a LOCAL header carries no addresses: pass None for both")
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be 'stream' or 'dgram', not {transport!r}")
    family, block = (0x00, b"") if local else _v2_address_block(source, destination, _TRANSPORTS[transport])
    block += b"".join(_encode_tlv(kind, value) for kind, value in tlvs)
    if len(block) > 0xFFFF:
        raise ValueError(f"the address block and TLVs take {len(block)} bytes; a v2 header holds 65535")
    return V2_SIGNATURE + _V2_FIXED.pack(0x20 if local else 0x21, family, len(block)) + block


def _v2_address_block(source: Endpoint, destination: Endpoint, transport: int) -> tuple[int, bytes]:
    if source is None and destination is None:
        return 0x00, b""
    if isinstance(source, str) and isinstance(destination, str):
        return 0x30 | transport, _encode_unix_path(source) + _encode_unix_path(destination)
    (source_ip, source_port), (destination_ip, destination_port) = _ip_pair(source, destination)
    family = 0x10 if source_ip.version == 4 else 0x20
    ports = struct.pack("!HH", source_port, destination_port)
    return family | transport, source_ip.packed + destination_ip.packed + ports


def _ip_pair(source: object, destination: object) -> tuple[tuple[_IP, int], tuple[_IP, int]]:
    pair = _ip_endpoint(source, "source"), _ip_endpoint(destination, "destination")
    if pair[0][0].version != pair[1][0].version:
        raise AddressError(f"source {source!r} and destination {destination!r} mix IPv4 and IPv6")
    return pair


def _ip_endpoint(value: object, role: str) -> tuple[_IP, int]:
    match value:
        case (str(host), int(port)) if not isinstance(port, bool) and 0 <= port <= 0xFFFF and "%" not in host:
            try:  # no IPv6 scope (fe80::1%eth0): neither version can carry one
                return ipaddress.ip_address(host), port
            except ValueError:
                pass
    raise AddressError(f"{role} must be an (IP address, port 0..65535) tuple like ('192.0.2.1', 80), not {value!r}")


def _encode_unix_path(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > _UNIX_PATH_SIZE or b"\0" in raw:
        raise AddressError(f"Unix path {path!r} is over {_UNIX_PATH_SIZE} bytes or contains NUL")
    return raw.ljust(_UNIX_PATH_SIZE, b"\0")


def _encode_tlv(kind: int, value: Buffer) -> bytes:
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 0xFF:
        raise ValueError(f"a TLV type must be an int 0..255, not {kind!r}")
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV type 0x{kind:02x} has {len(value)} bytes; a TLV holds 65535")
    return _TLV_HEAD.pack(kind, len(value)) + bytes(value)
