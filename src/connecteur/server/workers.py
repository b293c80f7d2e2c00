"""Pre-forked workers: several processes, each running its own engine, on one port.

Python runs one thread of bytecode at a time per process, so an event loop
uses one core. ``Server(..., workers=N)`` forks N workers; each serves with
its own engine (select or asyncio), and the kernel spreads new connections
over them: with ``SO_REUSEPORT`` (Linux, the BSDs) every worker listens on a
socket of its own bound to the same port (all bound before any worker starts);
elsewhere they share the inherited listening socket.

The parent only supervises. Each worker reports its counters as JSON lines on
a pipe every `REPORT_INTERVAL` seconds and when it stops; `server.stats` adds
up the latest report of every worker, and keeps a dead worker's last one. A
stop is a line on each worker's control pipe giving the seconds left; if the
parent dies, that pipe's end of file stops the worker too, so no worker is
orphaned.

A worker that dies outside a stop (the end of file on its reports pipe says
so at once) is logged with its exit status or signal, counted in
`Stats.worker_restarts` and replaced, from the same listening socket: the
parent keeps every worker's socket open until the stop, so the connections the
kernel queues on a dead worker's socket wait for its replacement instead of
being reset. The first death of a slot is replaced at once, repeated ones
after a growing delay (`RESTART_BACKOFF`); `MAX_DEATHS` deaths within
`DEATH_WINDOW` stop the server, and `serve` raises `WorkersFailed`.

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from .. import _socket
from ..address import Address, TcpAddress
from ..errors import WorkersFailed
from ._engine import Counters, Engine, EngineConfig, StopSignal, logger
from ._fork import Reports, become_child, fork, write_report

__all__ = ["WorkersEngine"]

REPORT_INTERVAL: Final = 0.2
"""Seconds between a worker's reports of its counters: fresh enough for a
monitor, rare enough to cost nothing. What a killed worker counted since its
last report is lost."""

ORPHAN_GRACE: Final = 1.0
"""Seconds a worker takes to stop gracefully when its parent vanished or it got
SIGTERM directly: no parent is there to give it the server's stop timeout."""

KILL_GRACE: Final = 0.2
"""Seconds a worker has past the stop deadline before SIGKILL. A worker whose
loop is stuck in a handler gives up on it by itself halfway (logging the
handler) and exits; so the stop keeps its deadline."""

RESTART_BACKOFF: Final = 0.1
"""Seconds before replacing a worker that died young (within `DEATH_WINDOW` of
its start) in place of another that died young, doubled for each further one
in a row, up to `RESTART_BACKOFF_MAX`: a worker that dies as it starts must not
make the parent fork in a busy loop. A slot's first death is replaced at once,
so that one crash costs no capacity."""

RESTART_BACKOFF_MAX: Final = 1.0
"""The longest a slot stays empty, in seconds: the connections the kernel
queues on its socket meanwhile wait that long (they are not refused)."""

MAX_DEATHS: Final = 5
"""Workers dying within `DEATH_WINDOW` that stop the server with `WorkersFailed`.
With `DEATH_WINDOW`, systemd's default start limit (``StartLimitBurst=5`` within
``StartLimitIntervalSec=10s``): a server whose workers die that often is not
serving; better to stop, say so, and let a supervisor restart it whole."""

DEATH_WINDOW: Final = 10.0
"""Seconds over which `MAX_DEATHS` is counted; also how long a worker must live
for its death to count as a first one again (immediate replacement)."""

EngineFactory = Callable[[EngineConfig], Engine]


@dataclass
class _Worker:
    index: int
    pid: int
    reports_pipe: int
    control_pipe: int
    reports: Reports = field(default_factory=Reports)


@dataclass
class _Slot:
    """One of the N places a worker serves from; its listening socket outlives its workers."""

    listener: socket.socket
    started: float = 0.0  # time.monotonic() when its current worker was forked
    deaths_in_a_row: int = 0  # of workers that died within DEATH_WINDOW of their start
    restart_at: float | None = None  # when to fork a replacement; None: none pending

    def died(self, now: float) -> float:
        """Count its worker's death; return the seconds to wait before replacing it."""
        young = now - self.started < DEATH_WINDOW
        self.deaths_in_a_row = self.deaths_in_a_row + 1 if young else 1
        if self.deaths_in_a_row == 1:
            return 0.0
        return min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2.0 ** (self.deaths_in_a_row - 2))


