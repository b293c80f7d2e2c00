"""Codecs: one value to one message's bytes and back. Pure: no I/O, never pickle.

A codec sits between the caller and the framing: ``encode(value) -> bytes``
before the framing frames it, ``decode(bytes) -> value`` after the framing
cut the message out. The framing still bounds the size. Any object with
those two methods is a codec (`Codec`).

Bytes that do not decode raise `CodecError` (the peer's fault, a
`FramingError`); a value that cannot be encoded raises `CodecError` too, and
nothing is sent. Nothing from the wire is unpickled, and no codec builds an
arbitrary class from wire data: `Json` gives dicts, lists, strings, numbers,
booleans and None; `MsgPack` the same plus bytes, with extension types
refused; `Struct` tuples of numbers and bytes.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
import typing
from typing import TYPE_CHECKING, Any, Final, Protocol, final

from .errors import CodecError
from .framing import DEFAULT_MAX_SIZE

__all__ = ["Codec", "Json", "MsgPack", "Struct", "Text"]

MAX_DEPTH: Final = 64
"""Nesting deeper than this in a `Json` or `MsgPack` message is refused: real
payloads nest a handful of levels, and parsers recurse per level."""


if TYPE_CHECKING:  # typing_extensions' TypeVar takes a default (PEP 696); type checkers know it from typeshed
    from typing_extensions import TypeVar

    T_co = TypeVar("T_co", covariant=True, default=Any)
else:  # nothing reads the default at run time, where typing's TypeVar takes none before Python 3.13
    T_co = typing.TypeVar("T_co", covariant=True)


class Codec(Protocol[T_co]):
    """What a codec is: two pure functions.

    Generic in the type `decode` returns: `Text` is a ``Codec[str]``, `Json`
    a ``Codec[Any]``; a plain ``Codec`` is ``Codec[Any]``. A `Connection`
    with a codec returns that type from `recv`.
    """

    def encode(self, value: Any) -> bytes:
        """Return the bytes of one message carrying `value`."""
        ...

    def decode(self, data: bytes) -> T_co:
        """Return the value one message's bytes carry."""
        ...


