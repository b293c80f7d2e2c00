"""A length field anywhere in a header: netty's ``LengthFieldBasedFrameDecoder``, as `LengthField`.

The binary protocols of the wild put their length where their designers
chose: after a transaction id (Modbus/TCP), as a bare 2-byte header (ISO 8583
over TCP), counting itself or not. Five numbers describe them all; `LengthField`
takes netty's five. No I/O.
"""

from __future__ import annotations

from typing import Final, Literal, final

from ..errors import FramingError
from ._base import DEFAULT_MAX_SIZE, Buffer, Decoder, _BufferDecoder, _check_max_size, _too_large

__all__ = ["LengthField"]

_SIZES: Final = (1, 2, 3, 4, 8)


def _check_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"LengthField {name} must be an int, not {value!r}")
    return value


@final
class LengthField:
    """A header holding an unsigned length field somewhere in it, then the rest of the frame.

    The parameters are netty's ``LengthFieldBasedFrameDecoder``'s: the field
    is `size` bytes at `offset` from the start of the frame, and the frame is
    ``offset + size + length + adjustment`` bytes long in all. The decoder
    returns each frame without its first `strip` bytes.

    ``LengthField(offset=4, size=2)`` gives whole Modbus/TCP ADUs (the MBAP
    length at offset 4 counts the bytes after it); ``LengthField(size=2,
    strip=2)`` is an ISO 8583-style 2-byte header; ``LengthField(adjustment=-4)``
    is a 4-byte length that counts itself. ``LengthField(strip=4)`` is
    `LengthPrefixed()` again.

    Args:
        offset: bytes before the length field.
        size: bytes of the length field: 1, 2, 3, 4 or 8.
        byteorder: ``"big"`` (network order) or ``"little"``.
        adjustment: added to the length to give the bytes that follow the
            field (negative when the length counts the header).
        strip: bytes removed from the front of each frame (netty's
            ``initialBytesToStrip``); `offset` + `size` removes the header.
        max_size: the largest message, in bytes: a frame minus its `strip`
            bytes. Checked the moment the length field is complete, before a
            byte of the rest is kept.

    Raises:
        ValueError: a parameter out of range.
    """

    __slots__ = ("adjustment", "byteorder", "max_size", "offset", "size", "strip")

    def __init__(
        self,
        *,
        offset: int = 0,
        size: int = 4,
        byteorder: Literal["big", "little"] = "big",
        adjustment: int = 0,
        strip: int = 0,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if _check_int(offset, "offset") < 0 or _check_int(strip, "strip") < 0:
            raise ValueError(f"LengthField offset and strip must not be negative, not {offset} and {strip}")
        if size not in _SIZES or isinstance(size, bool):
            raise ValueError(f"LengthField size must be 1, 2, 3, 4 or 8 bytes, not {size!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"LengthField byteorder must be 'big' or 'little', not {byteorder!r}")
        self.offset = offset
        self.size = size
        self.byteorder: Literal["big", "little"] = byteorder
        self.adjustment = _check_int(adjustment, "adjustment")
        self.strip = strip
        largest = offset + size + 2 ** (8 * size) - 1 + adjustment  # the longest frame the field can give
        if largest < max(offset + size, strip):
            raise ValueError(
                f"{self!r} describes no frame: even the largest length gives a {largest}-byte frame, "
                "shorter than its header or the bytes to strip"
            )
        self.max_size = min(_check_max_size(max_size), largest - strip)

    def __repr__(self) -> str:
        return (
            f"LengthField(offset={self.offset}, size={self.size}, byteorder={self.byteorder!r}, "
            f"adjustment={self.adjustment}, strip={self.strip})"
        )

    @property
    def header_size(self) -> int:
        """Bytes up to the end of the length field: ``offset + size``."""
        return self.offset + self.size

    def encode(self, message: Buffer) -> bytes:
        """Return the frame that carries `message`, for the two layouts an encoder can know.

        With ``strip == size`` and ``offset == 0`` (the header is the length
        field, stripped: netty's ``LengthFieldPrepender``), the field is put in
        front of `message`. With ``strip == 0``, `message` is the whole frame,
        header included, and is returned after checking that its length field
        gives its length.

        Raises:
            MessageTooLarge: the message is longer than `max_size`.
            FramingError: with ``strip == 0``, the message is shorter than the
                header or its length field does not give its length.
            ValueError: any other layout: the stripped bytes cannot be known.
        """
        if len(message) > self.max_size:
            raise _too_large(len(message), self.max_size, "message has")
        if self.strip == 0:
            self._check_frame(message)
            return bytes(message)
        if self.offset == 0 and self.strip == self.size:
            length = len(message) - self.adjustment
            if length < 0:
                raise FramingError(f"a {len(message)}-byte message needs a negative length field with {self!r}")
            return length.to_bytes(self.size, self.byteorder) + message
        raise ValueError(
            f"{self!r} can only decode: encode needs strip == 0 (the message is the whole frame) "
            "or offset == 0 and strip == size (the length field is prepended)"
        )

    def _check_frame(self, frame: Buffer) -> None:
        header = self.header_size
        if len(frame) < header:
            raise FramingError(f"a {len(frame)}-byte frame is shorter than its {header}-byte header")
        length = int.from_bytes(frame[self.offset : header], self.byteorder)
        if header + length + self.adjustment != len(frame):
            raise FramingError(
                f"the length field says {length}, a {header + length + self.adjustment}-byte frame, "
                f"but the message has {len(frame)} bytes"
            )

    def decoder(self) -> Decoder:
        """Return a new decoder for this layout and limit."""
        return _LengthFieldDecoder(self)


@final
class _LengthFieldDecoder(_BufferDecoder):
    __slots__ = ("_adjustment", "_byteorder", "_header", "_max_size", "_offset", "_strip")

    def __init__(self, framing: LengthField) -> None:
        super().__init__()
        self._offset = framing.offset
        self._header = framing.header_size
        self._byteorder = framing.byteorder
        self._adjustment = framing.adjustment
        self._strip = framing.strip
        self._max_size = framing.max_size

    def _parse(self, buf: bytearray, out: list[bytes]) -> int:
        header, end, pos = self._header, len(buf), 0
        with memoryview(buf) as view:
            while end - pos >= header:
                frame = self._frame_size(view[pos + self._offset : pos + header])
                if pos + frame > end:
                    break
                out.append(bytes(view[pos + self._strip : pos + frame]))
                pos += frame
        return pos

    def _frame_size(self, field: memoryview) -> int:
        """The whole frame's size from its length field; raises if it cannot be a frame or is too large."""
        length = int.from_bytes(field, self._byteorder)
        frame = self._header + length + self._adjustment
        if frame < max(self._header, self._strip):
            raise FramingError(
                f"length field {length} with adjustment {self._adjustment} gives a {frame}-byte frame, "
                f"shorter than its {self._header}-byte header or the {self._strip} bytes to strip"
            )
        if frame - self._strip > self._max_size:
            raise _too_large(frame - self._strip, self._max_size, "length field announces a message of")
        return frame
