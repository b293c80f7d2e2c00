"""The clients' side of ``on_oversize="skip"``: the decoder counts a skipped message, this logs it."""

from __future__ import annotations

import logging
from typing import Final

from ._peerlog import log_peer_fault
from .errors import MessageTooLarge
from .framing import Decoder, Framing

__all__ = ["logger", "report_skips"]

logger: Final = logging.getLogger("connecteur.client")
"""Where the clients log the messages their framing skipped."""


def report_skips(framing: Framing, decoder: Decoder, address: object) -> None:
    """Log each message `decoder` skips, if `framing` skips any (``on_oversize="skip"``).

    A WARNING, as for a server, within the same budget of peer-fault lines
    a minute: a client reading a flood of oversized replies must not fill a
    disk either. Set once per connection: nothing is checked per read.
    """
    if getattr(framing, "on_oversize", "close") != "skip":
        return

    def skipped(error: MessageTooLarge) -> None:
        log_peer_fault(address, error, "skipping a message from", logger)

    decoder.on_skip = skipped  # type: ignore[attr-defined]
