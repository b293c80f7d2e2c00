"""The asyncio engine: asyncio's protocol layer feeding the sans-I/O decoders.

Each connection is an ``asyncio.BufferedProtocol``: the loop reads straight
into one buffer the whole engine shares (the loop is single-threaded and a
buffer is consumed before the next read) and hands the bytes to the
connection's `Session` (``server/_session.py``), which decodes them, calls the
handler for each message and gives back the bytes to write. A plain handler's
replies to all the messages of one read leave in one write. A handler may be
``async def``: the session hands its replies out, and the protocol awaits
them in a per-connection chain and gives them back, so they still leave in
request order.

Accepting uses the same policy as every engine (`accept_ready`), with the
listening socket watched by ``loop.add_reader`` and each accepted socket given
to ``loop.connect_accepted_socket``; so a stop can still serve the backlog.

Flow control mirrors the select engine: the transport's write buffer has the
same high and low water marks (the server's ``high_water`` and ``low_water``),
and a peer whose replies pile up is not read until they drain
(``pause_writing`` pauses reading, and tells the handler's ``paused`` hook). Async replies in flight
are bounded the same way. Deadlines run on ``loop.call_at``.

Slow-consumer policies (``server/_fanout.py``): nothing can be taken out of the
transport's buffer, one stream. So while it is over the high water mark, a
``"drop_oldest"`` message, and everything sent after it, waits whole in a queue
of the connection's own in front of the transport (`_Held`), where newer
``"drop_oldest"`` messages drop the oldest; ``resume_writing`` feeds the
transport from it. A peer that is not paused pays nothing for this: the
queue is swapped in as the connection's transport only while it holds
messages.

Runs on asyncio's default loop or on uvloop (``loop="uvloop"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, cast

from .. import _socket
from ..address import format_address
from ..framing import BodyPool, Buffer
from ._budget import Budget, OverBudget
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    EngineConfig,
    StopSignal,
    accept_ready,
    log_abandoned,
    logger,
    refuse_if_full,
    refuse_untrusted,
    shut_down,
)
from ._fanout import CLOSED, DELIVERED, DROPPED, BroadcastResult, DropOldest, check_policy
from ._handler import HandlerFailed
from ._limits import HARD_CAP, RECV_SIZE
from ._multiplex import Unordered
from ._peer import Peer, closed_locally
from ._session import Session

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
        config.counters.watch_queued(self.queued)

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

    # --- fan-out (docs/fan-out.md) ------------------------------------------------

    def peers(self) -> list[Peer]:
        """The live peers (handshakes done, not closed); safe from any thread."""
        # list(): one step under the GIL, while the loop may still change the set.
        return [link.session.peer for link in list(self._links) if link.is_open and link.session.announced]

    def queued(self) -> int:
        """Bytes queued for all the connections now (the `Stats.queued` gauge; any thread, approximate)."""
        return sum(link.queued for link in list(self._links))

    def broadcast(self, data: bytes, exclude: Iterable[Peer], policy: str | None) -> BroadcastResult:
        """Queue the framed `data` to every live peer but `exclude`; from another thread, wait for the loop to."""
        policy = check_policy(policy if policy is not None else self._config.slow_consumer)
        skip = set(exclude)
        loop = self._loop
        if threading.get_ident() == self._loop_thread:
            return self._fan_out(data, skip, policy)
        if loop is None:
            return BroadcastResult()
        result: list[BroadcastResult] = []
        done = threading.Event()

        def fan_out() -> None:
            result.append(self._fan_out(data, skip, policy))
            done.set()

        try:
            loop.call_soon_threadsafe(fan_out)
        except RuntimeError:  # the loop has closed
            return BroadcastResult()
        while not done.wait(0.1):  # the loop may end meanwhile (a stop): then nobody is there to send to
            if loop.is_closed() or not loop.is_running():
                return BroadcastResult()
        return result[0]

    def _fan_out(self, data: bytes, skip: set[Peer], policy: str) -> BroadcastResult:
        delivered = dropped = closed = 0  # not BroadcastResult sums: a new object per peer costs (profiled)
        for link in list(self._links):  # a link may close (and leave the set) as it is sent to
            if link.session.announced and link.session.peer not in skip:
                result = link.offer(data, policy)
                delivered += result.delivered
                dropped += result.dropped
                closed += result.closed
        return BroadcastResult(delivered, dropped, closed)

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
        _socket.configure_stream(sock, self._config.keepalive)
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
    """One connection: the protocol callbacks around its `Session`, and the chain of async replies."""

    def __init__(self, engine: AsyncioEngine, address: object, sock: socket.socket) -> None:
        self._engine = engine
        self.sock = sock  # the transport's; only for abandon() to shut down
        self.session = Session(
            engine._config, address, self, traffic=engine._traffic, budget=engine.budget, holder=self,
            body_pool=engine.body_pool, async_replies=True,
        )  # fmt: skip
        self._transport: asyncio.Transport | None = None
        self._tail: asyncio.Future[None] | None = None  # the last async reply in the chain
        self._writing_paused = False
        self._feeding = False  # in resume_writing, writing held messages to the transport
        self._budget_paused = False  # the server is over max_buffered
        self._reading_paused = False
        self._close_asked = False  # close() called, not run yet
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._queued = 0  # the transport's write buffer, as last told to the session
        self.is_open = True

    # --- the Link interface ---------------------------------------------------

    def send(self, message: Buffer, policy: str | None = None) -> None:
        """Queue one message; safe from any thread."""
        if not self.is_open or self._close_asked or self.session.closing:
            raise closed_locally(self.session.peer.address)
        data = self.session.frame(message)
        config = self._engine._config
        send: Callable[[bytes], object] = self._send_framed
        if policy is not None or config.slow_consumer != "close":
            policy = check_policy(policy if policy is not None else config.slow_consumer)
            send = lambda data: self.offer(data, policy)  # noqa: E731
        if threading.get_ident() == self._engine._loop_thread:
            send(data)
        else:
            loop = self._engine._loop
            assert loop is not None
            loop.call_soon_threadsafe(send, data)

    @property
    def queued(self) -> int:
        """Bytes in the transport's write buffer and held in front of it."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def offer(self, data: bytes, policy: str) -> BroadcastResult:
        """On the loop's thread: send the framed `data` under the slow-consumer `policy` (see `_fanout`).

        Nothing can be taken out of the transport's buffer, one stream: while
        it is over the high water mark, a ``"drop_oldest"`` message waits whole
        in a queue of the connection's own in front of it (`_Held`), where a
        newer one can drop it.
        """
        session = self.session
        if not self.is_open or session.closing:
            return CLOSED
        if self._writing_paused and policy != "close":
            if policy == "drop" or session.encrypts:  # TLS: the bytes are one stream from the start
                return self._count_dropped(DROPPED)
            if not session.in_handler:  # else it joins the handler's replies, whole: sent as "close" would
                return self._hold(data)
        self._send_framed(data)
        return DELIVERED if session.error is None else CLOSED

    def _hold(self, data: bytes) -> BroadcastResult:
        """Send `data` through the queue in front of the paused transport; drop the oldest there past high water."""
        transport = self._transport
        assert transport is not None
        held = transport if isinstance(transport, _Held) else _Held(transport)
        self._transport = held  # every write goes behind what it holds until it is fed to the transport
        self._send_framed(data)
        if not self.is_open:
            return CLOSED
        held.may_drop(data)
        dropped = held.drop_oldest(self._engine._config.high_water)
        if not dropped:
            return DELIVERED
        self._account()
        return self._count_dropped(BroadcastResult(delivered=1, dropped=dropped))

    def _count_dropped(self, result: BroadcastResult) -> BroadcastResult:
        self.session.peer.dropped += result.dropped
        self._engine._config.counters.dropped_messages(result.dropped)
        return result

    def _send_framed(self, data: bytes) -> None:
        if self.is_open:
            self.session.send(data)  # from a handler: after the replies before it, in one write
            if not self.session.in_handler:
                self._flush()

    def close(self) -> None:
        """Close once the replies already due are sent; safe from any thread.

        Always deferred to the loop's next turn, so that a handler that
        closes its peer still gets the reply it returns sent first.
        """
        self._close_asked = True
        loop = self._engine._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._close_now)

    def _close_now(self) -> None:
        if self.is_open:
            self.session.close()
            self._flush()

    def abort(self) -> None:
        """Close at once: the stop deadline passed."""
        if pending := self.session.pending_replies:
            logger.warning(
                "stop deadline passed with %d replies of handler %s still pending for %s: closing",
                pending,
                self._engine._config.handler.name,
                format_address(self.session.peer.address),
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

    # --- protocol callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting it.
        self._transport = transport = cast(asyncio.Transport, transport)
        config = self._engine._config
        transport.set_write_buffer_limits(high=config.high_water, low=config.low_water)
        self.session.start()
        self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._engine._view

    def buffer_updated(self, nbytes: int) -> None:
        self.session.receive_data(self._engine._view[:nbytes])
        self._flush()

    def eof_received(self) -> bool:
        self.session.receive_eof()
        self._flush()
        return self.session.error is None  # True: keep the transport open to send the replies still due

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._feeding:  # the held messages keep it paused: the handler was not told otherwise
            return
        self._update_reading()
        self._writability_changed(paused=True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if isinstance(self._transport, _Held):
            self._feed(self._transport)
            if self._writing_paused:  # fed until over high water again: still paused
                self._account()
                return
        self._update_reading()
        self._account()
        self._writability_changed(paused=False)

    def _feed(self, held: _Held) -> None:
        """The transport is under low water: write it the held messages until it pauses again, or none are left."""
        self._feeding = True
        try:
            held.feed(lambda: self._writing_paused)
        finally:
            self._feeding = False
        if held.empty:
            self._transport = held.transport
            if held.closing:  # the session's close waited for them
                held.transport.close()

    def _writability_changed(self, *, paused: bool) -> None:
        """Tell the handler's ``paused``/``resumed`` hook, if it has one."""
        handler = self._engine._config.handler
        if handler.watches_writability and self.is_open and self.session.announced:
            try:
                handler.writability_changed(self.session.peer, paused=paused)
            except HandlerFailed as exc:
                self.session.fail(exc)
                loop = self._engine._loop
                assert loop is not None
                loop.call_soon(self._flush)  # not now: the transport may be inside write()

    def _flush(self) -> None:
        """Write what the session has to send, chain its async replies, arm its deadline, close when due."""
        session, transport = self.session, self._transport
        if transport is None or not self.is_open:
            return
        if out := session.data_to_send():
            self._write(transport, out)
        elif self._queued:
            self._account()  # the transport's buffer drains without telling: look again
        if session.pending_replies:
            for reply, counts in session.take_async_replies():
                self._chain(reply, counts)
        if session.new_deadline:
            self._arm_timer()
        if session.error is not None:
            self._fail(session.error)
        elif session.closing and session.close_expected():
            transport.close()  # the transport flushes its buffer itself

    def _write(self, transport: asyncio.Transport, out: list[Buffer]) -> None:
        if transport.is_closing():
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        queued = self._account()
        if queued > HARD_CAP:
            self.session.fail(
                ConnectionError(f"{queued} bytes queued for a peer that does not read; limit is {HARD_CAP}")
            )

    def _account(self) -> int:
        """Tell the session (for the budget) what the transport holds now, if that changed; return it.

        The transport's queue drains without telling us: the budget's count of
        it is as of this connection's last write, or its last read while
        bytes were queued, and a check past the grace period closes
        connections on those counts.
        """
        transport = self._transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        if queued != self._queued:
            self._queued = queued
            self.session.account(queued)
        return queued

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or not self.is_open or transport.is_closing():
            return
        should_pause = self._writing_paused or self._budget_paused or self.session.pending_replies > MAX_PENDING_REPLIES
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # --- async replies ------------------------------------------------------------

    def _chain(self, reply: object, counts: bool) -> None:
        """Await `reply` (awaitable or not) behind the async replies already in flight."""
        if isinstance(reply, Unordered):  # a multiplexed request's: it leaves as soon as it is ready
            self._engine.keep(asyncio.ensure_future(self._in_order(None, reply, counts)))
        else:
            self._tail = self._engine.keep(asyncio.ensure_future(self._in_order(self._tail, reply, counts)))
        self._update_reading()

    async def _in_order(self, previous: Awaitable[None] | None, reply: object, counts: bool) -> None:
        error: Exception | None = None
        try:
            if previous is not None:
                await previous
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception as exc:
            error = exc
        finally:
            if self._tail is asyncio.current_task():  # the last in the chain: none is waiting
                self._tail = None
        self.session.reply(reply, counts=counts, error=error)
        self._update_reading()
        self._flush()

    async def _log_failure(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception as exc:
            logger.error("the handler's closed() raised %s: %s", type(exc).__name__, exc, exc_info=exc)

    # --- deadlines --------------------------------------------------------------

    def _arm_timer(self) -> None:
        due = self.session.next_deadline()
        loop = self._engine._loop
        if due is None or loop is None or (self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        # Deadlines use time.monotonic(); the loop has its own clock.
        self._timer = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self.check_timers)

    def check_timers(self) -> None:
        """The timer came due: close on an expired deadline, else re-arm."""
        self._timer = self._timer_due = None
        if not self.is_open:
            return
        self.session.check_deadlines(time.monotonic())
        if self.session.error is not None:
            self._fail(self.session.error)
        else:
            self._arm_timer()

    # --- ending -----------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        """Close at once because of `error` (the session logs it, once)."""
        self.session.fail(error)
        if self._transport is not None:
            self._transport.abort()
        else:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.is_open:
            return
        self.is_open = False
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        ended = self.session.connection_lost(exc)
        self._engine.forget(self)
        if inspect.isawaitable(ended):
            self._engine.keep(asyncio.ensure_future(self._log_failure(ended)))


class _Held(asyncio.Transport):
    """A queue of whole messages in front of a paused transport, so that ``"drop_oldest"`` can drop some.

    Installed as the connection's transport when a ``"drop_oldest"`` message
    is sent while the transport is over its high water mark, and until the
    transport, back under its low water mark, has been written everything it
    holds: meanwhile every write (replies, other sends) waits here, behind
    the messages before it, and its buffer size counts what it holds.
    Only the messages a ``"drop_oldest"`` send queued here whole are dropped;
    the newest of them is kept, or a slow reader would never get one.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self.transport = transport
        self._messages: deque[memoryview] = deque()
        self._droppable = DropOldest()
        self._size = 0  # bytes in _messages, not counting dropped ones
        self.closing = False  # close() waits for them to be fed

    @property
    def empty(self) -> bool:
        """True once every message held has been fed to the transport (or dropped)."""
        return not self._messages

    def may_drop(self, data: bytes) -> None:
        """A ``"drop_oldest"`` send of `data` is done: if it waits here whole, it may be dropped."""
        if self._messages and self._messages[-1].obj is data:
            self._droppable.add(self._messages[-1])

    def drop_oldest(self, high_water: int) -> int:
        """Drop the oldest droppable messages, but the newest, while the total is over `high_water`; return how many."""
        dropped = 0
        while self.get_write_buffer_size() > high_water and len(self._droppable) > 1:
            self._size -= self._droppable.drop_one()
            dropped += 1
        return dropped

    def feed(self, paused: Callable[[], bool]) -> None:
        """Write the held messages to the transport, oldest first, until it is `paused` again."""
        messages, droppable, transport = self._messages, self._droppable, self.transport
        while messages and not paused() and not transport.is_closing():
            view = messages.popleft()
            if droppable.leaving(view):  # dropped: no longer in _size
                continue
            self._size -= view.nbytes
            transport.write(view)  # may pause the transport at once (pause_writing)

    # --- the transport's interface, as the connection uses it ---------------------

    def write(self, data: Buffer) -> None:
        view = memoryview(data)
        self._messages.append(view)
        self._size += view.nbytes

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:
        for data in list_of_data:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self._size

    def is_closing(self) -> bool:
        return self.closing or self.transport.is_closing()

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self._messages.clear()
        self._droppable.clear()
        self._size = 0
        self.transport.abort()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()
