"""Codecs: exact round trips, hostile bytes give only CodecError, limits hold."""

from __future__ import annotations

import contextlib
import importlib.util
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur import CodecError, FramingError
from connecteur.codecs import Json, MsgPack, Struct, Text

HAS_MSGPACK = importlib.util.find_spec("msgpack") is not None
needs_msgpack = pytest.mark.skipif(not HAS_MSGPACK, reason="msgpack is not installed (pip install msgpack)")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


def test_codec_error_is_a_framing_error() -> None:
    assert issubclass(CodecError, FramingError)


@given(json_values)
def test_json_round_trips_exactly(value: Any) -> None:
    codec = Json()
    assert codec.decode(codec.encode(value)) == value


@given(st.binary(max_size=200))
def test_json_arbitrary_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Json().decode(data)


def test_json_is_compact_utf8() -> None:
    assert Json().encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"x": -Infinity}'])
def test_json_refuses_nan_and_infinity_on_decode(data: bytes) -> None:
    with pytest.raises(CodecError, match="not JSON"):
        Json().decode(data)


@pytest.mark.parametrize("value", [math.nan, [math.inf], {"x": -math.inf}])
def test_json_refuses_nan_and_infinity_on_encode(value: Any) -> None:
    with pytest.raises(CodecError):
        Json().encode(value)


def test_json_a_100000_deep_document_is_a_codec_error_not_a_recursion_error() -> None:
    with pytest.raises(CodecError, match="deep"):
        Json().decode(b"[" * 100_000 + b"]" * 100_000)


def test_json_depth_limit_both_ways() -> None:
    deep: Any = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(CodecError, match="deeper than 64"):
        Json().encode(deep)
    with pytest.raises(CodecError, match="deeper than 64"):
        Json().decode(b"[" * 70 + b"]" * 70)
    assert Json(max_depth=100).decode(b"[" * 70 + b"]" * 70) is not None
    # Brackets inside strings do not count.
    assert Json().decode(b'["' + b"[" * 1000 + b'"]') == ["[" * 1000]


def test_json_refuses_objects_it_cannot_carry() -> None:
    with pytest.raises(CodecError):
        Json().encode({"when": object()})
    with pytest.raises(CodecError, match="UTF-8"):
        Json().decode(b'"\xff"')


@given(st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**15), 2**15 - 1), st.floats(allow_nan=False)))
def test_struct_round_trips_records_in_network_byte_order(record: tuple[int, int, float]) -> None:
    codec = Struct("Ihd")
    assert codec.format == "!Ihd" and codec.size == 14
    assert codec.decode(codec.encode(record)) == record


def test_struct_wire_layout_and_exact_size() -> None:
    codec = Struct("!HI")
    assert codec.encode((1, 2)) == b"\x00\x01\x00\x00\x00\x02"
    assert Struct("<H").encode((1,)) == b"\x01\x00"
    with pytest.raises(CodecError, match="6 bytes, not 5"):
        codec.decode(b"\x00" * 5)
    with pytest.raises(CodecError):
        codec.encode((1,))
    with pytest.raises(CodecError):
        codec.encode((70000, 1))
    with pytest.raises(ValueError, match="bad struct format"):
        Struct("!Z")


@given(st.binary(max_size=40))
def test_struct_arbitrary_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        assert len(Struct("!IH").decode(data)) == 2


@given(st.text())
def test_text_round_trips(value: str) -> None:
    try:
        encoded = Text().encode(value)
    except CodecError:
        return  # lone surrogates cannot be UTF-8
    assert Text().decode(encoded) == value


def test_text_refuses_invalid_bytes_and_non_strings() -> None:
    with pytest.raises(CodecError, match="utf-8"):
        Text().decode(b"\xff\xfe")
    with pytest.raises(CodecError, match="strings"):
        Text().encode(b"bytes")
    assert Text("latin-1").decode(b"\xe9") == "é"
    with pytest.raises(LookupError):
        Text("no-such-encoding")


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)  # fmt: skip


@needs_msgpack
@given(msgpack_values)
def test_msgpack_round_trips_exactly(value: Any) -> None:
    codec = MsgPack()
    assert codec.decode(codec.encode(value)) == value


@needs_msgpack
@given(st.binary(max_size=200))
def test_msgpack_arbitrary_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        MsgPack().decode(data)


@needs_msgpack
def test_msgpack_refuses_extension_types_and_oversize() -> None:
    import msgpack

    with pytest.raises(CodecError, match="ext"):
        MsgPack().decode(msgpack.packb(msgpack.ExtType(5, b"\x00")))
    with pytest.raises(CodecError, match="max_size"):
        MsgPack(max_size=10).decode(msgpack.packb(b"x" * 100))
    # A header announcing a huge array is refused before anything is built.
    with pytest.raises(CodecError):
        MsgPack(max_size=1000).decode(b"\xdd\xff\xff\xff\xff")
    with pytest.raises(CodecError):
        MsgPack().encode({"x": object()})


def test_msgpack_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match=r"pip install 'connecteur\[msgpack\]'"):
        MsgPack()
