"""The processes engine: the HOWTO's "create a new process to handle the client".

The parent accepts (in a selector beside a wake-up socket) and forks one child
per connection. The child closes every descriptor it inherited except its
connection, a pipe back to the parent and the standard streams, then serves
the connection with the same blocking loop as the threads engine
(`BlockingLink`), writes its counters to the pipe and exits. The pipe's end
of file tells the parent the child is gone: it adds the counters to
`server.stats` and reaps the child, so no zombie is left.

What is shared: nothing but the listening port. Handler state lives in each
child and dies with it; `peer.send` from another connection cannot reach a
child. `server.stats` counts a connection's messages when the connection ends.

Stopping: the parent stops accepting (serving what is still in the backlog),
lets children run until their peer's EOF or the stop deadline, then sends
SIGTERM (the child shuts its connection down and reports), and SIGKILL to any
child still there `KILL_GRACE` later: one whose handler blocks, logged.
Children ignore SIGINT: a Ctrl-C reaches the whole process group, and the
parent decides how to stop.

Needs ``os.fork`` (Linux, macOS, the BSDs); not available on Windows.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from .. import _socket
from ..address import format_address
from ._blocking import BlockingLink, thread_budget
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    Counters,
    EngineConfig,
    PendingAdmissions,
    StopSignal,
    accept_ready,
    logger,
    refuse_if_full,
    refuse_untrusted,
)
from ._fork import Reports, become_child, fork, write_report

__all__ = ["ProcessesEngine"]

KILL_GRACE: Final = 0.2
"""Seconds a child has, after SIGTERM at the stop deadline, before SIGKILL:
milliseconds are enough unless its handler blocks, and the stop keeps its deadline."""


@dataclass
class _Child:
    pid: int
    pipe: int
    address: object
    reports: Reports = field(default_factory=Reports)


class ProcessesEngine:
    """A forked process per connection; see the module's description."""

    def __init__(self, config: EngineConfig) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("the processes engine needs os.fork(), which this platform lacks")
        self._config = config
        self._selector = selectors.DefaultSelector()
        self._stop = StopSignal()
        self._children: dict[int, _Child] = {}  # by pipe descriptor
        self._pending = PendingAdmissions()

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline`; safe from threads and signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def abandon(self) -> None:
        """Nothing to do: this thread runs no handler, and kills late children itself (see `Engine`)."""

    def serve(self, listener: socket.socket) -> None:
        """Accept and fork until a stop is requested, then stop gracefully (see `Engine`)."""
        listener.setblocking(False)
        self._selector.register(self._stop.reader, selectors.EVENT_READ)
        try:
            with listener:
                self._accept_until_stopped(listener)
                if not self._pending.retry(self._admit):
                    accept_ready(listener, self._admit, LAST_ACCEPTS)
            self._wait_for_children()
        finally:
            self._pending.close_all(self._config.counters)
            self._kill_children(signal.SIGKILL)
            self._selector.close()
            self._stop.close()

    # --- accepting -------------------------------------------------------------

    def _accept_until_stopped(self, listener: socket.socket) -> None:
        selector = self._selector
        selector.register(listener, selectors.EVENT_READ)
        paused_until: float | None = None
        while self._stop.deadline is None:
            timeout = None if paused_until is None else max(0.0, paused_until - time.monotonic())
            for key, _ in selector.select(timeout):
                if key.fileobj is listener:
                    if accept_ready(listener, self._admit, ACCEPT_BATCH):
                        selector.unregister(listener)  # out of descriptors: do not spin
                        paused_until = time.monotonic() + ACCEPT_BACKOFF
                else:
                    self._on_readable(key.fileobj)
            if paused_until is not None and time.monotonic() >= paused_until:
                if self._pending.retry(self._admit):
                    paused_until = time.monotonic() + ACCEPT_BACKOFF
                    continue
                selector.register(listener, selectors.EVENT_READ)
                paused_until = None
        if paused_until is None:
            # Before the listener closes: its descriptor number may come back
            # as a child's pipe, which this selector must be free to register.
            selector.unregister(listener)

    def _admit(self, sock: socket.socket, address: object) -> bool:
        if refuse_if_full(self._config, sock, address) or refuse_untrusted(self._config, sock, address):
            return False
        counters = self._config.counters
        try:
            reader, writer = os.pipe()
        except OSError as exc:
            return self._cannot_serve(sock, address, exc)
        # SIGTERM (the stop deadline's) waits, blocked, until the child has its
        # handler; by default it would kill a child just forked, unreported.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = fork()
        except OSError as exc:  # EAGAIN: the process limit
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            os.close(reader)
            os.close(writer)
            return self._cannot_serve(sock, address, exc)
        if pid == 0:  # the child never returns
            os.close(reader)
            _run_child(self._config, sock, address, writer)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(writer)
        sock.close()
        counters.opened()
        self._children[reader] = _Child(pid, reader, address)
        self._selector.register(reader, selectors.EVENT_READ)
        return False

    def _cannot_serve(self, sock: socket.socket, address: object, exc: OSError) -> bool:
        return self._pending.put(sock, address, exc)

    # --- children --------------------------------------------------------------

    def _on_readable(self, fileobj: object) -> None:
        if fileobj is self._stop.reader:
            self._stop.drain()
            return
        assert isinstance(fileobj, int)
        child = self._children[fileobj]
        data = os.read(child.pipe, 4096)
        if data:
            child.reports.feed(data)
        else:
            self._reap(child)

    def _reap(self, child: _Child) -> None:
        """The child closed its pipe (it is exiting): count its report, wait for it."""
        self._selector.unregister(child.pipe)
        os.close(child.pipe)
        del self._children[child.pipe]
        _, status = os.waitpid(child.pid, 0)
        counters, report = self._config.counters, child.reports.latest
        if report is None:
            code = os.waitstatus_to_exitcode(status)
            logger.error("the process serving %s died (exit status %s)", format_address(child.address), code)
            counters.closed(error=True)
            return
        counters.add_traffic(report)
        counters.closed(error=report.errors > 0)
        counters.handshake_failed(report.handshake_errors)

    def _wait_for_children(self) -> None:
        """Reap children as they end, until none is left or the stop deadline (which a new request may advance)."""
        self._reap_until(lambda: self._stop.deadline or time.monotonic())
        if self._children:
            self._kill_children(signal.SIGTERM)
            until = time.monotonic() + KILL_GRACE
            self._reap_until(lambda: until)
        for child in self._children.values():  # SIGKILL follows
            logger.warning(
                "stop deadline passed with handler %s still running for %s (process %d): killing it",
                self._config.handler.name,
                format_address(child.address),
                child.pid,
            )

    def _reap_until(self, due: Callable[[], float]) -> None:
        while self._children and (remaining := due() - time.monotonic()) > 0:
            for key, _ in self._selector.select(remaining):
                self._on_readable(key.fileobj)

    def _kill_children(self, signum: signal.Signals) -> None:
        for child in list(self._children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
            if signum == signal.SIGKILL:
                self._selector.unregister(child.pipe)
                os.close(child.pipe)
                os.waitpid(child.pid, 0)
                self._config.counters.closed(error=True)
                del self._children[child.pipe]


def _run_child(config: EngineConfig, sock: socket.socket, address: object, pipe: int) -> None:
    """Serve one connection in a forked child, report, and exit. Never returns."""
    status = 1
    try:
        become_child(keep={sock.fileno(), pipe})
        counters = Counters()
        sock.setblocking(True)
        _socket.configure_stream(sock, config.keepalive)
        on_open: Callable[[], object] | None = None
        if not config.channel.is_plain and config.handshake_timeout is not None:
            # A watchdog for the handshake: forked while another thread of the
            # parent was inside OpenSSL, this child may wait for ever on a lock
            # that thread held, in C, where no timeout of ours runs. SIGALRM's
            # default action ends it; the parent reports a child that died.
            signal.alarm(math.ceil(config.handshake_timeout) + 1)
            on_open = functools.partial(signal.alarm, 0)
        config = replace(config, counters=counters)
        budget = thread_budget(config)  # this process's: one connection, so max_buffered caps its message
        link = BlockingLink(config, sock, address, lambda link: None, on_open, budget=budget)
        signal.signal(signal.SIGTERM, lambda signum, frame: link.abort())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by the parent around fork()
        counters.opened()
        link.run()
        write_report(pipe, counters.snapshot())
        status = 0
    except BaseException:
        logger.exception("the process serving %s failed", format_address(address))
    finally:
        os._exit(status)
