"""Parts of a selector loop, shared by the select engine and the fault proxy.

The waker (`StopSignal`: a stop deadline and the socket pair that wakes a
selector), the `Inbox` other threads hand work through, the `Timers` heap,
and the accept policy (`accept_ready`) every engine accepts with. Here, below
``server/`` and ``tools/``, so that both use one copy without either reaching
into the other's private modules.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import select
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "ACCEPT_BACKOFF",
    "ACCEPT_BATCH",
    "RESOURCE_ERRNOS",
    "Inbox",
    "StopSignal",
    "Timers",
    "accept_error_is_fatal_for_now",
    "accept_ready",
]

logger: Final = logging.getLogger("connecteur.server")
"""The accept policy's warnings keep the logger they always had, the fault proxy's included."""

ACCEPT_BATCH: Final = 64
"""Connections accepted per readiness event before serving the others again:
enough to drain a burst, few enough that a flood cannot starve open peers."""

ACCEPT_BACKOFF: Final = 0.1
"""Seconds to stop accepting after the process ran out of descriptors or
memory; retrying at once would spin on the same error (trio's survey)."""

# accept() errors that concern only the connection being accepted: skip it.
_PER_CONNECTION_ERRNOS: Final = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
     errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH}
)  # fmt: skip
# Errors that say the process is out of something (descriptors, memory): back off, never spin.
RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

T = TypeVar("T")


def accept_ready(listener: socket.socket, admit: Callable[[socket.socket, Any], bool], limit: int) -> bool:
    """Accept up to `limit` waiting connections from a non-blocking listener.

    Every engine accepts through here, so all share one policy. `admit`
    returns True when it could not take the connection for lack of a
    resource (a thread, a process), which pauses accepting like EMFILE.

    Returns:
        True when accepting must pause for `ACCEPT_BACKOFF` seconds (the
        process is out of descriptors, memory, threads or processes), False
        otherwise.
    """
    for _ in range(limit):
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return False
        except OSError as exc:
            if accept_error_is_fatal_for_now(exc):
                return True
            continue
        if admit(sock, address):
            return True
    return False


def accept_error_is_fatal_for_now(exc: OSError) -> bool:
    """Classify an ``accept()`` error.

    Returns:
        False when only that connection failed (skip it and go on accepting);
        True when the process is out of descriptors or memory: stop accepting
        for `ACCEPT_BACKOFF` seconds. The error is logged in that case.

    Raises:
        OSError: any other error is a bug or a closed listener: re-raised.
    """
    if exc.errno in _PER_CONNECTION_ERRNOS:
        return False
    if exc.errno in RESOURCE_ERRNOS:
        logger.warning("accept() failed (%s); pausing accepts for %.1f s", exc, ACCEPT_BACKOFF)
        return True
    raise exc


class StopSignal:
    """A stop deadline any thread or signal handler may set, and the socket that wakes a selector.

    Args:
        on_request: called after each request instead of waking `reader`
            (an event loop with a thread-safe wake-up of its own).

    Attributes:
        deadline: the `time.monotonic()` by which to stop, None while serving.
        reader: register it for reading in the engine's selector.
    """

    __slots__ = ("_on_request", "_writer", "deadline", "reader")

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.deadline: float | None = None
        self._on_request = on_request if on_request is not None else self.wake
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def request(self, deadline: float) -> None:
        """Ask for a stop by `deadline`; an earlier deadline than one already set wins."""
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
        self._on_request()

    def wake(self) -> None:
        """Make the selector return. Safe from any thread and from signal handlers."""
        with contextlib.suppress(OSError):  # full (a wake-up is already pending) or closed
            self._writer.send(b"\0")

    def drain(self) -> None:
        """Consume pending wake-ups (call when `reader` shows readable)."""
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    @property
    def wakeup_fd(self) -> int:
        """The descriptor to give `signal.set_wakeup_fd`: it makes `reader` readable."""
        return self._writer.fileno()

    def wait(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: for ever) for a wake-up, and consume it."""
        with contextlib.suppress(InterruptedError):  # a signal: its handler has run, let the caller look
            select.select([self.reader], [], [], timeout)
        self.drain()

    def close(self) -> None:
        """Close both sockets, first taking the wakeup fd back from the signal module if it is ours.

        Else a signal arriving later would write to a closed descriptor, or to
        whatever file reuses its number.
        """
        # ValueError: not the main thread, where it cannot be ours. OSError: a
        # forked child's, inherited, whose descriptor is closed (become_child resets it).
        with contextlib.suppress(ValueError, OSError):
            previous = signal.set_wakeup_fd(-1)
            if previous != self._writer.fileno():
                signal.set_wakeup_fd(previous)
        self.reader.close()
        self._writer.close()


class Inbox:
    """Actions other threads hand to a loop's thread, and the wake-up that makes the loop look.

    Args:
        waker: the loop's `StopSignal`, whose `reader` the loop watches.
    """

    __slots__ = ("_actions", "_waker")

    def __init__(self, waker: StopSignal) -> None:
        self._actions: deque[Callable[[], None]] = deque()
        self._waker = waker

    def put(self, action: Callable[[], None]) -> None:
        """Have the loop run `action` soon; safe from any thread."""
        self._actions.append(action)
        self._waker.wake()

    def run(self) -> None:
        """Consume the wake-ups and run what was put, in order (on the loop's thread, when `reader` is readable)."""
        self._waker.drain()
        actions = self._actions
        while actions:
            actions.popleft()()


class Timers(Generic[T]):
    """A heap of items that come due at a `time.monotonic()` value; equal times leave in the order added.

    Attributes:
        entries: the heap itself, ``(due, tie-breaker, item)`` with the
            earliest at ``entries[0]``; a loop may read it (``entries[0][0]``
            is the next due time) but changes it only through the methods.
    """

    __slots__ = ("_sequence", "entries")

    def __init__(self) -> None:
        self.entries: list[tuple[float, int, T]] = []
        self._sequence = itertools.count()

    def add(self, due: float, item: T) -> None:
        """Make `item` come due at `due`."""
        heapq.heappush(self.entries, (due, next(self._sequence), item))

    def timeout(self, now: float) -> float | None:
        """Seconds from `now` until the next item is due (0 if one is), None if there is none."""
        entries = self.entries
        return max(0.0, entries[0][0] - now) if entries else None

    def pop_due(self, now: float) -> Iterator[tuple[float, T]]:
        """Take out and yield ``(due, item)`` for each item due by `now`, earliest first.

        Items added meanwhile (by the caller acting on one) are yielded too if due by `now`.
        """
        entries = self.entries
        while entries and entries[0][0] <= now:
            due, _, item = heapq.heappop(entries)
            yield due, item

    def keep(self, wanted: Callable[[float, T], bool]) -> None:
        """Drop every entry for which ``wanted(due, item)`` is False."""
        entries = self.entries
        entries[:] = [entry for entry in entries if wanted(entry[0], entry[2])]
        heapq.heapify(entries)
