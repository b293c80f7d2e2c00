"""The limits of the event-loop engines (select and asyncio), which keep the same ones.

Here, not in either engine, so that neither engine imports the other.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HARD_CAP", "HIGH_WATER", "LOW_WATER", "RECV_SIZE"]

RECV_SIZE: Final = 256 * 2**10
"""256 KiB: the one read buffer all connections share; large enough for bulk
transfers in few reads, allocated once per engine."""

HIGH_WATER: Final = 1 * 2**20
"""1 MiB queued for a peer that does not read: stop reading its requests."""

LOW_WATER: Final = 256 * 2**10
"""Read that peer again once its queue is back under 256 KiB."""

HARD_CAP: Final = 16 * 2**20
"""16 MiB queued for one peer (by `peer.send()`, which cannot wait): disconnect it."""
