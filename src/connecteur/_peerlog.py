"""Peer faults in the log, within a budget of lines per interval, so that a flood of bad peers cannot fill a disk.

Shared by the server (a connection closed for its peer's bytes) and the
clients (a message skipped for its size): one budget per process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Final, final

from .address import format_address

__all__ = ["PEER_FAULT_LOG", "LogLimit", "log_peer_fault"]


@final
class LogLimit:
    """At most `lines` log lines per `interval` seconds; the rest are counted, not logged.

    The caller asks `admit` before each line. The count of the lines left out
    is handed to the first line admitted after them, which reports it first:
    nothing is lost silently, and no timer is needed (so a quiet server says
    it dropped lines when the next one comes). Thread-safe.

    Args:
        lines: how many lines an interval may hold.
        interval: its length in seconds.
        clock: seconds, monotonic (tests pass their own).
    """

    __slots__ = ("_clock", "_interval", "_lines", "_lock", "_start", "_suppressed", "_used")

    def __init__(self, lines: int = 10, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lines = lines
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._start: float | None = None
        self._used = self._suppressed = 0

    @property
    def lines(self) -> int:
        """How many lines an interval may hold."""
        return self._lines

    @property
    def interval(self) -> float:
        """The interval's length in seconds."""
        return self._interval

    def admit(self) -> int | None:
        """Count one line: None if it must be left out, else how many were left out before it."""
        with self._lock:
            now = self._clock()
            if self._start is None or now - self._start >= self._interval:
                self._start, self._used = now, 0
            if self._used >= self._lines:
                self._suppressed += 1
                return None
            self._used += 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed

    def reset_after_fork(self) -> None:
        """A new lock for a forked child: the parent's may have been held by a thread that is not there."""
        self._lock = threading.Lock()

    def register_at_fork(self) -> LogLimit:
        """Call `reset_after_fork` in every child forked from now on; return self."""
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reset_after_fork)
        return self


PEER_FAULT_LOG: Final = LogLimit().register_at_fork()
"""How many peer-fault warnings a process logs (10 a minute): beyond, one line says how many it left out."""


def log_peer_fault(address: object, error: BaseException, doing: str, log: logging.Logger) -> None:
    """Log `error` of the peer at `address` to `log`: a WARNING, or INFO once `PEER_FAULT_LOG`'s budget is spent."""
    left_out = PEER_FAULT_LOG.admit()
    if left_out is None:
        log.info("%s %s: %s", doing, format_address(address), str(error))
        return
    if left_out:
        limit = PEER_FAULT_LOG
        log.warning(
            "... and %d more peer faults not logged as warnings (at most %d per %g s)",
            left_out,
            limit.lines,
            limit.interval,
        )
    log.warning("%s %s: %s", doing, format_address(address), str(error))