class WorkersEngine:
    """N forked workers, each with its own engine, replaced when they die; see the module's description."""

    def __init__(
        self,
        config: EngineConfig,
        make_engine: EngineFactory,
        *,
        workers: int,
        address: Address | None,
        backlog: int,
        stop_timeout: float,
    ) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("workers need os.fork(), which this platform lacks")
        self._config = config
        self._make_engine = make_engine
        self._count = workers
        self._stop_timeout = stop_timeout
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
        self._slots: list[_Slot] = []
        self._workers: dict[int, _Worker] = {}  # by reports pipe
        self._deaths: deque[float] = deque()  # when workers died outside a stop, the last DEATH_WINDOW seconds
        self._failure: WorkersFailed | None = None
        # Set once every worker is forked: `Server.start()` waits for it, so that
        # no thread of the caller is inside OpenSSL (or holds any lock) while
        # this thread forks, which could leave a child stuck on that lock. (A
        # replacement is forked while they run, as the processes engine does.)
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
        """Fork the workers, replace those that die, and stop them gracefully at a stop.

        Raises:
            WorkersFailed: `MAX_DEATHS` workers died within `DEATH_WINDOW`
                seconds; the others were stopped gracefully first.
            OSError: the first workers could not be forked.
        """
        self._selector.register(self._stop.reader, selectors.EVENT_READ)
        listeners = [listener, *self._own_listeners]
        # Without SO_REUSEPORT (or with an adopted socket), every worker shares the one listener.
        self._slots = [_Slot(listeners[min(index, len(listeners) - 1)]) for index in range(self._count)]
        try:
            try:
                for index in range(self._count):
                    self._start_worker(index)
            finally:
                self.forked.set()
            while self._stop.deadline is None:
                self._supervise(self._until_next_restart())
                self._restart_due()
            self._close_listeners()  # the workers' copies are the last: they drain their queues
            self._stop_workers()
        finally:
            if self._workers:  # an error: these deaths are no cause for replacements
                self._stop.request(time.monotonic())
            for worker in list(self._workers.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                self._reap(worker)
            self._selector.close()
            self._stop.close()
            self._close_listeners()
        if self._failure is not None:
            raise self._failure

    def _close_listeners(self) -> None:
        for slot in self._slots:
            slot.listener.close()

    def _start_worker(self, index: int) -> None:
        slot = self._slots[index]
        reports_read, reports_write = os.pipe()
        control_read, control_write = os.pipe()
        try:
            pid = fork()
        except OSError:
            for fd in (reports_read, reports_write, control_read, control_write):
                os.close(fd)
            raise
        if pid == 0:  # never returns
            _run_worker(self, index, slot.listener, control_read, reports_write)
        os.close(reports_write)
        os.close(control_read)
        slot.started = time.monotonic()
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
                    self._config.counters.report_elsewhere(worker.pid, worker.reports.latest)
            else:
                self._reap(worker)

    def _until_next_restart(self) -> float | None:
        """Seconds until the next replacement is due, None when none is pending."""
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, slot in enumerate(self._slots):
            if slot.restart_at is None or slot.restart_at > now or self._stop.deadline is not None:
                continue
            slot.restart_at = None
            try:
                self._start_worker(index)
            except OSError as exc:  # out of processes or memory: as good as a death
                self._died(index, f"worker {index}", f"could not be forked ({exc})")
            else:
                self._config.counters.worker_restarted()

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
        """The worker closed its reports pipe: wait for it, keep its counts, say why it ended."""
        self._selector.unregister(worker.reports_pipe)
        os.close(worker.reports_pipe)
        os.close(worker.control_pipe)
        del self._workers[worker.reports_pipe]
        _, status = os.waitpid(worker.pid, 0)
        self._config.counters.retire_elsewhere(worker.pid)
        code = os.waitstatus_to_exitcode(status)
        who = f"worker {worker.index} (pid {worker.pid})"
        if self._stop.deadline is None:
            self._died(worker.index, who, _how_it_ended(code))
        elif code != 0:
            logger.error("%s %s while stopping", who, _how_it_ended(code))

    def _died(self, index: int, who: str, ended: str) -> None:
        """A worker died outside a stop: replace it, or stop the server if too many did."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] <= now - DEATH_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) >= MAX_DEATHS:
            logger.error("%s %s; stopping the server: too many deaths", who, ended)
            message = f"{len(self._deaths)} workers died within {DEATH_WINDOW:g} s; the last, {who}, {ended}"
            self._failure = WorkersFailed(message, deaths=len(self._deaths), seconds=DEATH_WINDOW)
            self._stop.request(now + self._stop_timeout)
            return
        slot = self._slots[index]
        delay = slot.died(now)
        slot.restart_at = now + delay
        when = "now" if delay == 0 else f"in {delay:g} s ({slot.deaths_in_a_row} early deaths in a row)"
        logger.error("%s %s; replacing it %s", who, ended, when)


def _how_it_ended(code: int) -> str:
    """A worker's end, from `os.waitstatus_to_exitcode`: its exit status or its signal's name."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


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
