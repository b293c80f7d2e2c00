"""Forking children that hold only what they need, and their reports to the parent.

Shared by the processes engine (a child per connection) and pre-forked
workers (a child per core). Needs ``os.fork``: POSIX only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from dataclasses import asdict

from ._engine import Stats

__all__ = ["Reports", "become_child", "fork", "write_report"]


def fork() -> int:
    """``os.fork()``, quietly: returns 0 in the child, the child's pid in the parent."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that fork() in a threaded process may copy a held
        # lock; our children run only the engine's loop and then _exit().
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def become_child(keep: set[int]) -> None:
    """Turn a freshly forked process into a clean child.

    Closes every inherited descriptor but `keep` and the standard streams
    (otherwise the child would hold the sockets of unrelated code in the
    parent, and their peers would never see EOF) and forgets the parent's
    signal wakeup fd among them; ignores SIGINT, since a
    Ctrl-C reaches the whole process group and the parent decides how to
    stop; drops log handlers whose files were just closed.
    """
    _close_all_but({0, 1, 2, *keep})
    _rebind_standard_streams()
    with contextlib.suppress(ValueError):  # the parent's wakeup fd, just closed (fork from a non-main thread: none)
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for each in loggers:
        each.handlers[:] = [h for h in each.handlers if _stream_fileno(h) in (1, 2)]


def _rebind_standard_streams() -> None:
    """Point `sys.stdout` and `sys.stderr` back at descriptors 1 and 2 if they wrote elsewhere.

    An application (or pytest's output capture) may have replaced them with
    files on other descriptors, which `become_child` just closed: the next
    socket the child accepts would reuse the number and receive the process's
    prints and log lines (`logging.lastResort` writes to `sys.stderr`).
    Streams without a descriptor (``io.StringIO``) stay as they are.
    """
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        try:
            if stream is None or stream.fileno() == fd:
                continue
        except (AttributeError, OSError, ValueError):
            continue  # no descriptor of its own: it writes to memory, not to a number that may be reused
        setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115 - the process's stream


def write_report(pipe: int, stats: Stats) -> None:
    """Send a child's counters to the parent: one JSON line per report."""
    os.write(pipe, json.dumps(asdict(stats)).encode() + b"\n")


class Reports:
    """The parent's end of a child's report pipe: keeps the latest complete report."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self.latest: Stats | None = None

    def feed(self, data: bytes) -> None:
        """Add bytes read from the pipe."""
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        for line in lines:
            try:
                self.latest = Stats(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a child that died mid-write: its earlier report stands


def _close_all_but(keep: set[int]) -> None:
    highest = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
    start = 0
    for fd in sorted(keep):
        # Never an empty range: CPython 3.11 turns closerange(n, n) into
        # close_range(n, UINT_MAX), which closes every descriptor.
        if start < fd:
            os.closerange(start, fd)
        start = fd + 1
    if start < highest:
        os.closerange(start, highest)


def _stream_fileno(handler: logging.Handler) -> int:
    try:
        return int(handler.stream.fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return -1
