"""`Peer`: the server side of one connection, as handlers see it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, final

from .._compiled import python_class
from ..address import format_address
from ..errors import ConnectionClosed
from ..framing import Buffer

__all__ = ["Link", "Peer", "closed_locally"]


def closed_locally(address: object) -> ConnectionClosed:
    """The error for a send on a connection this side has already closed."""
    return ConnectionClosed(f"connection to {format_address(address)} is closed", by_peer=False)


class Link(Protocol):
    """Internal: what an engine provides behind each `Peer`."""

    def send(self, message: Buffer, policy: str | None = None) -> None:
        """Send or queue one message to the peer, from any thread; `policy` for a slow peer (None: the server's)."""
        ...

    @property
    def queued(self) -> int:
        """Bytes waiting to be written to the peer."""
        ...

    def close(self) -> None:
        """Close the connection once the replies already due are sent."""
        ...


@final
class _ClosedLink:
    """What a `Peer` points at once its connection is closed.

    The engine's per-connection object holds the peer, so a peer that held it
    back would make a reference cycle: the connection's buffers would then wait
    for the cyclic garbage collector, not go at close.
    """

    __slots__ = ("_address",)

    def __init__(self, address: object) -> None:
        self._address = address

    def send(self, message: Buffer, policy: str | None = None) -> None:
        raise closed_locally(self._address)

    @property
    def queued(self) -> int:
        return 0

    def close(self) -> None:
        pass


@final
@python_class  # weakly referenced: WeakSet of peers
class Peer:
    """One connected client, as a handler sees it.

    Attributes:
        address: the client's address as the socket module gives it (a
            ``(host, port)`` tuple for TCP). Behind a balancer that sends
            PROXY headers, the original client's address.
        proxy_address: the balancer's address when the connection came with a
            PROXY header naming another client; None otherwise.
        data: a dict for the handler's per-connection state.
        dropped: messages a slow-consumer policy dropped instead of sending
            them to this peer (see `send`).
    """

    __slots__ = (
        "__weakref__",
        "_encode",
        "_link",
        "address",
        "data",
        "dropped",
        "proxy_address",
    )  # weakref: WeakSet of peers

    def __init__(self, link: Link, address: object, encode: Callable[[Any], Buffer] | None = None) -> None:
        self._link = link
        self._encode = encode
        self.address = address
        self.proxy_address: object = None
        self.data: dict[str, Any] = {}
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Peer {format_address(self.address)}>"

    @property
    def queued(self) -> int:
        """Bytes waiting to be written to this peer: those its socket has not taken yet."""
        return self._link.queued

    def send(self, message: Any, policy: str | None = None) -> None:
        """Send a message to this peer; safe from any thread.

        It never waits for the peer: what its socket does not take at once
        is queued, and written as the peer reads (with backpressure: see
        docs/fan-out.md).

        With a codec on the server, `message` is a value the codec encodes.

        Args:
            message: the message (bytes, or a value for the server's codec).
            policy: what to do when more than the server's ``high_water``
                bytes are already queued for this peer:
                ``"close"`` (queue it; the peer is closed past the hard cap),
                ``"drop"`` (do not send it; counted in `dropped`) or
                ``"drop_oldest"`` (send it, drop older queued messages sent
                with this policy). None: the server's ``slow_consumer``.

        Raises:
            CodecError: the codec cannot encode the value (nothing is sent).
            FramingError: the framing cannot carry the message.
            ConnectionClosed: the connection is already closed.
            ValueError: an unknown policy.
        """
        self._link.send(message if self._encode is None else self._encode(message), policy)

    def close(self) -> None:
        """Close this connection after the replies already due; safe from any thread."""
        self._link.close()

    def _detach(self) -> None:
        """The connection is closed: let go of the engine's object (see `_ClosedLink`)."""
        self._link = _ClosedLink(self.address)
