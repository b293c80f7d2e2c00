"""The handshake, idle and per-message deadlines of one connection, for every engine.

Engines differ in how they wait (a socket timeout, a timer heap, asyncio's
call_at); what is due and when is decided here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import final

from ..errors import Timeout

__all__ = ["Deadlines"]


@final
class Deadlines:
    """When a connection must be closed for a stalled handshake, idleness or a slow message.

    Handshake: the connection's channel (PROXY header, TLS, authentication)
    not open `handshake_timeout` after accept. Idle: no whole message moved in
    either direction for `idle_timeout` (stray bytes do not count). Slow: a
    message not complete `message_timeout` after its first byte.

    It reads `clock` (`time.monotonic` unless a test passes a fake one) only
    when a deadline is configured; `expired` takes the time from its caller.
    """

    __slots__ = (
        "_clock",
        "_handshake_due",
        "_handshake_timeout",
        "_idle_timeout",
        "_last_activity",
        "_message_started",
        "_message_timeout",
        "is_active",
        "notes_reads",
        "tracks_activity",
    )

    def __init__(
        self,
        idle_timeout: float | None,
        message_timeout: float | None,
        handshake_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._last_activity = now = clock()
        self._message_started: float | None = None
        self._handshake_timeout = handshake_timeout
        self._handshake_due = None if handshake_timeout is None else now + handshake_timeout
        self.is_active = self._any_deadline()
        """True when any deadline is configured at all: engines skip the clock otherwise.

        An attribute, not a property: the hot path reads it per read."""
        self.tracks_activity = idle_timeout is not None
        """True when `moved` matters (an idle timeout is set); else it need not be called."""
        self.notes_reads = self.tracks_activity
        """True when `received` must hear of every read, even one that leaves no byte buffered:
        an idle timeout is set, or a message is under way. Otherwise only a read that leaves
        bytes buffered (a message begins) needs it, and the clock is not read for the others."""

    def _any_deadline(self) -> bool:
        return self._idle_timeout is not None or self._message_timeout is not None or self._handshake_due is not None

    def handshake_done(self) -> None:
        """The channel is open: idle time counts from now."""
        self._handshake_due = None
        self._last_activity = self._clock()
        self.is_active = self._any_deadline()

    def moved(self) -> None:
        """A whole message was received or sent."""
        self._last_activity = self._clock()

    def received(self, completed: bool, buffered: int) -> bool:
        """Note a read that completed messages (or not) and left `buffered` bytes.

        Returns:
            True when a new message started, so its deadline may be the next due.
        """
        now = self._clock()
        if completed:
            self._last_activity = now
        if not buffered:
            self._message_started = None
            self.notes_reads = self.tracks_activity
            return False
        if self._message_timeout is not None and (completed or self._message_started is None):
            self._message_started = now
            self.notes_reads = True
            return True
        return False

    def next_due(self) -> float | None:
        """The time (of `clock`) when the earliest deadline falls, or None."""
        if self._handshake_due is not None:
            return self._handshake_due
        dues = []
        if self._idle_timeout is not None:
            dues.append(self._last_activity + self._idle_timeout)
        if self._message_timeout is not None and self._message_started is not None:
            dues.append(self._message_started + self._message_timeout)
        return min(dues) if dues else None

    def expired(self, now: float) -> Timeout | None:
        """The `Timeout` to close the connection with, if a deadline has passed at `now`.

        A handshake that ran out gives a `Timeout` whose message the engine
        replaces with its channel's account (`Channel.timed_out`).
        """
        if self._handshake_due is not None:
            if now < self._handshake_due:
                return None
            seconds = self._handshake_timeout or 0.0
            return Timeout(f"handshake not complete within {seconds} s", seconds=seconds)
        idle, per_message = self._idle_timeout, self._message_timeout
        if idle is not None and now >= self._last_activity + idle:
            return Timeout(f"no message moved for {idle} s", seconds=idle)
        started = self._message_started
        if per_message is not None and started is not None and now >= started + per_message:
            return Timeout(f"a message took more than {per_message} s to arrive", seconds=per_message)
        return None
