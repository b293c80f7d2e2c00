"""Sans-I/O framings: where one message ends and the next begins on a byte stream.

A stream has no end-of-message marker, so sender and receiver agree on a
framing: a fixed length, a delimiter or a line end, a length prefix (binary,
decimal or a netstring), a length field inside a header (`LengthField`, netty's
parameters), a type byte that decides the length, or the end of the stream.
Each framing here has ``encode(message) -> bytes`` and ``decoder()``; a decoder
has ``feed(data) -> list[bytes]``, ``eof() -> list[bytes]`` and ``buffered``.

This module never touches a socket, a clock or a log: loops feed it bytes and
act on the messages it returns. That is what lets every engine share one parser
and lets tests cut the input anywhere.

Strategy, shared by every decoder: received bytes go into one ``bytearray``;
the parser walks it from the start, returns every complete message, and the
consumed prefix is deleted in one step (CPython deletes from the front of a
``bytearray`` without moving the rest, so this stays linear). A size is checked
the moment its header is complete, before any body byte is kept, and every
framing has a limit (16 MiB by default). Memory follows the bytes received,
never a size announced: a decoder holds at most about twice the bytes of the
message under way, plus `FIRST_BODY`; connecteur's decoders say how much in
``held`` (bytes of memory), next to ``buffered`` (bytes received).

A message over ``max_size`` fails the decoder by default (`MessageTooLarge`:
the connection closes). ``on_oversize="skip"`` (on `LengthPrefixed`,
`LengthField`, `DecimalPrefixed`, `Delimited` and `Lines`) drops it instead:
the bytes a header announced, or a line up to its delimiter, are discarded as
they arrive, never kept (memory stays within ``max_size`` and a read, whatever
size was announced), the decoder counts it in ``skipped`` and calls its
``on_skip`` hook, and the next message follows. The policy is the framing's,
beside the limit it applies to, so one object gives it to every engine, both
clients and the command line; a `Server` or `connect` keyword would only
duplicate it (and raise the question of which wins). Servers count skipped
messages in `Stats.skipped` and log each as a peer fault; clients in their
``skipped`` attribute. `FixedLength` and `TypeTagged` need no policy: their
lengths are checked when the framing is made, so no message is ever over.

The default framing, `LengthPrefixed`, is every server's hot path and has a
decoder of its own (measured: see `_LengthPrefixedDecoder`), a `BodyPool` for
the bodies of large messages, and ``encode_all``/``encode_parts`` for a
read's replies; `batch_encoder` gives any framing's batch form to engines.
"""

from ._base import DEFAULT_LINE_MAX_SIZE as DEFAULT_LINE_MAX_SIZE
from ._base import DEFAULT_MAX_SIZE as DEFAULT_MAX_SIZE
from ._base import Buffer as Buffer
from ._base import Decoder as Decoder
from ._base import Framing as Framing
from ._base import OnOversize as OnOversize
from ._base import batch_encoder as batch_encoder
from .field import LengthField as LengthField
from .length import DIRECT_READ as DIRECT_READ
from .length import FIRST_BODY as FIRST_BODY
from .length import LARGE_MESSAGE as LARGE_MESSAGE
from .length import BodyPool as BodyPool
from .length import DirectDecoder as DirectDecoder
from .length import LengthPrefixed as LengthPrefixed
from .length import direct_decoder as direct_decoder
from .simple import CloseDelimited as CloseDelimited
from .simple import DecimalPrefixed as DecimalPrefixed
from .simple import Delimited as Delimited
from .simple import FixedLength as FixedLength
from .simple import Lines as Lines
from .simple import Netstring as Netstring
from .simple import TypeTagged as TypeTagged

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
    "LengthField",
    "LengthPrefixed",
    "Lines",
    "Netstring",
    "OnOversize",
    "TypeTagged",
    "batch_encoder",
    "direct_decoder",
]
