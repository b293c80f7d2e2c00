"""The select engine's readiness poller: ``select.epoll`` itself where it exists, `selectors` elsewhere.

`selectors` costs, per ready socket, a key lookup and a ``(key, events)``
tuple on top of ``epoll.poll``'s own ``(fd, events)`` pair: measured with
``connecteur bench`` (many: 1,000 connections, one request in flight on
each), about a microsecond of a ~15 µs round trip. So on Linux the engine
calls epoll directly and looks each descriptor's object up in one dict;
`selectors` (kqueue, poll, select) remains the portable path, behind the same
four methods.

Events are epoll's bits on every platform: `READ`, `WRITE`, and epoll's own
error and hang-up bits, which count as both readable and writable (as
`selectors` reports them): a test ``events & READABLE`` or ``events & WRITABLE``
says which handler to call.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
from typing import Final, Generic, TypeVar

__all__ = ["READ", "READABLE", "WRITABLE", "WRITE", "Poller"]

READ: Final = 0x001
"""Wanted or ready for reading (epoll's EPOLLIN)."""
WRITE: Final = 0x004
"""Wanted or ready for writing (epoll's EPOLLOUT)."""
READABLE: Final = ~WRITE
"""The ready bits on which to read: any but `WRITE` alone (errors and hang-ups included)."""
WRITABLE: Final = ~READ
"""The ready bits on which to write: any but `READ` alone."""

T = TypeVar("T")


class Poller(Generic[T]):
    """Sockets, the events each waits for, and an object per socket; `poll` tells which are ready."""

    def __init__(self) -> None:
        self.objects: dict[int, T] = {}
        """Each registered descriptor's object."""
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None

    def register(self, sock: socket.socket, events: int, obj: T) -> None:
        """Watch `sock` for `events`; `obj` stands for it in `objects`."""
        fd = sock.fileno()
        if self._epoll is not None:
            self._epoll.register(fd, events)
        else:
            assert self._selector is not None
            self._selector.register(fd, _selector_events(events))
        self.objects[fd] = obj

    def modify(self, sock: socket.socket, events: int) -> None:
        """Watch a registered socket for `events` instead."""
        if self._epoll is not None:
            self._epoll.modify(sock.fileno(), events)
        else:
            assert self._selector is not None
            self._selector.modify(sock.fileno(), _selector_events(events))

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching `sock` (still open); nothing happens if it was not registered."""
        fd = sock.fileno()
        if self.objects.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError, KeyError, ValueError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._selector is not None
                self._selector.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait up to `timeout` seconds (None: no limit) and return ``(fd, events)`` of the ready sockets."""
        if self._epoll is not None:
            return self._epoll.poll(-1.0 if timeout is None else timeout)
        assert self._selector is not None
        ready = self._selector.select(timeout)
        return [
            (key.fd, (READ if mask & selectors.EVENT_READ else 0) | (WRITE if mask & selectors.EVENT_WRITE else 0))
            for key, mask in ready
        ]

    def close(self) -> None:
        """Release the poller; the sockets stay open."""
        self.objects.clear()
        if self._epoll is not None:
            self._epoll.close()
        else:
            assert self._selector is not None
            self._selector.close()


def _selector_events(events: int) -> int:
    return (selectors.EVENT_READ if events & READ else 0) | (selectors.EVENT_WRITE if events & WRITE else 0)
