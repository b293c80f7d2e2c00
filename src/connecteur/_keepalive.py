"""TCP keepalive and ``TCP_USER_TIMEOUT``: one setting for clients and servers.

Public through `connecteur.Keepalive`; `configure_stream` in `_socket` applies
it to every socket the clients open and the engines accept.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "DERIVED_PROBES",
    "MAX_PROBE_SECONDS",
    "MAX_USER_TIMEOUT",
    "Keepalive",
    "KeepaliveLike",
    "apply",
    "as_keepalive",
]

DERIVED_PROBES: Final = 3
"""Unanswered probes after which a `Keepalive.within` setting gives up on a peer."""

MAX_PROBE_SECONDS: Final = 32767
"""The largest `Keepalive.idle` and `interval` Linux takes (a 16-bit count of seconds)."""

MAX_USER_TIMEOUT: Final = 2_000_000.0
"""The largest `Keepalive.user_timeout`, in seconds: ``TCP_USER_TIMEOUT`` is an int of milliseconds (23 days)."""

# macOS names the idle time TCP_KEEPALIVE; Linux, the BSDs and Windows, TCP_KEEPIDLE.
_KEEPIDLE: Final = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
_KEEPINTVL: Final = getattr(socket, "TCP_KEEPINTVL", None)
_KEEPCNT: Final = getattr(socket, "TCP_KEEPCNT", None)
_USER_TIMEOUT: Final = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only


@final
@dataclass(frozen=True, slots=True)
class Keepalive:
    """How soon the kernel gives up on a silent or unreachable peer.

    TCP keepalive sends a probe after `idle` seconds without traffic, then
    one every `interval` seconds; after `count` unanswered probes, the
    connection is dead: a `recv` waiting on it fails with ``TimeoutError``
    (``ETIMEDOUT``) at once, whatever its own timeout. `user_timeout`
    (``TCP_USER_TIMEOUT``, Linux) bounds how long sent bytes may stay
    unacknowledged, or a full peer window stay closed, before the same
    happens to a `send`; on Linux it also caps the keepalive wait.

    The kernel counts keepalive times in whole seconds: `idle` and
    `interval` are rounded up (1 s at least). Options the platform lacks are
    skipped: macOS has no ``TCP_USER_TIMEOUT``. They apply to TCP only; a
    Unix socket's peer is on this machine, whose kernel tells at once.

    A number of seconds where a `Keepalive` is accepted means
    ``Keepalive.within(seconds)``.

    Attributes:
        idle: seconds of silence before the first probe.
        interval: seconds between probes.
        count: unanswered probes before the connection is dead.
        user_timeout: seconds sent data may stay unacknowledged (None: the
            kernel's default, about 15 minutes of retransmissions).

    Raises:
        ValueError: a time not above 0 (or over `MAX_PROBE_SECONDS`,
            `MAX_USER_TIMEOUT`), or a count not from 1 to 127.
    """

    idle: float = 60.0
    interval: float = 10.0
    count: int = DERIVED_PROBES
    user_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_seconds("idle", self.idle, MAX_PROBE_SECONDS)
        _check_seconds("interval", self.interval, MAX_PROBE_SECONDS)
        if self.user_timeout is not None:
            _check_seconds("user_timeout", self.user_timeout, MAX_USER_TIMEOUT)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 127:
            raise ValueError(f"count must be an int from 1 to 127 (probes), not {self.count!r}")

    @classmethod
    def within(cls, seconds: float) -> Keepalive:
        """A setting that notices a dead peer within about `seconds`, idle or sending.

        Half the time in silence, then `DERIVED_PROBES` (3) probes spread over
        the other half, and the same bound on unacknowledged data:
        ``within(60)`` is ``Keepalive(idle=30, interval=10, count=3,
        user_timeout=60)``. Below 6 s the whole-second rounding of `idle` and
        `interval` stretches the keepalive part (``within(2)`` probes after
        1 s, then every 1 s: 4 s), while `user_timeout` keeps `seconds`.

        Raises:
            ValueError: `seconds` is not above 0 (or over `MAX_USER_TIMEOUT`).
        """
        _check_seconds("keepalive", seconds, MAX_USER_TIMEOUT)
        return cls(idle=seconds / 2, interval=seconds / 2 / DERIVED_PROBES, count=DERIVED_PROBES, user_timeout=seconds)

    @property
    def bound(self) -> float:
        """Seconds from the last traffic until an idle dead peer is noticed: ``idle + count * interval``, as rounded."""
        return _whole(self.idle) + self.count * _whole(self.interval)


KeepaliveLike = Keepalive | float | None
"""What the ``keepalive=`` options take: a `Keepalive`, seconds, or None for the kernel's defaults."""


def as_keepalive(value: KeepaliveLike) -> Keepalive | None:
    """A ``keepalive=`` option as a `Keepalive` (None stays None: the kernel's defaults).

    Raises:
        TypeError: neither a `Keepalive`, a number nor None.
        ValueError: a number of seconds that is not positive and finite.
    """
    if value is None or isinstance(value, Keepalive):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"keepalive must be a Keepalive, a number of seconds or None, not {value!r}")
    return Keepalive.within(value)


def apply(sock: socket.socket, keepalive: Keepalive) -> None:
    """Set `keepalive` on a TCP socket (``SO_KEEPALIVE`` is set by the caller), skipping options the platform lacks."""
    for option, value in (
        (_KEEPIDLE, _whole(keepalive.idle)),
        (_KEEPINTVL, _whole(keepalive.interval)),
        (_KEEPCNT, keepalive.count),
    ):
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    if _USER_TIMEOUT is not None and keepalive.user_timeout is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _USER_TIMEOUT, math.ceil(keepalive.user_timeout * 1000))


def _whole(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _check_seconds(name: str, value: object, largest: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= largest:
        raise ValueError(f"{name} must be a number of seconds above 0 and at most {largest:g}, not {value!r}")
