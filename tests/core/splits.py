"""The two ways a `LengthPrefixed` decoder splits a read into messages, and its framing joins them: C and Python.

The C routine (``framing/_speedups.c``) is built with the compiled build
only; the tests that run both take `SPLITS` (or a case's ``c_split``) and
skip the C variant, saying why, where it is not built.
"""

from __future__ import annotations

import pytest

from connecteur.framing import Decoder, LengthPrefixed, length

C_BUILT = length._C_SPLIT is not None
NOT_BUILT = "the C split (connecteur.framing._speedups) is not built: a pure install (CONNECTEUR_COMPILE=1 builds it)"

SPLITS = [
    pytest.param(False, id="python"),
    pytest.param(True, id="c", marks=pytest.mark.skipif(not C_BUILT, reason=NOT_BUILT)),
]
"""Parametrize a ``c_split: bool`` argument with these: the Python split, then the C one."""


def split_decoder(framing: LengthPrefixed, c_split: bool) -> Decoder:
    """A new decoder of `framing` splitting in C or in Python; skips the test when C is asked and not built."""
    if c_split and not C_BUILT:
        pytest.skip(NOT_BUILT)
    return framing._decoder(c_split)


def join_framing(framing: LengthPrefixed, c_join: bool) -> LengthPrefixed:
    """`framing`, set to join messages in C or in Python; skips the test when C is asked and not built."""
    if c_join and not C_BUILT:
        pytest.skip(NOT_BUILT)
    framing._join = length._C_JOIN if c_join else None
    return framing
