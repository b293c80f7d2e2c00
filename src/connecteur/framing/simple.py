"""The simple framings: fixed length, delimited, decimal prefix, netstring, type byte, end of stream.

Each decoder is a `_BufferDecoder` with a `_parse` of its own (see the base's
strategy); none touches a socket, a clock or a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

from ..errors import FramingError
from ._base import (
    DEFAULT_LINE_MAX_SIZE,
    DEFAULT_MAX_SIZE,
    Buffer,
    Decoder,
    _BufferDecoder,
    _check_max_size,
    _too_large,
)

__all__ = ["CloseDelimited", "DecimalPrefixed", "Delimited", "FixedLength", "Lines", "Netstring", "TypeTagged"]

# --- fixed length ---------------------------------------------------------------


@final
class FixedLength:
    """Every message is exactly `size` bytes: the simplest framing, for records.

    Args:
        size: the length of every message, in bytes (at least 1).
        max_size: the largest `size` accepted, in bytes: a framing whose
            every message is a gigabyte is refused unless asked for.

    Raises:
        ValueError: `size` is not a positive int, or is over `max_size`.
    """

    __slots__ = ("size",)

    def __init__(self, size: int, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"FixedLength size must be a positive int, not {size!r}")
        if size > _check_max_size(max_size):
            raise ValueError(f"FixedLength size {size} is over max_size {max_size}; pass a larger max_size")
        self.size = size

    def __repr__(self) -> str:
        return f"FixedLength({self.size})"

    @property
    def max_size(self) -> int:
        """The fixed message size, in bytes."""
        return self.size

    def encode(self, message: Buffer) -> bytes:
        """Return `message` unchanged after checking its length.

        Raises:
            MessageTooLarge: the message is longer than `size`.
            FramingError: the message is shorter than `size`.
        """
        if len(message) > self.size:
            raise _too_large(len(message), self.size, "message has")
        if len(message) != self.size:
            raise FramingError(f"FixedLength({self.size}) cannot carry a message of {len(message)} bytes")
        return bytes(message)

    def decoder(self) -> Decoder:
        """Return a new decoder that cuts the stream every `size` bytes."""
        return _FixedLengthDecoder(self.size)


@final
class _FixedLengthDecoder(_BufferDecoder):
    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        size = self._size
        usable = len(buf) - len(buf) % size
        with memoryview(buf) as view:
            out.extend(bytes(view[pos : pos + size]) for pos in range(0, usable, size))
        return usable


# --- delimited ------------------------------------------------------------------


@final
class Delimited:
    """Each message ends with a delimiter, which is not part of the message.

    Args:
        delimiter: the bytes that end a message (``b"\\n"`` for lines).
        max_size: the longest message, in bytes, delimiter excluded.
    """

    __slots__ = ("delimiter", "max_size")

    def __init__(self, delimiter: bytes = b"\n", max_size: int = DEFAULT_LINE_MAX_SIZE) -> None:
        if not isinstance(delimiter, bytes) or not delimiter:
            raise ValueError(f"the delimiter must be non-empty bytes, not {delimiter!r}")
        self.delimiter = delimiter
        self.max_size = _check_max_size(max_size)

    def __repr__(self) -> str:
        return f"Delimited({self.delimiter!r}, max_size={self.max_size})"

    def encode(self, message: Buffer) -> bytes:
        """Return `message` followed by the delimiter.

        Raises:
            FramingError: the message contains the delimiter, or ends with
                part of it so that the delimiter would be found too early.
            MessageTooLarge: the message is longer than `max_size`.
        """
        if len(message) > self.max_size:
            raise _too_large(len(message), self.max_size, "message has")
        wire = bytes(message) + self.delimiter
        # A message that ends with part of a self-overlapping delimiter
        # (b"\n" before b"\n\n") would be cut early: the first delimiter on
        # the wire must be the one added here.
        if wire.find(self.delimiter) != len(message):
            raise FramingError(f"message contains the delimiter {self.delimiter!r}, or ends with part of it")
        return wire

    def decoder(self) -> Decoder:
        """Return a new decoder that cuts the stream after each delimiter."""
        return _DelimitedDecoder(self.delimiter, self.max_size)


@final
class _DelimitedDecoder(_BufferDecoder):
    """Resumes each delimiter search where the previous one stopped (linear time)."""

    __slots__ = ("_delimiter", "_max_size", "_scanned")

    def __init__(self, delimiter: bytes, max_size: int) -> None:
        super().__init__()
        self._delimiter = delimiter
        self._max_size = max_size
        self._scanned = 0  # bytes at the start of the buffer known to hold no delimiter

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        delimiter, max_size = self._delimiter, self._max_size
        width = len(delimiter)
        pos = 0
        search_from = self._scanned
        while (end := buf.find(delimiter, search_from)) >= 0:
            if end - pos > max_size:
                raise _too_large(end - pos, max_size, "line has")
            out.append(bytes(buf[pos:end]))
            pos = search_from = end + width
        pending = len(buf) - pos
        # The last width-1 bytes may be the start of a delimiter: search them again.
        self._scanned = max(0, pending - width + 1)
        if self._scanned > max_size:
            raise _too_large(self._scanned, max_size, "no delimiter after")
        return pos


# --- lines, CR tolerated --------------------------------------------------------


@final
class Lines:
    """Text lines ended by ``\\n``, with one ``\\r`` before it dropped: LF and CRLF peers both work.

    What netty's ``LineBasedFrameDecoder`` and Twisted's ``LineReceiver`` do
    for peers that mix them: ``b"a\\r\\nb\\n"`` gives ``b"a"`` and ``b"b"``,
    where ``Delimited(b"\\n")`` would give ``b"a\\r"``. Only the ``\\r``
    right before the ``\\n`` goes; one elsewhere stays in the line.

    Args:
        max_size: the longest line, in bytes, its ending (``\\n`` or
            ``\\r\\n``) excluded.
        crlf: whether `encode` ends lines with ``\\r\\n`` (for peers that
            want them) rather than ``\\n``. The decoder accepts both either way.
    """

    __slots__ = ("crlf", "max_size")

    def __init__(self, max_size: int = DEFAULT_LINE_MAX_SIZE, *, crlf: bool = False) -> None:
        self.max_size = _check_max_size(max_size)
        self.crlf = bool(crlf)

    def __repr__(self) -> str:
        crlf = ", crlf=True" if self.crlf else ""
        return f"Lines(max_size={self.max_size}{crlf})"

    def encode(self, message: Buffer) -> bytes:
        """Return `message` followed by ``\\n`` (``\\r\\n`` with `crlf`).

        Raises:
            FramingError: the message contains ``\\n``, or (without `crlf`)
                ends with ``\\r``, which the decoder would drop.
            MessageTooLarge: the message is longer than `max_size`.
        """
        if len(message) > self.max_size:
            raise _too_large(len(message), self.max_size, "message has")
        line = bytes(message)
        if b"\n" in line:
            raise FramingError("a line cannot contain b'\\n'")
        if self.crlf:
            return line + b"\r\n"
        if line.endswith(b"\r"):
            raise FramingError(
                "a line ending in b'\\r' would lose it: the decoder drops a \\r before \\n (crlf=True keeps it)"
            )
        return line + b"\n"

    def decoder(self) -> Decoder:
        """Return a new decoder that cuts the stream after each ``\\n`` and drops a ``\\r`` before it."""
        return _LinesDecoder(self.max_size)


@final
class _LinesDecoder(_BufferDecoder):
    """Resumes each search where the previous one stopped (linear time), like `_DelimitedDecoder`."""

    __slots__ = ("_max_size", "_scanned")

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._scanned = 0  # bytes at the start of the buffer known to hold no b"\n"

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        max_size, pos = self._max_size, 0
        while (end := buf.find(b"\n", pos + self._scanned)) >= 0:
            stop = end - 1 if end > pos and buf[end - 1] == 0x0D else end
            if stop - pos > max_size:
                raise _too_large(stop - pos, max_size, "line has")
            out.append(bytes(buf[pos:stop]))
            pos = end + 1
            self._scanned = 0
        self._scanned = len(buf) - pos
        # A line of max_size bytes may still be followed by its \r.
        if self._scanned > max_size + 1 or (self._scanned == max_size + 1 and buf[-1] != 0x0D):
            raise _too_large(self._scanned, max_size, "no end of line after")
        return pos


# --- decimal length prefix ------------------------------------------------------


@final
class DecimalPrefixed:
    """A zero-padded decimal length of `width` ASCII digits, then the message.

    ``DecimalPrefixed(5).encode(b"hello") == b"00005hello"``.

    Args:
        width: the number of digits in every header.
        max_size: the largest message, in bytes; by default 16 MiB
            (`DEFAULT_MAX_SIZE`), like the other framings. The effective
            limit is the smaller of this and the largest number `width`
            digits can write.
    """

    __slots__ = ("max_size", "width")

    def __init__(self, width: int, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 20:
            raise ValueError(f"DecimalPrefixed width must be an int from 1 to 20, not {width!r}")
        self.width = width
        self.max_size = min(_check_max_size(max_size), 10**width - 1)

    def __repr__(self) -> str:
        return f"DecimalPrefixed({self.width}, max_size={self.max_size})"

    def encode(self, message: Buffer) -> bytes:
        """Return the decimal header followed by `message`.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
        """
        size = len(message)
        if size > self.max_size:
            raise _too_large(size, self.max_size, "message has")
        return b"%0*d" % (self.width, size) + message

    def decoder(self) -> Decoder:
        """Return a new decoder for this width and limit."""
        return _DecimalPrefixedDecoder(self.width, self.max_size)


@final
class _DecimalPrefixedDecoder(_BufferDecoder):
    __slots__ = ("_max_size", "_width")

    def __init__(self, width: int, max_size: int) -> None:
        super().__init__()
        self._width = width
        self._max_size = max_size

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        width, max_size, end, pos = self._width, self._max_size, len(buf), 0
        with memoryview(buf) as view:
            while end - pos >= width:
                digits = bytes(view[pos : pos + width])
                if not digits.isdigit():
                    raise FramingError(f"decimal length header {digits!r} is not {width} ASCII digits")
                size = int(digits)
                if size > max_size:
                    raise _too_large(size, max_size, "decimal length header announces")
                stop = pos + width + size
                if stop > end:
                    break
                out.append(bytes(view[pos + width : stop]))
                pos = stop
        return pos


# --- netstring ------------------------------------------------------------------


@final
class Netstring:
    """D. J. Bernstein's netstrings: ``b"5:hello,"``.

    The length has no leading zeros (``0:,`` is the only length that starts
    with 0) and a comma ends every message.

    Args:
        max_size: the largest message, in bytes.
    """

    __slots__ = ("max_size",)

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = _check_max_size(max_size)

    def __repr__(self) -> str:
        return f"Netstring(max_size={self.max_size})"

    def encode(self, message: Buffer) -> bytes:
        """Return `message` as a netstring.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
        """
        size = len(message)
        if size > self.max_size:
            raise _too_large(size, self.max_size, "message has")
        return b"%d:" % size + message + b","

    def decoder(self) -> Decoder:
        """Return a new netstring decoder for this limit."""
        return _NetstringDecoder(self.max_size)


@final
class _NetstringDecoder(_BufferDecoder):
    __slots__ = ("_max_digits", "_max_size")

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size
        self._max_digits = len(str(max_size))

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        max_digits, end, pos = self._max_digits, len(buf), 0
        with memoryview(buf) as view:
            while pos < end:
                colon = buf.find(b":", pos, pos + max_digits + 1)
                if colon < 0:
                    self._check_partial_length(bytes(view[pos : min(end, pos + max_digits + 1)]))
                    break
                size = self._length(bytes(view[pos:colon]))
                stop = colon + 1 + size
                if stop >= end:  # the body or its comma is still to come
                    break
                if buf[stop] != 0x2C:
                    raise FramingError(
                        f"netstring of {size} bytes ends with {bytes(view[stop : stop + 1])!r}, not b','"
                    )
                out.append(bytes(view[colon + 1 : stop]))
                pos = stop + 1
        return pos

    def _length(self, digits: bytes) -> int:
        if not digits.isdigit():
            raise FramingError(f"netstring length {digits!r} is not a decimal number")
        if len(digits) > 1 and digits.startswith(b"0"):
            raise FramingError(f"netstring length {digits!r} has a leading zero")
        size = int(digits)
        if size > self._max_size:
            raise _too_large(size, self._max_size, "netstring length announces")
        return size

    def _check_partial_length(self, head: bytes) -> None:
        """Fail early on a length that can already be seen to be wrong."""
        if head and not head.isdigit():
            raise FramingError(f"netstring length {head!r} is not a decimal number")
        if len(head) > 1 and head.startswith(b"0"):
            raise FramingError(f"netstring length {head!r} has a leading zero")
        if len(head) > self._max_digits:
            raise _too_large(int(head), self._max_size, "netstring length announces at least")


# --- type byte ------------------------------------------------------------------


@final
class TypeTagged:
    """The first byte is a type; the type decides how many bytes follow.

    Messages include their type byte: ``TypeTagged({b"P": 0, b"M": 8})``
    carries ``b"P"`` and ``b"M" + 8 bytes``.

    Args:
        types: maps each type (a one-byte ``bytes`` or an int 0..255) to the
            length of the body that follows it, in bytes.
        max_size: the largest message accepted, type byte included, in bytes:
            a type whose messages would be longer is refused.

    Raises:
        ValueError: a bad type or length, no type, or a message over `max_size`.
    """

    __slots__ = ("_lengths", "max_size", "types")

    def __init__(self, types: Mapping[bytes | int, int], *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        table: dict[int, int] = {}
        for key, length in types.items():
            tag = key if isinstance(key, int) else (key[0] if isinstance(key, bytes) and len(key) == 1 else -1)
            if not 0 <= tag <= 255:
                raise ValueError(f"a type must be one byte or an int 0..255, not {key!r}")
            table[tag] = _check_max_size(length, f"body length of type {key!r}")
            if 1 + length > _check_max_size(max_size):
                raise ValueError(f"type {key!r} makes {1 + length}-byte messages; max_size is {max_size}")
        if not table:
            raise ValueError("TypeTagged needs at least one type")
        self.types: Mapping[int, int] = table
        self._lengths = tuple(table.get(tag, -1) for tag in range(256))
        self.max_size = 1 + max(table.values())

    def __repr__(self) -> str:
        return f"TypeTagged({ {bytes([t]): n for t, n in self.types.items()}!r})"

    def encode(self, message: Buffer) -> bytes:
        """Return `message` (type byte included) after checking it.

        Raises:
            FramingError: the message is empty, its type is unknown, or its
                body is not the length its type decides.
        """
        if not message:
            raise FramingError("a TypeTagged message needs at least its type byte")
        length = self._lengths[message[0]]
        if length < 0:
            raise FramingError(f"unknown type byte {bytes(message[:1])!r}")
        if len(message) != 1 + length:
            raise FramingError(f"type {bytes(message[:1])!r} takes a {length}-byte body, not {len(message) - 1} bytes")
        return bytes(message)

    def decoder(self) -> Decoder:
        """Return a new decoder for these types."""
        return _TypeTaggedDecoder(self._lengths)


@final
class _TypeTaggedDecoder(_BufferDecoder):
    __slots__ = ("_lengths",)

    def __init__(self, lengths: tuple[int, ...]) -> None:
        super().__init__()
        self._lengths = lengths

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        lengths, end, pos = self._lengths, len(buf), 0
        with memoryview(buf) as view:
            while pos < end:
                length = lengths[buf[pos]]
                if length < 0:
                    raise FramingError(f"unknown type byte {bytes(view[pos : pos + 1])!r}")
                stop = pos + 1 + length
                if stop > end:
                    break
                out.append(bytes(view[pos:stop]))
                pos = stop
        return pos


# --- end of stream --------------------------------------------------------------


@final
class CloseDelimited:
    """One message per direction, ended by the sender's shutdown or close.

    The HOWTO's HTTP/1.0 style: send, ``shutdown_write()``, read until EOF.

    Args:
        max_size: the largest message, in bytes.
    """

    __slots__ = ("max_size",)

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = _check_max_size(max_size)

    def __repr__(self) -> str:
        return f"CloseDelimited(max_size={self.max_size})"

    def encode(self, message: Buffer) -> bytes:
        """Return `message` unchanged: the end of the stream frames it.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
        """
        if len(message) > self.max_size:
            raise _too_large(len(message), self.max_size, "message has")
        return bytes(message)

    def decoder(self) -> Decoder:
        """Return a new decoder that gives one message at `eof()`."""
        return _CloseDelimitedDecoder(self.max_size)


@final
class _CloseDelimitedDecoder(_BufferDecoder):
    __slots__ = ("_max_size",)

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self._max_size = max_size

    def feed(self, data: Buffer) -> list[bytes]:
        """Keep `data`; the message is complete only at `eof()`.

        Raises:
            MessageTooLarge: the bytes received would pass `max_size` (checked
                before they are kept).
            FramingError: the decoder has already failed or seen `eof()`.
        """
        self._check_usable()
        total = len(self._buf) + len(data)
        if total > self._max_size:
            failure = _too_large(total, self._max_size, "stream has at least")
            self._failure = str(failure)
            raise failure
        self._buf += data
        return []

    def eof(self) -> list[bytes]:
        """Return the one message: everything received, possibly ``b""``."""
        self._check_usable()
        self._ended = True
        message = bytes(self._buf)
        self._buf.clear()
        return [message]
