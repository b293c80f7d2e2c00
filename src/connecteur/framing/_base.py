"""The framing package's base: the protocols every framing and decoder follow, the shared
buffer and error handling of decoders, and the limits every framing shares. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol, TypeAlias

from ..errors import FramingError, MessageTooLarge, TruncatedMessage

__all__ = [
    "DEFAULT_LINE_MAX_SIZE",
    "DEFAULT_MAX_SIZE",
    "Buffer",
    "Decoder",
    "Framing",
    "OnOversize",
    "batch_encoder",
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


OnOversize: TypeAlias = Literal["close", "skip"]
"""What a decoder does with a message over its framing's `max_size`: fail
(``"close"``: the connection closes) or discard it and go on (``"skip"``)."""


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
    A message over the limit goes through `_oversized` (or `_skip_frame`),
    which raises, or, with ``on_oversize="skip"``, counts it so that the
    parser can go past it.
    """

    __slots__ = ("_buf", "_ended", "_failure", "_skip", "_skip_left", "on_skip", "skipped")

    def __init__(self, on_oversize: OnOversize = "close") -> None:
        self._buf = bytearray()
        # Why the decoder failed: the message, not the exception, whose traceback
        # would hold this decoder's frame (a cycle only the garbage collector frees).
        self._failure: str | None = None
        self._ended = False
        self._skip = on_oversize == "skip"
        self._skip_left = 0  # bytes of a skipped message still to come, dropped as they arrive
        self.skipped = 0
        """Messages over `max_size` discarded so far (``on_oversize="skip"``)."""
        self.on_skip: Callable[[MessageTooLarge], object] | None = None
        """Called with each message discarded, as the error it would have raised
        (its size and limit), the moment it is found: the caller counts and logs it."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a message, header bytes included.

        While a message is skipped, its bytes are dropped as they come, but it
        is still under way: it counts 1 more (so that a server's
        ``message_timeout`` bounds a peer trickling it, as any message).
        """
        return len(self._buf) + self._skipping()

    @property
    def held(self) -> int:
        """Bytes of memory this decoder holds for unfinished messages: its buffer's capacity.

        At least `buffered`, and at most about twice it (plus, for the default
        framing's large messages, `FIRST_BODY`): a decoder's memory follows
        the bytes the peer sent, never a size it announced. Cheap enough to
        read after every read, for a server's memory budget.
        """
        return self._buf.__alloc__()

    def feed(self, data: Buffer) -> list[bytes]:
        """Add bytes from the peer; return every message they complete.

        `data` may be cut anywhere, even inside a header. Bytes after the last
        complete message stay buffered for the next call.

        Raises:
            MessageTooLarge: a header announces more than `max_size` bytes
                (raised as soon as the header is complete, before buffering),
                unless the framing skips such messages (``on_oversize="skip"``).
            FramingError: the bytes do not follow this framing, or the decoder
                has already failed or seen `eof()`. The exception's `messages`
                holds the complete messages that came before the bad bytes.
        """
        self._check_usable()
        if self._skip_left:
            data = self._discard(data)
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
            ``[]`` when nothing is pending, or only the rest of a message
            being skipped (it was counted when found; nothing is lost).

        Raises:
            TruncatedMessage: part of a message is pending.
        """
        self._check_usable()
        self._ended = True
        pending = self.buffered - self._skipping()  # a skipped message ending with the stream loses nothing
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

    def _skipping(self) -> int:
        """1 while a message is being skipped, else 0."""
        return self._skip_left > 0

    def _oversized(self, error: MessageTooLarge) -> None:
        """A message over `max_size` was found: raise `error`, or (skipping) count it and tell `on_skip`."""
        if not self._skip:
            raise error
        self.skipped += 1
        if self.on_skip is not None:
            self.on_skip(error)

    def _skip_frame(self, error: MessageTooLarge, stop: int, end: int) -> int:
        """`_oversized` for a frame that ends at `stop` of a buffer of `end` bytes: where parsing resumes.

        What of the frame is not received yet is dropped as it arrives
        (`_discard`), never kept: skipping a message holds no memory for it.
        """
        self._oversized(error)
        if stop > end:
            self._skip_left = stop - end
            return end
        return stop

    def _discard(self, data: Buffer) -> memoryview:
        """Drop the front of `data` that belongs to the message being skipped; return the rest, uncopied."""
        view = memoryview(data).cast("B")
        take = min(self._skip_left, len(view))
        self._skip_left -= take
        return view[take:]


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


def _check_on_oversize(on_oversize: str) -> OnOversize:
    if on_oversize in ("close", "skip"):
        return "close" if on_oversize == "close" else "skip"
    raise ValueError(f"on_oversize must be 'close' or 'skip', not {on_oversize!r}")


def _check_max_size(max_size: int, name: str = "max_size") -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"{name} must be a non-negative int, not {max_size!r}")
    return max_size


def _too_large(size: int, max_size: int, what: str, header_size: int = 0) -> MessageTooLarge:
    """The error for `size` bytes over `max_size`; `header_size` is a binary header's width, whose bytes may be text."""
    message = f"{what} {size} bytes; max_size is {max_size}"
    if header_size and (text := _header_text(size, header_size)):
        message += f" (the bytes {text!r} look like text: is the peer using another framing?)"
    return MessageTooLarge(message, size=size, max_size=max_size)


def _header_text(size: int, header_size: int) -> str | None:
    """The header's bytes as text when all of them (2 or more) are printable ASCII, else None.

    A peer that speaks a text protocol (HTTP, a line of text) to a
    length-prefixed server sends a "length" like 1213486160: the bytes
    ``HTTP``. The bytes are those of a big-endian header (the ``!`` formats,
    the command line's): a little-endian peer's would read reversed. A header
    with a zero byte is not text, however printable its other bytes.
    """
    header = size.to_bytes(header_size, "big")
    if header_size >= 2 and all(0x20 <= byte <= 0x7E for byte in header):
        return header.decode("ascii")
    return None
