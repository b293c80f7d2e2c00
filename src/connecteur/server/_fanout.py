"""Fan-out and flow control: slow-consumer policies, the outcome of a broadcast, and what drop_oldest drops.

A message sent to a peer whose outgoing queue is over the high water mark
meets the send's policy:

- ``"close"``: queue it anyway; a queue past `HARD_CAP` closes the peer
  (what `peer.send` always did).
- ``"drop"``: do not queue it for that peer; count it (`peer.dropped`,
  `Stats.dropped`). What is already queued leaves intact, in order.
- ``"drop_oldest"``: queue it, then drop the oldest whole messages that the
  peer has not started to receive until the queue is back under the high
  water mark: a reader that falls behind gets the newest. Only messages sent
  with this policy while the queue was non-empty are ever dropped (never a
  reply, never part of a message); where none can be (TLS encrypts the
  stream as one), the new message is dropped instead, as with ``"drop"``.
  On the asyncio engine, only those held in front of the paused transport
  (whose own buffer cannot be cut), and never the newest of them.

The policy never slows the sender: every engine that applies it queues
without waiting (select, asyncio). See docs/fan-out.md.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = ["POLICIES", "BroadcastResult", "DropOldest", "check_policy"]

POLICIES: Final = ("close", "drop", "drop_oldest")
"""The slow-consumer policies, for `Server(slow_consumer=...)`, `broadcast` and `peer.send`."""


def check_policy(policy: str) -> str:
    """Return `policy` if it is one of `POLICIES`.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown slow-consumer policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    return policy


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """What `Server.broadcast` did, peer by peer.

    Attributes:
        delivered: peers the message was written or queued to.
        dropped: messages dropped by the policy: the new one for a peer
            over its high water mark (``"drop"``), or older ones it had not
            started to receive (``"drop_oldest"``).
        closed: peers closed by the ``"close"`` policy (their queue passed
            the hard cap) or gone while the broadcast ran.
    """

    delivered: int = 0
    dropped: int = 0
    closed: int = 0

    def __add__(self, other: BroadcastResult) -> BroadcastResult:
        """Add two results field by field."""
        return BroadcastResult(
            self.delivered + other.delivered, self.dropped + other.dropped, self.closed + other.closed
        )


DELIVERED: Final = BroadcastResult(delivered=1)
DROPPED: Final = BroadcastResult(dropped=1)
CLOSED: Final = BroadcastResult(closed=1)


class DropOldest:
    """The whole, unsent messages of one connection's queue that ``"drop_oldest"`` may drop.

    Each is the very `memoryview` object in the connection's queue: one the
    socket has partly taken is replaced there by a slice, a new object, so
    it is no longer here. Dropped ones stay in the queue, skipped when they
    reach its head (taking one out of the middle of a deque would cost a
    scan per drop).
    """

    __slots__ = ("_candidates", "_skipped")

    def __init__(self) -> None:
        self._candidates: deque[memoryview] = deque()  # in queue order
        self._skipped: set[int] = set()  # ids of dropped views still in the queue (which keeps them alive)

    def add(self, view: memoryview) -> None:
        """`view`, a whole message, was just queued last."""
        self._candidates.append(view)

    def drop_one(self) -> int:
        """Drop the oldest candidate; return its size (0: none left)."""
        if not self._candidates:
            return 0
        view = self._candidates.popleft()
        self._skipped.add(id(view))
        return view.nbytes

    def drop_over(self, queued: int, high_water: int) -> tuple[int, int]:
        """Drop the oldest candidates while `queued` bytes, less those dropped, are over `high_water`.

        Returns:
            How many were dropped, and their bytes.
        """
        dropped = freed = 0
        while queued - freed > high_water and (size := self.drop_one()):
            freed += size
            dropped += 1
        return dropped, freed

    def __len__(self) -> int:
        """The candidates left."""
        return len(self._candidates)

    def was_dropped(self, view: memoryview) -> bool:
        """`view` left the queue's head: True if it was dropped (skip it, do not write it)."""
        if self._skipped and id(view) in self._skipped:
            self._skipped.discard(id(view))
            return True
        return False

    def taken(self, view: memoryview) -> None:
        """The socket took `view`, all or part of it: no longer a candidate (call in queue order)."""
        candidates = self._candidates
        if candidates and candidates[0] is view:
            candidates.popleft()

    def leaving(self, view: memoryview) -> bool:
        """`view` is at the queue's head, about to be written whole: True if it was dropped (skip it)."""
        self.taken(view)
        return self.was_dropped(view)

    def clear(self) -> None:
        """The queue was emptied (the connection closed)."""
        self._candidates.clear()
        self._skipped.clear()
