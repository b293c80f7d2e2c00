"""Sans-I/O framings: where one message ends and the next begins on a byte stream.

A stream has no end-of-message marker, so sender and receiver agree on a
framing: a fixed length, a delimiter, a length prefix (binary, decimal or a
netstring), a type byte that decides the length, or the end of the stream.
Each framing here has ``encode(message) -> bytes`` and ``decoder()``; a decoder
has ``feed(data) -> list[bytes]``, ``eof() -> list[bytes]`` and ``buffered``.

This module never touches a socket, a clock or a log: loops feed it bytes and
act on the messages it returns. That is what lets every engine share one parser
and lets tests cut the input anywhere.

Strategy, shared by every decoder: received bytes go into one ``bytearray``;
the parser walks it from the start, returns every complete message, and the
consumed prefix is deleted in one step (CPython deletes from the front of a
``bytearray`` without moving the rest, so this stays linear). A size is checked
the moment its header is complete, before any body byte is kept.

The default framing, `LengthPrefixed`, is every server's hot path and has a
decoder of its own (measured: see `_LengthPrefixedDecoder`), a `BodyPool` for
the bodies of large messages, and ``encode_all``/``encode_parts`` for a
read's replies; `batch_encoder` gives any framing's batch form to engines.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Protocol, TypeAlias, final

from .errors import FramingError, MessageTooLarge, TruncatedMessage

__all__ = [
    "BodyPool",
    "Buffer",
    "CloseDelimited",
    "DecimalPrefixed",
    "Decoder",
    "Delimited",
    "DirectDecoder",
    "FixedLength",
    "Framing",
    "LengthPrefixed",
    "Netstring",
    "TypeTagged",
    "batch_encoder",
    "direct_decoder",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Any bytes-like input a framing accepts."""

DEFAULT_MAX_SIZE: Final = 16 * 2**20
"""16 MiB: the largest message a default framing accepts, in bytes. Large enough
for ordinary payloads, small enough that a hostile header cannot make a server
reserve gigabytes."""

DEFAULT_LINE_MAX_SIZE: Final = 64 * 2**10
"""64 KiB: the longest line `Delimited` accepts by default, in bytes; lines are
for text commands, and a peer that never sends a delimiter must not grow memory."""


class Decoder(Protocol):
    """Turns received bytes into messages. One decoder per direction of a connection."""

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes from the peer; return every message they complete (possibly none)."""
        ...

    def eof(self) -> list[bytes]:
        """Tell the decoder the stream has ended; return the messages that completes."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message, header bytes included."""
        ...


class Framing(Protocol):
    """How messages are laid out on a stream. Stateless: share one between connections."""

    @property
    def max_size(self) -> int:
        """The largest message, in bytes, this framing encodes or decodes."""
        ...

    def encode(self, message: Buffer) -> bytes:
        """Return the bytes that carry `message` on the wire."""
        ...

    def decoder(self) -> Decoder:
        """Return a new decoder for one direction of one connection."""
        ...


