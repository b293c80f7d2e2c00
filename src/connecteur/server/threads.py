"""The threads engine: the HOWTO's "create a new thread to handle the client".

One thread accepts (waiting in a selector beside a wake-up socket, so a stop
request is seen at once); each connection then gets a thread running a
blocking loop: ``recv_into`` a reusable buffer, feed the decoder, call the
handler, send its reply. Replies are in request order because one thread
handles one connection's messages one after another.

Invariants: only a connection's own thread reads its socket and closes it;
other threads may send (under the connection's lock) or shut it down to wake
the reader. Simple and fast per connection; each idle connection costs a thread.
"""

from __future__ import annotations

import contextlib
import selectors
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
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    EngineConfig,
    PendingAdmissions,
    StopSignal,
    accept_ready,
    channel_opened,
    logger,
    refuse_if_full,
    refuse_untrusted,
)
from ._handler import HandlerFailed, frame_replies, log_closing
from ._peer import Peer

__all__ = ["BlockingLink", "ThreadsEngine"]

RECV_SIZE: Final = 64 * 2**10
"""64 KiB read buffer per connection: one thread per connection already costs
more than this, and it holds many small messages per read."""

JOIN_GRACE: Final = 1.0
"""Seconds to wait, after the stop deadline, for threads to notice their
sockets were shut down; a thread still inside a handler then is abandoned."""


class ThreadsEngine:
    """A thread per connection; see the module's description."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._stop = StopSignal()
        self._links: set[BlockingLink] = set()
        self._pending = PendingAdmissions()
        self._links_lock = threading.Lock()
        self._all_closed = threading.Condition(self._links_lock)
        self._body_pool = BodyPool()  # one spare buffer for large messages, lent to one connection at a time

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline`; safe from threads and signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def serve(self, listener: socket.socket) -> None:
        """Accept until a stop is requested, then stop gracefully (see `Engine`)."""
        try:
            with listener:
                self._accept_until_stopped(listener)
            self._finish_links()
        finally:
            self._stop.close()

    # --- accepting -------------------------------------------------------------

    def _accept_until_stopped(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        paused_until: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._stop.reader, selectors.EVENT_READ)
            while self._stop.deadline is None:
                timeout = None if paused_until is None else max(0.0, paused_until - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fileobj is listener and accept_ready(listener, self._admit, ACCEPT_BATCH):
                        # Out of descriptors: stop watching the listener, or it
                        # would show readable at once and spin.
                        selector.unregister(listener)
                        paused_until = time.monotonic() + ACCEPT_BACKOFF
                    elif key.fileobj is self._stop.reader:
                        self._stop.drain()
                if paused_until is not None and time.monotonic() >= paused_until:
                    if self._pending.retry(self._admit):
                        paused_until = time.monotonic() + ACCEPT_BACKOFF
                        continue
                    selector.register(listener, selectors.EVENT_READ)
                    paused_until = None
        if not self._pending.retry(self._admit):
            accept_ready(listener, self._admit, LAST_ACCEPTS)
        self._pending.close_all(self._config.counters)

    def _admit(self, sock: socket.socket, address: object) -> bool:
        """Serve a new connection in a thread of its own; True if no thread could start."""
        if refuse_if_full(self._config, sock, address) or refuse_untrusted(self._config, sock, address):
            return False
        counters = self._config.counters
        sock.setblocking(True)
        _socket.configure_stream(sock)
        link = BlockingLink(self._config, sock, address, self._forget, body_pool=self._body_pool)
        counters.opened()
        with self._links_lock:
            self._links.add(link)
        thread = threading.Thread(target=link.run, name=f"connecteur {format_address(address)}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a process or memory limit
            with self._links_lock:
                self._links.discard(link)
            counters.retire(link._traffic)
            counters.withdrawn()
            return self._pending.put(sock, address, exc)
        return False

    # --- stopping --------------------------------------------------------------

    def _finish_links(self) -> None:
        """Let each connection run until its peer's EOF or the stop deadline."""
        deadline = self._stop.deadline or time.monotonic()
        with self._all_closed:
            self._all_closed.wait_for(lambda: not self._links, max(0.0, deadline - time.monotonic()))
            late = list(self._links)
        for link in late:
            link.abort()
        with self._all_closed:
            if not self._all_closed.wait_for(lambda: not self._links, JOIN_GRACE):
                logger.warning("%d connection threads still busy in their handler at stop", len(self._links))

    def _forget(self, link: BlockingLink) -> None:
        """Called by a connection's thread as it ends."""
        with self._all_closed:
            self._links.discard(link)
            self._all_closed.notify_all()


class BlockingLink:
    """One connection served by a blocking loop (`run`) in its own thread or process.

    Args:
        on_end: called with the link once it is closed and reported.
        on_open: called once the handshakes are done, before the handler hears of the peer.
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
        body_pool: BodyPool | None = None,
    ) -> None:
        self._config = config
        self._body_pool = BodyPool() if body_pool is None else body_pool
        self._on_end = on_end
        self._on_open = on_open
        self._sock = sock
        # Serializes sends, shutdown and close. Re-entrant so that abort()
        # may run in a signal handler that interrupted a send (processes engine).
        self._lock = threading.RLock()
        self._closing = False  # peer.close() asked
        self._aborted = False  # the stop deadline passed
        self._closed = False
        self._thread_id = 0
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
            raise ConnectionClosed(f"connection to {format_address(self.peer.address)} is closed", by_peer=False)
        self._write(self._config.framing.encode(message))

    def _write(self, data: bytes, messages: int = 1) -> None:
        with self._lock:
            if self._closed:
                raise ConnectionClosed(f"connection to {format_address(self.peer.address)} is closed", by_peer=False)
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
        if threading.get_ident() != self._thread_id:
            self._shutdown()

    def abort(self) -> None:
        """Wake the thread and end the connection: the stop deadline passed."""
        self._aborted = True
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if not self._closed:
                self._sock.shutdown(socket.SHUT_RDWR)

    # --- the connection's own thread -------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends, then report and clean up."""
        self._thread_id = threading.get_ident()
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
            if deadlines.is_active:
                due = deadlines.next_due()
                # Never 0.0: that would make the socket non-blocking, not a timeout.
                sock.settimeout(None if due is None else max(1e-3, due - time.monotonic()))
            try:
                count = sock.recv_into(buffer)
            except TimeoutError:
                if (expired := deadlines.expired()) is not None:
                    return expired
                continue
            except OSError as exc:
                return None if self._aborted or self._closing else exc
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
