"""The multiplexing envelope: a kind byte and a request id before each message's payload. No I/O.

Both ends speak it when asked (``Server(..., multiplexed=True)``,
``connect(..., multiplexed=True)``), inside the configured framing: one framed
message is one envelope. The bytes, specified for other languages in
``docs/multiplexing.md``::

    offset 0   kind        1 byte   (REQUEST 1, REPLY 2, ERROR 3, ONE_WAY 4, PING 5, PONG 6)
    offset 1   request id  4 bytes  unsigned, big-endian (network byte order)
    offset 5   payload     the rest of the message (may be empty)

A reply (or an error reply) carries its request's id; a pong carries its
ping's. One-way messages carry id 0 and are never answered. An error reply's
payload is UTF-8 text saying what failed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Generic, NamedTuple, TypeVar, final

from .errors import FramingError

__all__ = [
    "HEADER_SIZE",
    "MAX_ONE_WAY",
    "MAX_REQUEST_ID",
    "MAX_TOMBSTONES",
    "Envelope",
    "Heartbeat",
    "Kind",
    "RequestTable",
    "decode",
    "encode",
    "heartbeat_of",
    "pack_header",
    "unpack_header",
]

_HEADER: Final = struct.Struct("!BI")

HEADER_SIZE: Final = _HEADER.size
"""5 bytes: the kind and the request id before each payload."""

MAX_REQUEST_ID: Final = 2**32 - 1
"""The largest request id the 4-byte field holds; ids then wrap to 1 (0 is for one-way messages)."""


class Kind(IntEnum):
    """What an envelope carries; the first byte of each message."""

    REQUEST = 1
    """Asks for exactly one REPLY or ERROR with the same id."""
    REPLY = 2
    """The handler's answer to the request with this id."""
    ERROR = 3
    """The request with this id failed; the payload is UTF-8 text saying why."""
    ONE_WAY = 4
    """A message that gets no answer (id 0)."""
    PING = 5
    """Asks for a PONG with the same id: is the peer still there?"""
    PONG = 6
    """The answer to the PING with this id."""


class Envelope(NamedTuple):
    """One decoded envelope: its kind, its request id and its payload."""

    kind: Kind
    request_id: int
    payload: bytes


_KINDS: Final = {int(kind): kind for kind in Kind}
_unpack_header: Final = _HEADER.unpack_from
pack_header: Final = _HEADER.pack
"""``pack_header(kind, request_id)``: the 5 header bytes, for callers whose id is known to fit."""
unpack_header: Final = _unpack_header
"""``unpack_header(message)``: its kind byte (an int, unchecked) and request id; `struct.error` if shorter than 5."""


