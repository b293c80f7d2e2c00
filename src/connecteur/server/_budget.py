"""`Budget`: the bytes one server process holds for all its connections, and its limit.

Each connection's decoder holds about the bytes received of its unfinished
message, and an event loop queues the replies a slow reader has not taken:
each is bounded per connection, but ten thousand connections times 16 MiB
is not a bound a machine has. `Server(max_buffered)` caps the sum.

Policy, the same on every engine: a connection whose read takes the process
over the limit is no longer read (its peer's bytes wait in the kernel, and
TCP slows the peer down), while connections that hold nothing go on being
served. When the total falls back under the limit, paused connections are
read again. If it is still over after `BUDGET_GRACE` seconds, the connections
holding the most are closed, largest first, until it is under: unfinished
messages never shrink by waiting, so an attacker's half-sent messages cannot
hold honest clients' memory hostage. Redis's ``maxmemory-clients`` evicts the
same way (largest client first).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final, Protocol

from ._engine import Counters
from ._handler import logger

__all__ = ["BUDGET_GRACE", "Budget", "Holder", "OverBudget"]

BUDGET_GRACE: Final = 1.0
"""Seconds the server may stay over `max_buffered` with its growing
connections paused, before it closes the largest: long enough for replies
queued to readers to drain, short enough that the total barely moves."""


class OverBudget(ConnectionError):
    """Why a connection was closed: the server held more than `max_buffered` bytes."""


class Holder(Protocol):
    """A connection whose bytes the budget tracks: an engine's per-connection object."""

    def pause_reading_for_budget(self, paused: bool) -> None:
        """Stop reading (True) or read again (False)."""
        ...

    def evict(self, error: OverBudget) -> None:
        """Close at once: the server stayed over its budget and this connection holds the most."""
        ...


class Budget:
    """The bytes held by one process's connections, against `limit` (see the module's policy).

    Thread-safe: the threads engine updates it from each connection's thread.
    A connection calls `update` only when its holdings change, and one that
    receives whole small messages holds nothing between reads.

    Args:
        limit: the most the process may hold, in bytes.
        counters: where evictions are counted.
        schedule: ``schedule(seconds, action)`` runs `action` that many
            seconds later on the engine's loop (or any thread for the threads
            engine).

    Attributes:
        held: the bytes held now, all connections together.
    """

    def __init__(self, limit: int, counters: Counters, schedule: Callable[[float, Callable[[], None]], None]) -> None:
        self.limit = limit
        self.held = 0
        self._counters = counters
        self._schedule = schedule
        self._holdings: dict[Holder, int] = {}
        self._paused: set[Holder] = set()
        self._check_pending = False
        self._lock = threading.Lock()

    @property
    def is_over(self) -> bool:
        """True while the process holds more than `limit`."""
        return self.held > self.limit

    def update(self, holder: Holder, held: int) -> None:
        """Record that `holder` now holds `held` bytes; pause it, or resume the paused, as the policy says."""
        resume: list[Holder] = []
        with self._lock:
            previous = self._holdings.pop(holder, 0)
            if held:
                self._holdings[holder] = held
            self.held += held - previous
            pause = self.held > self.limit and held > previous and holder not in self._paused
            if pause:
                self._paused.add(holder)
            elif held < previous and self._paused and self.held <= self.limit:
                resume, self._paused = list(self._paused), set()
            check = pause and not self._check_pending
            self._check_pending |= check
        if pause:
            holder.pause_reading_for_budget(True)
        if check:
            self._schedule(BUDGET_GRACE, self.check)
        for other in resume:
            other.pause_reading_for_budget(False)

    def forget(self, holder: Holder) -> None:
        """`holder` is closed: it holds nothing and waits for nothing."""
        with self._lock:
            self._paused.discard(holder)
        self.update(holder, 0)

    def check(self) -> None:
        """The grace period is over: close the largest holders if still over `limit`; read the paused again."""
        with self._lock:
            self._check_pending = False
            victims = self._largest() if self.held > self.limit else []
            resume, self._paused = self._paused, set()
        if victims:  # WARNING, once: an operator may have to size the budget
            logger.warning(
                "the server holds %d bytes, over max_buffered (%d) for %.1f s: "
                "closing the %d connection(s) holding the most",
                self.held, self.limit, BUDGET_GRACE, len(victims),
            )  # fmt: skip
            self._counters.over_budget(len(victims))
        for holder, held in victims:  # each one logged as it closes, at INFO
            resume.discard(holder)
            holder.evict(OverBudget(f"it held {held} bytes when the server was over max_buffered ({self.limit})"))
        for holder in resume:
            holder.pause_reading_for_budget(False)

    def _largest(self) -> list[tuple[Holder, int]]:
        """The holders to close, largest first, for the total to fall under `limit`."""
        total, victims = self.held, []
        for holder, held in sorted(self._holdings.items(), key=lambda item: item[1], reverse=True):
            if total <= self.limit:
                break
            victims.append((holder, held))
            total -= held
        return victims
