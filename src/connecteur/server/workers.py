"""Pre-forked workers: several processes, each running its own engine, on one port.

Python runs one thread of bytecode at a time per process, so an event loop
uses one core. ``Server(..., workers=N)`` forks N workers; each serves with
its own engine (select or asyncio), and the kernel spreads new connections
over them: with ``SO_REUSEPORT`` (Linux, the BSDs) every worker listens on a
socket of its own bound to the same port (all bound before any worker starts);
elsewhere they share the inherited listening socket.

The parent only supervises. Each worker reports its counters as JSON lines on
a pipe every `REPORT_INTERVAL` seconds and when it stops; `server.stats` adds
up the latest report of every worker. A stop is a line on each worker's
control pipe giving the seconds left; if the parent dies, that pipe's end of
file stops the worker too, so no worker is orphaned.

What is shared: the port only. Handler state lives in each worker.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from .. import _socket
from ..address import Address, TcpAddress
from ._engine import Counters, Engine, EngineConfig, StopSignal, logger
from ._fork import Reports, become_child, fork, write_report

__all__ = ["WorkersEngine"]

REPORT_INTERVAL: Final = 0.2
"""Seconds between a worker's reports of its counters: fresh enough for a
monitor, rare enough to cost nothing."""

ORPHAN_GRACE: Final = 1.0
"""Seconds a worker takes to stop gracefully when its parent vanished or it got
SIGTERM directly: no parent is there to give it the server's stop timeout."""

KILL_GRACE: Final = 0.2
"""Seconds a worker has past the stop deadline before SIGKILL. A worker whose
loop is stuck in a handler gives up on it by itself halfway (logging the
handler) and exits; so the stop keeps its deadline."""

EngineFactory = Callable[[EngineConfig], Engine]


@dataclass
class _Worker:
    index: int
    pid: int
    reports_pipe: int
    control_pipe: int
    reports: Reports = field(default_factory=Reports)


