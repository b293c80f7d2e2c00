"""One connection served by a blocking loop, in a thread (threads engine) or a process (processes engine).

Here, not in either engine, so that neither engine imports the other.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from .. import _socket
from .._channel import HANDSHAKE_ERRORS
from ..address import format_address
from ..errors import ConnectionClosed, FramingError
from ..framing import BodyPool, Buffer, Decoder, batch_encoder
from ._budget import Budget, OverBudget
from ._engine import EngineConfig, channel_opened, logger
from ._handler import HandlerFailed, frame_replies, log_closing
from ._peer import Peer, closed_locally

__all__ = ["RECV_SIZE", "BlockingLink", "thread_budget"]

RECV_SIZE: Final = 64 * 2**10
"""64 KiB read buffer per connection: one thread per connection already costs
more than this, and it holds many small messages per read."""


def thread_budget(config: EngineConfig) -> Budget:
    """A memory budget for connections served by threads: its checks run in a short-lived timer thread."""

    def call_later(seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True  # it ends by itself within `seconds`; a stopping process need not wait
        timer.start()

    return Budget(config.max_buffered, config.counters, call_later)


class BlockingLink:
    """One connection served by a blocking loop (`run`) in its own thread or process.

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
        self._budget = budget
        self._body_pool = BodyPool() if body_pool is None else body_pool
        self._budget_room = threading.Event()  # cleared while paused for the budget
        self._budget_room.set()
        self._evicted: OverBudget | None = None
        self._held = 0  # bytes held, as last told to the budget
        self._on_end = on_end
        self._on_open = on_open
        self._sock = sock
        # Serializes sends, shutdown and close. Re-entrant so that abort()
        # may run in a signal handler that interrupted a send (processes engine).
        self._lock = threading.RLock()
        self._closing = False  # peer.close() asked
        self._aborted = False  # the stop deadline passed
        self._closed = False
        self.thread_id = 0  # the connection's own thread, once it runs
        self._deadlines = self._config.deadlines()
        # The own thread counts what it reads; senders what they send, under _lock.
        self._traffic = self._config.counters.traffic()
        self._encode_all = batch_encoder(self._config.framing)
        self._channel = self._config.channel.open(address)
        # With TLS, decrypting (the own thread) and encrypting (any sender) must
        # not run at once in OpenSSL; held only around the crypto, never across I/O.
        self._crypto_lock = threading.Lock()
        self.peer = Peer(self, address, self._config.handler.encode_value)

    # --- the Link interface (any thread) ---------------------------------------

    def send(self, message: Buffer) -> None:
        """Write one message now; blocks while the peer does not read."""
        if self._closing:
            raise closed_locally(self.peer.address)
        self._write(self._config.framing.encode(message))

    def _write(self, data: bytes, messages: int = 1) -> None:
        with self._lock:
            if self._closed:
                raise closed_locally(self.peer.address)
            channel = self._channel
            if channel is None:
                self._sock.sendall(data)
            else:
                with self._crypto_lock:
                    wire = channel.send(data)
                self._sock.sendall(wire)
            self._traffic.messages_out += messages
            self._traffic.bytes_out += len(data)
        if self._deadlines.is_active:
            self._deadlines.moved()

    def close(self) -> None:
        """Close after the current handler call's reply (from the own thread) or at once."""
        self._closing = True
        if threading.get_ident() != self.thread_id:
            self._shutdown()

    def abort(self) -> None:
        """Wake the thread and end the connection: the stop deadline passed."""
        self._aborted = True
        self._budget_room.set()
        self._shutdown()

    def pause_reading_for_budget(self, paused: bool) -> None:
        """Stop or resume reading for the process's memory budget (any thread)."""
        if paused:
            self._budget_room.clear()
        else:
            self._budget_room.set()

    def evict(self, error: OverBudget) -> None:
        """End the connection: the process stayed over `max_buffered` and this one holds the most."""
        self._evicted = error
        self._budget_room.set()
        self._shutdown()

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

    # --- the connection's own thread -------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends, then report and clean up."""
        self.thread_id = threading.get_ident()
        handler, peer = self._config.handler, self.peer
        error: BaseException | None = None
        try:
            received = self._open_channel()
        except (*HANDSHAKE_ERRORS, OSError) as exc:
            self._end_handshake(exc)
            return
        if self._on_open is not None:
            self._on_open()
        try:
            handler.connected(peer)
            error = self._serve(received)
        except HandlerFailed as exc:
            error = exc
        except Exception as exc:  # a bug of ours: keep the server alive, but say it
            error = exc
            logger.exception("closing %s after an internal error", format_address(peer.address))
        finally:
            if error is not None:
                error = log_closing(peer.address, error)
            with self._lock:
                self._closed = True
                if error is None and not self._aborted:
                    self._say_goodbye()
                self._sock.close()
            self._budget.forget(self)
            counters = self._config.counters
            counters.retire(self._traffic)  # _closed is set: nobody sends any more
            counters.closed(error=error is not None)
            self._report_closed(error)
            self._on_end(self)

    def _say_goodbye(self) -> None:
        """Send TLS's close_notify, if the socket takes it now: a clean end, not a truncation."""
        if self._channel is not None:
            with self._crypto_lock:
                data = self._channel.close_write()
            with contextlib.suppress(OSError):
                self._sock.setblocking(False)
                self._sock.send(data)

    def _open_channel(self) -> Buffer:
        """Run the PROXY, TLS and authentication handshakes; return the bytes after them."""
        channel = self._channel
        if channel is None:
            return b""
        received = _socket.handshake(self._sock, channel, self._config.handshake_timeout)
        self._channel = channel_opened(channel, self.peer, self._deadlines)
        return received

    def _end_handshake(self, error: BaseException) -> None:
        """The handshake failed: close without the handler ever seeing this peer."""
        if not self._aborted:
            log_closing(self.peer.address, error)
        with self._lock:
            self._closed = True
            self._sock.close()
        counters = self._config.counters
        counters.retire(self._traffic)
        counters.closed(error=not self._aborted)
        if not self._aborted and isinstance(error, HANDSHAKE_ERRORS):  # not a mere reset
            counters.handshake_failed()
        self._on_end(self)

    def _report_closed(self, error: BaseException | None) -> None:
        try:
            self._config.handler.closed(self.peer, error)
        except HandlerFailed as exc:
            logger.error("%s", exc, exc_info=exc.__cause__)
        finally:
            self.peer._detach()  # a handler that keeps its peers must not keep this link
            if error is not None:
                # Its traceback holds this thread's frames, whose locals hold the
                # error, the decoder and the read buffer: a cycle that would keep
                # them until the garbage collector runs. Logged and reported: drop it.
                error.__traceback__ = None

    def _serve(self, received: Buffer) -> BaseException | None:
        """The receive loop. Returns the error that ended it, or None after a clean end."""
        sock, decoder = self._sock, self._config.framing.decoder()
        if (use_pool := getattr(decoder, "use_pool", None)) is not None:
            use_pool(self._body_pool)
        if received and (error := self._deliver(decoder, received, at_eof=False)):
            return error
        buffer = bytearray(RECV_SIZE)
        view = memoryview(buffer)
        deadlines = self._deadlines
        while not self._closing:
            self._budget_room.wait()  # set again within the budget's grace period
            if deadlines.is_active:
                due = deadlines.next_due()
                # Never 0.0: that would make the socket non-blocking, not a timeout.
                sock.settimeout(None if due is None else max(1e-3, due - time.monotonic()))
            try:
                count = sock.recv_into(buffer)
            except TimeoutError:
                if (expired := deadlines.expired(time.monotonic())) is not None:
                    return expired
                continue
            except OSError as exc:
                return self._evicted or (None if self._aborted or self._closing else exc)
            if self._evicted is not None:
                return self._evicted
            if self._aborted or self._closing:
                return None
            data: Buffer = view[:count]
            if self._channel is not None and count:
                try:
                    with self._crypto_lock:
                        data = self._channel.receive(data)
                except HANDSHAKE_ERRORS as exc:
                    return exc
            if error := self._deliver(decoder, data, at_eof=not count):
                return error
            if not count:
                return None
        return None

    def _deliver(self, decoder: Decoder, data: Buffer, *, at_eof: bool) -> BaseException | None:
        """Decode what was read (or the end of stream) and answer every message."""
        try:
            messages = decoder.eof() if at_eof else decoder.feed(data)
        except FramingError as exc:
            self._dispatch(exc.messages)
            return exc
        self._traffic.messages_in += len(messages)
        self._traffic.bytes_in += len(data)
        if self._deadlines.is_active:  # no clock read without a timeout
            self._deadlines.received(bool(messages), decoder.buffered)
        if decoder.buffered != self._held:
            self._held = decoder.buffered
            self._budget.update(self, self._held)
        return self._dispatch(messages)

    def _dispatch(self, messages: list[bytes]) -> OSError | None:
        """Hand each message to the handler and send its reply, in order."""
        handler, peer = self._config.handler, self.peer
        if handler.is_plain:
            return self._answer_plain(messages)
        for message in messages:
            reply = handler.received(peer, message)
            if reply is not None:
                try:
                    data = self._config.framing.encode(reply)
                except FramingError as exc:
                    raise HandlerFailed("received", exc) from exc
                try:
                    # Not send(): a reply is still due after the handler's own peer.close().
                    self._write(data)
                except ConnectionClosed:
                    return None
                except OSError as exc:
                    return exc
            if self._closing:
                return None
        return None

    def _answer_plain(self, messages: list[bytes]) -> OSError | None:
        """`_dispatch` for a plain function, which cannot send or close: the replies to one read in one write.

        Measured with ``connecteur bench`` (pipeline: 64 B messages, many in
        flight), a ``sendall`` per reply made this engine 10 times as costly
        per message as the select engine.
        """
        replies: list[Buffer] = []
        failure: HandlerFailed | None = None
        try:
            self._config.handler.answer_plain(messages, replies)
        except HandlerFailed as exc:
            failure = exc  # answer the messages before the one that failed, then close
        if replies:
            wire, count, too_large = frame_replies(self._config.framing, self._encode_all, replies)
            failure = failure or too_large
            try:
                self._write(wire, count)
            except ConnectionClosed:
                return None
            except OSError as exc:
                return exc
        if failure is not None:
            raise failure
        return None
