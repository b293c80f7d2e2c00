"""Framings and codecs in a few words, for the lines the command line prints.

The framing layer stays silent and knows nothing of people; the command line
says what it serves so that a client set up otherwise can tell at a glance.
"""

from __future__ import annotations

import struct

from ..codecs import Codec, Json, MsgPack, Text
from ..framing import (
    CloseDelimited,
    DecimalPrefixed,
    Delimited,
    FixedLength,
    Framing,
    LengthField,
    LengthPrefixed,
    Lines,
    Netstring,
)

__all__ = ["describe_codec", "describe_framing"]

_BYTE_ORDERS = {"<": "little-endian "}  # "!", ">": network order, the usual: not worth a word


def describe_framing(framing: Framing) -> str:
    """A short description: ``4-byte length prefix``, ``lines ending in \\n``, ``netstrings``..."""
    if isinstance(framing, LengthPrefixed):
        order = _BYTE_ORDERS.get(framing.header[0], "")
        return f"{struct.calcsize(framing.header)}-byte {order}length prefix"
    if isinstance(framing, Delimited):
        ending = repr(framing.delimiter)[2:-1]
        kind = "lines" if framing.delimiter in (b"\n", b"\r\n") else "messages"
        return f"{kind} ending in {ending}"
    if isinstance(framing, Lines):
        return "lines ending in \\n or \\r\\n"
    if isinstance(framing, LengthField):
        return _describe_field(framing)
    if isinstance(framing, Netstring):
        return "netstrings"
    if isinstance(framing, FixedLength):
        return f"messages of exactly {framing.size} bytes"
    if isinstance(framing, DecimalPrefixed):
        return f"{framing.width}-digit decimal length prefix"
    if isinstance(framing, CloseDelimited):
        return "one message per connection, ended by the close"
    return repr(framing)


def _describe_field(framing: LengthField) -> str:
    order = "little-endian " if framing.byteorder == "little" else ""
    words = [f"{framing.size}-byte {order}length field at offset {framing.offset}"]
    if framing.adjustment:
        words.append(f"adjustment {framing.adjustment}")
    if framing.strip:
        words.append(f"{framing.strip} bytes stripped")
    return ", ".join(words)


def describe_codec(codec: Codec | None) -> str:
    """``none``, ``json``, ``utf-8 text``, ``msgpack``, or the codec's repr."""
    if codec is None:
        return "none"
    if isinstance(codec, Json):
        return "json"
    if isinstance(codec, Text):
        return f"{codec.encoding} text"
    if isinstance(codec, MsgPack):
        return "msgpack"
    return repr(codec)