class _BufferDecoder:
    """The buffer and error handling every decoder shares.

    A subclass implements `_parse(buf, out) -> consumed`: append each complete
    message found from the start of `buf` to `out` and return how many bytes
    they used. It raises `FramingError` for bad bytes; the decoder then stays
    failed, and the exception carries the messages found before the bad bytes.
    """

    __slots__ = ("_buf", "_ended", "_failure")

    def __init__(self) -> None:
        self._buf = bytearray()
        # Why the decoder failed: the message, not the exception, whose traceback
        # would hold this decoder's frame (a cycle only the garbage collector frees).
        self._failure: str | None = None
        self._ended = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message, header bytes included."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes from the peer; return every message they complete.

        `data` may be cut anywhere, even inside a header. Bytes after the last
        complete message stay buffered for the next call.

        Raises:
            MessageTooLarge: a header announces more than `max_size` bytes
                (raised as soon as the header is complete, before buffering).
            FramingError: the bytes do not follow this framing, or the decoder
                has already failed or seen `eof()`. The exception's `messages`
                holds the complete messages that came before the bad bytes.
        """
        self._check_usable()
        buf = self._buf
        buf += data
        out: list[bytes] = []
        try:
            consumed = self._parse(buf, out)
        except FramingError as exc:
            exc.messages = out
            self._failure = str(exc)
            raise
        if consumed:
            del buf[:consumed]
        return out

    def eof(self) -> list[bytes]:
        """Tell the decoder the stream has ended.

        Returns:
            ``[]`` when nothing is pending.

        Raises:
            TruncatedMessage: part of a message is pending.
        """
        self._check_usable()
        self._ended = True
        pending = self.buffered
        if pending:
            raise TruncatedMessage(
                f"the stream ended inside a message: {pending} bytes of it were received",
                pending=pending,
            )
        return []

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise FramingError(f"decoder already failed: {self._failure}")
        if self._ended:
            raise FramingError("the decoder already saw eof(): the stream has ended")

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


def batch_encoder(framing: Framing) -> Callable[[Sequence[Buffer]], bytes]:
    """Return a function giving the wire bytes of a list of messages, as `framing.encode` of each joined.

    An engine frames the replies to one read with it, for one write, and
    looks it up once per connection. A framing may offer a faster
    ``encode_all(messages)`` of its own (`LengthPrefixed` does); any other
    is called once per message. The function raises `FramingError` when
    `framing` cannot carry one of the messages.
    """
    own: Callable[[Sequence[Buffer]], bytes] | None = getattr(framing, "encode_all", None)
    if own is not None:
        return own
    encode = framing.encode
    return lambda messages: b"".join([encode(message) for message in messages])


def _check_max_size(max_size: int, name: str = "max_size") -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"{name} must be a non-negative int, not {max_size!r}")
    return max_size


_BINARY_HEADER: Final = "length header announces"
"""The `what` of a binary length header: the one whose bytes may turn out to be text."""


def _too_large(size: int, max_size: int, what: str) -> MessageTooLarge:
    message = f"{what} {size} bytes; max_size is {max_size}"
    if what == _BINARY_HEADER and (text := _header_text(size)):
        message += f" (the bytes {text!r} look like text: is the peer using another framing?)"
    return MessageTooLarge(message, size=size, max_size=max_size)


def _header_text(size: int) -> str | None:
    """The header's bytes as text when they are 2 or more printable ASCII characters, else None.

    A peer that speaks a text protocol (HTTP, a line of text) to a
    length-prefixed server sends a "length" like 1213486160: the bytes
    ``HTTP``. The bytes are those of a big-endian header (the ``!`` formats,
    the command line's): a little-endian peer's would read reversed.
    """
    header = size.to_bytes((size.bit_length() + 7) // 8, "big")
    if len(header) >= 2 and all(0x20 <= byte <= 0x7E for byte in header):
        return header.decode("ascii")
    return None


# --- fixed length ---------------------------------------------------------------


@final
class FixedLength:
    """Every message is exactly `size` bytes: the simplest framing, for records.

    Args:
        size: the length of every message, in bytes (at least 1).
    """

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"FixedLength size must be a positive int, not {size!r}")
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


# --- binary length prefix -------------------------------------------------------

_HEADER_FORMAT: Final = re.compile(r"[!<>][BHILQ]")


@final
class LengthPrefixed:
    """A binary unsigned length, then that many bytes: the common choice.

    Args:
        header: a `struct` format of one unsigned integer with an explicit byte
            order: ``"!I"`` (4 bytes, network order, the default), ``"!B"``,
            ``"!H"``, ``"!Q"``, or ``"<I"`` and friends for little-endian peers.
        max_size: the largest message, in bytes. The effective limit is the
            smaller of this and the largest length the header can express.
    """

    __slots__ = ("_struct", "header", "max_size")

    def __init__(self, header: str = "!I", max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not isinstance(header, str) or not _HEADER_FORMAT.fullmatch(header):
            raise ValueError(
                f"bad length header {header!r}: expected a byte order (!, > or <) and one of B, H, I, L, Q"
            )
        self.header = header
        self._struct = struct.Struct(header)
        self.max_size = min(_check_max_size(max_size), 2 ** (8 * self._struct.size) - 1)

    def __repr__(self) -> str:
        return f"LengthPrefixed({self.header!r}, max_size={self.max_size})"

    def encode(self, message: Buffer) -> bytes:
        """Return the length header followed by `message`.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
        """
        size = len(message)
        if size > self.max_size:
            raise _too_large(size, self.max_size, "message has")
        return self._struct.pack(size) + message

    def encode_parts(self, message: Buffer) -> list[Buffer]:
        """Return the header and `message` itself, uncopied: what `encode` gives, for a gathering write.

        For large messages: joining them to their header would copy them.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
        """
        size = len(message)
        if size > self.max_size:
            raise _too_large(size, self.max_size, "message has")
        return [self._struct.pack(size), message]

    def encode_all(self, messages: Iterable[Buffer]) -> bytes:
        """Return the wire bytes of `messages` in order: `encode` of each, joined in one copy.

        Raises:
            MessageTooLarge: a message is longer than `max_size`.
        """
        pack, max_size = self._struct.pack, self.max_size
        if type(messages) is list and len(messages) == 1:  # a request's one reply: no list, no join
            only: Buffer = messages[0]
            if len(only) > max_size:
                raise _too_large(len(only), max_size, "message has")
            return pack(len(only)) + only
        parts: list[Buffer] = []
        append = parts.append
        for message in messages:
            size = len(message)
            if size > max_size:
                raise _too_large(size, max_size, "message has")
            append(pack(size))
            append(message)
        return b"".join(parts)

    def decoder(self) -> Decoder:
        """Return a new decoder for this header and limit."""
        return _LengthPrefixedDecoder(self._struct, self.max_size)


class DirectDecoder(Decoder, Protocol):
    """A `Decoder` that can take a read straight into a large message's body (`LengthPrefixed`'s can).

    Before a read, an engine checks `reading_body`; if set, it reads into
    `recv_buffer()` and calls `buffer_filled(count)` instead of `feed`.
    """

    reading_body: bool

    def recv_buffer(self) -> memoryview | None:
        """Where the next read may go: the rest of the large message under way; None if none is."""

    def buffer_filled(self, count: int) -> list[bytes]:
        """`count` bytes were read into `recv_buffer()`; return the message if that finished it."""


def direct_decoder(decoder: Decoder) -> DirectDecoder | None:
    """`decoder` if it is a `DirectDecoder`, else None."""
    return decoder if isinstance(decoder, _LengthPrefixedDecoder) else None


LARGE_MESSAGE: Final = 64 * 2**10
"""64 KiB: from this size on, a length-prefixed message's body is allocated
whole once its header is read, and filled in place (see `recv_buffer`)."""

DIRECT_READ: Final = 4 * 2**10
"""A read this long that only begins a large message goes into its body
uncopied; a shorter one is copied first like any other (at most 4 KiB, where
checking first would cost every small read a header parse)."""


@final
class BodyPool:
    """One spare buffer for the bodies of large messages, shared by the decoders of one thread.

    An engine's loop serves all its connections from one thread, so its
    decoders can hand one buffer to each other: a connection receiving
    1 MiB messages back to back then fills the same memory each time.
    Measured (``connecteur bench``, bulk): a fresh 1 MiB buffer per message
    costs its page faults every time (glibc maps and trims memory that
    large), about three times the CPU of the copies themselves. One spare
    per loop, not per connection, so idle connections keep nothing.
    Not thread-safe: one pool per thread.
    """

    __slots__ = ("_spare",)

    def __init__(self) -> None:
        self._spare: bytearray | None = None

    def take(self, size: int) -> memoryview:
        """A writable view of `size` bytes: the spare buffer if it is large enough, else a new one."""
        spare = self._spare
        if spare is not None and size <= len(spare) <= 2 * size:
            self._spare = None
            return memoryview(spare)[:size]
        return memoryview(bytearray(size))

    def give(self, body: memoryview) -> None:
        """Return a body `take` gave, once its bytes are copied out."""
        buffer = body.obj
        body.release()
        if isinstance(buffer, bytearray) and (self._spare is None or len(buffer) > len(self._spare)):
            self._spare = buffer


@final
class _LengthPrefixedDecoder(_BufferDecoder):
    """The default framing's decoder: the hot path of every server, so it has its own `feed`.

    Measured on CPython 3.11 (``connecteur bench``): slicing one ``bytes``
    copy of a read costs ~170 ns a 64 B message against ~250 ns for
    ``bytes(memoryview[...])`` out of a ``bytearray``, so each read is copied
    once and sliced. Bytes of an unfinished small message wait in ``_buf``,
    and ``_need`` says how many it must hold to finish it. A large message
    (`LARGE_MESSAGE`) gets its whole body allocated as soon as its header is
    read (its size checked first) and is filled in place, never re-parsed:
    `recv_buffer` even lets a socket read straight into it.
    """

    __slots__ = ("_body", "_got", "_header_size", "_max_size", "_need", "_pool", "_unpack_from", "reading_body")

    def __init__(self, header: struct.Struct, max_size: int) -> None:
        super().__init__()
        self._unpack_from = header.unpack_from
        self._header_size = header.size
        self._max_size = max_size
        self._need = header.size  # bytes _buf must hold to finish its header or message
        self._body: memoryview | None = None  # an unfinished large message's body
        self._got = 0  # bytes of _body received
        self._pool: BodyPool | None = None
        self.reading_body = False
        """True while a large message is under way: `recv_buffer` has room for the next read.
        An attribute, not a call, as an engine checks it before every read."""

    def use_pool(self, pool: BodyPool) -> None:
        """Take the bodies of large messages from `pool`, shared with the other decoders of this thread."""
        self._pool = pool

    def _start_body(self, size: int) -> None:
        self._body = memoryview(bytearray(size)) if self._pool is None else self._pool.take(size)
        self._got = 0
        self.reading_body = True

    def _take_body(self, body: memoryview) -> bytes:
        """The finished body's message; the buffer goes back to the pool."""
        self._body = None
        self.reading_body = False
        message = bytes(body)
        if self._pool is not None:
            self._pool.give(body)
        return message

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message, header bytes included."""
        if self._body is not None:
            return self._header_size + self._got
        return len(self._buf)

    def recv_buffer(self) -> memoryview | None:
        """Where the next read may go straight, with no copy: the rest of an unfinished large message.

        None when no large message is under way. After reading ``count``
        bytes into it, call `buffer_filled` instead of `feed`.
        """
        if self._body is None or self._failure is not None:
            return None
        return self._body[self._got :]

    def buffer_filled(self, count: int) -> list[bytes]:
        """`count` bytes were read into the `recv_buffer`; return the message if that finished it."""
        body = self._body
        assert body is not None and 0 < count <= len(body) - self._got
        self._got += count
        if self._got < len(body):
            return []
        return [self._take_body(body)]

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes from the peer; return every message they complete (see `_BufferDecoder.feed`).

        The common read (nothing under way, whole small messages) is parsed
        here without another call, and only a read of `DIRECT_READ` bytes or
        more is first checked for the start of a large message: together,
        3% of a round trip's instructions on the select engine (callgrind,
        many: one 64 B request per read).
        """
        if self._failure is not None or self._ended:
            self._check_usable()
        out: list[bytes] = []
        header_size, end = self._header_size, len(data)
        try:
            if self._buf or self._body is not None:
                data = self._finish_pending(data, out)
                if not data:
                    return out
                end = len(data)
            if end >= DIRECT_READ:
                (size,) = self._unpack_from(data, 0)
                if size >= LARGE_MESSAGE and header_size + size > end and size <= self._max_size:
                    # The read only begins a large message: straight into its body, no copy of the read.
                    self._start_body(size)
                    self._fill_body(memoryview(data).cast("B")[header_size:], out)
                    return out
            data = bytes(data)  # no copy when it is bytes already
            unpack_from, max_size, append, pos = self._unpack_from, self._max_size, out.append, 0
            try:
                while pos < end:
                    (size,) = unpack_from(data, pos)  # struct.error: part of a header left
                    if size > max_size:
                        raise _too_large(size, max_size, "length header announces")
                    stop = pos + header_size + size
                    if stop > end:
                        if size >= LARGE_MESSAGE:
                            self._start_body(size)
                            with memoryview(data) as view:
                                self._fill_body(view[pos + header_size :], out)
                            return out
                        self._need = stop - pos
                        break
                    append(data[pos + header_size : stop])
                    pos = stop
                else:
                    self._need = header_size
            except struct.error:
                self._need = header_size
            if pos < end:
                with memoryview(data) as view:
                    self._buf += view[pos:]
        except FramingError as exc:
            exc.messages = out
            self._failure = str(exc)
            self.reading_body = False
            raise
        return out

    def _finish_pending(self, data: Buffer, out: list[bytes]) -> Buffer:
        """Complete the message under way from the front of `data`; return the rest of `data`."""
        buf, header_size = self._buf, self._header_size
        view = memoryview(data).cast("B")
        while True:
            if self._body is not None:
                return self._fill_body(view, out)
            if not buf:
                return view
            missing = self._need - len(buf)
            if len(view) < missing:
                buf += view
                return b""
            buf += view[:missing]
            view = view[missing:]
            if self._need == header_size:  # the header is whole: now the message's size is known
                size = self._checked_size(buf, 0)
                if size >= LARGE_MESSAGE:
                    buf.clear()
                    self._start_body(size)
                    continue
                self._need = header_size + size
                if size:
                    continue
            with memoryview(buf) as whole:
                out.append(bytes(whole[header_size:]))
            buf.clear()
            self._need = header_size

    def _fill_body(self, view: memoryview, out: list[bytes]) -> memoryview:
        """Copy the front of `view` into the large message under way; return the rest of `view`."""
        body, got = self._body, self._got
        assert body is not None
        take = min(len(body) - got, len(view))
        body[got : got + take] = view[:take]
        self._got = got + take
        if self._got == len(body):
            out.append(self._take_body(body))
        return view[take:]

    def _checked_size(self, buf: Buffer, pos: int) -> int:
        (size,) = self._unpack_from(buf, pos)
        if size > self._max_size:
            raise _too_large(size, self._max_size, "length header announces")
        return int(size)

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:  # pragma: no cover - feed is overridden
        raise NotImplementedError


# --- decimal length prefix ------------------------------------------------------


@final
class DecimalPrefixed:
    """A zero-padded decimal length of `width` ASCII digits, then the message.

    ``DecimalPrefixed(5).encode(b"hello") == b"00005hello"``.

    Args:
        width: the number of digits in every header.
        max_size: the largest message, in bytes; defaults to the largest
            number `width` digits can write.
    """

    __slots__ = ("max_size", "width")

    def __init__(self, width: int, max_size: int | None = None) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 20:
            raise ValueError(f"DecimalPrefixed width must be an int from 1 to 20, not {width!r}")
        self.width = width
        largest = 10**width - 1
        self.max_size = largest if max_size is None else min(_check_max_size(max_size), largest)

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
    """

    __slots__ = ("_lengths", "max_size", "types")

    def __init__(self, types: Mapping[bytes | int, int]) -> None:
        table: dict[int, int] = {}
        for key, length in types.items():
            tag = key if isinstance(key, int) else (key[0] if isinstance(key, bytes) and len(key) == 1 else -1)
            if not 0 <= tag <= 255:
                raise ValueError(f"a type must be one byte or an int 0..255, not {key!r}")
            table[tag] = _check_max_size(length, f"body length of type {key!r}")
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