@final
class Struct:
    """Fixed-size records with a `struct` format: tuples of numbers and bytes.

    The byte order is network (big-endian) unless the format starts with its
    own (``<``, ``>``, ``=``, ``!`` or ``@``): ``Struct("IId")`` is ``!IId``.

    Args:
        fmt: the `struct` format of one record.
    """

    __slots__ = ("_struct", "format")

    def __init__(self, fmt: str) -> None:
        self.format = fmt if fmt[:1] in ("<", ">", "=", "!", "@") else "!" + fmt
        try:
            self._struct = struct.Struct(self.format)
        except struct.error as exc:
            raise ValueError(f"bad struct format {fmt!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Struct({self.format!r})"

    @property
    def size(self) -> int:
        """The size of every record, in bytes."""
        return self._struct.size

    def encode(self, value: Any) -> bytes:
        """Pack a tuple (or any sequence) of fields.

        Raises:
            CodecError: the fields do not fit the format.
        """
        try:
            return self._struct.pack(*value)
        except (struct.error, TypeError) as exc:
            raise CodecError(f"cannot pack {value!r} as {self.format!r}: {exc}") from None

    def decode(self, data: bytes) -> tuple[Any, ...]:
        """Unpack one record.

        Raises:
            CodecError: the message is not exactly `size` bytes.
        """
        if len(data) != self._struct.size:
            raise CodecError(f"a {self.format!r} record is {self._struct.size} bytes, not {len(data)}")
        return self._struct.unpack(data)


@final
class Text:
    """Strings in a text encoding (UTF-8 by default); invalid bytes are refused.

    Args:
        encoding: any codec name Python knows.
    """

    __slots__ = ("encoding",)

    def __init__(self, encoding: str = "utf-8") -> None:
        "".encode(encoding)  # fails now, with LookupError, for an unknown encoding
        self.encoding = encoding

    def __repr__(self) -> str:
        return f"Text({self.encoding!r})"

    def encode(self, value: Any) -> bytes:
        """Encode a string.

        Raises:
            CodecError: `value` is not a string, or not encodable.
        """
        if not isinstance(value, str):
            raise CodecError(f"Text encodes strings, not {type(value).__name__}")
        try:
            return value.encode(self.encoding)
        except UnicodeEncodeError as exc:
            raise CodecError(f"cannot encode as {self.encoding}: {exc}") from None

    def decode(self, data: bytes) -> str:
        """Decode a string.

        Raises:
            CodecError: the bytes are not valid in the encoding.
        """
        try:
            return data.decode(self.encoding)
        except UnicodeError as exc:  # UnicodeDecodeError, or a plain UnicodeError from codecs such as punycode
            raise CodecError(f"message is not valid {self.encoding}: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise CodecError(f"JSON message contains {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        # 1e999 would decode to infinity, a value Json refuses to send.
        raise CodecError(f"JSON number {text[:40]} is out of the range of a float")
    return value


@final
class Json:
    """JSON values (compact, UTF-8), with NaN and Infinity refused both ways.

    Args:
        max_depth: the deepest nesting of arrays and objects accepted.
    """

    __slots__ = ("_decoder", "_encoder", "max_depth")

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        self.max_depth = max_depth
        self._encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

    def __repr__(self) -> str:
        return f"Json(max_depth={self.max_depth})"

    def encode(self, value: Any) -> bytes:
        """Encode a JSON-compatible value.

        Raises:
            CodecError: the value holds something JSON cannot carry (a NaN,
                an arbitrary object, a cycle) or nests too deep.
        """
        try:
            data = self._encoder.encode(value).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"cannot encode as JSON: {exc}") from None
        if data.count(b"[") + data.count(b"{") > self.max_depth:  # else it cannot nest that deep
            _check_depth(value, self.max_depth)
        return data

    def decode(self, data: bytes) -> Any:
        """Decode one JSON document.

        Raises:
            CodecError: not UTF-8, not JSON, NaN or Infinity, or nested
                deeper than `max_depth`. (The C parser counts its own depth
                and gives up with RecursionError at the interpreter's limit,
                so a 100,000-deep ``[[[...`` cannot exhaust the stack.)
        """
        try:
            value = self._decoder.decode(data.decode())
        except UnicodeDecodeError as exc:
            raise CodecError(f"JSON message is not UTF-8: {exc}") from None
        except CodecError:
            raise
        except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
            raise CodecError(f"message is not JSON: {exc}") from None
        except RecursionError:
            raise CodecError("JSON message nests too deep") from None
        if data.count(b"[") + data.count(b"{") > self.max_depth:  # else it cannot nest that deep
            _check_depth(value, self.max_depth)
        return value


def _check_depth(value: Any, max_depth: int) -> None:
    """Refuse a value nested deeper than `max_depth` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            raise CodecError(f"value nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


@final
class MsgPack:
    """MessagePack values (optional extra: ``pip install 'connecteur[msgpack]'``).

    Extension types are refused; sizes are bounded by `max_size` before the
    unpacker allocates anything.

    Args:
        max_size: the largest message, in bytes (give the framing's).
        max_depth: the deepest nesting accepted.

    Raises:
        ImportError: msgpack is not installed (with the command to install it).
    """

    __slots__ = ("_msgpack", "max_depth", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = MAX_DEPTH) -> None:
        try:
            msgpack = importlib.import_module("msgpack")  # optional: imported only when asked for
        except ImportError:
            raise ImportError("MsgPack needs msgpack: pip install 'connecteur[msgpack]'") from None
        self._msgpack: Any = msgpack
        self.max_size = max_size
        self.max_depth = max_depth

    def __repr__(self) -> str:
        return f"MsgPack(max_size={self.max_size}, max_depth={self.max_depth})"

    def encode(self, value: Any) -> bytes:
        """Encode a value of the MessagePack types.

        Raises:
            CodecError: the value holds something MessagePack cannot carry.
        """
        _check_depth(value, self.max_depth)
        try:
            return bytes(self._msgpack.packb(value, use_bin_type=True, strict_types=False))
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode as MessagePack: {exc}") from None

    def decode(self, data: bytes) -> Any:
        """Decode one MessagePack value.

        Raises:
            CodecError: malformed data, trailing bytes, an extension type, or
                a size or nesting over the limits.
        """
        if len(data) > self.max_size:
            raise CodecError(f"MessagePack message has {len(data)} bytes; max_size is {self.max_size}")
        msgpack = self._msgpack
        try:
            value = msgpack.unpackb(
                data, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                max_bin_len=self.max_size, max_str_len=self.max_size, max_array_len=self.max_size,
                max_map_len=self.max_size, max_ext_len=0,
            )  # fmt: skip
        except CodecError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData, RecursionError) as exc:
            raise CodecError(f"message is not valid MessagePack: {exc}") from None
        _check_depth(value, self.max_depth)
        return value


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"MessagePack extension type {code} is refused")
