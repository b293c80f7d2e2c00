"""One connection served by a blocking loop, in a thread (threads engine) or a process (processes engine).

Here, not in either engine, so that neither engine imports the other. The
loop reads, hands the bytes to the connection's `Session` (``server/_session.py``)
and writes what it gives back; the session does the rest.

Writes never wait for the peer, whichever thread sends (the connection's own
replies, a `broadcast`, `peer.send` from another thread): each is queued on
the connection and written at once as far as the socket takes it without
blocking (``MSG_DONTWAIT``); what it does not take is left to a writer thread
of the connection's, started then and gone once the queue is empty, which
waits in ``poll`` for the socket to take more. The queue has the event
loops' water marks and slow-consumer policies (``server/_fanout.py``): past
``high_water`` the own thread stops reading (and ``paused`` is told), under
``low_water`` it reads again (``resumed``), past `HARD_CAP` the connection is
closed, unless the send's policy drops instead. Whole messages go in and out
of the queue in order under one lock, held around no blocking call, so a
reply and a broadcast never interleave inside a message.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ..address import format_address
from ..framing import BodyPool, Buffer
from ._budget import Budget, OverBudget
from ._engine import EngineConfig, logger
from ._fanout import CLOSED, DELIVERED, DROPPED, BroadcastResult, DropOldest, check_policy
from ._handler import HandlerFailed
from ._limits import HARD_CAP as HARD_CAP
from ._peer import closed_locally
from ._session import Session

__all__ = ["HARD_CAP", "RECV_SIZE", "BlockingLink", "thread_budget"]

RECV_SIZE: Final = 64 * 2**10
"""64 KiB read buffer per connection: one thread per connection already costs
more than this, and it holds many small messages per read."""


_DONTWAIT: Final = socket.MSG_DONTWAIT
"""Every write's flag: it takes what the socket takes now, and never waits for the peer."""

_GATHER_MAX: Final = 64
"""Buffers one ``sendmsg`` writes at most (the system's limit is 1,024 or more); more are joined first."""