def encode(kind: Kind, request_id: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """The bytes of one envelope, to be framed as one message.

    Raises:
        FramingError: `request_id` does not fit in 4 unsigned bytes.
    """
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise FramingError(f"request id {request_id} does not fit in 4 bytes (0 to {MAX_REQUEST_ID})")
    return _HEADER.pack(kind, request_id) + payload


def decode(message: bytes) -> Envelope:
    """Split one received message into its envelope's parts.

    Raises:
        FramingError: the message is shorter than the 5-byte header, or its
            kind byte is not one of `Kind` (the peer does not speak the envelope).
    """
    if len(message) < HEADER_SIZE:
        raise FramingError(f"a multiplexed message needs a {HEADER_SIZE}-byte header; got {len(message)} bytes")
    number, request_id = _unpack_header(message)
    kind = _KINDS.get(number)  # not Kind(number): a dict lookup costs a third of it, on every message
    if kind is None:
        raise FramingError(f"unknown envelope kind {number}; known kinds are 1 to {len(Kind)}")
    return Envelope(kind, request_id, message[HEADER_SIZE:])


@final
@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Ping/pong on a multiplexed connection: notice a peer that stopped answering.

    Each side that sets a heartbeat sends a PING once it has received nothing
    for `interval` seconds, and closes the connection once it has received
    nothing (no PONG, no other message) for ``interval + deadline`` seconds.
    So a silent peer is closed within ``interval + deadline`` (plus the check's
    small granularity), even when TCP sees nothing wrong. A side without a
    heartbeat still answers the other's PINGs.

    Attributes:
        interval: seconds of silence before a PING is sent.
        deadline: seconds a PING has to be answered (by anything).
    """

    interval: float
    deadline: float

    def __post_init__(self) -> None:
        for name in ("interval", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"heartbeat {name} must be a positive number of seconds, not {value!r}")

    @property
    def tick(self) -> float:
        """How often a watcher checks: a tenth of the shorter period, so a close comes at most that late."""
        return min(self.interval, self.deadline) / 10


def heartbeat_of(value: Heartbeat | tuple[float, float] | None) -> Heartbeat | None:
    """A `Heartbeat` from the forms the options take: one, an ``(interval, deadline)`` pair, or None.

    Raises:
        ValueError: a period that is not a positive number.
        TypeError: neither form.
    """
    if value is None or isinstance(value, Heartbeat):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return Heartbeat(*value)
    raise TypeError(f"heartbeat must be a Heartbeat, an (interval, deadline) pair or None, not {value!r}")


MAX_ONE_WAY: Final = 1_024
"""One-way messages from the server a multiplexed client keeps for `recv` at most. Beyond, the
oldest is dropped and counted (``one_way_dropped``): the client's reader cannot stop reading
for them, since the replies to its requests come on the same connection."""

MAX_TOMBSTONES: Final = 65_536
"""Ids of timed-out requests remembered at most (about 5 MiB): their late replies are dropped, and
their ids not reused while remembered. Beyond, the oldest is forgotten: its id comes round again
only after 2**32 - 1 more requests, and a reply for an id not outstanding is dropped anyway."""

W = TypeVar("W")


@final
class RequestTable(Generic[W]):
    """A client's requests in flight, by id, with a tombstone for each one given up. No I/O, no lock.

    Each outstanding request has a waiter (whatever the client wakes: an
    event, a future). A reply settles its request's waiter; a reply whose
    request timed out finds a tombstone and is dropped, never handed to
    another request; a reply with an id never issued is dropped too.

    Attributes:
        late_replies: replies dropped because their request had given up
            (or was never made).
    """

    __slots__ = ("_next_id", "_pending", "_tombstones", "late_replies")

    def __init__(self) -> None:
        self._next_id = 0
        self._pending: dict[int, W] = {}
        self._tombstones: dict[int, None] = {}  # a dict: insertion order says which is oldest
        self.late_replies = 0

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, waiter: W) -> int:
        """Register a new request; return its id (1 to `MAX_REQUEST_ID`, never one in use or buried)."""
        while True:
            self._next_id = self._next_id % MAX_REQUEST_ID + 1
            request_id = self._next_id
            if request_id not in self._pending and request_id not in self._tombstones:
                self._pending[request_id] = waiter
                return request_id

    def cancel(self, request_id: int) -> None:
        """Forget a request that never left (nothing was sent): no tombstone needed."""
        self._pending.pop(request_id, None)

    def abandon(self, request_id: int) -> bool:
        """The request timed out or was cancelled after it left: bury its id, so its late reply is dropped.

        Returns:
            False when it was no longer outstanding: its reply (or the end of
            the connection) settled it first, and its waiter is being woken.
        """
        if self._pending.pop(request_id, None) is None:
            return False
        self._tombstones[request_id] = None
        if len(self._tombstones) > MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]
        return True

    def settle(self, request_id: int) -> W | None:
        """The waiter of the request this reply answers, or None: a late reply, dropped and counted."""
        waiter = self._pending.pop(request_id, None)
        if waiter is None:
            self._tombstones.pop(request_id, None)
            self.late_replies += 1
        return waiter

    def fail_all(self) -> list[W]:
        """The connection ended: every outstanding waiter, to fail (the table is then empty)."""
        waiters = list(self._pending.values())
        self._pending.clear()
        self._tombstones.clear()
        return waiters
