"""Fuzz every decoder with atheris (libFuzzer): hostile bytes give messages or `FramingError`, nothing else.

    pip install atheris
    python fuzz/fuzz_decoders.py -max_total_time=60

Each input picks a framing (every one whose messages encode back to the exact
bytes they came from, with small limits so that the limits are reached; not
`Lines`, which drops a ``\r``: tests/core/test_framing_wild.py checks it against
a reference reader), cuts the rest of the input into pieces of 1 to 16 bytes,
feeds them and ends the stream. A crash is any other exception, a decoder holding more
than its limit plus a header, messages that are not exactly the bytes they
were cut from, or a failed decoder that accepts more bytes. Where the C split
of length-prefixed reads is built (``framing/_speedups.c``), a `LengthPrefixed`
input also feeds a twin decoder splitting in Python: a crash is any
difference between the two, in messages, errors or bytes held; and the
messages of each piece, joined again by the C join (`encode_all`), must be
the bytes the Python `encode` gives. See README.md.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]  # no stubs; maybe not installed

with atheris.instrument_imports():  # coverage feedback from connecteur's own code
    from connecteur.errors import FramingError
    from connecteur.framing import (
        CloseDelimited,
        DecimalPrefixed,
        Decoder,
        Delimited,
        FixedLength,
        Framing,
        LengthField,
        LengthPrefixed,
        Netstring,
        TypeTagged,
    )
    from connecteur.framing.length import SPEEDUPS

FRAMINGS: tuple[tuple[Framing, int], ...] = (
    # (framing, bytes beyond max_size its decoder may hold: header, delimiter)
    (FixedLength(3), 0),
    (Delimited(b"\r\n", max_size=32), 2),
    (LengthPrefixed("!H", max_size=64), 2),
    (LengthPrefixed("<Q", max_size=64), 8),
    (LengthField(offset=4, size=2, max_size=64), 0),  # Modbus/TCP: the message is the whole frame
    (LengthField(size=4, byteorder="little", adjustment=-4, strip=4, max_size=64), 4),
    (DecimalPrefixed(3, max_size=64), 3),
    (Netstring(max_size=64), len("64") + 2),
    (TypeTagged({b"P": 0, b"M": 4}), 0),
    (CloseDelimited(max_size=64), 0),
)


def TestOneInput(data: bytes) -> None:  # the name libFuzzer's Python binding looks for
    """Feed one input to one decoder; raise on anything a decoder must never do."""
    provider = atheris.FuzzedDataProvider(data)
    framing, overhead = FRAMINGS[provider.ConsumeIntInRange(0, len(FRAMINGS) - 1)]
    decoder = framing.decoder()
    twin = framing._decoder(False) if SPEEDUPS and isinstance(framing, LengthPrefixed) else None
    stream = b""  # every byte fed
    decoded = b""  # the messages returned, encoded again: always a prefix of the stream
    try:
        while provider.remaining_bytes():
            piece = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 16))
            stream += piece
            messages = _feed(decoder, twin, piece)
            decoded += _encoded(framing, messages)
            if decoded != stream[: len(stream) - decoder.buffered]:
                raise AssertionError(f"{framing!r}: messages {messages!r} are not the bytes fed")
            if decoder.buffered > framing.max_size + overhead:
                raise AssertionError(f"{framing!r} holds {decoder.buffered} bytes")
        messages = decoder.eof()
        if isinstance(framing, CloseDelimited) and messages != [stream]:
            raise AssertionError(f"{framing!r}: eof() gave {messages!r}, not the stream")
    except FramingError:
        try:
            decoder.feed(b"\0")
        except FramingError:
            return
        raise AssertionError(f"{framing!r}: a failed or ended decoder accepted more bytes") from None


def _encoded(framing: Framing, messages: list[bytes]) -> bytes:
    """The messages' wire bytes, by `encode`; with the C join built, `encode_all` must give the same."""
    wire = b"".join(framing.encode(m) for m in messages)
    if SPEEDUPS and isinstance(framing, LengthPrefixed) and framing.encode_all(messages) != wire:
        raise AssertionError(f"the C join gave {framing.encode_all(messages)!r}, encode {wire!r}")
    return wire


def _feed(decoder: Decoder, twin: Decoder | None, piece: bytes) -> list[bytes]:
    """`decoder.feed(piece)`; the twin splitting in Python, if any, must give the same."""
    if twin is None:
        return decoder.feed(piece)
    try:
        messages = decoder.feed(piece)
    except FramingError as exc:
        _check_twin(twin, piece, (f"{type(exc).__name__}: {exc}", exc.messages))
        raise
    _check_twin(twin, piece, (messages, decoder.buffered))
    return messages


def _check_twin(twin: Decoder, piece: bytes, expected: tuple[object, object]) -> None:
    try:
        got: tuple[object, object] = (twin.feed(piece), twin.buffered)
    except FramingError as exc:
        got = (f"{type(exc).__name__}: {exc}", exc.messages)
    if got != expected:
        raise AssertionError(f"the C split gave {expected!r}, the Python split {got!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