def thread_budget(config: EngineConfig) -> Budget:
    """A memory budget for connections served by threads: its checks run in a short-lived timer thread."""

    def call_later(seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True  # it ends by itself within `seconds`; a stopping process need not wait
        timer.start()

    return Budget(config.max_buffered, config.counters, call_later)


class BlockingLink:
    """One connection served by a blocking loop (`run`) around its `Session`, in its own thread or process.

    Args:
        on_end: called with the link once it is closed and reported.
        on_open: called once the handshakes are done, before the handler hears of the peer.
        budget: the process's memory budget, shared by its connections.
        body_pool: where the decoder takes the bodies of large messages (shared by an
            engine's links); by default, one of the link's own (a process per connection).
    """

    # Another socket object on the same descriptor, for the writes, made by
    # `run`: its timeout stays None whatever the own thread's reads set on
    # `_sock`, so that a MSG_DONTWAIT send never first waits in poll() for
    # that timeout (CPython does on a socket with one). Detached, never closed.
    _sender: socket.socket

    def __init__(
        self,
        config: EngineConfig,
        sock: socket.socket,
        address: object,
        on_end: Callable[[BlockingLink], None],
        on_open: Callable[[], object] | None = None,
        *,
        budget: Budget,
        body_pool: BodyPool | None = None,
    ) -> None:
        self._config = config
        self._budget_room = threading.Event()  # cleared while paused for the budget
        self._budget_room.set()
        # True while paused for the budget: read before each recv, where an
        # Event.wait() would cost three Python calls even when it is set.
        self._budget_paused = False
        self._due: float | None = None  # the deadline the socket's timeout counts down to
        self._evicted: OverBudget | None = None
        self._on_end = on_end
        self._sock = sock
        # Held around the queue, the writes (none of which blocks), the shutdown
        # and the close. Re-entrant so that abort() may run in a signal handler
        # that interrupted a write (processes engine), and a hook may send.
        self._lock = threading.RLock()
        self._outgoing: deque[memoryview] = deque()  # whole messages, but the head may be a part
        self._queued = 0  # bytes in _outgoing
        self._droppable: DropOldest | None = None  # made by the first "drop_oldest" send that queues
        self._writer: threading.Thread | None = None  # writes what the socket did not take at once
        self._paused = False  # the queue passed high_water: the own thread waits for _room before reading
        self._room = threading.Event()  # cleared while paused (and set to wake the own thread)
        self._room.set()
        self._told_paused = False  # what the handler's paused/resumed hooks last heard
        self._hooks_lock = threading.RLock()  # the hooks, one at a time, in order; a hook may send
        self._close_asked = False  # close() from another thread
        self._aborted = False  # the stop deadline passed
        self._ending = False  # run() is ending: nothing more is queued
        self._closed = False
        self.thread_id = 0  # the connection's own thread, once it runs
        # The own thread counts what it reads; senders what they send, under the session's lock.
        self._traffic = config.counters.traffic()
        self._session_lock = threading.Lock()
        self.session = Session(
            config,
            address,
            self,
            traffic=self._traffic,
            budget=budget,
            holder=self,
            body_pool=BodyPool() if body_pool is None else body_pool,
            # Any thread may send: the counts, the outgoing list and TLS (decrypting
            # in the own thread, encrypting in a sender's: not at once in OpenSSL)
            # are shared. Held only around them, never across I/O.
            lock=self._session_lock,
            on_open=on_open,
            on_reply=self._flush,
        )

    # --- the Link interface (any thread) ---------------------------------------

    def send(self, message: Buffer, policy: str | None = None) -> None:
        """Queue one message under the slow-consumer `policy` (None: the server's); never waits for the peer."""
        if self._close_asked or self._ending or self.session.closing:
            raise closed_locally(self.session.peer.address)
        data = self.session.frame(message)
        self.offer(data, self._config.slow_consumer if policy is None else check_policy(policy))

    def offer(self, data: bytes, policy: str) -> BroadcastResult:
        """Queue the framed `data` under the slow-consumer `policy` (see `_fanout`) and write what the socket takes."""
        with self._lock:
            result = self._offer_locked(data, policy)
        if self._paused != self._told_paused:
            self._tell_writability()
        return result

    def _offer_locked(self, data: bytes, policy: str) -> BroadcastResult:
        session = self.session
        if self._ending or self._close_asked or self._aborted or self._evicted is not None or session.closing:
            return CLOSED
        if self._paused and (policy == "drop" or (policy == "drop_oldest" and session.encrypts)):
            return self._count_dropped(DROPPED)
        session.queue(data)
        out, dropped = self._take_output(), 0
        if not self._queued:
            self._write_now(out)
        else:
            self._queue_behind(out)
            if policy == "drop_oldest" and self._outgoing[-1].obj is data:  # whole, unencrypted, behind others
                self._apply_backpressure()  # over high water, paused (and told) first, as on the other engines
                dropped = self._drop_oldest(self._outgoing[-1])
        if self._queued and session.error is None:  # else it all left at once, or it failed
            self._apply_backpressure()
        if session.error is not None:  # the socket failed, or the queue passed the hard cap
            return CLOSED
        return self._count_dropped(BroadcastResult(delivered=1, dropped=dropped)) if dropped else DELIVERED

    def _drop_oldest(self, view: memoryview) -> int:
        """Make `view` droppable; drop the oldest droppable messages while the queue is over high_water."""
        if self._droppable is None:
            self._droppable = DropOldest()
        self._droppable.add(view)
        dropped, freed = self._droppable.drop_over(self._queued, self._config.high_water)
        self._queued -= freed
        return dropped

    def _count_dropped(self, result: BroadcastResult) -> BroadcastResult:
        self.session.peer.dropped += result.dropped
        self._config.counters.dropped_messages(result.dropped)
        return result

    @property
    def queued(self) -> int:
        """Bytes queued, not yet taken by the socket."""
        return self._queued

    @property
    def is_live(self) -> bool:
        """True while the connection is open, not ending, and its handler has seen it (for `Server.peers`)."""
        if self._closed or self._close_asked or self._aborted or self._evicted is not None:
            return False
        return self.session.error is None and self.session.announced

    def close(self) -> None:
        """Close after the current handler call's reply (from the own thread) or once what is queued is written."""
        if threading.get_ident() == self.thread_id:
            self.session.close()
        else:
            self._close_asked = True
            self._room.set()
            self._shutdown(socket.SHUT_RD)  # wakes the read; the writer thread goes on

    def abort(self) -> None:
        """Wake the thread and end the connection: the stop deadline passed."""
        self._aborted = True
        self._budget_room.set()
        self._room.set()
        self._shutdown()

    def evict(self, error: OverBudget) -> None:
        """End the connection: the process stayed over `max_buffered` and this one holds the most."""
        self._evicted = error
        self._budget_room.set()
        self._room.set()
        self._shutdown()

    def pause_reading_for_budget(self, paused: bool) -> None:
        """Stop or resume reading for the process's memory budget (any thread)."""
        self._budget_paused = paused
        if paused:
            self._budget_room.clear()
        else:
            self._budget_room.set()

    # --- the connection's own thread -------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends, then report and clean up."""
        self.thread_id = threading.get_ident()
        session, sock = self.session, self._sock
        self._sender = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        try:
            session.start()
            self._flush()
            self._serve()
        except Exception as exc:  # a bug of ours: keep the server alive, but say it
            logger.exception("closing %s after an internal error", format_address(session.peer.address))
            session.fail(exc)
        finally:
            self._finish_writing()
            with self._lock:
                self._closed = True
                if session.error is None and not self._aborted:
                    self._say_goodbye()
                self._sender.detach()  # the descriptor is _sock's, closed just after
                self._sock.close()
                self._outgoing.clear()
                self._droppable = None
                self._queued = 0
            self._config.counters.retire(self._traffic)  # _closed is set: nobody sends any more
            session.connection_lost()
            self._on_end(self)

    def _serve(self) -> None:
        """The receive loop, until the session closes (it then holds the error, if any)."""
        session, sock = self.session, self._sock
        buffer = bytearray(RECV_SIZE)
        view = memoryview(buffer)
        while not session.closing:
            if self._budget_paused:
                self._budget_room.wait()  # set again within the budget's grace period
            if self._paused:
                self._wait_for_room()
            if self._due is not None or session.new_deadline:
                self._set_timeout()
            # Always into the own buffer, never straight into a large body
            # (`Session.direct`): the budget is checked before each read, and
            # threads read at once, so each read must stay small (RECV_SIZE).
            try:
                count = sock.recv_into(buffer)
            except TimeoutError:
                session.check_deadlines(time.monotonic())
                continue
            except OSError as exc:
                self._recv_failed(exc)
                return
            if self._evicted is not None:
                session.fail(self._evicted)
                return
            if self._aborted or self._close_asked:
                return
            if count:
                session.receive_data(view[:count])
            else:
                session.receive_eof()
            self._flush()

    def _wait_for_room(self) -> None:
        """Read no more while the queue is over the water marks (as the event loops do), but keep the deadlines."""
        session = self.session
        while self._paused and not (session.closing or self._aborted or self._close_asked or self._evicted is not None):
            due = session.next_deadline()
            if not self._room.wait(None if due is None else max(0.0, due - time.monotonic())):
                session.check_deadlines(time.monotonic())
        self._set_timeout()  # next_deadline() took the session's new_deadline

    def _flush(self) -> None:
        """Queue what the session has to send, in the order it gave it, and write what the socket takes now.

        The own thread's: it may take the session's output without the
        session's lock, as the other threads add to it only under `_lock`.
        """
        with self._lock:
            if self._closed or not (out := self.session.data_to_send()):
                return
            if self._queued:
                self._queue_behind(out)
            else:
                self._write_now(out)
            if self._queued and self.session.error is None:  # else nothing changed, or it failed
                self._apply_backpressure()
        if self._paused != self._told_paused:
            self._tell_writability()

    def _finish_writing(self) -> None:
        """Before the close: let the writer thread write what is queued (a clean end), or stop it at once."""
        with self._lock:
            self._ending = True  # no new writer thread after this one
            writer = self._writer
        if writer is None:
            return
        if self.session.error is not None or self._aborted or self._evicted is not None:
            self._shutdown()
        writer.join()  # a clean end waits for the peer to read, until the stop deadline's abort()

    def _set_timeout(self) -> None:
        """Wake the read when the session's next deadline falls.

        Called before each read while a deadline is pending (the socket's
        timeout is relative: it must shrink as time passes) and when the
        session says one may have come earlier; with none pending and none
        new, the socket already waits without a timeout.
        """
        self._due = due = self.session.next_deadline()
        if due is not None:
            # Never 0.0: that would make the socket non-blocking, not a timeout.
            self._sock.settimeout(max(1e-3, due - time.monotonic()))
        elif self._sock.gettimeout() is not None:
            self._sock.settimeout(None)

    def _recv_failed(self, error: OSError) -> None:
        """A read or write failed: because this side ended it (a stop, a close, the budget), or the network's error."""
        if self._evicted is not None:
            self.session.fail(self._evicted)
        elif not (self._aborted or self._close_asked):
            self.session.fail(error)

    def _say_goodbye(self) -> None:
        """Send TLS's close_notify, if the socket takes it now: a clean end, not a truncation."""
        self.session.close()
        if data := self._take_output():
            with contextlib.suppress(OSError):
                self._sender.send(b"".join(data), _DONTWAIT)

    def _shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        # Without waiting for _lock: abort() may run in a signal handler that
        # interrupted its holder. While another thread holds it the socket
        # stays open (it is closed under _lock).
        locked = self._lock.acquire(blocking=False)
        try:
            if not self._closed:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(how)
        finally:
            if locked:
                self._lock.release()

    # --- the queue (under _lock, from any thread) ------------------------------------

    def _take_output(self) -> list[Buffer]:
        """What the session has to send: under its lock, which another thread's `Session.queue` holds to add."""
        with self._session_lock:
            return self.session.data_to_send()

    def _queue_behind(self, buffers: list[Buffer]) -> None:
        """Queue `buffers` whole behind the bytes already waiting (for the writer thread)."""
        for part in buffers:
            view = memoryview(part)
            self._outgoing.append(view)
            self._queued += view.nbytes

    def _write_now(self, buffers: list[Buffer]) -> None:
        """Nothing waits: write `buffers` as far as the socket takes them without blocking; queue the rest."""
        count = len(buffers)
        if count > _GATHER_MAX:
            buffers, count = [b"".join(buffers)], 1
        try:
            if count == 1:
                sent = self._sender.send(buffers[0], _DONTWAIT)
                if sent == len(buffers[0]):
                    return  # the common case: all of it, at once
            else:  # a large reply's header and body, or replies and sends queued meanwhile: uncopied
                sent = self._sender.sendmsg(buffers, (), _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._send_failed(exc)
            return
        for part in buffers:
            if sent >= len(part):
                sent -= len(part)
            else:
                view = memoryview(part)[sent:]
                self._outgoing.append(view)
                self._queued += view.nbytes
                sent = 0
        if self._queued and self._writer is None:
            self._start_writer()

    def _start_writer(self) -> None:
        name = f"connecteur {format_address(self.session.peer.address)} writer"
        writer = threading.Thread(target=self._write_queued, name=name)
        writer.daemon = True  # as the connection's own thread
        try:
            writer.start()
        except RuntimeError as exc:  # "can't start new thread": a process or memory limit
            self._fail_now(ConnectionError(f"cannot write to a slow peer: {exc}"))
            return
        self._writer = writer

    def _send_queued(self) -> bool:
        """Write queued messages until the socket would block; False once the connection failed."""
        outgoing, droppable, sender = self._outgoing, self._droppable, self._sender
        while outgoing:
            chunk = outgoing[0]
            if droppable is not None and droppable.leaving(chunk):
                outgoing.popleft()  # dropped by "drop_oldest"; not in _queued any more
                continue
            try:
                sent = sender.send(chunk, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self._send_failed(exc)
                return False
            self._queued -= sent
            if sent < len(chunk):
                outgoing[0] = chunk[sent:]
                return True
            outgoing.popleft()
        return True

    def _apply_backpressure(self) -> None:
        """The queue changed: tell the session (for the budget); pause or resume reading past the water marks."""
        queued, config = self._queued, self._config
        self.session.account(queued)
        if queued > HARD_CAP:
            error = ConnectionError(f"{queued} bytes queued for a peer that does not read; limit is {HARD_CAP}")
            self._fail_now(error)
        elif not self._paused and queued > config.high_water:
            self._paused = True
            self._room.clear()
        elif self._paused and queued < config.low_water:
            self._paused = False
            self._room.set()

    def _send_failed(self, error: OSError) -> None:
        """A write failed: end the connection (the error is not this side's, unless it shut the socket)."""
        self._recv_failed(error)
        self._end_now()

    def _fail_now(self, error: BaseException) -> None:
        """End the connection at once because of `error`."""
        self.session.fail(error)
        self._end_now()

    def _end_now(self) -> None:
        """Drop what is queued, wake the own thread and the writer thread: they end the connection."""
        self._outgoing.clear()
        self._droppable = None
        self._queued = 0
        self.session.account(0)
        self._room.set()
        self._shutdown()

    # --- the writer thread -------------------------------------------------------------

    def _write_queued(self) -> None:
        """Wait until the socket takes more and write it, until the queue is empty or the connection failed."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)  # open: run() joins this thread before closing
        going = True
        while going:
            poller.poll()
            with self._lock:
                written = self._send_queued()
                going = written and self._queued > 0
                if not going:
                    self._writer = None
                if written:
                    self._apply_backpressure()
            self._tell_writability()

    # --- the handler's paused/resumed hooks (any thread, outside _lock) ----------------------

    def _tell_writability(self) -> None:
        """Tell the handler's ``paused``/``resumed`` hook if the queue crossed a water mark since it last heard."""
        handler = self._config.handler
        if not handler.watches_writability:
            return
        with self._hooks_lock:
            paused = self._paused
            if paused == self._told_paused or not self.session.announced:
                return
            self._told_paused = paused
            try:
                handler.writability_changed(self.session.peer, paused=paused)
            except HandlerFailed as exc:
                with self._lock:
                    self._fail_now(exc)
