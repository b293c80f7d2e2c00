"""The multiplexing envelope's bytes and the client's table of requests in flight (no sockets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connecteur import FramingError, Heartbeat
from connecteur._envelope import (
    HEADER_SIZE,
    MAX_REQUEST_ID,
    MAX_TOMBSTONES,
    Envelope,
    Kind,
    RequestTable,
    decode,
    encode,
    heartbeat_of,
)

kinds = st.sampled_from(list(Kind))
ids = st.integers(min_value=0, max_value=MAX_REQUEST_ID)


def test_wire_vectors_from_the_docs() -> None:
    """The examples in docs/multiplexing.md, byte for byte."""
    assert encode(Kind.REQUEST, 1, b"hi") == b"\x01\x00\x00\x00\x01hi"
    assert encode(Kind.REPLY, 1, b"HI") == b"\x02\x00\x00\x00\x01HI"
    assert encode(Kind.ERROR, 258, b"ValueError: x") == b"\x03\x00\x00\x01\x02ValueError: x"
    assert encode(Kind.ONE_WAY, 0, b"log") == b"\x04\x00\x00\x00\x00log"
    assert encode(Kind.PING, 7) == b"\x05\x00\x00\x00\x07"
    assert encode(Kind.PONG, 7) == b"\x06\x00\x00\x00\x07"
    assert encode(Kind.REQUEST, MAX_REQUEST_ID) == b"\x01\xff\xff\xff\xff"


@given(kinds, ids, st.binary(max_size=200))
def test_round_trip(kind: Kind, request_id: int, payload: bytes) -> None:
    wire = encode(kind, request_id, payload)
    assert wire[:HEADER_SIZE] == struct.pack("!BI", kind, request_id)
    assert decode(wire) == Envelope(kind, request_id, payload)


@given(st.binary(max_size=40))
def test_any_bytes_give_an_envelope_or_a_framing_error(data: bytes) -> None:
    try:
        envelope = decode(data)
    except FramingError as exc:
        assert len(data) < HEADER_SIZE or data[0] not in set(Kind), exc
    else:
        assert encode(*envelope) == data


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00\x00", b"\x00\x00\x00\x00\x01", b"\x07\x00\x00\x00\x01x"])
def test_short_or_unknown_kind_is_refused_with_the_facts(data: bytes) -> None:
    with pytest.raises(FramingError, match=r"header|kind"):
        decode(data)


@pytest.mark.parametrize("request_id", [-1, MAX_REQUEST_ID + 1])
def test_an_id_that_does_not_fit_is_refused(request_id: int) -> None:
    with pytest.raises(FramingError, match=str(request_id)):
        encode(Kind.REQUEST, request_id)


def test_ids_are_unique_among_requests_in_flight_and_skip_zero() -> None:
    table: RequestTable[str] = RequestTable()
    seen = {table.open(f"w{n}") for n in range(1000)}
    assert len(seen) == 1000 and 0 not in seen and len(table) == 1000


def test_a_late_reply_finds_a_tombstone_and_is_dropped() -> None:
    table: RequestTable[str] = RequestTable()
    first = table.open("first")
    table.abandon(first)  # timed out
    second = table.open("second")
    assert table.settle(first) is None  # the late reply is not handed to "second"
    assert table.late_replies == 1
    assert table.settle(second) == "second"


def test_ids_wrap_around_past_those_in_use_or_buried() -> None:
    table: RequestTable[str] = RequestTable()
    buried = table.open("a")
    table.open("b")  # in use
    table.abandon(buried)
    table._next_id = MAX_REQUEST_ID - 1  # as after four billion requests
    assert table.open("c") == MAX_REQUEST_ID
    assert table.open("d") == 3  # 1 is buried, 2 in use


def test_tombstones_are_bounded() -> None:
    table: RequestTable[int] = RequestTable()
    for n in range(MAX_TOMBSTONES + 10):
        table.abandon(table.open(n))
    assert len(table._tombstones) == MAX_TOMBSTONES


def test_cancel_leaves_no_tombstone_and_fail_all_empties_the_table() -> None:
    table: RequestTable[str] = RequestTable()
    table.cancel(table.open("never sent"))
    pending = [table.open("x"), table.open("y")]
    assert sorted(table.fail_all()) == ["x", "y"] and len(table) == 0
    assert table.settle(pending[0]) is None


def test_heartbeat_forms() -> None:
    assert heartbeat_of((1, 2.5)) == Heartbeat(1, 2.5)
    assert heartbeat_of(None) is None
    with pytest.raises(ValueError, match="interval"):
        Heartbeat(0, 1)
    with pytest.raises(ValueError, match="deadline"):
        heartbeat_of((1.0, -1.0))
    with pytest.raises(TypeError, match="pair"):
        heartbeat_of(5)  # type: ignore[arg-type]


def test_abandon_says_whether_the_request_was_still_outstanding() -> None:
    table: RequestTable[str] = RequestTable()
    waiting, answered = table.open("waiting"), table.open("answered")
    assert table.settle(answered) == "answered"
    assert table.abandon(waiting) is True  # buried: its late reply will be dropped
    assert table.abandon(answered) is False  # its reply won: the waiter is being woken
    assert table.settle(waiting) is None and table.late_replies == 1
