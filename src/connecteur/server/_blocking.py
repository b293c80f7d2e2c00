"""One connection served by a blocking loop, in a thread (threads engine) or a process (processes engine).

Here, not in either engine, so that neither engine imports the other. The
loop reads, hands the bytes to the connection's `Session` (``server/_session.py``)
and writes what it gives back; the session does the rest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from ..address import format_address
from ..errors import ConnectionClosed
from ..framing import BodyPool, Buffer
from ._budget import Budget, OverBudget
from ._engine import EngineConfig, logger
from ._fanout import CLOSED, DELIVERED, BroadcastResult, check_policy
from ._peer import closed_locally
from ._session import Session

__all__ = ["RECV_SIZE", "BlockingLink", "refuse_policy", "thread_budget"]

RECV_SIZE: Final = 64 * 2**10
"""64 KiB read buffer per connection: one thread per connection already costs
more than this, and it holds many small messages per read."""


def refuse_policy(policy: str) -> None:
    """Refuse a slow-consumer policy a blocking send cannot apply.

    Raises:
        ValueError: `policy` is not ``"close"``.
    """
    if check_policy(policy) != "close":
        raise ValueError(f"the {policy!r} policy needs engine='select' or 'asyncio' (here a send waits for its peer)")


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
        # Serializes writes, shutdown and close. Re-entrant so that abort()
        # may run in a signal handler that interrupted a send (processes engine).
        self._lock = threading.RLock()
        self._close_asked = False  # close() from another thread
        self._aborted = False  # the stop deadline passed
        self._closed = False
        self.thread_id = 0  # the connection's own thread, once it runs
        # The own thread counts what it reads; senders what they send, under the session's lock.
        self._traffic = config.counters.traffic()
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
            lock=threading.Lock(),
            on_open=on_open,
            on_reply=self._flush,
        )

    # --- the Link interface (any thread) ---------------------------------------

    def send(self, message: Buffer, policy: str | None = None) -> None:
        """Write one message now; blocks while the peer does not read (so only the ``"close"`` policy applies)."""
        if policy is not None:
            refuse_policy(policy)
        if self._close_asked or self.session.closing:
            raise closed_locally(self.session.peer.address)
        self._send_framed(self.session.frame(message))

    def offer(self, data: bytes, policy: str) -> BroadcastResult:
        """Write the framed `data` now (a broadcast's copy); only ``"close"`` applies (see `refuse_policy`)."""
        refuse_policy(policy)
        try:
            if self._close_asked or self.session.closing:
                return CLOSED
            self._send_framed(data)
        except (ConnectionClosed, OSError):
            return CLOSED
        return DELIVERED

    def _send_framed(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise closed_locally(self.session.peer.address)
            self.session.queue(data)
            self._sendall(self.session.data_to_send())

    @property
    def queued(self) -> int:
        """Nothing waits here: `send` writes at once."""
        return 0

    @property
    def is_live(self) -> bool:
        """True while the connection is open and its handler has seen it (for `Server.peers`)."""
        return not self._closed and self.session.announced

    def close(self) -> None:
        """Close after the current handler call's reply (from the own thread) or at once."""
        if threading.get_ident() == self.thread_id:
            self.session.close()
        else:
            self._close_asked = True
            self._shutdown()

    def abort(self) -> None:
        """Wake the thread and end the connection: the stop deadline passed."""
        self._aborted = True
        self._budget_room.set()
        self._shutdown()

    def evict(self, error: OverBudget) -> None:
        """End the connection: the process stayed over `max_buffered` and this one holds the most."""
        self._evicted = error
        self._budget_room.set()
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
        session = self.session
        try:
            session.start()
            self._flush()
            self._serve()
        except Exception as exc:  # a bug of ours: keep the server alive, but say it
            logger.exception("closing %s after an internal error", format_address(session.peer.address))
            session.fail(exc)
        finally:
            with self._lock:
                self._closed = True
                if session.error is None and not self._aborted:
                    self._say_goodbye()
                self._sock.close()
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

    def _flush(self) -> None:
        """Write what the session has to send, blocking until the socket takes it.

        Taken under the lock, so that what leaves is in the order the session
        queued it (TLS records must), whichever thread writes it.
        """
        try:
            with self._lock:
                if not self._closed and (data := self.session.data_to_send()):
                    self._sendall(data)
        except OSError as exc:
            self.session.fail(exc)

    def _sendall(self, data: list[Buffer]) -> None:
        self._sock.sendall(data[0] if len(data) == 1 else b"".join(data))

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
        """A read failed: because this side ended it (a stop, a close, the budget), or the network's error."""
        if self._evicted is not None:
            self.session.fail(self._evicted)
        elif not (self._aborted or self._close_asked):
            self.session.fail(error)

    def _say_goodbye(self) -> None:
        """Send TLS's close_notify, if the socket takes it now: a clean end, not a truncation."""
        self.session.close()
        if data := self.session.data_to_send():
            with contextlib.suppress(OSError):
                self._sock.setblocking(False)
                self._sock.send(b"".join(data))

    def _shutdown(self) -> None:
        # Without waiting for _lock: a send holding it may block for ever on a
        # peer that does not read, and this shutdown is what ends that send.
        # While a send holds it the socket stays open (it is closed under _lock).
        locked = self._lock.acquire(blocking=False)
        try:
            if not self._closed:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
        finally:
            if locked:
                self._lock.release()
