"""Fuzz every codec with atheris (libFuzzer): hostile bytes decode to a value or raise `CodecError`.

    pip install atheris msgpack
    python fuzz/fuzz_codecs.py -max_total_time=60

Each input picks a codec by its first byte and decodes the rest. A crash is
any exception other than `CodecError` (a `RecursionError`, a `ValueError` from
a number parser, a `UnicodeError` from a text codec). See README.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]  # no stubs; maybe not installed

with atheris.instrument_imports():  # coverage feedback from connecteur's own code
    from connecteur.codecs import Codec, Json, MsgPack, Struct, Text
    from connecteur.errors import CodecError

CODECS: list[Codec] = [Json(), Json(max_depth=4), Text(), Text("utf-16"), Struct("!IHd"), Struct("<q?5s")]
if importlib.util.find_spec("msgpack") is not None:  # optional, as in connecteur itself
    CODECS += [MsgPack(max_size=1024), MsgPack(max_size=1024, max_depth=4)]


def TestOneInput(data: bytes) -> None:  # the name libFuzzer's Python binding looks for
    """Decode one input with one codec; anything but a value or `CodecError` escapes as a crash."""
    if not data:
        return
    codec = CODECS[data[0] % len(CODECS)]
    with contextlib.suppress(CodecError):
        codec.decode(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