class WorkersEngine:
    """N forked workers, each with its own engine; see the module's description."""

    def __init__(
        self,
        config: EngineConfig,
        make_engine: EngineFactory,
        *,
        workers: int,
        address: Address | None,
        backlog: int,
    ) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("workers need os.fork(), which this platform lacks")
        self._config = config
        self._make_engine = make_engine
        self._count = workers
        # Every worker's socket joins the port's SO_REUSEPORT group now, before
        # any worker runs, so that the kernel spreads connections from the start.
        self._own_listeners: list[socket.socket] = []
        # address None: an adopted socket (systemd), which the workers share.
        if isinstance(address, TcpAddress) and hasattr(socket, "SO_REUSEPORT"):
            self._own_listeners = [
                _socket.listen(address, backlog=backlog, reuse_port=True) for _ in range(workers - 1)
            ]
        self._selector = selectors.DefaultSelector()
        self._stop = StopSignal()
        self._workers: dict[int, _Worker] = {}  # by reports pipe
        # Set once every worker is forked: `Server.start()` waits for it, so that
        # no thread of the caller is inside OpenSSL (or holds any lock) while
        # this thread forks, which could leave a child stuck on that lock.
        self.forked = threading.Event()

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline`; safe from threads and signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def abandon(self) -> None:
        """Nothing to do: this thread runs no handler, and kills late workers itself (see `Engine`)."""

    def serve(self, listener: socket.socket) -> None:
        """Fork the workers, supervise them until a stop, then stop them gracefully."""
        self._selector.register(self._stop.reader, selectors.EVENT_READ)
        try:
            listeners = [listener, *self._own_listeners]
            try:
                for index in range(self._count):
                    self._start_worker(index, listeners[index] if index < len(listeners) else listener)
            finally:
                self.forked.set()
            for each in listeners:
                each.close()
            while self._stop.deadline is None and self._workers:
                self._supervise(None)
            self._stop_workers()
        finally:
            for worker in list(self._workers.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                self._reap(worker)
            self._selector.close()
            self._stop.close()
            for each in self._own_listeners:
                each.close()

    def _start_worker(self, index: int, listener: socket.socket) -> None:
        reports_read, reports_write = os.pipe()
        control_read, control_write = os.pipe()
        pid = fork()
        if pid == 0:  # never returns
            _run_worker(self, index, listener, control_read, reports_write)
        os.close(reports_write)
        os.close(control_read)
        self._workers[reports_read] = _Worker(index, pid, reports_read, control_write)
        self._selector.register(reports_read, selectors.EVENT_READ)

    def _supervise(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._stop.reader:
                self._stop.drain()
                continue
            assert isinstance(key.fileobj, int)
            worker = self._workers[key.fileobj]
            data = os.read(worker.reports_pipe, 65536)
            if data:
                worker.reports.feed(data)
                if worker.reports.latest is not None:
                    self._config.counters.report_elsewhere(worker.index, worker.reports.latest)
            else:
                self._reap(worker)

    def _stop_workers(self) -> None:
        """Tell each worker the time left, again if a new request advances the deadline; kill the late ones."""
        told: float | None = None
        while self._workers:
            deadline = self._stop.deadline or time.monotonic()
            if deadline != told:
                told = deadline
                for worker in self._workers.values():
                    with contextlib.suppress(OSError):
                        os.write(worker.control_pipe, b"%f\n" % max(0.0, deadline - time.monotonic()))
            if (remaining := deadline + KILL_GRACE - time.monotonic()) <= 0:
                break
            self._supervise(remaining)  # woken by reports, ends, and stop requests
        for worker in self._workers.values():  # SIGKILL follows
            logger.warning(
                "worker %d (pid %d) had not stopped after the stop deadline: killing it", worker.index, worker.pid
            )

    def _reap(self, worker: _Worker) -> None:
        """The worker closed its reports pipe: wait for it and say why it ended."""
        self._selector.unregister(worker.reports_pipe)
        os.close(worker.reports_pipe)
        os.close(worker.control_pipe)
        del self._workers[worker.reports_pipe]
        _, status = os.waitpid(worker.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or self._stop.deadline is None:
            logger.error("worker %d (pid %d) ended with exit status %d", worker.index, worker.pid, code)


def _run_worker(parent: WorkersEngine, index: int, listener: socket.socket, control: int, reports: int) -> None:
    """A worker's life: its own listener and engine, reports, and a stop on command. Never returns."""
    status = 1
    try:
        become_child(keep={listener.fileno(), control, reports})
        counters = Counters()
        engine = parent._make_engine(replace(parent._config, counters=counters))
        stopped = threading.Event()
        threading.Thread(target=_obey_parent, args=(engine, control, stopped, counters, reports), daemon=True).start()
        threading.Thread(target=_report, args=(counters, reports, stopped), daemon=True).start()
        # A SIGTERM to the whole process group (systemd, `timeout`) stops gracefully too.
        signal.signal(signal.SIGTERM, lambda signum, frame: engine.request_stop(time.monotonic() + ORPHAN_GRACE))
        signal.set_wakeup_fd(engine.wakeup_fd(), warn_on_full_buffer=False)  # taken by another thread, too
        engine.serve(listener)
        stopped.set()
        with contextlib.suppress(BrokenPipeError):  # the parent may be gone
            write_report(reports, counters.snapshot())
        status = 0
    except BaseException:
        logger.exception("worker %d failed", index)
    finally:
        os._exit(status)


def _obey_parent(engine: Engine, control: int, stopped: threading.Event, counters: Counters, reports: int) -> None:
    """Stop when the parent says so (seconds left, each line; a later line may advance it), or soon if it is gone.

    If the engine has not stopped shortly after the deadline, a handler
    blocks its loop: give up on it (logged, its connections shut down),
    report, and exit, before the parent's SIGKILL.
    """
    deadline = math.inf
    pending: bytes | None = b""  # None: the parent is gone
    while not stopped.is_set():
        wait = None if deadline == math.inf else deadline + KILL_GRACE / 2 - time.monotonic()
        if wait is not None and wait <= 0:
            engine.abandon()
            with contextlib.suppress(OSError):
                write_report(reports, counters.snapshot())
            os._exit(0)
        if pending is None:
            stopped.wait(wait)
            continue
        if not select.select([control], [], [], wait)[0]:
            continue
        data = os.read(control, 64)
        *lines, pending = (pending + data).split(b"\n")
        seconds = [float(line) for line in lines]
        if not data:
            pending, seconds = None, [ORPHAN_GRACE]
        if seconds:
            deadline = min(deadline, time.monotonic() + min(seconds))
            engine.request_stop(deadline)


def _report(counters: Counters, reports: int, stopped: threading.Event) -> None:
    while not stopped.wait(REPORT_INTERVAL):
        try:
            write_report(reports, counters.snapshot())
        except OSError:
            return
