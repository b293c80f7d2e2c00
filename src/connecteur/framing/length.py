"""The binary length prefix, `LengthPrefixed`: the default framing and every server's hot path.

Its decoder has a `feed` of its own (measured: see `_LengthPrefixedDecoder`),
reads a large message's body straight from the socket (`DirectDecoder`), grows
that body as its bytes arrive, and lends finished bodies to the next message
through a `BodyPool`. No I/O. Where the compiled build has them, small C
routines (``_speedups.c``) split the whole messages of a read and join
replies after their headers (`SPEEDUPS`).
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Final, Protocol, TypeAlias, final

from ..errors import FramingError
from ._base import (
    DEFAULT_MAX_SIZE,
    Buffer,
    Decoder,
    OnOversize,
    _BufferDecoder,
    _check_max_size,
    _check_on_oversize,
    _too_large,
)

__all__ = [
    "DIRECT_READ",
    "FIRST_BODY",
    "LARGE_MESSAGE",
    "SPEEDUPS",
    "BodyPool",
    "DirectDecoder",
    "LengthPrefixed",
    "direct_decoder",
]

_SplitFrames: TypeAlias = Callable[[Buffer, int, list[bytes], int, bool, int], int]
_JoinFrames: TypeAlias = Callable[[list[Buffer], int, bool, int], "bytes | None"]


def _c_routines() -> tuple[_SplitFrames, _JoinFrames] | tuple[None, None]:
    """The C routines of ``_speedups.c``, or None when this install has not built them."""
    try:
        from ._speedups import join_frames, split_frames
    except ImportError:
        return None, None
    return split_frames, join_frames


_C_SPLIT, _C_JOIN = _c_routines()

SPEEDUPS: Final = _C_SPLIT is not None and os.environ.get("CONNECTEUR_PURE", "") in ("", "0")
"""True when `LengthPrefixed` decoders split reads into messages, and
`LengthPrefixed.encode_all` joins messages after their headers, with small C
routines (``framing/_speedups.c``, built with the compiled build), False when
they do it in Python. Chosen once, at import: ``CONNECTEUR_PURE=1`` in the
environment forces Python. Both give the same messages, bytes, errors and limits."""

# --- binary length prefix -------------------------------------------------------

_HEADER_FORMAT: Final = re.compile(r"[!<>][BHILQ]")
_HEADER: Final = "length header announces"  # the start of an oversized header's error


@final
class LengthPrefixed:
    """A binary unsigned length, then that many bytes: the common choice.

    Args:
        header: a `struct` format of one unsigned integer with an explicit byte
            order: ``"!I"`` (4 bytes, network order, the default), ``"!B"``,
            ``"!H"``, ``"!Q"``, or ``"<I"`` and friends for little-endian peers.
        max_size: the largest message, in bytes. The effective limit is the
            smaller of this and the largest length the header can express.
        on_oversize: what a decoder does with a message over `max_size`:
            ``"close"`` fails (the connection closes), ``"skip"`` drops its
            bytes as they arrive, without keeping them, counts it, and goes
            on with the next message (see the framing package).
    """

    __slots__ = ("_header_size", "_join", "_little_endian", "_struct", "header", "max_size", "on_oversize")

    def __init__(
        self, header: str = "!I", max_size: int = DEFAULT_MAX_SIZE, *, on_oversize: OnOversize = "close"
    ) -> None:
        if not isinstance(header, str) or not _HEADER_FORMAT.fullmatch(header):
            raise ValueError(
                f"bad length header {header!r}: expected a byte order (!, > or <) and one of B, H, I, L, Q"
            )
        self.header = header
        self._struct = struct.Struct(header)
        self.max_size = min(_check_max_size(max_size), 2 ** (8 * self._struct.size) - 1)
        self.on_oversize: OnOversize = _check_on_oversize(on_oversize)
        self._header_size = self._struct.size
        self._little_endian = header.startswith("<")
        self._join = _C_JOIN if SPEEDUPS else None  # the C routine framing a list of messages, or None

    def __repr__(self) -> str:
        skip = ", on_oversize='skip'" if self.on_oversize == "skip" else ""
        return f"LengthPrefixed({self.header!r}, max_size={self.max_size}{skip})"

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
        if self._join is not None and type(messages) is list:
            wire = self._join(messages, self._header_size, self._little_endian, self.max_size)
            if wire is not None:
                return wire  # else one is too large: the loop below raises for it
        pack, max_size = self._struct.pack, self.max_size
        if type(messages) is list and len(messages) == 1:  # a request's one reply: no list, no join
            only: Buffer = messages[0]
            if len(only) > max_size:
                raise _too_large(len(only), max_size, "message has")
            return pack(len(only)) + only
        parts: list[Buffer] = []
        for message in messages:
            size = len(message)
            if size > max_size:
                raise _too_large(size, max_size, "message has")
            parts.append(pack(size))
            parts.append(message)
        return b"".join(parts)

    def decoder(self) -> Decoder:
        """Return a new decoder for this header and limit."""
        return self._decoder(SPEEDUPS)

    def _decoder(self, speedups: bool) -> _LengthPrefixedDecoder:
        """A new decoder splitting reads with the C routine or in Python: tests run both."""
        if speedups and _C_SPLIT is None:
            raise RuntimeError("connecteur.framing._speedups is not built")
        split = _C_SPLIT if speedups else None
        if self.on_oversize == "skip":
            return _SkippingLengthPrefixedDecoder(self._struct, self.max_size, "skip", split)
        return _LengthPrefixedDecoder(self._struct, self.max_size, "close", split)


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
"""64 KiB: from this size on, a length-prefixed message's body gets a buffer
of its own once its header is read, grown as its bytes arrive and filled in
place (see `recv_buffer`)."""

FIRST_BODY: Final = 16 * 2**10
"""16 KiB: the first allocation for a large message's body. It then doubles
as the body fills, up to the size announced, so a decoder never holds more
than twice the body bytes received, or this much: a header announcing 16 MiB
followed by nothing costs 16 KiB, not 16 MiB."""

DIRECT_READ: Final = 4 * 2**10
"""A read this long that only begins a large message goes into its body
uncopied; a shorter one is copied first like any other (at most 4 KiB, where
checking first would cost every small read a header parse)."""


@final
class BodyPool:
    """One spare buffer for the bodies of large messages, shared by the decoders of one loop.

    An engine's loop serves all its connections from one thread, so its
    decoders can hand one buffer to each other: a connection receiving
    1 MiB messages back to back then fills the same memory each time.
    Measured (``connecteur bench``, bulk): a fresh 1 MiB buffer per message
    costs its page faults every time (glibc maps and trims memory that
    large), about three times the CPU of the copies themselves. One spare
    per loop (per engine for the threads engine), not per connection, so
    idle connections keep nothing. The pool never allocates: the spare is
    the body of a message already received whole, so lending it costs no
    memory a peer could claim with a header alone. Thread-safe.
    """

    __slots__ = ("_lock", "_spare")

    def __init__(self) -> None:
        self._spare: bytearray | None = None
        self._lock = threading.Lock()

    def take(self, size: int) -> memoryview | None:
        """A writable view of `size` bytes of the spare buffer, if it fits `size` without waste; else None.

        Without waste: the spare is at least `size` bytes and at most twice that.
        """
        with self._lock:
            spare = self._spare
            if spare is None or not size <= len(spare) <= 2 * size:
                return None
            self._spare = None
        return memoryview(spare)[:size]

    def give(self, body: memoryview) -> None:
        """Return a finished body, once its bytes are copied out: it becomes the spare if larger."""
        buffer = body.obj
        body.release()
        if not isinstance(buffer, bytearray):
            return
        with self._lock:
            if self._spare is None or len(buffer) > len(self._spare):
                self._spare = buffer


def _doubled(body: memoryview, need: int, size: int) -> bytearray:
    """`body`'s buffer doubled until it holds `need` bytes, cut to `size`; `body` is released.

    Measured (1 MiB messages in 64 KiB reads, no pool): doubling in place
    lets ``realloc`` keep the pages already there (``mremap`` moves them, no
    copy), where a new buffer for each step faulted in its pages again and
    cost three times the CPU of allocating the whole body at once.
    """
    buffer = body.obj
    body.release()
    assert isinstance(buffer, bytearray)
    try:
        while len(buffer) < need:
            buffer *= 2
    except BufferError:  # a view of the body is still held (a caller's recv_buffer): grow a copy
        grown = bytearray(min(size, max(need, 2 * len(buffer))))
        grown[: len(buffer)] = buffer
        return grown
    del buffer[size:]  # less than half: the allocation stays, no copy
    return buffer


class _LengthPrefixedDecoder(_BufferDecoder):
    """The default framing's decoder: the hot path of every server, so it has its own `feed`.

    Measured on CPython 3.11 (``connecteur bench``): slicing one ``bytes``
    copy of a read costs ~170 ns a 64 B message against ~250 ns for
    ``bytes(memoryview[...])`` out of a ``bytearray``, so each read is copied
    once and sliced. Bytes of an unfinished small message wait in ``_buf``,
    and ``_need`` says how many it must hold to finish it. A large message
    (`LARGE_MESSAGE`) gets a body buffer of its own as soon as its header is
    read (its size checked first), `FIRST_BODY` bytes long and doubled
    whenever full, up to the size announced (the pool's spare instead, when
    it fits); the body is filled in place, never re-parsed: `recv_buffer`
    even lets a socket read straight into it. Doubling keeps the copies of a
    growing body under one copy of the message in all.
    """

    __slots__ = (
        "_body",
        "_got",
        "_header_size",
        "_little_endian",
        "_max_size",
        "_need",
        "_pool",
        "_size",
        "_split",
        "_unpack_from",
        "reading_body",
    )

    def __init__(
        self, header: struct.Struct, max_size: int, on_oversize: OnOversize, split: _SplitFrames | None
    ) -> None:
        super().__init__(on_oversize)
        self._unpack_from = header.unpack_from
        self._header_size = header.size
        self._little_endian = header.format.startswith("<")
        self._split = split  # the C routine taking a read's whole messages (SPEEDUPS), or None
        self._max_size = max_size
        self._need = header.size  # bytes _buf must hold to finish its header or message
        self._body: memoryview | None = None  # an unfinished large message's body so far: its capacity
        self._size = 0  # the size its header announced
        self._got = 0  # bytes of _body received
        self._pool: BodyPool | None = None
        self.reading_body = False
        """True while a large message is under way: `recv_buffer` has room for the next read.
        An attribute, not a call, as an engine checks it before every read."""

    def use_pool(self, pool: BodyPool) -> None:
        """Take the bodies of large messages from `pool`, shared with the other decoders of this thread."""
        self._pool = pool

    def _start_body(self, size: int) -> None:
        self._size = size
        self._got = 0
        self._body = self._pool.take(size) if self._pool is not None else None
        if self._body is None:
            self._body = memoryview(bytearray(min(size, FIRST_BODY)))
        self.reading_body = True

    def _grow_body(self, need: int) -> memoryview:
        """Room for at least `need` body bytes: the pool's spare if it fits the message, else doubled."""
        old, got, size = self._body, self._got, self._size
        assert old is not None
        body = self._pool.take(size) if self._pool is not None else None
        if body is not None:
            body[:got] = old[:got]
            old.release()
        else:
            body = memoryview(_doubled(old, need, size))
        self._body = body
        return body

    def _take_body(self, body: memoryview) -> bytes:
        """The finished body's message; the buffer goes back to the pool."""
        self._body = None
        self.reading_body = False
        message = bytes(body)  # the body is exactly the message's size by now
        if self._pool is not None:
            self._pool.give(body)
        return message

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message, header bytes included."""
        if self._body is not None:
            return self._header_size + self._got
        return len(self._buf)

    @property
    def held(self) -> int:
        """Bytes of memory this decoder holds for the message under way (see `_BufferDecoder.held`).

        A large message's body counts whole, the pool's spare included when
        this decoder borrowed it (it is freed with the decoder if the message
        never ends).
        """
        body = self._body
        if body is not None:
            buffer = body.obj
            return buffer.__alloc__() if isinstance(buffer, bytearray) else len(body)
        return self._buf.__alloc__()

    def recv_buffer(self) -> memoryview | None:
        """Where the next read may go straight, with no copy: free room in the unfinished large message's body.

        None when no large message is under way. The room is what the body's
        buffer has left, grown first if it is full: never past the message's
        end, and never more than the bytes received so far (the buffer
        doubles). After reading ``count`` bytes into it, call `buffer_filled`
        instead of `feed`.
        """
        body = self._body
        if body is None or self._failure is not None:
            return None
        got = self._got
        if got == len(body):
            body = self._grow_body(got + 1)
        return body[got:]

    def buffer_filled(self, count: int) -> list[bytes]:
        """`count` bytes were read into the `recv_buffer`; return the message if that finished it."""
        body = self._body
        assert body is not None and 0 < count <= len(body) - self._got
        self._got += count
        if self._got < self._size:
            return []
        return [self._take_body(body)]

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes from the peer; return every message they complete (see `_BufferDecoder.feed`).

        The common read (nothing under way, whole small messages) is parsed
        here without another call, and only a read of `DIRECT_READ` bytes or
        more is first checked for the start of a large message: together,
        3% of a round trip's instructions on the select engine (callgrind,
        many: one 64 B request per read). With `SPEEDUPS`, the C routine
        takes the read's whole messages first and the loop only the header
        that stopped it: half the instructions per message of a pipelined
        read, where each message cost an unpack, a slice and an append.
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
            unpack_from, max_size, pos = self._unpack_from, self._max_size, 0
            if self._split is not None:  # C takes the whole messages; the loop below, what stopped it
                pos = self._split(data, 0, out, header_size, self._little_endian, max_size)
                if pos == end:  # all of it, the common read: its messages are copies, the read need not be
                    return out
            data = bytes(data)  # no copy when it is bytes already
            try:
                while pos < end:
                    (size,) = unpack_from(data, pos)  # struct.error: part of a header left
                    stop = pos + header_size + size
                    if size > max_size:
                        pos = self._skip_frame(_too_large(size, max_size, _HEADER, header_size), stop, end)
                        continue
                    if stop > end:
                        if size >= LARGE_MESSAGE:
                            self._start_body(size)
                            with memoryview(data) as view:
                                self._fill_body(view[pos + header_size :], out)
                            return out
                        self._need = stop - pos
                        break
                    out.append(data[pos + header_size : stop])
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
                (size,) = self._unpack_from(buf, 0)
                if size > self._max_size:
                    buf.clear()
                    view = self._past_oversized(size, view)
                    continue
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

    def _past_oversized(self, size: int, view: memoryview) -> memoryview:
        """A header announced `size` bytes, over the limit: raise, or skip them from the front of `view`; the rest."""
        error = _too_large(size, self._max_size, _HEADER, self._header_size)
        # A statement of its own: compiled, a call in a memoryview's slice bound
        # runs twice (mypyc 2.x), and this one counts the skip.
        resume = self._skip_frame(error, size, len(view))
        return view[resume:]

    def _fill_body(self, view: memoryview, out: list[bytes]) -> memoryview:
        """Copy the front of `view` into the large message under way; return the rest of `view`."""
        body, got = self._body, self._got
        assert body is not None
        take = min(self._size - got, len(view))
        if got + take > len(body):
            body = self._grow_body(got + take)
        body[got : got + take] = view[:take]
        self._got = got + take
        if self._got == self._size:
            out.append(self._take_body(body))
        return view[take:]

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:  # pragma: no cover - feed is overridden
        raise NotImplementedError


@final
class _SkippingLengthPrefixedDecoder(_LengthPrefixedDecoder):
    """`_LengthPrefixedDecoder` for ``on_oversize="skip"``: drops the rest of a skipped message first.

    A class of its own, chosen by `LengthPrefixed.decoder`, so that the
    default decoder's `feed` (every server's hot path) tests nothing more.
    """

    __slots__ = ()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message; 1 while one is skipped (see `_BufferDecoder.buffered`)."""
        return super().buffered + (self._skip_left > 0)

    def feed(self, data: Buffer) -> list[bytes]:
        """Drop the bytes of the message being skipped, then feed the rest (see `_LengthPrefixedDecoder.feed`)."""
        if self._skip_left and self._failure is None and not self._ended:
            data = self._discard(data)
            if not data:
                return []
        return super().feed(data)
