"""The exception hierarchy of connecteur: one page, no I/O.

Every error says whose fault it is: the peer's bad bytes (`FramingError` and
its children), the peer going away (`ConnectionClosed`), time running out
(`Timeout`), the caller asking for something impossible (`AddressError`, and
`FramingError` raised by `encode()`), or a server's worker processes that keep
dying (`WorkersFailed`). Each inherits the matching builtin so that
code written against the standard library still catches it.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "AuthenticationError",
    "CodecError",
    "ConnecteurError",
    "ConnectionClosed",
    "FramingError",
    "MessageTooLarge",
    "ProxyProtocolError",
    "RemoteError",
    "Timeout",
    "TruncatedMessage",
    "WorkersFailed",
]


class ConnecteurError(Exception):
    """Base class of every exception connecteur raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes would defeat Exception's default pickling,
        # which calls cls(*args): rebuild from args and state instead, so an
        # error can cross a process boundary (the processes engine's logs).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ConnecteurError], args: tuple[object, ...], state: dict[str, object]) -> ConnecteurError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class FramingError(ConnecteurError, ValueError):
    """Bytes that do not follow the framing, or a message the framing cannot carry.

    Raised by a decoder for the peer's malformed bytes, and by `encode()` for a
    message the caller cannot send with this framing.

    Attributes:
        messages: the complete messages a decoder found *before* the bad bytes
            in the same `feed()` call, so that a loop can still act on them.
    """

    messages: list[bytes]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.messages = []


class MessageTooLarge(FramingError):
    """A message over the framing's `max_size`, in either direction.

    Attributes:
        size: the announced or attempted size in bytes (for a delimited
            framing, the bytes received so far that can only belong to the
            message, a possible start of the delimiter excluded).
        max_size: the limit in force, in bytes.
    """

    def __init__(self, message: str, *, size: int, max_size: int) -> None:
        super().__init__(message)
        self.size = size
        self.max_size = max_size


class TruncatedMessage(FramingError):
    """The stream ended inside a message.

    Attributes:
        pending: how many bytes of the unfinished message were received.
    """

    def __init__(self, message: str, *, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class CodecError(FramingError):
    """A payload its codec cannot decode, or a value it cannot encode."""


class ConnectionClosed(ConnecteurError, ConnectionError):
    """The connection is closed: by the peer between two messages, or locally.

    Attributes:
        by_peer: True when the peer ended the stream; False when this side
            had already closed the connection.
    """

    def __init__(self, message: str, *, by_peer: bool = True) -> None:
        super().__init__(message)
        self.by_peer = by_peer


class RemoteError(ConnecteurError):
    """The server's handler failed on this request and answered with an error reply.

    Only on multiplexed connections (``connect(..., multiplexed=True)``): the
    connection stays open, and other requests in flight are not affected.
    Whose fault it is, the server's code or the request's content, the
    server alone knows; the message is the text it sent.

    Attributes:
        request_id: the id of the request that failed, as sent on the wire.
    """

    def __init__(self, message: str, *, request_id: int) -> None:
        super().__init__(message)
        self.request_id = request_id


class AuthenticationError(ConnecteurError):
    """The shared-secret handshake failed."""


class Timeout(ConnecteurError, TimeoutError):
    """An operation did not finish within its time limit.

    Attributes:
        seconds: the limit that ran out.
    """

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class ProxyProtocolError(ConnecteurError, ValueError):
    """The peer's PROXY protocol header is malformed, oversize or not allowed.

    Raised by `connecteur.proxy_protocol.ProxyHeaderReader` for the bytes a
    load balancer (or whoever connected) sent before the application data.
    """


class AddressError(ConnecteurError, ValueError):
    """An address string or tuple that cannot be parsed (the caller's mistake)."""


class WorkersFailed(ConnecteurError, RuntimeError):
    """A server's worker processes kept dying, so it stopped rather than replace them for ever.

    Raised by `Server.serve_forever` (and by `Server.stop` after `Server.start`)
    once workers died too often outside a stop; each death is logged with its
    exit status or signal. Something outside the handler's reach kills them (the
    OOM killer, a crashing extension, an operator's ``kill``), so a supervisor that
    restarts the whole service (systemd's ``Restart=on-failure``) is the next
    step: ``connecteur serve`` exits with status 1 for it. A `RuntimeError`, not
    an `OSError`: no system call failed, and `OSError` from `serve_forever`
    means the address could not be bound.

    Attributes:
        deaths: the workers that died within `seconds`.
        seconds: the window they died in.
    """

    def __init__(self, message: str, *, deaths: int, seconds: float) -> None:
        super().__init__(message)
        self.deaths = deaths
        self.seconds = seconds
