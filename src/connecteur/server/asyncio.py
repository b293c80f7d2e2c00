"""The asyncio engine: asyncio's protocol layer feeding the sans-I/O decoders.

Each connection is an ``asyncio.BufferedProtocol``: the loop reads straight
into one buffer the whole engine shares (the loop is single-threaded and a
buffer is consumed before the next read), the decoder cuts messages, and the
handler is called for each. A plain handler's replies to all the messages of
one read leave in one write. A handler may be ``async def``: its replies are
awaited in a per-connection chain, so they still leave in request order.

Accepting uses the same policy as every engine (`accept_ready`), with the
listening socket watched by ``loop.add_reader`` and each accepted socket given
to ``loop.connect_accepted_socket``; so a stop can still serve the backlog.

Flow control mirrors the select engine: the transport's write buffer has the
same high and low water marks, and a peer whose replies pile up is not read
until they drain (``pause_writing`` pauses reading). Async replies in flight
are bounded the same way. Deadlines run on ``loop.call_at``.

Runs on asyncio's default loop or on uvloop (``loop="uvloop"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from .._channel import HANDSHAKE_ERRORS
from ..address import format_address
from ..errors import FramingError
from ..framing import BodyPool, Buffer, batch_encoder
from ._budget import Budget, OverBudget
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    EngineConfig,
    StopSignal,
    accept_ready,
    channel_opened,
    log_abandoned,
    logger,
    refuse_if_full,
    refuse_untrusted,
    shut_down,
)
from ._handler import HandlerFailed, frame_replies, log_closing
from ._limits import HARD_CAP, HIGH_WATER, LOW_WATER, RECV_SIZE
from ._peer import Peer, closed_locally

__all__ = ["LOOPS", "AsyncioEngine", "loop_factory"]

LOOPS: Final = ("asyncio", "uvloop")
"""The event loops the engine can run on."""

MAX_PENDING_REPLIES: Final = 1024
"""Async replies in flight on one connection before it stops being read."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a function that makes a new event loop of the named kind.

    Raises:
        ValueError: an unknown name, or uvloop is not installed.
    """
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ValueError("uvloop is not installed: pip install 'connecteur[uvloop]'") from None
        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}; choose one of: {', '.join(LOOPS)}")


class AsyncioEngine:
    """Connections as asyncio protocols; see the module's description."""

    def __init__(self, config: EngineConfig, *, loop: str = "asyncio") -> None:
        self._config = config
        self._new_loop = loop_factory(loop)
        self._buffer = bytearray(RECV_SIZE)
        self.body_pool = BodyPool()  # the loop's one spare buffer for large messages
        self._traffic = config.counters.traffic()  # counted by the loop's thread only
        self._view = memoryview(self._buffer)
        self._links: set[_AioLink] = set()
        self.budget = Budget(config.max_buffered, config.counters, self._call_later)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = StopSignal(on_request=self._wake_loop)
        self._stopping: asyncio.Event | None = None
        self._listener: socket.socket | None = None
        self._loop_thread = 0
        self._all_closed: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # referenced until done, or they may vanish
        self._abandoned = False  # see abandon()
        self._waiting: asyncio.Timeout | None = None  # the stop's wait for the connections to end

    # --- Engine interface --------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        """Run a new event loop in this thread until a stop (see `Engine`)."""
        try:
            with asyncio.Runner(loop_factory=self._new_loop) as runner:
                runner.run(self._serve_on_loop(listener))
        finally:
            # Only once the loop is gone: uvloop hands the signal module's
            # wakeup fd (ours) back when it stops, and it must be open then.
            self._stop.close()

    def request_stop(self, deadline: float) -> None:
        """Ask to stop by `deadline`; safe from any thread and from signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def _call_later(self, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` on the loop in `seconds` (the budget's check)."""
        loop = self._loop
        assert loop is not None
        loop.call_later(seconds, action)

    def abandon(self) -> None:
        """The loop is stuck in a handler past the stop deadline: shut everything down (see `Engine`).

        When the handler returns, the loop aborts every transport and ends.
        """
        self._abandoned = True
        log_abandoned(self._loop_thread, "the asyncio engine's thread")
        # list(): one step under the GIL, while the loop may still change the set.
        shut_down([self._listener, *(link.sock for link in list(self._links))])

    def _wake_loop(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._on_stop_request)

    def _on_stop_request(self) -> None:
        """On the loop: start stopping, or bring forward the deadline the stop already waits for."""
        if self._stopping is not None:
            self._stopping.set()
        waiting = self._waiting
        if waiting is not None and not waiting.expired():
            with contextlib.suppress(RuntimeError):  # expiring already: it cannot be moved
                waiting.reschedule(self._loop_deadline())

    def _loop_deadline(self) -> float:
        """The stop deadline, on the loop's clock (deadlines use time.monotonic())."""
        assert self._loop is not None
        deadline = self._stop.deadline or time.monotonic()
        return self._loop.time() + max(0.0, deadline - time.monotonic())

    async def run(self, listener: socket.socket) -> None:
        """Serve on the running loop until a stop is requested, then stop gracefully."""
        try:
            await self._serve_on_loop(listener)
        finally:
            self._stop.close()

    async def _serve_on_loop(self, listener: socket.socket) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        if self._stop.deadline is not None:
            self._stopping.set()
        listener.setblocking(False)
        self._listener = listener
        loop.add_reader(listener, self._accept_some)
        loop.add_reader(self._stop.reader, self._stop.drain)  # signal wake-ups (wakeup_fd)
        try:
            await self._stopping.wait()
            self._stop_accepting(drain_backlog=not self._abandoned)
            await self._wait_for_links()
        finally:
            self._stop_accepting(drain_backlog=False)
            for link in list(self._links):
                link.abort()
            # Let the aborted transports run their connection_lost callbacks.
            for _ in range(100):
                if not self._links:
                    break
                await asyncio.sleep(0)
            loop.remove_reader(self._stop.reader)

    # --- accepting -------------------------------------------------------------

    def _accept_some(self) -> None:
        listener, loop = self._listener, self._loop
        assert listener is not None and loop is not None
        if self._abandoned:  # shut down: accept() would fail
            self._stop_accepting(drain_backlog=False)
            return
        if accept_ready(listener, self._admit, ACCEPT_BATCH):
            loop.remove_reader(listener)  # out of descriptors: do not spin
            loop.call_later(ACCEPT_BACKOFF, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.add_reader(self._listener, self._accept_some)

    def _admit(self, sock: socket.socket, address: object) -> bool:
        if refuse_if_full(self._config, sock, address) or refuse_untrusted(self._config, sock, address):
            return False
        loop = self._loop
        assert loop is not None
        link = _AioLink(self, address, sock)
        self._links.add(link)
        self._config.counters.opened()
        self.keep(loop.create_task(self._connect(link, sock)))
        return False

    def keep(self, task: asyncio.Future[None]) -> asyncio.Future[None]:
        """Hold a reference to a background task until it is done."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self, link: _AioLink, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        try:
            await loop.connect_accepted_socket(lambda: link, sock)
        except OSError as exc:
            sock.close()
            link.connection_lost(exc)

    def _stop_accepting(self, *, drain_backlog: bool) -> None:
        listener, loop = self._listener, self._loop
        if listener is None or loop is None:
            return
        self._listener = None
        loop.remove_reader(listener)
        if drain_backlog:
            accept_ready(listener, self._admit, LAST_ACCEPTS)
        listener.close()

    async def _wait_for_links(self) -> None:
        all_closed = self._all_closed
        assert all_closed is not None
        if self._links:
            all_closed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._loop_deadline()) as self._waiting:
                    await all_closed.wait()
            self._waiting = None

    def forget(self, link: _AioLink) -> None:
        """A connection ended."""
        self._links.discard(link)
        if not self._links and self._all_closed is not None:
            self._all_closed.set()


class _AioLink(asyncio.BufferedProtocol):
    """One connection: the protocol callbacks, the handler calls, the reply chain."""

    def __init__(self, engine: AsyncioEngine, address: object, sock: socket.socket) -> None:
        self._engine = engine
        self.sock = sock  # the transport's; only for abandon() to shut down
        self._config = engine._config
        self._traffic = engine._traffic
        self._decoder = self._config.framing.decoder()
        if (use_pool := getattr(self._decoder, "use_pool", None)) is not None:
            use_pool(engine.body_pool)
        self._deadlines = self._config.deadlines()
        # PROXY header, TLS, authentication; None once open if it has nothing left to do.
        self._channel = self._config.channel.open(address)
        self._announced = False  # the handler's connected() was called
        self._transport: asyncio.Transport | None = None
        self._tail: asyncio.Future[None] | None = None  # the last async reply in the chain
        self._encode_all = batch_encoder(self._config.framing)
        self._pending = 0  # async replies in flight
        self._writing_paused = False
        self._budget_paused = False  # the server is over max_buffered
        self._reading_paused = False
        self._held = 0  # bytes held, as last told to the engine's budget
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._error: BaseException | None = None
        # While plain handler calls run: their replies and peer.send() messages,
        # to leave in one write, in order.
        self._batch: list[bytes] | None = None
        self.is_open = True
        self.peer = Peer(self, address, self._config.handler.encode_value)

    # --- the Link interface ---------------------------------------------------

    def send(self, message: Buffer) -> None:
        """Queue one message; safe from any thread."""
        if not self.is_open or self._closing:
            raise closed_locally(self.peer.address)
        data = self._config.framing.encode(message)
        if self._batch is not None and threading.get_ident() == self._engine._loop_thread:
            self._batch.append(data)  # from a plain handler: after the replies before it
        else:
            self._call_in_loop(lambda: self._write(data, 1))

    def close(self) -> None:
        """Close once the replies already due are sent; safe from any thread.

        Always deferred to the loop's next turn, so that a handler that
        closes its peer still gets the reply it returns sent first.
        """
        self._closing = True
        loop = self._engine._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._close_when_flushed)

    def abort(self) -> None:
        """Close at once: the stop deadline passed."""
        if self._pending:
            logger.warning(
                "stop deadline passed with %d replies of handler %s still pending for %s: closing",
                self._pending,
                self._config.handler.name,
                format_address(self.peer.address),
            )
        if self._transport is not None:
            self._transport.abort()

    def evict(self, error: OverBudget) -> None:
        """Close at once: the server stayed over `max_buffered` and this connection holds the most."""
        self._fail(error)

    def pause_reading_for_budget(self, paused: bool) -> None:
        """Stop or resume reading this connection for the server's memory budget."""
        self._budget_paused = paused
        self._update_reading()

    def _call_in_loop(self, action: Callable[[], None]) -> None:
        loop = self._engine._loop
        assert loop is not None
        if threading.get_ident() == self._engine._loop_thread:
            action()
        else:
            loop.call_soon_threadsafe(action)

    # --- protocol callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        if self._channel is not None:
            self._write_raw(self._channel.data_to_send())
            self._arm_timer()
            return
        self._announce()

    def _announce(self) -> None:
        self._announced = True
        try:
            started = self._config.handler.connected(self.peer)
        except HandlerFailed as exc:
            self._fail(exc)
            return
        if inspect.isawaitable(started):
            self._chain(started, counts=False)
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._engine._view

    def buffer_updated(self, nbytes: int) -> None:
        data: Buffer = self._engine._view[:nbytes]
        if self._channel is not None:
            received = self._through_channel(data)
            if received is None or not self._announced:
                return  # closed, or still in the handshake
            data = received
        try:
            messages = self._decoder.feed(data)
        except FramingError as exc:
            self._dispatch(exc.messages)
            self._fail(exc)
            return
        self._traffic.messages_in += len(messages)
        self._traffic.bytes_in += len(data)
        deadlines = self._deadlines
        if deadlines.is_active and deadlines.received(bool(messages), self._decoder.buffered):
            self._arm_timer()
        self._dispatch(messages)
        self._account()

    def _through_channel(self, data: Buffer) -> Buffer | None:
        """Pass what was read through the channel; None if the connection ended."""
        channel = self._channel
        assert channel is not None
        was_open = channel.is_open
        try:
            data = channel.receive(data)
        except HANDSHAKE_ERRORS as exc:
            self._write_raw(channel.data_to_send())  # an alert or #FAILURE# for the peer, if it still reads
            self._fail(exc)
            return None
        self._write_raw(channel.data_to_send())
        if not was_open and channel.is_open:
            self._channel = channel_opened(channel, self.peer, self._deadlines)
            self._announce()
        return data if self.is_open else None

    def eof_received(self) -> bool:
        if self._channel is not None and not self._channel.is_open:
            try:
                self._channel.receive_eof()
            except HANDSHAKE_ERRORS as exc:
                self._fail(exc)
                return False
        try:
            messages = self._decoder.eof()
        except FramingError as exc:
            self._fail(exc)
            return False
        self._traffic.messages_in += len(messages)
        self._dispatch(messages)
        self._closing = True
        self._close_when_flushed()
        return True  # keep the transport open to send the replies still due

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.is_open:
            return
        self.is_open = False
        if self._timer is not None:
            self._timer.cancel()
        error = self._error if self._error is not None else exc
        self._release()
        self._config.counters.closed(error=error is not None)
        self._engine.forget(self)
        if not self._announced:  # the handshake failed: the handler never saw this peer
            if isinstance(error, HANDSHAKE_ERRORS):  # not a mere reset
                self._config.counters.handshake_failed()
            return
        try:
            ended = self._config.handler.closed(self.peer, error)
        except HandlerFailed as failure:
            logger.error("%s", failure, exc_info=failure.__cause__)
            return
        finally:
            self.peer._detach()
        if inspect.isawaitable(ended):
            self._engine.keep(asyncio.ensure_future(self._log_failure(ended)))

    def _release(self) -> None:
        """Free the buffers now, and the references that would make cycles (the error's
        traceback holds this object's frames): nothing waits for the garbage collector."""
        self._decoder = self._config.framing.decoder()  # empty: the old one's buffers go with it
        self._channel = None
        self._error = None
        self._transport = None
        self._held = 0
        self._engine.budget.forget(self)

    def _account(self) -> None:
        """Tell the engine's budget what this connection holds now, if that changed.

        The transport's queue drains without telling us: the budget's count of
        it is as of this connection's last read or write, and a check past the
        grace period closes connections on those counts.
        """
        transport = self._transport
        held = self._decoder.buffered + (transport.get_write_buffer_size() if transport is not None else 0)
        if held != self._held:
            self._held = held
            self._engine.budget.update(self, held)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._account()

    # --- messages and replies -------------------------------------------------

    def _dispatch(self, messages: list[bytes]) -> None:
        """Call the handler for each message; plain replies of one read leave in one write."""
        handler, peer, encode = self._config.handler, self.peer, self._config.framing.encode
        if handler.is_plain and self._tail is None and messages:
            messages = self._answer_plain(messages)
            if not messages:
                return
        replies: list[bytes] = []
        self._batch = replies
        try:
            for message in messages:
                if not self.is_open:
                    return
                reply = handler.received_maybe_async(peer, message)
                if reply is None and self._tail is None:
                    continue
                # Checked per message: plain bytes first, the costly awaitable test last.
                if self._tail is None and (type(reply) is bytes or not inspect.isawaitable(reply)):
                    replies.append(self._encode_reply(handler.check_reply(reply), encode))
                else:
                    self._flush(replies)
                    self._chain(reply)
        except HandlerFailed as exc:
            self._flush(replies)  # answer the messages before the one that failed, then close
            self._fail(exc)
            return
        finally:
            self._batch = None
        self._flush(replies)

    def _answer_plain(self, messages: list[bytes]) -> list[bytes]:
        """The hot path of `_dispatch`: a plain function's replies to one read, framed at once in one write.

        Measured with ``connecteur bench`` (pipeline), the general loop
        (per message: the awaitable test, the framing, the reply check)
        cost twice the select engine's CPU per message. Returns the messages
        still to answer, after the first reply that was an awaitable (now
        chained) or a failure (the connection is then closed).
        """
        replies: list[Buffer] = []
        try:
            stop, pending = self._config.handler.answer_plain(messages, replies, async_ok=True)
        except HandlerFailed as exc:
            self._write_replies(replies)  # answer the messages before the one that failed, then close
            self._fail(exc)
            return []
        if not self._write_replies(replies):
            return []
        if pending is None:
            return []
        self._chain(pending)
        return messages[stop + 1 :]

    def _write_replies(self, replies: list[Buffer]) -> bool:
        """Frame and write `replies` in one write; False if one was too large (the connection then fails)."""
        if not replies:
            return True
        wire, count, too_large = frame_replies(self._config.framing, self._encode_all, replies)
        if count:
            self._write(wire, count)
        if too_large is not None:
            self._fail(too_large)
            return False
        return True

    def _encode_reply(self, reply: Buffer | None, encode: Callable[[Buffer], bytes]) -> bytes:
        assert reply is not None
        try:
            return encode(reply)
        except FramingError as exc:
            raise HandlerFailed("received", exc) from exc

    def _flush(self, replies: list[bytes]) -> None:
        if replies:
            self._write(b"".join(replies) if len(replies) > 1 else replies[0], len(replies))
            replies.clear()

    def _chain(self, reply: object, *, counts: bool = True) -> None:
        """Queue a reply (awaitable or not) behind the async replies already in flight."""
        self._pending += 1
        self._tail = self._engine.keep(asyncio.ensure_future(self._in_order(self._tail, reply, counts)))
        self._update_reading()

    async def _in_order(self, previous: Awaitable[None] | None, reply: object, counts: bool) -> None:
        try:
            if previous is not None:
                await previous
            if inspect.isawaitable(reply):
                try:
                    reply = await reply
                except Exception as exc:
                    raise HandlerFailed("received", exc) from exc
            if counts and self.is_open:
                checked = self._config.handler.check_reply(reply)
                if checked is not None:
                    self._write(self._encode_reply(checked, self._config.framing.encode), 1)
        except HandlerFailed as exc:
            self._fail(exc)
        finally:
            self._pending -= 1
            if self._tail is asyncio.current_task():  # the last in the chain: none is waiting
                self._tail = None
            self._update_reading()
            if self._closing:
                self._close_when_flushed()

    async def _log_failure(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception as exc:
            logger.error("the handler's closed() raised %s: %s", type(exc).__name__, exc, exc_info=exc)

    def _write(self, data: bytes, messages: int) -> None:
        transport = self._transport
        if transport is None or not self.is_open or transport.is_closing():
            return
        transport.write(data if self._channel is None else self._channel.send(data))
        if self._deadlines.is_active:
            self._deadlines.moved()
        self._traffic.messages_out += messages
        self._traffic.bytes_out += len(data)
        queued = transport.get_write_buffer_size()
        if queued > HARD_CAP:
            self._fail(ConnectionError(f"{queued} bytes queued for a peer that does not read; limit is {HARD_CAP}"))
        elif queued:
            self._account()

    def _write_raw(self, data: bytes) -> None:
        """Write handshake bytes, which are no messages."""
        transport = self._transport
        if data and transport is not None and self.is_open and not transport.is_closing():
            transport.write(data)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or not self.is_open or transport.is_closing():
            return
        should_pause = self._writing_paused or self._budget_paused or self._pending > MAX_PENDING_REPLIES
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _close_when_flushed(self) -> None:
        """Close once no async reply is in flight; the transport flushes its buffer itself."""
        if self._transport is not None and self.is_open and self._pending == 0:
            if self._channel is not None and self._channel.is_open:
                self._write_raw(self._channel.close_write())  # TLS close_notify: a clean end, not a truncation
                self._channel = None
            self._transport.close()

    # --- deadlines --------------------------------------------------------------

    def _arm_timer(self) -> None:
        due = self._deadlines.next_due()
        loop = self._engine._loop
        if due is None or loop is None or (self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        # Deadlines use time.monotonic(); the loop has its own clock.
        self._timer = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._check_timers)

    def _check_timers(self) -> None:
        self._timer = self._timer_due = None
        if not self.is_open:
            return
        if (expired := self._deadlines.expired(time.monotonic())) is not None:
            if self._channel is not None and not self._channel.is_open:
                self._fail(self._channel.timed_out(expired.seconds))
                return
            self._fail(expired)
        else:
            self._arm_timer()

    # --- ending -----------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        error = log_closing(self.peer.address, error)
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.abort()
        else:
            self.connection_lost(None)
